"""The settings of a training run, named once: bin/train's flags, sweep keys and config sections.

`SETTINGS` lists every setting bin/train takes (besides its own --out_dir and --overwrite),
in the order sweep commands spell them. Each entry says its kind, its default as a flag,
its help text and which part of the run it sets; bin/train defines its flags from it,
`tfwd.sweeps` checks spec keys against it, and `tfwd.training.config_from_flags` sorts
given values into ModelConfig, DataConfig and TrainConfig with it. Allowed values come from
the constant that the code checking them uses (`tfwd.data.DATASETS`, `tfwd.distribute.STRATEGIES`).

Example:
    >>> [s.name for s in SETTINGS if s.section == "model" and s.arch == "imagenet_resnet"]
    ['blocks', 'widths']
    >>> KINDS["decay_every"]
    ('step', 'epoch')
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tfwd.data import DATASETS, DOWNLOADS
from tfwd.distribute import STRATEGIES

ARCHS = ("cifar_resnet", "imagenet_resnet")
DECAY_EVERY = ("step", "epoch")
# Learning-rate recipes (`--recipe`): "reference" is the reference code's cifar_train.py
# (lr 0.01, cosine stepped per epoch, no warmup); "warmup" is He et al.'s lr 0.1 with a
# 2-epoch linear warmup and a per-step cosine. docs/science/learning_rate.md has the comparison.
LR_RECIPES = {
    "warmup": {"learning_rate": 0.1, "warmup_epochs": 2, "decay_every": "step"},
    "reference": {"learning_rate": 0.01, "warmup_epochs": 0, "decay_every": "epoch"},
}
# Sections: "model", "data", "train" (RunConfig parts, in its name and config.json), "recipe"
# (sets several train settings at once) and "launch" (how a run trains, not what it is).
SECTIONS = ("model", "data", "train", "recipe", "launch")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a training run.

    Attributes:
        name: the flag, sweep key and config field name.
        kind: "int", "float", "bool", "str", "ints", "floats", or a tuple of the allowed values.
        section: one of SECTIONS.
        help: the flag's help text.
        default: the flag's default (None: the recipe or config default applies).
        lower_bound: the smallest allowed number (flags only).
        arch: the only architecture the setting applies to (model section), else None.
    """

    name: str
    kind: str | tuple
    section: str
    help: str
    default: Any = None
    lower_bound: float | None = None
    arch: str | None = None


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
        default=["3", "4", "6", "3"],
        arch="imagenet_resnet",
    ),
    Setting(
        "widths",
        "floats",
        "model",
        "imagenet_resnet: width multiplier per stage (1,1,2.8,1: 2.8x stage 3).",
        default=["1", "1", "1", "1"],
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
    Setting("epochs", "int", "train", "Training epochs (default: 300 CIFAR, 120 ImageNet).", lower_bound=1),
    Setting("batch_size", "int", "train", "Global batch size (default: 128 CIFAR, 256 ImageNet).", lower_bound=1),
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
        "L2 on kernels, loss += wd * sum w^2 (default: 1e-4 CIFAR, 5e-5 ImageNet).",
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
)
BY_NAME = {s.name: s for s in SETTINGS}
# Name -> kind, in SETTINGS order (the sweep spec keys).
KINDS: dict[str, Any] = {s.name: s.kind for s in SETTINGS}


def names(section: str, arch: str | None = None) -> tuple[str, ...]:
    """The names of a section's settings (with `arch`: only those of that architecture), in SETTINGS order."""
    if section not in SECTIONS:
        raise ValueError(f"`section` must be one of {SECTIONS}. Received: section={section!r}")
    return tuple(s.name for s in SETTINGS if s.section == section and (arch is None or s.arch == arch))


def run_names() -> tuple[str, ...]:
    """Settings that shape the run (every section but "launch"): a user's value overrides a default."""
    return tuple(s.name for s in SETTINGS if s.section != "launch")


# config.json fields that may be null (their default is "derived"), and values a field takes besides its kind's.
_NULLABLE = ("blocks", "widths", "data_dir", "train_examples", "image_size")
_ALSO = {"download": DOWNLOADS}
KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "ints": "a list of integers",
    "floats": "a list of numbers",
}


def _fits(value: Any, kind: str | tuple) -> bool:
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if isinstance(kind, tuple):
        return isinstance(value, str) and value in kind
    if kind in ("ints", "floats"):
        return isinstance(value, list) and all((is_int if kind == "ints" else is_number)(v) for v in value)
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_number(value)
    return isinstance(value, bool if kind == "bool" else str)


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
    for section in ("model", "data", "train"):
        fields = config.get(section)
        if not isinstance(fields, dict):
            continue
        for setting in SETTINGS:
            if setting.section != section or setting.name not in fields:
                continue
            value = fields[setting.name]
            if (value is None and setting.name in _NULLABLE) or value in _ALSO.get(setting.name, ()):
                continue
            if not _fits(value, setting.kind):
                kind = setting.kind
                should = f"one of {list(kind)}" if isinstance(kind, tuple) else KIND_NAMES[kind]
                if setting.name in _NULLABLE:
                    should += " or null"
                return f"`{section}.{setting.name}` must be {should}. It holds {value!r}"
    return None
