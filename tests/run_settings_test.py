"""tfwd.run_settings: the one table of run settings, and everything that must agree with it."""

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest

from tfwd import distribute, models, run_settings, runs, sweeps, training
from tfwd.data import DataConfig
from tfwd.run_settings import BY_NAME, SETTINGS

CONFIG_CLASSES = {"model": runs.ModelConfig, "data": DataConfig, "train": runs.TrainConfig}


@pytest.mark.parametrize("section", list(CONFIG_CLASSES))
def test_config_fields_are_the_settings_with_their_defaults_and_types(section):
    fields = dataclasses.fields(CONFIG_CLASSES[section])
    assert sorted(f.name for f in fields) == sorted(run_settings.names(section))
    for f in fields:
        default = run_settings.defaults(section).get(f.name)  # other architectures' settings: None
        assert (f.default, type(f.default)) == (default, type(default)), f.name
        assert f.type == run_settings.field_type(f.name), f.name


def test_config_defaults_are_bin_train_defaults():
    # A run that gives no setting is the run bin/train makes without flags; every family has a recipe.
    assert set(run_settings.ARCH_RECIPES) == set(models.ARCHITECTURES)
    assert training.config_from_flags({}) == runs.RunConfig()
    imagenet = training.config_from_flags({"arch": "imagenet_resnet"})
    assert imagenet.model == runs.ModelConfig.imagenet()
    assert dataclasses.asdict(imagenet.train) == run_settings.defaults("train", "imagenet_resnet")
    assert (imagenet.train.epochs, imagenet.train.batch_size, imagenet.train.weight_decay) == (120, 256, 5e-5)


def test_a_config_default_that_differs_from_the_table_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Data(DataConfig):
        validation_examples: int = 5

    with pytest.raises(TypeError, match=r"^Data\.validation_examples defaults to 5, but tfwd\.run_settings gives 0\.$"):
        run_settings.check_config_class(Data, "data")


@pytest.mark.parametrize(
    "annotations,message",
    [
        ({"depth": "int"}, r"must have the fields \['arch', 'blocks', 'depth', 'residual', 'width', 'widths'\]"),
        (
            {"depth": "float", "width": "float", "residual": "bool", "arch": "str", "blocks": "x", "widths": "y"},
            r"Model\.depth must be annotated 'int'\. It is 'float'\.",
        ),
    ],
    ids=["missing_fields", "wrong_type"],
)
def test_a_config_class_must_declare_its_settings_as_the_table_types_them(annotations, message):
    with pytest.raises(TypeError, match=message):
        run_settings.config_class("model")(type("Model", (), {"__annotations__": annotations}))


def test_library_defaults_of_launch_settings_are_the_table_defaults():
    # bin/train passes the strategy to make_strategy and the rest to train, whose defaults must be the flags'.
    strategy = inspect.signature(distribute.make_strategy).parameters
    assert (strategy["name"].default, strategy["tpu"].default) == (BY_NAME["strategy"].default, BY_NAME["tpu"].default)
    train = inspect.signature(training.train).parameters
    for name in set(run_settings.names("launch")) - {"strategy", "tpu"}:
        assert train[name].default == BY_NAME[name].default, name


@pytest.mark.parametrize("builder", [models.cifar_resnet, models.imagenet_resnet], ids=["cifar", "imagenet"])
def test_model_builder_defaults_are_the_table_defaults(builder):
    given = {
        name: p.default
        for name, p in inspect.signature(builder).parameters.items()
        if name in BY_NAME and BY_NAME[name].section == "model" and p.default is not inspect.Parameter.empty
    }
    assert given and given == {name: BY_NAME[name].default for name in given}


@pytest.mark.parametrize("name", ["train_examples", "validation_examples"])
def test_data_config_refuses_values_below_the_table_bound(name):
    bound = BY_NAME[name].lower_bound
    DataConfig(**{name: bound})
    with pytest.raises(ValueError, match=f"`{name}` must be .*Received: {bound - 1}"):
        DataConfig(**{name: bound - 1})


