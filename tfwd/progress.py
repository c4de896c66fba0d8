"""Progress of long work on a terminal: child trainings' epochs, and a heartbeat in quiet stretches.

`bin/sweep --run` and `bin/report` train each run in a child `bin/train` whose output goes to
its log file. `showing` keeps one status line on a stream while such work runs: on a terminal
it is rewritten in place every second; elsewhere (a log file, a pipe) it is printed as plain
lines at most every `every` seconds, and at a run's first and last epoch. `TrainingLogs` reads
the children's logs for the status: epoch k of N, the latest loss and accuracy, and the time
left at the pace of the epochs seen. Any absl log line clears the status line first, so the two
never run together; when nothing was printed for `every` seconds the status says what the
last message was and how long ago, so the terminal is never silent for long.

Example::

    logs = TrainingLogs(total=1)
    with showing(sys.stderr, logs.text):
        logs.add("cifar10-resnet8-w0.25-s0", "runs/logs/cifar10-resnet8-w0.25-s0.log")
        ...  # the child trains, appending "Epoch 3/30: loss 2.1 - accuracy 0.21 - ..." lines
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

# The line tfwd.training logs after each epoch (verbose=2, which a child writing to a file gets).
EPOCH_LINE = re.compile(r"Epoch (\d+)/(\d+): (.*)$")


def parse_epoch(line: str) -> tuple[int, int, dict[str, float]] | None:
    """(k, N, {"loss": ..., "accuracy": ..., ...}) of an epoch line of tfwd.training, else None."""
    match = EPOCH_LINE.search(line.rstrip("\n"))
    if not match:
        return None
    values = {}
    for part in match.group(3).split(" - "):
        key, _, value = part.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = float(value)
    return int(match.group(1)), int(match.group(2)), values


def duration(seconds: float) -> str:
    """A short human duration: 45 s, 2 min 05 s, 2.3 h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds / 3600:.1f} h"


# absl's prefix of a log line: level, date, time, thread, file:line.
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]+\] ")


class _Training:
    """What one child's log has said so far."""

    def __init__(self, path: str, now: float):
        self.path, self.started, self.offset, self.partial = path, now, 0, ""
        self.epoch = self.epochs = 0
        self.values: dict[str, float] = {}
        self.first: tuple[int, float] | None = None  # (epoch, time) of the first epoch line seen
        self.last_time = now
        self.said = ""  # the child's last log line, while no epoch has ended

    def read(self, now: float) -> bool:
        """Reads what the log gained; True when a new epoch line came."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return False
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()  # an unfinished last line waits for its end
        new = False
        for line in lines:
            parsed = parse_epoch(line)
            if not parsed and ABSL_PREFIX.match(line):
                self.said = ABSL_PREFIX.sub("", line).strip()
            if parsed:
                self.epoch, self.epochs, self.values = parsed
                self.first = self.first or (self.epoch, now)
                self.last_time, new = now, True
        return new

    def seconds_left(self, now: float) -> float | None:
        """The epochs left at the pace of those seen by this process, less the time since the last one.

        The first epoch seen includes tracing, so the pace counts from its end; until a second
        one ends, the first epoch's own seconds stand for the pace.
        """
        if self.first is None or self.epoch <= self.first[0]:
            pace = self.values.get("seconds")
            if pace is None:
                return None
        else:
            pace = (self.last_time - self.first[1]) / (self.epoch - self.first[0])
        return max(0.0, pace * (self.epochs - self.epoch) - (now - self.last_time))

    def text(self, name: str, now: float) -> str:
        if not self.epoch:
            said = f": {self.said[:80]}" if self.said else ""
            return f"{name}: starting ({duration(now - self.started)}{said})"
        parts = [f"{name}: epoch {self.epoch} of {self.epochs}"]
        for key in ("loss", "accuracy"):
            if key in self.values:
                parts.append(f"{key} {self.values[key]:.4g}")
        if self.epoch == self.epochs:  # the model and its test predictions are being written
            parts.append(f"finishing ({duration(now - self.last_time)})")
        elif (left := self.seconds_left(now)) is not None:
            parts.append(f"about {duration(left)} left")
        return ", ".join(parts)


class TrainingLogs:
    """The trainings under way, read from their log files (thread-safe)."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        self.total, self._clock = total, clock
        self._runs: dict[str, tuple[int, _Training]] = {}
        self._lock = threading.Lock()
        self._started = 0

    def add(self, name: str, log_path: str) -> None:
        """Starts following a training whose output is appended to `log_path` from now on."""
        run = _Training(log_path, self._clock())
        with contextlib.suppress(OSError):
            run.offset = os.path.getsize(log_path)  # an earlier attempt's lines are not this one's
        with self._lock:
            self._started += 1
            self._runs[name] = (self._started, run)

    def remove(self, name: str) -> None:
        with self._lock:
            self._runs.pop(name, None)

    def text(self, force: list[bool] | None = None) -> str | None:
        """The status of every training under way, or None when there is none.

        `force[0]` is set when a run reached its first or last epoch since the last call:
        a moment worth a line even where lines are rationed.
        """
        now = self._clock()
        with self._lock:
            runs = list(self._runs.items())
        if not runs:
            return None
        texts = []
        for name, (index, run) in runs:
            if run.read(now) and force is not None and (run.epoch == run.first[0] or run.epoch == run.epochs):
                force[0] = True
            texts.append(f"[{index}/{self.total}] {run.text(name, now)}")
        return "; ".join(texts)


