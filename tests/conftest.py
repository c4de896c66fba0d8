"""Shared fixtures: the prepared TFDS folder, quiet TensorFlow, the repository root."""

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
