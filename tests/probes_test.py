"""tfwd.probes, tfwd.plots.probes and bin/probes: frozen bases, joint heads, validation-only selection."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwd import models, probes, runs
from tfwd.data import DataConfig
from tfwd.plots import probes as probe_plots, save_figure

CLASSES = 4
TAPS = ["noise_a", "bn", "signal", "noise_b"]


def _synthetic(n, seed, permute_labels=False):
    """Inputs = 8 noise features + a noisy one-hot code of the label; labels (int32)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    noise = rng.normal(size=(n, 8)).astype(np.float32)
    code = (2 * np.eye(CLASSES)[y] + rng.normal(scale=0.5, size=(n, CLASSES))).astype(np.float32)
    labels = rng.permutation(y) if permute_labels else y
    return tf.data.Dataset.from_tensor_slices((np.concatenate([noise, code], 1), labels)).batch(64)


def _signal_model():
    """Only `signal` sees the label code (through a random linear map); the other taps see noise."""
    keras.utils.set_random_seed(0)
    x = keras.Input((8 + CLASSES,), name="x")
    noise = keras.layers.Lambda(lambda t: t[:, :8], name="noise_a")(x)
    normed = keras.layers.BatchNormalization(name="bn")(noise)
    code = keras.layers.Lambda(lambda t: t[:, 8:], name="code")(x)
    signal = keras.layers.Dense(6, name="signal")(code)
    mixed = keras.layers.Dense(6, name="noise_b")(normed)
    logits = keras.layers.Dense(CLASSES, name="logits")(keras.layers.Concatenate(name="cat")([mixed, signal]))
    return keras.Model(x, logits)


# Adam at 1e-5 barely moves zero-initialized heads in 5 epochs: a grid value that must lose.
GRID = (1e-5, 1e-2, 1e-1)


@pytest.fixture(scope="module")
def synthetic():
    model = _signal_model()
    before = [w.numpy().copy() for w in model.weights]
    calls = []

    def train(epoch):
        calls.append(epoch)
        return _synthetic(512, 0)

    result = probes.train_probes(
        model, TAPS, train, _synthetic(256, 1), _synthetic(512, 2), epochs=5, learning_rates=GRID
    )
    return model, before, result, calls


def test_probe_finds_the_layer_holding_the_signal(synthetic):
    _, _, result, _ = synthetic
    test = dict(zip(result["taps"], result["test_accuracy"]))
    assert test["signal"] > 0.95
    for tap in ("noise_a", "bn", "noise_b"):
        assert test[tap] < 1 / CLASSES + 0.15, (tap, test[tap])
    assert result["features"] == [8, 8, 6, 6] and result["kinds"] == ["other"] * 4
    assert result["layer_indices"] == [models.tap_names(synthetic[0], "all").index(t) for t in TAPS]


def test_base_model_is_bit_identical_after_probe_training(synthetic):
    model, before, result, _ = synthetic
    after = [w.numpy() for w in model.weights]
    assert len(after) == len(before) and any("moving_variance" in w.path for w in model.weights)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # ...while the heads did learn: the signal head's loss fell from log(C) towards 0.
    assert result["train_loss"][-1, 2, 2] < 0.2 * np.log(CLASSES)


def test_resnet_base_is_bit_identical_including_bn_statistics():
    keras.utils.set_random_seed(1)
    model = models.cifar_resnet(8, 0.25)
    before = [w.numpy().copy() for w in model.weights]
    x = tf.random.stateless_uniform([48, 32, 32, 3], seed=[1, 2])
    y = tf.random.stateless_uniform([48], seed=[3, 4], maxval=10, dtype=tf.int32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    result = probes.train_probes(model, "residual", data, data, None, epochs=2, optimizer="sgd", learning_rates=(1e-3,))
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b, err_msg=w.path)
    assert result["test_accuracy"] is None and result["train_loss"].shape == (2, 6, 1)
    assert result["kinds"] == ["pre", "post"] * 3
    assert np.all(result["train_loss"][1] < result["train_loss"][0])


def test_one_data_pass_per_epoch_trains_every_head(synthetic):
    _, _, result, calls = synthetic
    assert calls == [0, 1, 2, 3, 4]
    assert result["train_loss"].shape == (5, len(TAPS), len(GRID))
    assert result["validation_accuracy"].shape == (len(TAPS), len(GRID))


