"""tfwd.models.saved: model files that plain Keras opens, and those saved by earlier tfwd versions."""

import json
import logging
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from tfwd import runs
from tfwd.models import layers, saved

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "data", "fixtures")
# A ResNet-8 (0.25x) trained for one epoch by tfwd 0.1.0, whose file names "tfwd>BatchNormalization",
# and its logits on IMAGES computed by that version (data/fixtures/README.md).
OLD_MODEL = os.path.join(FIXTURES, "resnet8_w0.25_tfwd0.1.keras")
OLD_LOGITS = os.path.join(FIXTURES, "resnet8_w0.25_tfwd0.1_logits.npz")
IMAGES = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype("float32")

# Runs in a fresh Python that never imports tfwd: loads a .keras file with plain Keras, saves its logits.
PLAIN_KERAS = """
import sys
import keras
import numpy as np
model = keras.models.load_model(sys.argv[1], compile=False)
assert "tfwd" not in sys.modules, "plain Keras imported tfwd"
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]), training=False)))
print(keras.backend.backend(), type(model.get_layer("stem_bn")).__module__)
"""


def _classes(path):
    """(module, class_name, registered_name) of every layer a .keras file names."""
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    return {(layer["module"], layer["class_name"], layer["registered_name"]) for layer in config["config"]["layers"]}


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_run_model_loads_with_plain_keras(tiny_runs, tmp_path, backend):
    path = os.path.join(tiny_runs[0], runs.MODEL)
    assert ("keras.layers", "BatchNormalization", None) in _classes(path)
    assert not any(module.startswith("tfwd") for module, _, _ in _classes(path))
    ours = runs.Run(tiny_runs[0]).model()
    assert type(ours.get_layer("stem_bn")) is layers.BatchNormalization  # tfwd's own loading: fused kernel
    np.save(tmp_path / "x.npy", IMAGES)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS, path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [backend, "keras.src.layers.normalization.batch_normalization"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ours(IMAGES, training=False), atol=1e-5)


def test_model_saved_by_earlier_tfwd_is_converted_on_load(caplog):
    assert ("tfwd.models.layers", "BatchNormalization", "tfwd>BatchNormalization") in _classes(OLD_MODEL)
    with caplog.at_level(logging.INFO, logger="absl"):
        model = saved.load_keras(OLD_MODEL)
    notes = [r.getMessage() for r in caplog.records if "earlier tfwd" in r.getMessage()]
    assert notes == [
        f"{OLD_MODEL} names tfwd's BatchNormalization class (saved by an earlier tfwd): converted on load to Keras' "
        "own; model.save() writes a file that plain Keras loads."
    ]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 7 and all(type(bn) is layers.BatchNormalization for bn in bns)
    np.testing.assert_allclose(model(IMAGES, training=False), np.load(OLD_LOGITS)["logits"], atol=1e-5)
    assert saved.load_model(OLD_MODEL).count_params() == model.count_params()


def test_resaving_an_old_model_makes_it_portable(tmp_path):
    path = str(tmp_path / "m.keras")
    saved.load_keras(OLD_MODEL).save(path)
    assert _classes(path) <= {(m, c, None) for m, c, _ in _classes(path) if m == "keras.layers"}
    np.testing.assert_allclose(
        keras.models.load_model(path, compile=False)(IMAGES, training=False), np.load(OLD_LOGITS)["logits"], atol=1e-5
    )


def test_new_model_loads_fused_without_a_note(tmp_path, caplog):
    from tfwd import models

    path = str(tmp_path / "m.keras")
    models.cifar_resnet(depth=8, width=0.25).save(path)
    with caplog.at_level(logging.INFO, logger="absl"):
        model = saved.load_keras(path)
    assert not [r for r in caplog.records if "earlier tfwd" in r.getMessage()]
    assert type(model.get_layer("stem_bn")) is layers.BatchNormalization
