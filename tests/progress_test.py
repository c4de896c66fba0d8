"""tfwd.progress: the trainings' epochs on the terminal, in place on a TTY and as lines in a log."""

import io
import json
import re
import subprocess
import sys
import time

import pytest
from absl import logging

from tfwd import progress

# What tfwd.training logs after an epoch, through absl, as a child's log file holds it.
LINE = "I1203 17:20:01.123456 140 training.py:466] Epoch {k}/{n}: loss {loss} - accuracy {acc} - learning_rate 0.1 - seconds 2.5"  # noqa: E501


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_parse_epoch_reads_tfwd_trainings_epoch_line():
    assert progress.parse_epoch(LINE.format(k=3, n=30, loss=2.125, acc=0.25) + "\n") == (
        3,
        30,
        {"loss": 2.125, "accuracy": 0.25, "learning_rate": 0.1, "seconds": 2.5},
    )
    assert progress.parse_epoch("I1203 training.py:417] Resuming runs/x from epoch 3.") is None


def test_training_logs_show_epoch_loss_accuracy_and_time_left_from_the_pace_seen(tmp_path):
    log, clock = tmp_path / "run.log", Clock()
    log.write_text("an earlier attempt\n" + LINE.format(k=9, n=10, loss=0.1, acc=0.9) + "\n")
    logs = progress.TrainingLogs(total=2, clock=clock)
    logs.add("r0", str(log))
    assert logs.text() == "[1/2] r0: starting (0 s)"  # the earlier attempt's lines are not this one's
    clock.now += 75
    with open(log, "a") as f:
        f.write("I1203 17:29:50.064897 140 training.py:422] Training r0: 256 examples, 4 steps/epoch, epochs 1-10.\n")
    assert logs.text() == "[1/2] r0: starting (1 min 15 s: Training r0: 256 examples, 4 steps/epoch, epochs 1-10.)"
    with open(log, "a") as f:
        f.write(LINE.format(k=1, n=10, loss=2.3, acc=0.1) + "\n" + LINE.format(k=2, n=10, loss=2.0, acc=0.2)[:40])
    force = [False]
    # The first epoch seen: its own seconds (2.5 s) times the 9 epochs left; the second waits for its line's end.
    assert logs.text(force) == "[1/2] r0: epoch 1 of 10, loss 2.3, accuracy 0.1, about 22 s left" and force[0]
    clock.now += 12
    with open(log, "a") as f:
        f.write(
            LINE.format(k=2, n=10, loss=2.0, acc=0.2)[40:] + "\n" + LINE.format(k=3, n=10, loss=1.5, acc=0.4) + "\n"
        )
    force = [False]
    # Two epochs in 12 s since the first: 6 s each, 7 left.
    assert logs.text(force) == "[1/2] r0: epoch 3 of 10, loss 1.5, accuracy 0.4, about 42 s left" and not force[0]
    clock.now += 30  # no new epoch: the time left counts down
    assert logs.text(force).endswith("epoch 3 of 10, loss 1.5, accuracy 0.4, about 12 s left")
    with open(log, "a") as f:
        f.write(LINE.format(k=10, n=10, loss=0.5, acc=0.8) + "\n")
    clock.now += 4
    assert logs.text(force).endswith("epoch 10 of 10, loss 0.5, accuracy 0.8, finishing (0 s)") and force[0]
    clock.now += 4
    assert logs.text(force).endswith("epoch 10 of 10, loss 0.5, accuracy 0.8, finishing (4 s)")
    logs.remove("r0")
    assert logs.text() is None


def test_durations_read_at_a_glance():
    assert [progress.duration(s) for s in (0.4, 59.6, 125, 5399, 9000)] == [
        "0 s",
        "1 min 00 s",
        "2 min 05 s",
        "89 min 59 s",
        "2.5 h",
    ]


def test_on_a_terminal_the_status_is_rewritten_in_place():
    stream = Terminal()
    status = progress.Status(stream)
    status.show("epoch 1 of 3")
    status.show("epoch 2 of 3")
    status.clear()
    assert stream.getvalue() == "\repoch 1 of 3\x1b[K\repoch 2 of 3\x1b[K\r\x1b[K"


def test_in_a_log_the_status_is_plain_lines_at_most_every_interval():
    stream, clock = io.StringIO(), Clock()
    status = progress.Status(stream, every=10.0, clock=clock)
    clock.now += 10
    status.show("epoch 1 of 3")
    clock.now += 5
    status.show("epoch 2 of 3")  # too soon
    status.show("epoch 3 of 3", force=True)  # a run's last epoch is always worth a line
    clock.now += 10
    status.show("epoch 3 of 3")
    status.clear()  # nothing to erase in a log
    assert stream.getvalue().splitlines() == ["epoch 1 of 3", "epoch 3 of 3", "epoch 3 of 3"]


def test_a_quiet_stretch_says_what_was_logged_last_and_a_log_line_clears_the_status():
    stream = Terminal()
    with progress.showing(stream, every=0.3):
        logging.warning("Report: pc of run-a.")  # info is below absl's level outside an app
        time.sleep(1.6)
    out = stream.getvalue()
    assert re.search(r"\rworking \(\d s since: Report: pc of run-a\.\)\x1b\[K", out), out
    assert out.endswith("\r\x1b[K")  # the last status is erased when the block ends
    assert not [h for h in logging.get_absl_logger().handlers if isinstance(h, progress._ClearOnLog)]


def test_showing_nothing_without_a_stream():
    with progress.showing(None, lambda force: "never") as status:
        assert status is None


@pytest.mark.slow
def test_bin_sweep_shows_each_epoch_of_a_tiny_training(tmp_path, root, bin_env):
    """A real training in a child: its epochs reach bin/sweep's stderr (not a TTY: lines) while it runs."""
    spec = tmp_path / "spec.json"
    flags = {"depth": 8, "width": 0.25, "epochs": 3, "train_examples": 256, "batch_size": 64}
    spec.write_text(json.dumps({"name": "tiny", "flags": flags, "grid": [{"seed": [0]}]}))
    app = [sys.executable, str(root / "bin" / "sweep"), f"--spec={spec}", f"--out_dir={tmp_path / 'runs'}", "--run"]
    ran = subprocess.run(app, env=bin_env, capture_output=True, text=True, timeout=1800)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [line for line in ran.stderr.splitlines() if line.startswith("[1/1] cifar10-resnet8-w0.25-n256-s0: ")]
    tail = r"(about [\w ]+ left|finishing \([\w ]+\))$"
    epochs = [re.search(rf"epoch (\d) of 3, loss [\d.]+, accuracy [\d.]+, {tail}", x) for x in lines if ": epoch " in x]
    assert all(epochs) and {m.group(1) for m in epochs} >= {"1", "3"}, ran.stderr[-3000:]
    assert epochs[-1].group(2).startswith("finishing")
    assert "starting (" in lines[0]  # before the first epoch ends (imports, data, tracing) it is not silent either
    assert "1 finished" in ran.stdout
