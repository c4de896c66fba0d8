"""tfwd.cka and bin/cka: joint passes over many models, files written, errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfwd import cka, metrics, models


def _dataset(seed, n=96, batch=32):
    x = tf.random.stateless_uniform([n, 32, 32, 3], seed=[seed, 0])
    return tf.data.Dataset.from_tensor_slices((x, tf.zeros([n], tf.int32))).batch(batch)


def test_joint_pass_equals_models_computed_separately():
    import keras

    keras.utils.set_random_seed(0)
    a, b = models.cifar_resnet(8, 0.25), models.cifar_resnet(8, 0.5, residual=False)
    calls = []

    def for_pass(p):
        calls.append(p)
        return _dataset(p)

    result = cka.cka_matrices([a, b], for_pass, passes=2, taps="blocks")
    assert calls == [0, 1]
    assert result["batches"] == 6 and result["examples"] == 96
    assert result["names"][0] == models.tap_names(a, "blocks")
    # The reference: the metric fed each model's taps (and both, for the cross block) on the same batches.
    within_a, within_b, cross = metrics.CKA(), metrics.CKA(), metrics.CKA()
    acts_a, acts_b = models.activation_model(a, "blocks"), models.activation_model(b, "blocks")
    for p in (0, 1):
        for x, _ in _dataset(p):
            ya, yb = acts_a(x, training=False), acts_b(x, training=False)
            within_a.update_state(ya)
            within_b.update_state(yb)
            cross.update_state(ya, yb)
    np.testing.assert_allclose(result["blocks"][(0, 0)], within_a.result().numpy(), atol=1e-6)
    np.testing.assert_allclose(result["blocks"][(1, 1)], within_b.result().numpy(), atol=1e-6)
    np.testing.assert_allclose(result["blocks"][(0, 1)], cross.result().numpy(), atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    result = {"names": [["a", "b"], ["c"]], "blocks": {(0, 0): np.eye(2), (0, 1): np.ones((2, 1)) / 2, (1, 1): np.eye(1)}, "examples": 10, "batches": 2}
    cka.save(str(tmp_path / "c.npz"), result, ["m0", "m1"], {"taps": "all"})
    loaded = cka.load(str(tmp_path / "c.npz"))
    assert loaded["models"] == ["m0", "m1"] and loaded["names"] == result["names"]
    assert loaded["settings"] == {"taps": "all", "examples": 10, "batches": 2}
    for key, value in result["blocks"].items():
        np.testing.assert_array_equal(loaded["blocks"][key], value)


def test_analyze_runs_writes_everything(tiny_runs, tmp_path):
    out = cka.analyze_runs(tiny_runs, out_dir=str(tmp_path / "out"), taps="blocks", examples=64, batch_size=32, passes=2)
    names = [os.path.basename(r) for r in tiny_runs]
    assert sorted(os.listdir(out)) == sorted(
        ["cka.npz", "grid.png", f"within_{names[0]}.png", f"within_{names[1]}.png", f"cross_{names[0]}__{names[1]}.png"]
    )
    loaded = cka.load(os.path.join(out, "cka.npz"))
    assert loaded["models"] == names and loaded["settings"]["passes"] == 2 and loaded["settings"]["examples"] == 64
    within = loaded["blocks"][(0, 0)]
    assert within.shape == (5, 5) and np.all(np.diag(within) == 1.0)
    assert np.all(within <= 1 + 1e-9) and np.all(within > -0.2)
    # The two seeds are different models: their cross-model matrix has no exact ones.
    assert loaded["blocks"][(0, 1)].max() < 0.9999


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(batch_size=3), "batch_size"), (dict(examples=2), "examples")],
    ids=["batch", "examples"],
)
def test_analyze_runs_errors(tiny_runs, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cka.analyze_runs(tiny_runs[:1], out_dir=str(tmp_path / "x"), **kwargs)
    assert not os.path.exists(tmp_path / "x")


def test_default_out_dir(tmp_path):
    assert cka.default_out_dir(["/r/a"], "all", "test") == "/r/a/cka_all_test"
    assert cka.default_out_dir(["/r/a", "/r/b/"], "blocks", "test") == "/r/cka_blocks_test_a__b"
    many = cka.default_out_dir([f"/r/{'x' * 50}{i}" for i in range(4)], "all", "test")
    assert many.startswith("/r/cka_all_test_4runs-") and len(os.path.basename(many)) < 40


def test_bin_cka_smoke(tiny_runs, tmp_path, root, bin_env):
    cmd = [sys.executable, str(root / "bin" / "cka"), f"--runs={tiny_runs[0]}", "--examples=64", "--batch_size=32", "--passes=1", f"--out_dir={tmp_path / 'o'}"]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"CKA heatmaps: {tmp_path / 'o'}" in result.stdout and "CKA pass 1/1" in result.stderr
    loaded = cka.load(str(tmp_path / "o" / "cka.npz"))
    assert len(loaded["names"][0]) == 21 * 1 + 7  # taps="all" of ResNet-8
    with open(tmp_path / "o" / f"within_{os.path.basename(tiny_runs[0])}.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([*cmd[:2], f"--runs={tmp_path / 'nope'}"], env=bin_env, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 1 and missing.stderr.strip().endswith(f"error: Run directory {tmp_path / 'nope'} does not exist.")
