"""tfwd.training and bin/train: run directories, resume after a kill, finished runs, divergence."""

import csv
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest

from tfwd import checkpoints, errors, run_settings, runs, training
from tfwd.data import DataConfig

# A checkpoint after every epoch: the kill tests below count on it.
TINY = ["--depth=8", "--width=0.25", "--train_examples=256", "--batch_size=32", "--checkpoint_seconds=0"]


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
    assert {
        "config.json",
        "model.keras",
        "history.csv",
        "test_predictions.npz",
        "results.json",
        "checkpoints",
        "tensorboard",
    } <= set(os.listdir(run_dir))
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
    assert [f for f in os.listdir(run_dir) if f.startswith(".")] == [runs.LOCK], "temporary files left behind"


def _start(root, env, out_dir, *args, fault=None):
    env = dict(env, **({"TFWD_FAULT": fault} if fault else {}))
    cmd = [sys.executable, str(root / "bin" / "train"), *TINY, f"--out_dir={out_dir}", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(run_dir, proc, timeout=600):
    """Waits until `proc` holds the run's lock (its pid is in .lock) or has ended; returns the time."""
    lock, deadline = os.path.join(run_dir, runs.LOCK), time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        try:
            if open(lock).read().strip() == str(proc.pid):
                return time.time()
        except OSError:
            pass
        time.sleep(0.02)
    return time.time()


def _wait_until_stopped(proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {proc.pid} did not stop: {proc.poll()}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, root, tfds_dir):
    """The 3-epoch run trained without interruption, and the seconds it held its lock before it was
    finished (results.json written): the time a kill can land in, without the process's exit after it."""
    env = dict(os.environ, TFDS_DATA_DIR=tfds_dir, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TFWD_FAULT", None)
    out = tmp_path_factory.mktemp("whole")
    run_dir = out / "cifar10-resnet8-w0.25-n256-s0"
    proc = _start(root, env, out, "--epochs=3")
    locked = _wait_for_lock(run_dir, proc)
    while proc.poll() is None and not (run_dir / "results.json").exists():
        time.sleep(0.02)
    finished = time.time()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return types.SimpleNamespace(run_dir=run_dir, seconds=finished - locked)


def _assert_same_as_uninterrupted(run_dir, whole):
    """The run is finished, equals the uninterrupted one, and holds no leftover of a killed writer."""
    for a, b in zip(_weights(whole), _weights(run_dir)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with np.load(run_dir / "test_predictions.npz") as got, np.load(whole / "test_predictions.npz") as want:
        np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-5)
    assert [r["epoch"] for r in csv.DictReader(open(run_dir / "history.csv"))] == ["1", "2", "3"]
    assert runs.Run(str(run_dir)).results()["epochs"] == 3
    assert runs.read_config(str(run_dir)) == runs.read_config(str(whole))
    assert [f for f in os.listdir(run_dir) if f.startswith(".")] == [runs.LOCK], "temporary files left behind"
    assert sorted(os.listdir(run_dir / "checkpoints")) == sorted(os.listdir(whole / "checkpoints"))


# Every point at which training writes, in the order a 3-epoch run reaches them, with the epoch
# the process killed there resumes from (0: it starts afresh). The chain kills bin/train at
# the first point, reruns it (it resumes) to be killed at the next, ..., and lets the last
# rerun finish. "write:<file>:1" is that process's first write of the file; "torn_checkpoint"
# leaves the checkpoint's files cut short, as a kill inside tf.train.Checkpoint.write can.
INSIDE_WRITES = [
    ("torn_checkpoint:1", 0),
    ("write:latest.json:1", 0),
    ("write:history.csv:1", 0),
    ("during_checkpoint:2", 1),
    ("write:model.keras:1", 1),
    ("write:test_predictions.npz:1", 3),
    (None, 3),
]
# The default tier's chain: a torn checkpoint, then a kill while the finished model is written.
TORN_THEN_FINAL = [
    ("torn_checkpoint:1", 0),
    ("write:model.keras:1", 0),
    (None, 3),
]
EVERY_WRITE = [
    ("write:config.json:1", 0),
    ("torn_checkpoint:1", 0),
    ("write:latest.json:1", 0),
    ("write:history.csv:1", 0),
    ("before_checkpoint:2", 1),
    ("during_checkpoint:2", 1),
    ("after_checkpoint:2", 1),
    ("write:model.keras:1", 2),
    ("before_results:3", 3),
    ("write:test_predictions.npz:1", 3),
    ("write:results.json:1", 3),
    (None, 3),
]


@pytest.mark.parametrize(
    "chain",
    # The long chains take minutes (up to a dozen trainings): the slow tier.
    [
        TORN_THEN_FINAL,
        pytest.param(INSIDE_WRITES, marks=pytest.mark.slow),
        pytest.param(EVERY_WRITE, marks=pytest.mark.slow),
    ],
    ids=["torn-then-final", "inside-each-write", "every-write-point"],
)
def test_kills_inside_writes_resume_to_the_uninterrupted_result(tmp_path, root, bin_env, uninterrupted, chain):
    run_dir = tmp_path / uninterrupted.run_dir.name
    for fault, resumes_from in chain:
        result = _train(root, bin_env, tmp_path, "--epochs=3", fault=fault)
        assert result.returncode == (0 if fault is None else -9), (fault, result.stderr[-2000:])
        resumed = re.search(r"Resuming .* from epoch (\d+)", result.stderr)
        assert (int(resumed.group(1)) if resumed else 0) == resumes_from, fault
        if fault is not None:
            assert not (run_dir / "results.json").exists()
    _assert_same_as_uninterrupted(run_dir, uninterrupted.run_dir)


@pytest.mark.slow
def test_random_kills_always_resume_to_the_uninterrupted_result(tmp_path, root, bin_env, uninterrupted):
    # SIGKILL at a uniformly random moment of the time a run holds its lock before it is finished,
    # up to three times per trial, until an attempt finishes; the next rerun finishes. A kill counts
    # only if the run was still unfinished: a kill after results.json, while the process exits, tests
    # nothing, and attempts on a finished run only report it. Seeded, so a failure reproduces.
    rng = np.random.default_rng(15)
    kills = []
    for trial in range(8):
        out = tmp_path / f"trial{trial}"
        run_dir = out / uninterrupted.run_dir.name
        for _ in range(3):
            if (run_dir / "results.json").exists():
                break
            proc = _start(root, bin_env, out, "--epochs=3")
            _wait_for_lock(run_dir, proc)
            delay = rng.uniform(0, uninterrupted.seconds)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.kill()
            _, err = proc.communicate(timeout=600)
            assert proc.returncode in (0, -9), err[-2000:]
            if proc.returncode == -9 and not (run_dir / "results.json").exists():
                kills.append(round(delay, 2))
        final = _train(root, bin_env, out, "--epochs=3")
        assert final.returncode == 0, final.stderr[-2000:]
        _assert_same_as_uninterrupted(run_dir, uninterrupted.run_dir)
    assert len(kills) >= 12, kills  # most trials were killed more than once before they finished
    print(f"{len(kills)} kills at {sorted(kills)} s of {uninterrupted.seconds:.1f} s")


@pytest.mark.slow  # three trainings, one stopped; tests/runlock_test.py checks the lock itself
def test_concurrent_trainings_of_one_run_are_refused(tmp_path, root, bin_env):
    # The first training stops (SIGSTOP) after its first checkpoint, holding the lock.
    run_dir = tmp_path / "cifar10-resnet8-w0.25-n256-s0"
    first = _start(root, bin_env, tmp_path, "--epochs=2", fault="after_checkpoint:1:stop")
    _wait_until_stopped(first)
    before = sorted(os.listdir(run_dir)), open(run_dir / "config.json").read()
    second = _start(root, bin_env, tmp_path, "--epochs=3")
    overwrite = _start(root, bin_env, tmp_path, "--epochs=2", "--overwrite")
    for proc in (second, overwrite):
        _, err = proc.communicate(timeout=600)
        lines = [line for line in err.splitlines() if line.startswith(("error:", "Traceback"))]
        assert proc.returncode == 1 and lines == [
            f"error: {run_dir} is being trained by another process (pid {first.pid}); wait for it to finish or "
            "stop it, then rerun."
        ], err[-2000:]
    assert (sorted(os.listdir(run_dir)), open(run_dir / "config.json").read()) == before
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert runs.read_config(str(run_dir)).train.epochs == 2
    assert [r["epoch"] for r in csv.DictReader(open(run_dir / "history.csv"))] == ["1", "2"]
    assert runs.Run(str(run_dir)).results()["epochs"] == 2
    # --overwrite, once no one trains the run, replaces it with the new settings.
    replaced = _train(root, bin_env, tmp_path, "--epochs=1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert runs.read_config(str(run_dir)).train.epochs == 1 and "Resuming" not in replaced.stderr
    assert [r["epoch"] for r in csv.DictReader(open(run_dir / "history.csv"))] == ["1"]
    assert runs.Run(str(run_dir)).results()["epochs"] == 1
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index", "latest.json"]


@pytest.mark.slow  # through the binary; test_a_corrupt_checkpoint_is_a_clear_error checks it in-process
def test_bin_train_corrupt_checkpoint_is_a_clear_error(tmp_path, root, bin_env):
    killed = _train(root, bin_env, tmp_path, "--epochs=2", fault="after_checkpoint:1")
    assert killed.returncode == -9
    data = next((tmp_path / "cifar10-resnet8-w0.25-n256-s0" / "checkpoints").glob("ckpt-1.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    again = _train(root, bin_env, tmp_path, "--epochs=2")
    assert again.returncode == 1
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Checkpoint ") and "corrupt" in last and "--overwrite" in last


@pytest.mark.slow  # three trainings through the binary; the in-process resume test checks the same
def test_bin_train_finished_run_is_reported_and_conflicts_are_refused(tmp_path, root, bin_env):
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


def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, tfds_dir):
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=256),
        runs.TrainConfig(epochs=2, batch_size=32, learning_rate=1e30),
    )
    with pytest.raises(training.TrainingDivergedError, match="epoch 1: training diverged. No checkpoint was written"):
        training.train(config, str(tmp_path), verbose=0, tensorboard=False)
    run_dir = tmp_path / config.name
    assert not (run_dir / "model.keras").exists() and not (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoints" / "latest.json").exists()


def test_divergence_after_a_checkpoint_keeps_it_and_a_rerun_resumes_from_it(tmp_path, tfds_dir, monkeypatch, caplog):
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=64),
        runs.TrainConfig(epochs=3, batch_size=32),
    )
    run_dir = tmp_path / config.name
    monkeypatch.setenv("TFWD_FAULT", "diverge:2")  # epoch 2's loss is NaN
    with pytest.raises(training.TrainingDivergedError) as info:
        training.train(config, str(tmp_path), verbose=0, tensorboard=False, checkpoint_seconds=0)
    assert str(info.value) == (
        f"The training loss is nan at epoch 2: training diverged. The last good checkpoint (epoch 1) is kept in "
        f"{run_dir}; lower --learning_rate and rerun with --overwrite."
    )
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 1
    assert [r["epoch"] for r in csv.DictReader(open(run_dir / "history.csv"))] == ["1"]
    monkeypatch.delenv("TFWD_FAULT")
    with caplog.at_level("INFO", logger="absl"):
        training.train(config, str(tmp_path), verbose=0, tensorboard=False)
    assert "from epoch 1." in caplog.text and runs.Run(str(run_dir)).results()["epochs"] == 3
    # The finished run is reported, not retrained; other settings in the same directory are refused.
    stamp = os.stat(run_dir / "model.keras").st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="absl"):
        assert training.train(config, str(tmp_path), verbose=0, tensorboard=False) == str(run_dir)
    assert "already finished" in caplog.text and os.stat(run_dir / "model.keras").st_mtime_ns == stamp
    other = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2))
    with pytest.raises(runs.RunError) as info:
        training.train(other, str(tmp_path), verbose=0, tensorboard=False)
    assert str(info.value) == (
        f"{run_dir} holds a run with other settings (train.epochs: 3 != 2). Use --overwrite to replace it, "
        "or another --out_dir."
    )


