"""tfwd.training and bin/train: run directories, resume after a kill, finished runs, divergence."""

import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfwd import runs, training
from tfwd.data import DataConfig

TINY = ["--depth=8", "--width=0.25", "--train_examples=256", "--batch_size=32"]


def _train(root, env, out_dir, *args, fault=None):
    env = dict(env, **({"TFWD_FAULT": fault} if fault else {}))
    cmd = [sys.executable, str(root / "bin" / "train"), *TINY, f"--out_dir={out_dir}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _weights(run_dir):
    return [w.numpy() for w in keras.models.load_model(os.path.join(run_dir, "model.keras")).weights]


def test_one_epoch_writes_a_complete_run_directory(tmp_path, tfds_dir):
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=256, validation_examples=50),
        runs.TrainConfig(epochs=1, batch_size=32, seed=5),
    )
    run_dir = training.train(config, str(tmp_path), verbose=0)
    assert os.path.basename(run_dir) == "cifar10-resnet8-w0.25-n256-s5"
    assert {"config.json", "model.keras", "history.csv", "test_predictions.npz", "results.json", "checkpoints", "tensorboard"} <= set(os.listdir(run_dir))
    run = runs.Run(run_dir)
    assert run.config == config and run.finished
    preds = run.predictions()
    assert preds["probs"].dtype == np.float32 and preds["probs"].shape == (10_000, 10)
    np.testing.assert_allclose(preds["probs"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(preds["labels"], run.data().labels("test"))
    # The stored predictions are the saved model's predictions.
    x = np.concatenate([x for x, _ in run.data().eval_dataset("test", 500, examples=500)])
    probs = keras.ops.softmax(run.model()(x, training=False)).numpy()
    np.testing.assert_allclose(probs, preds["probs"][:500], atol=1e-5)
    results = run.results()
    assert results["test_accuracy"] == pytest.approx(np.mean(preds["probs"].argmax(1) == preds["labels"]))
    assert results["epochs"] == 1 and "val_accuracy" in results
    header, row = open(os.path.join(run_dir, "history.csv")).read().splitlines()
    assert header.split(",") == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"]
    assert row.startswith("1,")
    assert os.listdir(os.path.join(run_dir, "tensorboard"))
    assert not [f for f in os.listdir(run_dir) if f.startswith(".")], "temporary files left behind"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, root, tfds_dir):
    env = dict(os.environ, TFDS_DATA_DIR=tfds_dir, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TFWD_FAULT", None)
    out = tmp_path_factory.mktemp("whole")
    whole = _train(root, env, out, "--epochs=3")
    assert whole.returncode == 0, whole.stderr[-2000:]
    return out / "cifar10-resnet8-w0.25-n256-s0"


@pytest.mark.parametrize(
    "fault,resumes_from",
    [("before_checkpoint:2", 1), ("during_checkpoint:2", 1), ("after_checkpoint:1", 1), ("before_results:3", 3)],
    ids=["before-checkpoint", "during-checkpoint-write", "after-checkpoint", "before-results"],
)
def test_kill_and_resume_reaches_the_uninterrupted_result(tmp_path, root, bin_env, uninterrupted, fault, resumes_from):
    killed = _train(root, bin_env, tmp_path, "--epochs=3", fault=fault)
    assert killed.returncode == -9
    run_dir = tmp_path / uninterrupted.name
    assert not (run_dir / "results.json").exists() and not (run_dir / "test_predictions.npz").exists()
    assert not [f for f in os.listdir(run_dir) if f.endswith(".npz") or (f.endswith(".keras") and f != "model.keras")]
    resumed = _train(root, bin_env, tmp_path, "--epochs=3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from epoch {resumes_from}" in resumed.stderr
    for a, b in zip(_weights(uninterrupted), _weights(run_dir)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(open(run_dir / "history.csv").read().splitlines()) == 4
    with np.load(run_dir / "test_predictions.npz") as got, np.load(uninterrupted / "test_predictions.npz") as want:
        np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-5)
    assert not [f for f in os.listdir(run_dir) if f.startswith(".")], "temporary files left behind"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, root, bin_env):
    killed = _train(root, bin_env, tmp_path, "--epochs=2", fault="after_checkpoint:1")
    assert killed.returncode == -9
    data = next((tmp_path / "cifar10-resnet8-w0.25-n256-s0" / "checkpoints").glob("ckpt-1.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    again = _train(root, bin_env, tmp_path, "--epochs=2")
    assert again.returncode == 1
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Checkpoint ") and "corrupt" in last and "--overwrite" in last


def test_finished_run_is_reported_and_conflicts_are_refused(tmp_path, root, bin_env):
    first = _train(root, bin_env, tmp_path, "--epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "cifar10-resnet8-w0.25-n256-s0"
    stamp = os.stat(run_dir / "model.keras").st_mtime_ns
    again = _train(root, bin_env, tmp_path, "--epochs=1")
    assert again.returncode == 0 and "already finished" in again.stderr
    assert f"run directory: {run_dir}" in again.stdout
    assert os.stat(run_dir / "model.keras").st_mtime_ns == stamp
    conflict = _train(root, bin_env, tmp_path, "--epochs=2")
    assert conflict.returncode == 1
    assert conflict.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir} holds a run with other settings (train.epochs: 1 != 2). Use --overwrite to replace it, "
        "or another --out_dir."
    )


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--depth=9", "error: `depth` must be 6n+2"),
        ("--width=0", "error: `width` must be a positive number"),
        ("--dataset=mnist", "FATAL Flags parsing error"),
    ],
    ids=["depth", "width", "dataset"],
)
def test_bad_flags_fail_with_one_line(tmp_path, root, bin_env, flag, message):
    result = _train(root, bin_env, tmp_path, flag)
    assert result.returncode == 1
    assert message in result.stderr
    assert not os.listdir(tmp_path)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, tfds_dir):
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=256),
        runs.TrainConfig(epochs=2, batch_size=32, learning_rate=1e30),
    )
    with pytest.raises(training.TrainingDivergedError, match="diverged"):
        training.train(config, str(tmp_path), verbose=0, tensorboard=False)
    run_dir = tmp_path / config.name
    assert not (run_dir / "model.keras").exists() and not (run_dir / "results.json").exists()