def test_help_texts_quote_the_defaults_they_name():
    assert BY_NAME["epochs"].help == "Training epochs (default: 300 CIFAR, 120 ImageNet)."
    assert BY_NAME["weight_decay"].help.endswith("(default: 1e-4 CIFAR, 5e-5 ImageNet).")
    recipe = BY_NAME["recipe"].help
    for name, values in run_settings.LR_RECIPES.items():
        assert f"{name} (" in recipe and f"lr {values['learning_rate']:g}" in recipe
        assert f"cosine per {values['decay_every']}" in recipe
    assert all(f"--{k}" in recipe for k in run_settings.LR_RECIPES["warmup"])
    sizes = {d: DataConfig(d, data_dir="x").resolved_image_size for d in ("cifar10", "image_folder", "imagenet2012")}
    assert sizes == {"cifar10": 32, "image_folder": 32, "imagenet2012": 224}
    assert "32 for CIFAR and image folders, 224 for ImageNet" in BY_NAME["image_size"].help


# Written by the version before the table derived the configs: runs on disk must open unchanged.
OLD_CONFIGS = {
    "cifar": (
        {
            "data": {
                "data_dir": None,
                "data_seed": 0,
                "dataset": "cifar10",
                "download": "auto",
                "image_size": None,
                "train_examples": 128,
                "validation_examples": 0,
            },
            "model": {
                "arch": "cifar_resnet",
                "blocks": None,
                "depth": 38,
                "residual": True,
                "width": 1.0,
                "widths": None,
            },
            "train": {
                "batch_size": 128,
                "decay_every": "step",
                "deterministic": False,
                "epochs": 300,
                "learning_rate": 0.1,
                "momentum": 0.9,
                "seed": 0,
                "warmup_epochs": 2,
                "weight_decay": 0.0001,
            },
        },
        {"depth": 38, "train_examples": 128},
    ),
    "imagenet_old_download": (
        {
            "data": {
                "data_dir": None,
                "data_seed": 0,
                "dataset": "imagenet2012",
                "download": False,
                "image_size": None,
                "train_examples": None,
                "validation_examples": 0,
            },
            "model": {
                "arch": "imagenet_resnet",
                "blocks": [3, 4, 17, 3],
                "depth": 83,
                "residual": True,
                "width": 1.0,
                "widths": [1.0, 1.0, 1.0, 1.0],
            },
            "train": {
                "batch_size": 256,
                "decay_every": "step",
                "deterministic": False,
                "epochs": 120,
                "learning_rate": 0.1,
                "momentum": 0.9,
                "seed": 0,
                "warmup_epochs": 2,
                "weight_decay": 5e-05,
            },
        },
        {"arch": "imagenet_resnet", "blocks": [3, 4, 17, 3], "dataset": "imagenet2012", "download": False},
    ),
}