@pytest.mark.parametrize("seconds,saved", [(0, ["1", "2"]), (1e9, [])], ids=["every-epoch", "not-yet-due"])
def test_checkpoints_are_saved_once_checkpoint_seconds_have_passed(tmp_path, tfds_dir, monkeypatch, seconds, saved):
    # Epoch 3 diverges; what it keeps is what was saved before. With a long interval nothing
    # is saved before the last epoch, and history.csv still records every finished epoch.
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=64),
        runs.TrainConfig(epochs=4, batch_size=32),
    )
    monkeypatch.setenv("TFWD_FAULT", "diverge:3")
    with pytest.raises(training.TrainingDivergedError, match="No checkpoint was written" if not saved else "epoch 2"):
        training.train(config, str(tmp_path), verbose=0, tensorboard=False, checkpoint_seconds=seconds)
    folder = tmp_path / config.name / "checkpoints"
    assert sorted(p.name[5:-6] for p in folder.glob("ckpt-*.index")) == saved
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / config.name / "history.csv"))] == ["1", "2"]
    monkeypatch.delenv("TFWD_FAULT")
    # The last epoch always saves, so a finished run's last checkpoint is its final state.
    run_dir = training.train(
        config, str(tmp_path), verbose=0, tensorboard=False, checkpoint_seconds=1e9, overwrite=True
    )
    assert json.loads((folder / "latest.json").read_text())["step"] == 4 and runs.Run(run_dir).finished


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path, tfds_dir, monkeypatch):
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=64),
        runs.TrainConfig(epochs=2, batch_size=32),
    )
    monkeypatch.setenv("TFWD_FAULT", "diverge:2")  # leaves epoch 1's checkpoint and stops
    with pytest.raises(training.TrainingDivergedError):
        training.train(config, str(tmp_path), verbose=0, tensorboard=False, checkpoint_seconds=0)
    monkeypatch.delenv("TFWD_FAULT")
    data = next((tmp_path / config.name / "checkpoints").glob("ckpt-1.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(checkpoints.CheckpointError) as info:
        training.train(config, str(tmp_path), verbose=0, tensorboard=False)
    message = errors.one_line(info.value)
    assert message.startswith("Checkpoint ") and "corrupt" in message and "--overwrite" in message


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
    optimizer = training.make_optimizer(
        runs.TrainConfig(epochs=epochs, learning_rate=0.01, warmup_epochs=0, decay_every="epoch"), steps
    )
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


@pytest.mark.parametrize(
    "as_flags,message",
    [
        (True, "--depth, --width: only for --arch=cifar_resnet; with imagenet_resnet use --blocks and --widths."),
        (False, "`depth`, `width`: only for arch='cifar_resnet'; with imagenet_resnet use `blocks` and `widths`."),
    ],
    ids=["flags", "keywords"],
)
def test_config_errors_name_settings_as_the_caller_spells_them(as_flags, message):
    with pytest.raises(ValueError) as info:
        training.config_from_flags({"arch": "imagenet_resnet", "depth": 20, "width": 2.0}, as_flags=as_flags)
    assert str(info.value) == message


def test_config_sections_come_from_the_one_settings_table():
    config = training.config_from_flags({"seed": 3, "data_seed": 2, "epochs": 4, "momentum": 0.5})
    assert (config.train.seed, config.data.data_seed, config.train.epochs, config.train.momentum) == (3, 2, 4, 0.5)
    assert set(run_settings.names("train")) <= {f.name for f in dataclasses.fields(runs.TrainConfig)}
    assert set(run_settings.names("data")) <= {f.name for f in dataclasses.fields(DataConfig)}
    assert set(run_settings.names("model")) <= {f.name for f in dataclasses.fields(runs.ModelConfig)}


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


def _tiny_config(tfds_dir, epochs=1):
    return runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=64),
        runs.TrainConfig(epochs=epochs, batch_size=32),
    )


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_folder_tfwd_did_not_make_is_never_trained_into(tmp_path, tfds_dir, overwrite):
    config = _tiny_config(tfds_dir)
    folder = tmp_path / config.name  # a user's folder that happens to have the run's name
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("a user's notes")
    (folder / "data" / "images.npy").write_bytes(b"not ours")
    before = _listing(folder)
    with pytest.raises(runs.RunError) as info:
        training.train(config, str(tmp_path), verbose=0, tensorboard=False, overwrite=overwrite)
    assert errors.one_line(info.value) == (
        f"{folder} is not a tfwd run: it has no config.json that tfwd can read and holds data, notes.txt. "
        "tfwd trains only into a new folder or a run it made; move that folder or choose another --out_dir."
    )
    assert _listing(folder) == before  # not even a lock file was added