class Status:
    """One line of progress on `stream`: in place on a terminal, plain lines at most every `every` s elsewhere."""

    def __init__(self, stream: TextIO, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.stream, self.every, self._clock = stream, every, clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._lock = threading.RLock()
        self._shown = False
        self.last_output = self._last_line = clock()
        self.last_message, self.last_message_time = "", self.last_output
        self._quiet_until = 0.0

    def show(self, text: str, force: bool = False) -> None:
        with self._lock:
            now = self._clock()
            if self.tty:
                if now < self._quiet_until:
                    return  # a log line is being printed: let it land on a clean line
                width = shutil.get_terminal_size((120, 20)).columns - 1
                self.stream.write("\r" + text[:width] + "\x1b[K")
                self._shown = True
            elif force or now - self._last_line >= self.every:
                self.stream.write(text + "\n")
                self._last_line = now
            else:
                return
            self.stream.flush()
            self.last_output = now

    def clear(self) -> None:
        """Erases the status line on a terminal, before another line is printed."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    def logged(self, message: str) -> None:
        """Another line (a log record) was printed: clear the status first, and remember it."""
        with self._lock:
            self.clear()
            self.last_message, self.last_message_time = message, self._clock()
            self.last_output = self._last_line = self.last_message_time
            self._quiet_until = self.last_message_time + 0.5


class _ClearOnLog(std_logging.Handler):
    """On the absl logger, before absl's own handler (on the root logger) prints the record."""

    def __init__(self, status: Status):
        super().__init__()
        self.status = status

    def emit(self, record: std_logging.LogRecord) -> None:
        self.status.logged(record.getMessage().split("\n", 1)[0])


@contextlib.contextmanager
def showing(
    stream: TextIO | None, render: Callable[[list[bool]], str | None] | None = None, every: float = 10.0
) -> Iterator[Status | None]:
    """Shows `render(force)`'s status while the block runs (see the module docstring); None shows nothing.

    `render` is called every second (every `every` seconds off a terminal) and returns the status
    text, or None when there is nothing to say; it sets force[0] for a line worth printing now.
    Without a status, after `every` seconds with no output the line reads what was logged last
    and how long ago.
    """
    if stream is None:
        yield None
        return
    status = Status(stream, every)
    handler = _ClearOnLog(status)
    absl_logger = std_logging.getLogger("absl")
    absl_logger.addHandler(handler)
    stop = threading.Event()

    def loop():
        tick = 1.0 if status.tty else min(1.0, every)
        while not stop.wait(tick):
            force = [False]
            text = render(force) if render else None
            now = status._clock()
            if text is None and now - status.last_output >= every:
                since = status.last_message or "started"
                text = f"working ({duration(now - status.last_message_time)} since: {since})"
            if text is not None:
                status.show(text, force[0])

    thread = threading.Thread(target=loop, name="tfwd-progress", daemon=True)
    thread.start()
    try:
        yield status
    finally:
        stop.set()
        thread.join()
        absl_logger.removeHandler(handler)
        status.clear()
