"""Shared fixtures: the prepared TFDS folder, quiet TensorFlow, the repository root."""

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tfds_dir():
    for candidate in (os.environ.get("TFDS_DATA_DIR"), str(ROOT.parent / "shared" / "tfds")):
        if candidate and os.path.isdir(os.path.join(candidate, "cifar10")):
            return os.path.abspath(candidate)
    return None


@pytest.fixture(scope="session")
def tfds_dir():
    """A TFDS data directory holding cifar10 (TFDS_DATA_DIR, or ../shared/tfds beside the checkout)."""
    path = _tfds_dir()
    if path is None:
        pytest.fail("CIFAR-10 for TFDS is needed: set TFDS_DATA_DIR to a folder holding cifar10/3.0.2.")
    return path


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture
def bin_env(tfds_dir):
    """Environment for running bin/ apps in a subprocess."""
    env = dict(os.environ, TFDS_DATA_DIR=tfds_dir, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TFWD_FAULT", None)
    return env


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tfds_dir):
    """Two finished 1-epoch runs (seeds 0 and 1) of a 4-channel ResNet-8 on 256 CIFAR-10 images."""
    from tfwd import runs, training
    from tfwd.data import DataConfig

    out = tmp_path_factory.mktemp("runs")
    return [
        training.train(
            runs.RunConfig(
                runs.ModelConfig(8, 0.25),
                DataConfig(data_dir=tfds_dir, train_examples=256),
                runs.TrainConfig(epochs=1, batch_size=32, seed=seed),
            ),
            str(out),
            verbose=0,
            tensorboard=False,
        )
        for seed in (0, 1)
    ]


def _strict_json(text: str, where: str) -> None:
    """Fails if `text` parses only as Python's lenient JSON (NaN, Infinity); text that is no JSON at all is a test's
    own stand-in file, not tfwd's output."""

    def refuse(constant):
        raise AssertionError(f"{where} is not strict JSON: it holds {constant} (strict JSON writes null)")

    try:
        json.loads(text)
    except ValueError:
        return
    json.loads(text, parse_constant=refuse)


def check_outputs_are_strict_json(folder) -> int:
    """Parses every JSON file, and the JSON settings of every .npz, in the tfwd outputs below `folder` (the folders
    holding tfwd's output marker, a report's included) with a strict parser; returns how many it parsed."""
    import numpy as np

    parsed = 0
    for path, _, files in os.walk(folder):
        if ".tfwd_output" not in files:
            continue
        for below, _, names in os.walk(path):
            for name in names:
                file = os.path.join(below, name)
                if name.endswith(".json"):
                    with open(file) as f:
                        _strict_json(f.read(), file)
                    parsed += 1
                elif name.endswith(".npz"):
                    try:
                        with np.load(file) as f:
                            settings = str(f["settings"]) if "settings" in f.files else None
                    except (OSError, ValueError, EOFError):
                        continue  # a test's stand-in file
                    if settings is not None:
                        _strict_json(settings, f"{file}[settings]")
                        parsed += 1
    return parsed


@pytest.fixture(autouse=True)
def outputs_are_strict_json(request):
    """After each test, every JSON output tfwd wrote into its tmp_path (and into the tiny runs it used) parses
    with a strict parser: NaN and Infinity are not JSON (a missing number is null)."""
    folders = []  # taken before the test: the folders stay on disk after their fixtures end
    if "tmp_path" in request.fixturenames:
        folders.append(request.getfixturevalue("tmp_path"))
    if "tiny_runs" in request.fixturenames:
        folders += request.getfixturevalue("tiny_runs")
    yield
    for folder in folders:
        check_outputs_are_strict_json(folder)
