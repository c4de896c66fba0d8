"""The settings of a training run, named once: bin/train's flags, sweep keys, config fields and defaults.

`SETTINGS` lists every setting bin/train takes, in the order sweep commands spell them.
Each entry says its kind, its default, its bound, its help text and which part of the run
it sets. Everything else is derived from it (and from the recipes beside it, ARCH_RECIPES
and LR_RECIPES):

- bin/train's flags (`bin/_common.define_setting`);
- the fields' defaults of tfwd.runs.ModelConfig and TrainConfig (`config_class`), checked
  against tfwd.data.DataConfig's at import (`check_config_class`), and the bounds
  TrainConfig.validate enforces;
- the run a set of settings gives (`defaults`, tfwd.training.config_from_flags);
- the checks of sweep and report specs' `runs` (tfwd.sweeps) and of a run's config.json
  (`config_problem`).

Allowed values come from the constant that the code checking them uses
(`tfwd.models.ARCHITECTURES`, `tfwd.data.DATASETS`, `tfwd.distribute.STRATEGIES`).

Example:
    >>> [s.name for s in SETTINGS if s.section == "model" and s.arch == "imagenet_resnet"]
    ['blocks', 'widths']
    >>> KINDS["decay_every"]
    ('step', 'epoch')
    >>> defaults("train", arch="imagenet_resnet")["epochs"]
    120
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

from tfwd.data import DATASETS, DOWNLOADS, DataConfig
from tfwd.distribute import STRATEGIES
from tfwd.models import ARCHITECTURES

ARCHS = tuple(ARCHITECTURES)
DECAY_EVERY = ("step", "epoch")
# Learning-rate recipes (`--recipe`): "reference" is the reference code's cifar_train.py
# (lr 0.01, cosine stepped per epoch, no warmup); "warmup" is He et al.'s lr 0.1 with a
# 2-epoch linear warmup and a per-step cosine. docs/science/learning_rate.md has the comparison.
LR_RECIPES = {
    "warmup": {"learning_rate": 0.1, "warmup_epochs": 2, "decay_every": "step"},
    "reference": {"learning_rate": 0.01, "warmup_epochs": 0, "decay_every": "epoch"},
}
# The paper's recipe of each architecture (reference code): CIFAR (cifar_train.py, He et al.
# 2016) and ImageNet (large_scale_training/imagenet_train.py: batch 256, 120 epochs, L2 5e-5),
# both SGD with momentum 0.9 and cosine decay; the learning rate is LR_RECIPES'.
ARCH_RECIPES = {
    "cifar_resnet": {"epochs": 300, "batch_size": 128, "weight_decay": 1e-4},
    "imagenet_resnet": {"epochs": 120, "batch_size": 256, "weight_decay": 5e-5},
}
_ARCH_LABELS = {"cifar_resnet": "CIFAR", "imagenet_resnet": "ImageNet"}  # in help texts
# Sections: "model", "data", "train" (RunConfig parts, in its name and config.json), "recipe"
# (sets several train settings at once), "launch" (how a run trains, not what it is) and
# "output" (where it is written: bin/train's, never a sweep spec's key).
SECTIONS = ("model", "data", "train", "recipe", "launch", "output")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a training run.

    Attributes:
        name: the flag, sweep key and config field name.
        kind: "int", "float", "bool", "str", "ints", "floats", or a tuple of the allowed values.
        section: one of SECTIONS.
        help: the flag's help text.
        default: the value of a run that does not give the setting (lists as tuples); None: derived
            (from ARCH_RECIPES or LR_RECIPES, the dataset, or "all" / "none").
        lower_bound: the smallest allowed number (flags, specs and TrainConfig enforce it).
        arch: the only architecture the setting applies to (model section), else None.
        also: values a config field takes besides its kind's, which no flag spells (download's "auto").
    """

    name: str
    kind: str | tuple
    section: str
    help: str
    default: Any = None
    lower_bound: float | None = None
    arch: str | None = None
    also: tuple = ()

    @property
    def flag_default(self) -> Any:
        """The flag's default: `default` as absl takes it (a list as strings), None for a value no flag spells."""
        if self.default is None or self.default in self.also:
            return None
        return [str(v) for v in self.default] if self.kind in ("ints", "floats") else self.default


def _short(value: float) -> str:
    """A number as a help text writes it: 300, 0.1, 1e-4."""
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}"