def test_overwrite_replaces_what_tfwd_wrote_and_keeps_what_it_did_not(tmp_path, tfds_dir):
    config = _tiny_config(tfds_dir)
    run_dir = pathlib.Path(training.train(config, str(tmp_path), verbose=0, tensorboard=True))
    for kind in ("pc", "probes"):  # analyses of the old model, which the new one makes stale
        with runs.atomic_dir(str(run_dir / f"{kind}_all_test"), kind) as tmp:
            (pathlib.Path(tmp) / f"{kind}.json").write_text("{}")
    (run_dir / "probes_all_test" / "my_notes.txt").write_text("a user's notes on the probes")
    (run_dir / "cka_all").mkdir()  # an analysis output of an earlier version: its marker names only its kind
    (run_dir / "cka_all" / runs.OUTPUT_MARKER).write_text("cka\n")
    (run_dir / "notes.txt").write_text("a user's notes")
    (run_dir / "figures").mkdir()
    (run_dir / "figures" / "mine.png").write_bytes(b"a user's figure")
    (run_dir / "checkpoints" / "README.txt").write_text("which epoch to use")  # in tfwd's own folder
    stamp = os.stat(run_dir / "model.keras").st_mtime_ns
    time.sleep(0.01)
    training.train(_tiny_config(tfds_dir, epochs=2), str(tmp_path), verbose=0, tensorboard=False, overwrite=True)
    assert sorted(os.listdir(run_dir)) == sorted(
        [runs.LOCK, "checkpoints", "config.json", "figures", "history.csv", "model.keras", "notes.txt"]
        + ["probes_all_test", "results.json", "test_predictions.npz"]
    )  # the old TensorBoard logs and the stale analyses are gone; the one holding a user's notes stays
    assert (run_dir / "probes_all_test" / "my_notes.txt").read_text() == "a user's notes on the probes"
    assert (run_dir / "notes.txt").read_text() == "a user's notes"
    assert (run_dir / "figures" / "mine.png").read_bytes() == b"a user's figure"
    assert sorted(os.listdir(run_dir / "checkpoints")) == [
        "README.txt",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
        "latest.json",
    ]  # the old run's checkpoint (epoch 1) is gone, the user's note is not
    assert os.stat(run_dir / "model.keras").st_mtime_ns != stamp and runs.read_config(str(run_dir)).train.epochs == 2