@pytest.mark.parametrize(
    "epochs,warmup,expected_warmup_steps",
    [(10, 2, 20), (3, 2, 15), (10, 0, 0)],
    ids=["two-epochs", "capped-at-half", "none"],
)
def test_learning_rate_warms_up_linearly_then_decays_by_cosine(epochs, warmup, expected_warmup_steps):
    steps = 10
    optimizer = training.make_optimizer(runs.TrainConfig(epochs=epochs, learning_rate=0.1, warmup_epochs=warmup), steps)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    total, w = epochs * steps, expected_warmup_steps

    def expected(t):
        if t < w:
            return 0.1 * t / w
        return 0.05 * (1 + np.cos(np.pi * (t - w) / (total - w)))

    for t in [0, 1, w // 2, w, w + 1, (total + w) // 2, total - 1, total]:
        assert float(schedule(t)) == pytest.approx(expected(t), abs=1e-7), t


def test_epoch_cosine_is_the_reference_codes_per_epoch_schedule():
    # cifar_train.py: LearningRateScheduler(CosineDecay(lr, epochs)), called with epoch 0, 1, ...
    steps, epochs = 7, 10
    optimizer = training.make_optimizer(runs.TrainConfig(epochs=epochs, learning_rate=0.01, warmup_epochs=0, decay_every="epoch"), steps)
    schedule = optimizer._learning_rate
    for t in range(epochs * steps):
        e = t // steps
        assert float(schedule(t)) == pytest.approx(0.005 * (1 + np.cos(np.pi * e / epochs)), rel=1e-6), t
    with pytest.raises(ValueError, match="warmup_epochs"):
        training.make_optimizer(runs.TrainConfig(decay_every="epoch"), steps)


@pytest.mark.parametrize(
    "flags,expected",
    [
        ({}, (0.1, 2, "step")),
        ({"recipe": "reference"}, (0.01, 0, "epoch")),
        ({"recipe": "reference", "learning_rate": 0.05}, (0.05, 0, "epoch")),
        ({"recipe": "warmup", "warmup_epochs": 5}, (0.1, 5, "step")),
    ],
    ids=["default", "reference", "reference-own-lr", "warmup-own-warmup"],
)
def test_recipes_set_the_learning_rate_schedule_and_flags_override_them(flags, expected):
    train = training.config_from_flags(flags).train
    assert (train.learning_rate, train.warmup_epochs, train.decay_every) == expected
    with pytest.raises(ValueError, match="recipe"):
        training.config_from_flags({"recipe": "fast"})


def test_validation_every_k_epochs_and_after_the_last(tmp_path, tfds_dir):
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=64, validation_examples=20),
        runs.TrainConfig(epochs=5, batch_size=32),
    )
    run_dir = training.train(config, str(tmp_path), verbose=0, tensorboard=False, validation_every=2)
    with open(os.path.join(run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [bool(r["val_accuracy"]) for r in rows] == [False, True, False, True, True]
    assert "val_accuracy" in runs.Run(run_dir).results()
