"""tfwd.prune_blocks and bin/prune_blocks: exact block deletion, the Figure 5 schedule, BN recalibration."""

import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwd import models, prune_blocks, runs
from tfwd.plots.prune_blocks import deletion_accuracy


def _images(n, seed=0):
    """Uniform noise with a random colour and contrast per image (plain noise all looks alike to a random net)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-0.5, 0.5, (n, 32, 32, 3))
    images = rng.uniform(0, 1, (n, 1, 1, 3)) + rng.uniform(0.1, 1, (n, 1, 1, 1)) * noise
    return tf.constant(np.clip(images, 0, 1), tf.float32)


def _random_resnet(depth, seed=0, residual=True):
    """A random-weight ResNet with non-trivial BN statistics and affine parameters, whose predictions vary.

    The logits' bias centres each class's logit over a set of images: a random
    network's logits are dominated by their mean, so it would predict one class
    for everything and every deletion would look alike.
    """
    keras.utils.set_random_seed(seed)
    model = models.cifar_resnet(depth, 0.25, residual=residual)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)]
            )
    pooled = models.activation_model(model, ["pool"])(_images(200, seed=99), training=False).numpy()
    kernel, _ = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel, -(pooled @ kernel).mean(axis=0)])
    return model


def _reference_logits(model, x, deleted=()):
    """The pruned forward pass written out by hand on the original layers (BN in inference mode)."""
    g = model.get_layer
    h = g("stem_relu")(g("stem_bn")(g("stem_conv")(x), training=False))
    n = models.blocks_per_stage(int(model.name.split("-")[0][len("resnet") :]))
    for s in (1, 2, 3):
        for b in range(1, n + 1):
            p = f"stage{s}_block{b}"
            if p in deleted:
                continue  # the identity shortcut carries h through unchanged
            y = g(f"{p}_relu1")(g(f"{p}_bn1")(g(f"{p}_conv1")(h), training=False))
            y = g(f"{p}_bn2")(g(f"{p}_conv2")(y), training=False)
            shortcut = g(f"{p}_shortcut")(h) if s > 1 and b == 1 else h
            h = g(f"{p}_out")(g(f"{p}_add")([y, shortcut]))
    return g("logits")(g("pool")(h)).numpy()


@pytest.fixture(scope="module")
def resnet14():
    return _random_resnet(14)


@pytest.mark.parametrize("copy", [False, True], ids=["shared", "copied"])
def test_deleting_no_blocks_reproduces_the_model_exactly(resnet14, copy):
    x = _images(16)
    rebuilt = prune_blocks.delete_blocks(resnet14, [], copy=copy)
    np.testing.assert_array_equal(rebuilt(x, training=False).numpy(), resnet14(x, training=False).numpy())
    assert [l.name for l in rebuilt.layers] == [l.name for l in resnet14.layers]
    shared = [a is b for a, b in zip(rebuilt.weights, resnet14.weights)]
    assert all(shared) if not copy else not any(shared)
    for a, b in zip(rebuilt.weights, resnet14.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "deleted,reads,source",
    [
        (["stage1_block2"], ["stage2_block1_conv1", "stage2_block1_shortcut"], "stage1_block1_out"),
        (["stage1_block1"], ["stage1_block2_conv1", "stage1_block2_add"], "stem_relu"),
        (["stage1_block2", "stage1_block1"], ["stage2_block1_conv1", "stage2_block1_shortcut"], "stem_relu"),
        (["stage3_block2"], ["pool"], "stage3_block1_out"),
    ],
    ids=["stage1_last", "stage1_first", "stage1_both", "stage3_last"],
)
def test_deleted_block_passes_its_input_through(resnet14, deleted, reads, source):
    x = _images(8, seed=1)
    pruned = prune_blocks.delete_blocks(resnet14, deleted, copy=True)  # own layers: .input refers to the pruned graph
    expected = models.activation_model(resnet14, [source])(x, training=False).numpy()
    for name in reads:
        inputs = keras.tree.flatten(pruned.get_layer(name).input)
        got = keras.Model(pruned.input, inputs[-1])(x, training=False).numpy()  # for an add: its shortcut input
        np.testing.assert_array_equal(got, expected)
    # and everything downstream computes what the hand-written pruned forward pass computes
    np.testing.assert_allclose(
        pruned(x, training=False).numpy(), _reference_logits(resnet14, x, deleted), rtol=1e-5, atol=1e-5
    )


def test_pruned_resnet20_has_the_expected_layers():
    model = _random_resnet(20)
    pruned = prune_blocks.delete_blocks(model, ["stage3_block3", "stage3_block2"])
    assert len(model.layers) - len(pruned.layers) == 2 * 7
    names = [l.name for l in pruned.layers]
    assert not [n for n in names if n.startswith(("stage3_block2_", "stage3_block3_"))]
    kept = [f"stage{s}_block{b}" for s in (1, 2) for b in (1, 2, 3)] + ["stage3_block1"]
    assert [b.name for b in prune_blocks.residual_blocks(pruned)] == kept
    branch = ("conv1", "bn1", "conv2", "bn2")
    removed = sum(model.get_layer(f"stage3_block{b}_{k}").count_params() for b in (2, 3) for k in branch)
    assert model.count_params() - pruned.count_params() == removed
    assert pruned.get_layer("logits") is model.get_layer("logits")  # shared, not retrained
    assert pruned.output.shape == model.output.shape


def test_projection_blocks_are_skipped_and_refused(resnet14):
    blocks = prune_blocks.residual_blocks(resnet14)
    assert [(b.name, b.deletable) for b in blocks] == [
        ("stage1_block1", True),
        ("stage1_block2", True),
        ("stage2_block1", False),
        ("stage2_block2", True),
        ("stage3_block1", False),
        ("stage3_block2", True),
    ]
    steps, skipped = prune_blocks.deletion_schedule(resnet14)
    assert skipped == ["stage2_block1", "stage3_block1"]
    assert not any(b in d for _, d in steps for b in skipped)
    refused = r"\['stage3_block1'\] have a projection shortcut.*Received: blocks=\['stage3_block2', 'stage3_block1'\]"
    with pytest.raises(ValueError, match=refused):
        prune_blocks.delete_blocks(resnet14, ["stage3_block2", "stage3_block1"])
    with pytest.raises(ValueError, match="does not have: \\['stage1_block9'\\]"):
        prune_blocks.delete_blocks(resnet14, ["stage1_block9"])
    with pytest.raises(ValueError, match=r"at most once.*repeats \['stage1_block2'\]"):
        prune_blocks.delete_blocks(resnet14, ["stage1_block2", "stage1_block2"])
    with pytest.raises(ValueError, match="sequence of block names"):
        prune_blocks.delete_blocks(resnet14, "stage1_block2")


@pytest.mark.parametrize("call", ["residual_blocks", "deletion_schedule", "delete_blocks"])
def test_plain_model_is_refused(call):
    plain = models.cifar_resnet(14, 0.25, residual=False)
    args = (plain, ["stage1_block2"]) if call == "delete_blocks" else (plain,)
    with pytest.raises(ValueError, match=r"residual connections.*Received: a plain network \(residual=False\)"):
        getattr(prune_blocks, call)(*args)


def test_schedule_of_resnet20():
    steps, _ = prune_blocks.deletion_schedule(models.cifar_resnet(20, 0.25))
    assert steps == [
        (1, ["stage1_block3"]),
        (1, ["stage1_block3", "stage1_block2"]),
        (1, ["stage1_block3", "stage1_block2", "stage1_block1"]),
        (2, ["stage2_block3"]),
        (2, ["stage2_block3", "stage2_block2"]),
        (3, ["stage3_block3"]),
        (3, ["stage3_block3", "stage3_block2"]),
    ]


def test_stagewise_deletion_evaluates_the_figure5_sequence(resnet14):
    x = _images(50, seed=2)
    full = _reference_logits(resnet14, x).argmax(-1)
    labels = np.where(np.arange(50) < 35, full, (full + 1) % 10).astype(np.int32)  # full model: 35/50 right
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)  # ragged last batch of 2
    result = prune_blocks.stagewise_deletion(resnet14, dataset)
    assert result["full_accuracy"] == 0.7 and result["examples"] == 50
    assert result["skipped"] == ["stage2_block1", "stage3_block1"]
    expected = [
        (1, ["stage1_block2"]),
        (1, ["stage1_block2", "stage1_block1"]),
        (2, ["stage2_block2"]),
        (3, ["stage3_block2"]),
    ]
    assert [(s["stage"], s["deleted"]) for s in result["steps"]] == expected
    assert [s["blocks_deleted"] for s in result["steps"]] == [1, 2, 1, 1]
    accuracies = [np.mean(_reference_logits(resnet14, x, d).argmax(-1) == labels) for _, d in expected]
    assert [s["accuracy"] for s in result["steps"]] == pytest.approx(accuracies, abs=1e-12)
    assert len(set(accuracies)) > 1  # the check can tell the steps apart
    assert "full_accuracy_recalibrated" not in result  # BN statistics are kept by default


def test_recalibrated_stats_equal_the_batch_statistics(resnet14):
    before = [w.copy() for w in resnet14.get_weights()]
    x = _images(64, seed=3)
    fixed = prune_blocks.recalibrate_bn(resnet14, tf.data.Dataset.from_tensor_slices(x).batch(32))
    # stem_bn sees the stem conv's output in any mode: its statistics in float64 NumPy.
    conv = keras.Model(resnet14.input, resnet14.get_layer("stem_conv").output)(x).numpy().astype(np.float64)
    halves = conv.reshape(2, 32, 32, 32, -1)
    bn = fixed.get_layer("stem_bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), halves.var(axis=(1, 2, 3)).mean(axis=0), rtol=1e-5, atol=1e-7
    )
    # gamma, beta and every conv are untouched, and so is the original model (its layers may be shared)
    np.testing.assert_array_equal(bn.gamma.numpy(), resnet14.get_layer("stem_bn").gamma.numpy())
    np.testing.assert_array_equal(
        fixed.get_layer("stage3_block2_conv2").kernel.numpy(), resnet14.get_layer("stage3_block2_conv2").kernel.numpy()
    )
    for a, b in zip(before, resnet14.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_recalibration_on_one_batch_makes_inference_match_training_mode(resnet14):
    """Closed form: with stats from one batch, inference mode normalizes exactly as training mode did."""
    x = _images(32, seed=4)
    fixed = prune_blocks.recalibrate_bn(
        resnet14, tf.data.Dataset.from_tensor_slices((x, tf.zeros([32], tf.int32))).batch(32)
    )
    scratch = prune_blocks.delete_blocks(resnet14, [], copy=True)  # training mode updates BN stats: not on resnet14
    training_mode = scratch(x, training=True).numpy()
    np.testing.assert_allclose(fixed(x, training=False).numpy(), training_mode, rtol=1e-4, atol=1e-4)
    assert not np.allclose(resnet14(x, training=False).numpy(), training_mode, atol=1e-2)  # stored stats differ


def test_stagewise_deletion_with_recalibration(resnet14):
    x = _images(32, seed=5)
    labels = _reference_logits(resnet14, x).argmax(-1).astype(np.int32)
    test = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)
    calib = tf.data.Dataset.from_tensor_slices(_images(48, seed=6)).batch(16)
    result = prune_blocks.stagewise_deletion(resnet14, test, calib)
    assert result["full_accuracy"] == 1.0
    recalibrated = prune_blocks.recalibrate_bn(resnet14, calib)
    assert result["full_accuracy_recalibrated"] == prune_blocks.accuracy(recalibrated, test)[0]
    step = result["steps"][-1]
    pruned = prune_blocks.recalibrate_bn(prune_blocks.delete_blocks(resnet14, step["deleted"]), calib)
    assert step["accuracy"] == prune_blocks.accuracy(pruned, test)[0]
    # the recalibrated pruned model differs from the plain pruned one (else the option would do nothing)
    plain = prune_blocks.delete_blocks(resnet14, step["deleted"])
    assert not np.allclose(pruned(x, training=False).numpy(), plain(x, training=False).numpy(), atol=1e-3)


def test_plot_groups_stages_most_deleted_first():
    ax = deletion_accuracy([1, 1, 2, 3, 3, 3], [1, 2, 1, 1, 2, 3], [0.9, 0.8, 0.7, 0.95, 0.6, 0.3], 0.92, title="r")
    curves = [l for l in ax.lines if l.get_marker() == "o"]
    assert [list(c.get_xdata()) for c in curves] == [[0, 1], [2], [3, 4, 5]]
    assert [list(np.round(c.get_ydata(), 6)) for c in curves] == [[80, 90], [70], [30, 60, 95]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "1", "1", "3", "2", "1"]
    dashed = [l for l in ax.lines if l.get_linestyle() == "--"]
    stage_lines = sorted(l.get_xdata()[0] for l in dashed if l.get_color() == "tab:green")
    assert stage_lines == [1.5, 2.5]
    assert [l.get_ydata()[0] for l in dashed if l.get_color() == "grey"] == [pytest.approx(92)]
    assert [t.get_text() for t in ax.texts] == ["stage 1", "stage 2", "stage 3"] and ax.get_title() == "r"
    with pytest.raises(ValueError, match="same length"):
        deletion_accuracy([1], [1, 2], [0.5], 0.5)


# --- runs and the binary --------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet14_run(tmp_path_factory, tfds_dir):
    """A finished 1-epoch run of a 4-channel ResNet-14 on 128 CIFAR-10 images (two blocks per stage)."""
    from tfwd import training
    from tfwd.data import DataConfig

    config = runs.RunConfig(
        runs.ModelConfig(14, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=128),
        runs.TrainConfig(epochs=1, batch_size=32),
    )
    return training.train(config, str(tmp_path_factory.mktemp("prune_runs")), verbose=0, tensorboard=False)


@pytest.fixture(scope="module")
def plain_run(resnet14_run, tmp_path_factory):
    """A run directory holding a plain (residual=False) ResNet-8."""
    path = tmp_path_factory.mktemp("plain") / "cifar10-resnet8-w0.25-nores-n128-s0"
    path.mkdir()
    with open(os.path.join(resnet14_run, runs.CONFIG)) as f:
        config = json.load(f)
    config["model"].update(depth=8, residual=False)
    runs.write_json(str(path / runs.CONFIG), config)
    models.cifar_resnet(8, 0.25, residual=False).save(str(path / runs.MODEL))
    return str(path)


def test_analyze_writes_consistent_results(resnet14_run, tmp_path):
    out = prune_blocks.analyze(resnet14_run, out_dir=str(tmp_path / "p"), examples=200, batch_size=64)
    assert sorted(os.listdir(out)) == [".tfwd_output", "prune_blocks.csv", "prune_blocks.json", "prune_blocks.png"]
    with open(os.path.join(out, "prune_blocks.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["blocks_deleted"], r["deleted"]) for r in rows] == [
        ("1", "1", "stage1_block2"),
        ("1", "2", "stage1_block2 stage1_block1"),
        ("2", "1", "stage2_block2"),
        ("3", "1", "stage3_block2"),
    ]
    with open(os.path.join(out, "prune_blocks.json")) as f:
        summary = json.load(f)
    assert [s["accuracy"] for s in summary["steps"]] == [float(r["accuracy"]) for r in rows]
    assert all(round(200 * s["accuracy"], 9) == int(round(200 * s["accuracy"])) for s in summary["steps"])
    assert summary["skipped"] == ["stage2_block1", "stage3_block1"] and summary["examples"] == 200
    assert summary["settings"]["recalibrate_bn"] is False and "recalibration_examples" not in summary["settings"]
    # the full model's accuracy is the run's own: its saved test predictions on the same 200 examples
    predictions = runs.Run(resnet14_run).predictions()
    own = np.mean(predictions["probs"][:200].argmax(-1) == predictions["labels"][:200])
    assert summary["full_accuracy"] == pytest.approx(own, abs=1e-12)
    with open(os.path.join(out, "prune_blocks.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    loaded = prune_blocks.load(out)  # the same numbers, typed
    assert isinstance(loaded, prune_blocks.PruneBlocksResult) and loaded.full_accuracy == pytest.approx(own, abs=1e-12)
    assert [s["deleted"] for s in loaded.steps] == [r["deleted"].split() for r in rows]
    assert [s["accuracy"] for s in loaded.steps] == [float(r["accuracy"]) for r in rows]
    assert loaded.skipped == ["stage2_block1", "stage3_block1"] and loaded.examples == 200
    assert loaded.full_accuracy_recalibrated is None and loaded.settings == summary["settings"]


def test_analyze_recalibration_settings(resnet14_run, tmp_path):
    out = prune_blocks.analyze(
        resnet14_run, out_dir=str(tmp_path / "r"), recalibrate_bn=True, recalibration_examples=1000, examples=64
    )
    with open(os.path.join(out, "prune_blocks.json")) as f:
        summary = json.load(f)
    # capped at the 128 training examples, in batches of the run's training batch size
    assert (
        summary["settings"]["recalibration_examples"] == 128 and summary["settings"]["recalibration_batch_size"] == 32
    )
    assert 0 <= summary["full_accuracy_recalibrated"] <= 1 and len(summary["steps"]) == 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(examples=0), "examples"),
        (dict(examples=10001), "examples"),
        (dict(batch_size=0), "batch_size"),
        (dict(recalibrate_bn=True, recalibration_examples=0), "recalibration_examples"),
    ],
    ids=["no_examples", "too_many", "batch", "recalibration"],
)
def test_analyze_errors(resnet14_run, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_blocks.analyze(resnet14_run, out_dir=str(tmp_path / "x"), **kwargs)
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("flag", ["run", "ckpt"])
def test_bin_prune_blocks_takes_run_like_the_other_apps_and_keeps_ckpt(flag, tmp_path, root, bin_env):
    missing = tmp_path / "nope"
    cmd = [sys.executable, str(root / "bin" / "prune_blocks"), f"--{flag}={missing}"]
    failed = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == f"error: Run directory {missing} does not exist."


def test_bin_prune_blocks_smoke(resnet14_run, plain_run, tmp_path, root, bin_env):
    run_dir = str(tmp_path / os.path.basename(resnet14_run))
    shutil.copytree(resnet14_run, run_dir)  # the default output goes inside the run directory
    cmd = [sys.executable, str(root / "bin" / "prune_blocks"), f"--ckpt={run_dir}", "--examples=100"]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = os.path.join(run_dir, "prune_blocks")
    assert result.stdout.strip() == f"Block deletion: {out}"
    assert (
        "Skipping blocks with a projection shortcut (they cannot be deleted): stage2_block1, stage3_block1."
        in result.stderr
    )
    with open(os.path.join(out, "prune_blocks.csv")) as f:
        assert len(list(csv.DictReader(f))) == 4
    for ckpt, message in [
        (str(tmp_path / "nope"), f"error: Run directory {tmp_path / 'nope'} does not exist."),
        (plain_run, "error: Block deletion needs residual connections"),
    ]:
        failed = subprocess.run([*cmd[:2], f"--ckpt={ckpt}"], env=bin_env, capture_output=True, text=True, timeout=600)
        last = failed.stderr.strip().splitlines()[-1]
        assert failed.returncode == 1 and last.startswith(message), failed.stderr[-2000:]
        assert "Traceback" not in failed.stderr