def _per_arch(name: str) -> str:
    """A setting's value in each architecture's recipe, for help texts: "300 CIFAR, 120 ImageNet"."""
    return ", ".join(f"{_short(recipe[name])} {_ARCH_LABELS[arch]}" for arch, recipe in ARCH_RECIPES.items())


DATA_DIR_HELP = (
    "TFDS data directory, or the root of an image folder (default: the one a run recorded, if it exists; else "
    "$TFDS_DATA_DIR, else ~/tensorflow_datasets)."
)

SETTINGS: tuple[Setting, ...] = (
    Setting("arch", ARCHS, "model", "Model family.", default="cifar_resnet"),
    Setting(
        "depth",
        "int",
        "model",
        "CIFAR ResNet depth, 6n+2 (14, 20, 26, 32, 38, 44, 56, 62, 110, 164, ...).",
        default=56,
        arch="cifar_resnet",
    ),
    Setting(
        "width",
        "float",
        "model",
        "CIFAR width multiplier: stages get round(16w), round(32w), round(64w) channels.",
        default=1.0,
        arch="cifar_resnet",
    ),
    Setting(
        "residual",
        "bool",
        "model",
        "Residual connections; --noresidual trains the plain network.",
        default=True,
        arch="cifar_resnet",
    ),
    Setting(
        "blocks",
        "ints",
        "model",
        "imagenet_resnet: bottleneck blocks per stage (3,4,17,3: ResNet-83).",
        default=(3, 4, 6, 3),
        arch="imagenet_resnet",
    ),
    Setting(
        "widths",
        "floats",
        "model",
        "imagenet_resnet: width multiplier per stage (1,1,2.8,1: 2.8x stage 3).",
        default=(1, 1, 1, 1),
        arch="imagenet_resnet",
    ),
    Setting("seed", "int", "train", "Seed of the initial weights, data order and augmentation.", default=0),
    Setting("dataset", DATASETS, "data", "Dataset (TFDS name, or image_folder with --data_dir).", default="cifar10"),
    Setting("data_dir", "str", "data", DATA_DIR_HELP),
    Setting(
        "download",
        "bool",
        "data",
        "Fetch a missing dataset with TFDS. Unset: only CIFAR-10/100, into TFDS's default folder, when no "
        "--data_dir is given. True: any dataset, into --data_dir too (ImageNet: TFDS's manual download). "
        "False (--nodownload): never.",
        default="auto",
        also=DOWNLOADS,
    ),
    Setting("train_examples", "int", "data", "Class-balanced training subset size (default: all).", lower_bound=1),
    Setting(
        "validation_examples", "int", "data", "Class-balanced examples held out of training.", default=0, lower_bound=0
    ),
    Setting("data_seed", "int", "data", "Seed of the subset selection (not of the data order).", default=0),
    Setting(
        "image_size",
        "int",
        "data",
        "Input size (default: 32 for CIFAR and image folders, 224 for ImageNet).",
        lower_bound=8,
    ),
    Setting("epochs", "int", "train", f"Training epochs (default: {_per_arch('epochs')}).", lower_bound=1),
    Setting("batch_size", "int", "train", f"Global batch size (default: {_per_arch('batch_size')}).", lower_bound=1),
    Setting(
        "learning_rate",
        "float",
        "train",
        "Peak learning rate of the cosine decay (default: the recipe's).",
        lower_bound=0,
    ),
    Setting("momentum", "float", "train", "SGD momentum.", default=0.9, lower_bound=0),
    Setting(
        "weight_decay",
        "float",
        "train",
        f"L2 on kernels, loss += wd * sum w^2 (default: {_per_arch('weight_decay')}).",
        lower_bound=0,
    ),
    Setting("strategy", STRATEGIES, "launch", "tf.distribute strategy.", default="default"),
    Setting("tpu", "str", "launch", "TPU name or address (with --strategy=tpu)."),
    Setting(
        "deterministic", "bool", "train", "Enable TensorFlow op determinism (bit-reproducible, slower).", default=False
    ),
    Setting(
        "warmup_epochs", "int", "train", "Epochs of linear learning-rate warmup before the cosine decay.", lower_bound=0
    ),
    Setting("decay_every", DECAY_EVERY, "train", "Cosine learning-rate decay every SGD step or every epoch."),
    Setting(
        "recipe",
        tuple(LR_RECIPES),
        "recipe",
        "Learning-rate recipe: warmup (lr 0.1, 2 warmup epochs, cosine per step) or reference (the reference "
        "code's lr 0.01, cosine per epoch, no warmup). --learning_rate, --warmup_epochs, --decay_every override.",
        default="warmup",
    ),
    Setting(
        "validation_every",
        "int",
        "launch",
        "Evaluate on the validation split every this many epochs.",
        default=1,
        lower_bound=1,
    ),
    Setting(
        "cka_every",
        "int",
        "launch",
        "Every this many epochs, measure the within-model CKA heatmap on the first 512 test images "
        "(tfwd.callbacks.CKAMonitor) into TensorBoard and the run's cka_history.npz; 0: never.",
        default=0,
        lower_bound=0,
    ),
    Setting(
        "checkpoint_seconds",
        "float",
        "launch",
        "Save a resumable checkpoint once this many seconds have passed since the last one, and after the last "
        "epoch; 0 saves after every epoch. A kill loses at most this much training (plus the epoch under way).",
        default=60.0,
        lower_bound=0,
    ),
    Setting("out_dir", "str", "output", "Parent folder of run directories.", default="runs"),
    Setting(
        "overwrite",
        "bool",
        "output",
        "Delete an existing run directory of the same name and train again.",
        default=False,
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}
# Name -> kind, in SETTINGS order: the sweep spec keys (a sweep's caller chooses out_dir; it never overwrites).
KINDS: dict[str, Any] = {s.name: s.kind for s in SETTINGS if s.section != "output"}


def names(section: str, arch: str | None = None) -> tuple[str, ...]:
    """The names of a section's settings (with `arch`: only those of that architecture), in SETTINGS order."""
    if section not in SECTIONS:
        raise ValueError(f"`section` must be one of {SECTIONS}. Received: section={section!r}")
    return tuple(s.name for s in SETTINGS if s.section == section and (arch is None or s.arch == arch))


def run_names() -> tuple[str, ...]:
    """Settings that shape the run (every section but "launch" and "output"): a user's value overrides a default."""
    return tuple(s.name for s in SETTINGS if s.section not in ("launch", "output"))


def defaults(section: str | None = None, arch: str | None = None, recipe: str | None = None) -> dict[str, Any]:
    """The value of each setting that a run does not give: its default, else its recipes' value.

    Args:
        section: only the settings of this section (None: all).
        arch: the architecture whose model settings and recipe (ARCH_RECIPES) apply (None: the
            `arch` setting's default); model settings of other architectures are left out.
        recipe: the learning-rate recipe (LR_RECIPES) that applies (None: the `recipe` setting's default).

    Example:
        >>> defaults("model")
        {'arch': 'cifar_resnet', 'depth': 56, 'width': 1.0, 'residual': True}
    """
    arch = arch or BY_NAME["arch"].default
    recipe = recipe or BY_NAME["recipe"].default
    values = {s.name: s.default for s in SETTINGS if s.arch in (None, arch)}
    values.update(arch=arch, recipe=recipe, **ARCH_RECIPES[arch], **LR_RECIPES[recipe])
    return {k: v for k, v in values.items() if section is None or BY_NAME[k].section == section}


KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "ints": "a list of integers",
    "floats": "a list of numbers",
}