def test_heads_trained_together_equal_heads_trained_alone(synthetic):
    _, _, together, _ = synthetic
    alone = probes.train_probes(
        _signal_model(), ["signal"], _synthetic(512, 0), _synthetic(256, 1), None, epochs=5, learning_rates=GRID
    )
    np.testing.assert_allclose(alone["train_loss"][:, 0], together["train_loss"][:, 2], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(alone["validation_accuracy"][0], together["validation_accuracy"][2])


def test_settings_are_chosen_on_validation_and_the_test_set_cannot_change_them(synthetic):
    _, _, result, _ = synthetic
    np.testing.assert_array_equal(result["chosen"], np.argmax(result["validation_accuracy"], axis=1))
    assert result["chosen"][2] != 0  # the barely-trained 1e-5 heads lose on validation
    # The same probes scored on a test set with shuffled labels: identical choices and
    # validation accuracies, only the test accuracy of the signal tap falls to chance.
    shuffled = probes.train_probes(
        _signal_model(),
        TAPS,
        _synthetic(512, 0),
        _synthetic(256, 1),
        _synthetic(512, 2, permute_labels=True),
        epochs=5,
        learning_rates=GRID,
    )
    np.testing.assert_array_equal(shuffled["chosen"], result["chosen"])
    np.testing.assert_array_equal(shuffled["validation_accuracy"], result["validation_accuracy"])
    assert shuffled["test_accuracy"][2] < 1 / CLASSES + 0.15


def test_l2_grid_is_crossed_with_learning_rates_and_shrinks_heads():
    result = probes.train_probes(
        _signal_model(),
        ["signal"],
        _synthetic(512, 0),
        _synthetic(128, 1),
        None,
        epochs=5,
        learning_rates=(1e-2, 1e-1),
        l2=(0.0, 100.0),
    )
    assert [(s["learning_rate"], s["l2"]) for s in result["settings"]] == [(0.01, 0), (0.01, 100), (0.1, 0), (0.1, 100)]
    # A strong penalty pins the head near zero: cross-entropy near log(C), where the free head fits.
    loss = result["train_loss"][-1, 0]
    assert loss[2] < 0.2 * np.log(CLASSES) and loss[1] > 0.9 * np.log(CLASSES) and loss[3] > 0.9 * np.log(CLASSES)


def test_select_takes_the_first_best_setting():
    np.testing.assert_array_equal(probes.select([[0.1, 0.5, 0.5], [0.9, 0.2, 0.9]]), [1, 0])


@pytest.mark.parametrize(
    "shape,pooling,expected",
    [
        ((32, 32, 16), "flatten", 16384),  # stage 1 of a CIFAR ResNet at width 1: 16384 w
        ((32, 32, 16), "gap", 16),
        ((32, 32, 16), "maxpool2", 4096),
        ((5, 7, 3), "maxpool2", 3 * 4 * 3),  # a ragged edge pools alone
        ((5, 7, 3), "gap", 3),
        ((10,), "gap", 10),  # non-spatial taps are flattened whatever the pooling
        ((2, 3), "maxpool2", 6),
    ],
    ids=["flatten", "gap", "maxpool2", "maxpool2_ragged", "gap_small", "dense_gap", "rank3_maxpool2"],
)
def test_pooling_gives_the_documented_feature_sizes(shape, pooling, expected):
    x = tf.random.stateless_normal((3, *shape), seed=[0, 1])
    pooled = probes.pool_features(x, pooling).numpy()
    assert probes.feature_size(shape, pooling) == expected and pooled.shape == (3, expected)
    x = x.numpy()
    if pooling == "gap" and len(shape) == 3:
        np.testing.assert_allclose(pooled, x.mean(axis=(1, 2)), atol=1e-6)
    elif pooling == "maxpool2" and len(shape) == 3:
        h, w = -(-shape[0] // 2) * 2, -(-shape[1] // 2) * 2
        padded = np.full((3, h, w, shape[2]), -np.inf, np.float32)
        padded[:, : shape[0], : shape[1]] = x
        ref = padded.reshape(3, h // 2, 2, w // 2, 2, shape[2]).max(axis=(2, 4))
        np.testing.assert_array_equal(pooled, ref.reshape(3, -1))
    else:
        np.testing.assert_array_equal(pooled, x.reshape(3, -1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pooling="avg"), "pooling"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(learning_rates=()), "learning_rates"),
        (dict(learning_rates=(0.1, -1.0)), "learning_rates"),
        (dict(l2=(-0.1,)), "l2"),
        (dict(epochs=0), "epochs"),
        (dict(validation=_synthetic(0, 0)), "validation dataset is empty"),
    ],
    ids=["pooling", "optimizer", "empty_grid", "negative_lr", "negative_l2", "epochs", "empty_validation"],
)
def test_train_probes_errors(kwargs, match):
    args = dict(model=_signal_model(), taps=["signal"], train=_synthetic(64, 0), validation=_synthetic(64, 1), epochs=1)
    with pytest.raises(ValueError, match=match):
        probes.train_probes(**{**args, **kwargs})


# --- plots -------------------------------------------------------------------------------------

TABLE = [
    {"tap": "stage1_block1_bn2", "kind": "pre", "test_accuracy": 0.40},
    {"tap": "stage1_block1_add", "kind": "post", "test_accuracy": 0.50},
    {"tap": "stage2_block1_bn2", "kind": "pre", "test_accuracy": 0.45},
    {"tap": "stage2_block1_add", "kind": "post", "test_accuracy": 0.70},
]


def test_probe_plot_draws_pre_and_post_residual_series(tmp_path):
    ax = probe_plots.probe_accuracy(TABLE, title="t", chance=0.1)
    series = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert set(series) == {"pre-residual", "post-residual"}
    assert series["post-residual"].get_marker() == "x" and series["pre-residual"].get_marker() == "o"
    np.testing.assert_array_equal(series["pre-residual"].get_xdata(), [0, 2])
    np.testing.assert_array_equal(series["post-residual"].get_ydata(), [0.5, 0.7])
    # one stage boundary (at 2) and the chance line
    assert len(ax.lines) == 2 + 1 + 1 and ax.get_xlim() == (-0.5, 3.5)
    path = save_figure(ax.figure, str(tmp_path / "p.png"))
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_probes_with_cka_aligns_heatmap_and_accuracies():
    fig = probe_plots.probes_with_cka(np.eye(4), TABLE, title="m")
    top, bottom, _ = fig.axes
    np.testing.assert_array_equal(top.images[0].get_array(), np.eye(4))
    assert top.get_xlim() == bottom.get_xlim() == (-0.5, 3.5)
    with pytest.raises(ValueError, match="cka_matrix"):
        probe_plots.probes_with_cka(np.eye(3), TABLE)


# --- runs and bin/probes ----------------------------------------------------------------------


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_analyze_writes_one_row_per_residual_tap(tiny_runs, tmp_path):
    out = probes.analyze(
        tiny_runs[0],
        out_dir=str(tmp_path / "p"),
        epochs=1,
        validation_examples=100,
        train_examples=128,
        test_examples=200,
        learning_rates=(1e-4, 1e-3),
        cka_examples=64,
    )
    assert sorted(os.listdir(out)) == [
        ".tfwd_output",
        "cka.npz",
        "probes.csv",
        "probes.json",
        "probes.png",
        "probes_cka.png",
        "probes_grid.csv",
    ]
    rows = _read_csv(os.path.join(out, "probes.csv"))
    names = models.tap_names(runs.Run(tiny_runs[0]).model(), "residual")
    assert [r["tap"] for r in rows] == names and len(rows) == 6
    assert [r["kind"] for r in rows] == ["pre", "post"] * 3
    assert [int(r["stage"]) for r in rows] == [1, 1, 2, 2, 3, 3]
    # Flattened: stage s of a width-w ResNet has 16384 w / 2^(s-1) features (w = 0.25).
    assert [int(r["features"]) for r in rows] == [4096, 4096, 2048, 2048, 1024, 1024]
    for r in rows:
        assert 0 <= float(r["validation_accuracy"]) <= 1 and 0 <= float(r["test_accuracy"]) <= 1
        assert float(r["learning_rate"]) in (1e-4, 1e-3)
    grid = _read_csv(os.path.join(out, "probes_grid.csv"))
    for r in rows:  # the chosen setting is the grid's best on validation (first on ties)
        candidates = [g for g in grid if g["tap"] == r["tap"]]
        best = max(candidates, key=lambda g: float(g["validation_accuracy"]))
        assert float(r["learning_rate"]) == float(best["learning_rate"]) and best["chosen"] == "True"
    with open(os.path.join(out, "probes.json")) as f:
        settings = json.load(f)
    assert (
        settings["train_examples"] == 128
        and settings["validation_examples"] == 100
        and settings["test_examples"] == 200
    )
    assert settings["tap_names"] == names and settings["epochs"] == 1 and settings["optimizer"] == "adam"
    with np.load(os.path.join(out, "cka.npz")) as f:
        assert f["cka_0_0"].shape == (6, 6) and np.allclose(np.diag(f["cka_0_0"]), 1.0)
        within = f["cka_0_0"]
    with open(os.path.join(out, "probes.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # load: the same rows, typed, the settings and the heatmap.
    loaded = probes.load(out)
    assert isinstance(loaded, probes.ProbesResult) and loaded.settings == settings
    assert [r["tap"] for r in loaded.rows] == names and [r["features"] for r in loaded.rows] == [
        int(r["features"]) for r in rows
    ]
    assert [r["test_accuracy"] for r in loaded.rows] == [float(r["test_accuracy"]) for r in rows]
    np.testing.assert_array_equal(loaded.cka, within)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(train_examples=257), "train_examples"),
        (dict(test_examples=10001), "test_examples"),
        (dict(cka_examples=3), "cka_examples"),
        (dict(taps=["nope"]), "nope"),
        (dict(optimizer="adagrad"), "optimizer"),
    ],
    ids=["too_many_train_examples", "too_many_test_examples", "cka_examples", "unknown_tap", "optimizer"],
)
def test_analyze_errors_write_nothing(tiny_runs, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        probes.analyze(tiny_runs[0], out_dir=str(tmp_path / "x"), epochs=1, **kwargs)
    assert not os.path.exists(tmp_path / "x")


def test_default_out_dir():
    assert probes.default_out_dir("/r/a", "residual") == "/r/a/probes_residual"
    assert probes.default_out_dir("/r/a", ["stage1_block1_add"]) == "/r/a/probes_custom"


def _plain_run(path, tfds_dir):
    """A run directory holding a plain (residual=False) ResNet-8; nothing else is needed to open it."""
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25, residual=False), DataConfig(data_dir=tfds_dir, train_examples=256)
    )
    os.makedirs(path)
    runs.write_json(os.path.join(path, runs.CONFIG), config.to_dict())
    models.cifar_resnet(8, 0.25, residual=False).save(os.path.join(path, runs.MODEL))
    return path