def test_a_run_an_older_version_wrote_can_still_be_overwritten(tmp_path, tfds_dir):
    # Its config.json does not read as this version's; every entry is one tfwd writes.
    config = _tiny_config(tfds_dir)
    run_dir = tmp_path / config.name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text('{"model": {"depth": 8, "a_setting_of_long_ago": 1}}')
    (run_dir / "history.csv").write_text("epoch,loss\n1,2.3\n")
    with pytest.raises(runs.RunError, match="corrupt or from an incompatible version"):
        training.train(config, str(tmp_path), verbose=0, tensorboard=False)
    training.train(config, str(tmp_path), verbose=0, tensorboard=False, overwrite=True)
    assert runs.Run(str(run_dir)).finished and runs.read_config(str(run_dir)) == config


def test_overwrite_removes_what_killed_analyses_left(root, bin_env, tmp_path, tiny_runs):
    """kill -9 of an analysis writing into its run leaves a temporary output; --overwrite of the run removes it
    (tfwd's temporary names only: a user's folder named alike stays)."""
    import shutil

    run_dir = shutil.copytree(tiny_runs[0], tmp_path / os.path.basename(tiny_runs[0]))
    killed = subprocess.run(
        [sys.executable, str(root / "bin" / "dominant_datapoints"), f"--run={run_dir}", "--examples=60", "--top=5"],
        env=dict(bin_env, TFWD_FAULT="analysis_write:0"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert killed.returncode == -signal.SIGKILL
    leftovers = [name for name in os.listdir(run_dir) if name.startswith(".dominant_datapoints.p")]
    assert len(leftovers) == 1 and os.listdir(run_dir / leftovers[0])  # a partial output of the old model
    dead = subprocess.Popen(["true"])
    dead.wait()
    users = run_dir / f".notes.p{dead.pid}.abcd.tmp"  # named like a temporary, but tfwd did not write it
    users.mkdir()
    (users / "mine.txt").write_text("a user's notes")
    result = _train(root, bin_env, tmp_path, "--epochs=1", "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [name for name in os.listdir(run_dir) if name.startswith(".dominant_datapoints.")]
    assert (users / "mine.txt").read_text() == "a user's notes"