def kind_name(kind: str | tuple) -> str:
    """What a value of `kind` is, for errors: "an integer", "one of ['step', 'epoch']"."""
    return f"one of {list(kind)}" if isinstance(kind, tuple) else KIND_NAMES[kind]


def fits(value: Any, kind: str | tuple, flag: bool = False) -> bool:
    """Whether a JSON value is of a setting's kind (a number of "float" may be an integer, never a bool).

    With `flag`, also whether a flag can spell it: finite numbers, non-empty strings and lists.

    Example:
        >>> fits([3, 4], "ints"), fits(2, "float"), fits(True, "int"), fits("", "str", flag=True)
        (True, True, False, False)
    """
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    is_number = lambda v: (is_int(v) or isinstance(v, float)) and (not flag or math.isfinite(v))  # noqa: E731
    if isinstance(kind, tuple):
        return isinstance(value, str) and value in kind
    if kind in ("ints", "floats"):
        items = is_int if kind == "ints" else is_number
        return isinstance(value, list) and (value != [] or not flag) and all(map(items, value))
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_number(value)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, str) and (value != "" or not flag)


def bound_problem(name: str, value: Any) -> str | None:
    """What is wrong with a number below its setting's lower bound (or NaN), as the start of a sentence; else None.

    Example:
        >>> bound_problem("epochs", 0), bound_problem("momentum", -1.0), bound_problem("momentum", 0.9)
        ('`epochs` must be a positive integer', '`momentum` must be >= 0', None)
    """
    bound = BY_NAME[name].lower_bound
    if bound is None or value is None or value >= bound:
        return None
    positive = bound == 1 and BY_NAME[name].kind == "int"
    return f"`{name}` must be " + ("a positive integer" if positive else f">= {bound}")