def test_bin_probes_smoke(tiny_runs, tmp_path, root, bin_env, tfds_dir):
    out = tmp_path / "o"
    cmd = [
        sys.executable,
        str(root / "bin" / "probes"),
        f"--run={tiny_runs[0]}",
        "--epochs=1",
        "--train_examples=64",
        "--validation_examples=50",
        "--test_examples=100",
        "--learning_rates=1e-3",
        "--pooling=gap",
        f"--out_dir={out}",
    ]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Linear probes: {out}" in result.stdout and "Probe epoch 1/1" in result.stderr
    rows = _read_csv(out / "probes.csv")
    assert len(rows) == 6 and [int(r["features"]) for r in rows] == [4, 4, 8, 8, 16, 16]  # gap: the channels
    assert os.path.exists(out / "probes.png")

    # A missing run's one-line error is the shared run loader's (tests/errors_test.py, bin/cka); the
    # plain network's refusal is probes' own, checked here in-process, before anything is written.
    plain = _plain_run(str(tmp_path / "plain"), tfds_dir)
    with pytest.raises(ValueError, match="^taps='residual' needs residual connections"):
        probes.analyze(plain, out_dir=str(tmp_path / "plain_out"), data_dir=tfds_dir)
    assert not os.path.exists(tmp_path / "plain_out")