@pytest.mark.parametrize("config,flags", OLD_CONFIGS.values(), ids=list(OLD_CONFIGS))
def test_config_json_of_earlier_runs_reads_back_equal(tmp_path, config, flags):
    (tmp_path / runs.CONFIG).write_text(json.dumps(config))
    read = runs.read_config(str(tmp_path))
    assert read == training.config_from_flags(flags)
    assert json.loads(runs.json_text(read.to_dict())) == config


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"image_size": 4}, r"`image_size` must be >= 8\. Received: 4$"),
        ({"validation_every": 0}, r"`validation_every` must be a positive integer\. Received: 0$"),
        ({"checkpoint_seconds": -1}, r"`checkpoint_seconds` must be >= 0\. Received: -1$"),
        ({"train_examples": 0}, r"`train_examples` must be a positive integer\. Received: 0$"),
        (
            {"learning_rate": float("nan")},
            r"`learning_rate` must be a number \(or null for the default\)\. Received: nan$",
        ),
        ({"blocks": []}, r"`blocks` must be a list of integers \(or null for the default\)\. Received: \[\]$"),
    ],
    ids=["image_size", "validation_every", "checkpoint_seconds", "train_examples", "nan", "empty_list"],
)
def test_spec_values_are_checked_against_the_table_in_one_line(flags, message):
    with pytest.raises(ValueError, match=r"^Sweep spec s: flags: " + message) as info:
        sweeps.expand({"name": "s", "flags": flags, "grid": [{"seed": [0]}]})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "section,values,problem",
    [
        ("model", {"blocks": None, "depth": 20}, None),
        ("data", {"download": "auto", "train_examples": None}, None),
        ("data", {"download": True}, None),
        ("train", {"epochs": None}, "`train.epochs` must be an integer. It holds None"),
        ("data", {"download": "yes"}, "`data.download` must be true or false. It holds 'yes'"),
        ("data", {"image_size": "big"}, "`data.image_size` must be an integer or null. It holds 'big'"),
        ("train", {"decay_every": "day"}, "`train.decay_every` must be one of ['step', 'epoch']. It holds 'day'"),
    ],
)
def test_config_json_values_are_checked_against_the_table(section, values, problem):
    assert run_settings.config_problem({section: values}) == problem


_FLAGS_SCRIPT = """
import importlib.machinery, importlib.util, json, sys
app = sys.argv[1]
sys.path.insert(0, sys.argv[2])
sys.argv = [app]
import _common
from tfwd import run_settings  # the flags of the libraries it imports are defined before the snapshot
from absl import flags
before = set(flags.FLAGS)
loader = importlib.machinery.SourceFileLoader("app_under_test", app)
loader.exec_module(importlib.util.module_from_spec(importlib.util.spec_from_loader("app_under_test", loader)))
print(json.dumps({
    name: {
        "parser": type(flags.FLAGS[name].parser).__name__,
        "default": flags.FLAGS[name].default,
        "help": flags.FLAGS[name].help,
        "lower_bound": getattr(flags.FLAGS[name].parser, "lower_bound", None),
        "enum": getattr(flags.FLAGS[name].parser, "enum_values", None),
    }
    for name in set(flags.FLAGS) - before
}))
"""
_PARSERS = {
    "int": "IntegerParser",
    "float": "FloatParser",
    "bool": "BooleanParser",
    "str": "ArgumentParser",
    "ints": "ListParser",
    "floats": "ListParser",
}


def _app_flags(root, app):
    """The flags `bin/<app>` defines itself, by name: parser class, default, help, lower bound, choices."""
    done = subprocess.run(
        [sys.executable, "-c", _FLAGS_SCRIPT, str(root / "bin" / app), str(root / "bin")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_flag(name, flag, help=True):
    setting = BY_NAME[name]
    parser = "EnumParser" if isinstance(setting.kind, tuple) else _PARSERS[setting.kind]
    assert flag["parser"] == parser, name
    assert flag["default"] == setting.flag_default, name
    assert flag["lower_bound"] == setting.lower_bound, name
    assert flag["enum"] == (list(setting.kind) if isinstance(setting.kind, tuple) else None), name
    choices = f"<{'|'.join(setting.kind)}>: " if isinstance(setting.kind, tuple) else ""  # absl's prefix
    assert not help or flag["help"] == choices + setting.help, name


def test_every_bin_train_flag_is_a_setting_of_the_table(root):
    defined = _app_flags(root, "train")
    assert sorted(defined) == sorted(s.name for s in SETTINGS)
    for name, flag in defined.items():
        _check_flag(name, flag)


def test_bin_sweep_flags_named_after_settings_are_the_table_settings(root):
    defined = _app_flags(root, "sweep")
    shared = sorted(set(defined) & set(BY_NAME))
    assert shared == ["out_dir"]  # the parent folder it passes to bin/train
    for name in shared:
        _check_flag(name, defined[name], help=False)