# --- the config dataclasses -------------------------------------------------------------------

CONFIG_SECTIONS = ("model", "data", "train")  # RunConfig's parts, as config.json names them
_FIELD_DEFAULTS = defaults()
# A kind's type in a config field's annotation (a tuple of choices: "str").
_TYPES = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "ints": "tuple[int, ...]",
    "floats": "tuple[float, ...]",
}


def field_default(name: str) -> Any:
    """The default of a config field: the run's value without the setting (None: derived from other fields)."""
    return _FIELD_DEFAULTS.get(name)


def field_type(name: str) -> str:
    """The annotation a config field of this setting has, as text: "int", "tuple[int, ...] | None", "bool | str"."""
    setting = BY_NAME[name]
    types = ["str" if isinstance(setting.kind, tuple) else _TYPES[setting.kind]]
    types += sorted({type(v).__name__ for v in setting.also if not fits(v, setting.kind)})
    return " | ".join(types + (["None"] if field_default(name) is None else []))


def check_config_class(cls: type, section: str) -> None:
    """Raises TypeError unless the fields of dataclass `cls` are `section`'s settings, typed and defaulted as here."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_annotations(cls.__name__, section, {k: f.type for k, f in fields.items()})
    for name, f in fields.items():
        if f.default != field_default(name) or type(f.default) is not type(field_default(name)):
            raise TypeError(
                f"{cls.__name__}.{name} defaults to {f.default!r}, but tfwd.run_settings gives {field_default(name)!r}."
            )


def _check_annotations(owner: str, section: str, annotations: dict[str, Any]) -> None:
    if sorted(annotations) != sorted(names(section)):
        raise TypeError(f"{owner} must have the fields {sorted(names(section))}. It has {sorted(annotations)}.")
    for name, annotation in annotations.items():
        text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        if text != field_type(name):
            raise TypeError(f"{owner}.{name} must be annotated {field_type(name)!r}. It is {text!r}.")


def config_class(section: str) -> Callable[[type], type]:
    """Makes a class a frozen dataclass of `section`'s settings, with their defaults from this table.

    The class lists its fields as annotations (their order is the dataclass's); each must be a
    setting of `section`, annotated `field_type(name)`. Its defaults are `field_default(name)`.

    Example:
        >>> @config_class("model")
        ... class Model:
        ...     depth: int
        ...     width: float
        ...     residual: bool
        ...     arch: str
        ...     blocks: tuple[int, ...] | None
        ...     widths: tuple[float, ...] | None
        >>> Model(depth=20)
        Model(depth=20, width=1.0, residual=True, arch='cifar_resnet', blocks=None, widths=None)
    """

    def make(cls: type) -> type:
        annotations = inspect.get_annotations(cls)
        _check_annotations(cls.__name__, section, annotations)
        for name in annotations:
            setattr(cls, name, field_default(name))
        return dataclasses.dataclass(frozen=True)(cls)

    return make


def config_problem(config: Any) -> str | None:
    """The first field of a run's config.json (a dict of sections) whose value has the wrong type, as one sentence.

    Each field is checked against its setting's kind in SETTINGS (the flags' types), so a
    config edited by hand is refused with its key before any model is built. Sections or
    fields this version does not know are left to the caller (an incompatible config).

    Example:
        >>> print(config_problem({"model": {"depth": "eight", "width": 1.0}}))
        `model.depth` must be an integer. It holds 'eight'
        >>> config_problem({"model": {"depth": 8}, "train": {"decay_every": "step"}}) is None
        True
    """
    if not isinstance(config, dict):
        return None
    for section in CONFIG_SECTIONS:
        fields = config.get(section)
        if not isinstance(fields, dict):
            continue
        for setting in SETTINGS:
            if setting.section != section or setting.name not in fields:
                continue
            value, nullable = fields[setting.name], field_default(setting.name) is None
            if (value is None and nullable) or value in setting.also:
                continue
            if not fits(value, setting.kind):
                should = kind_name(setting.kind) + (" or null" if nullable else "")
                return f"`{section}.{setting.name}` must be {should}. It holds {value!r}"
    return None


# tfwd.data is imported here, so DataConfig's fields are checked against this table rather than derived from it.
check_config_class(DataConfig, "data")
