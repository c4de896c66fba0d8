"""Fault injection for tests: die with SIGKILL (or stop) at a named point.

Set TFWD_FAULT=<point>:<step> (for example "during_checkpoint:2") and the
process kills itself, as `kill -9` would, the moment it reaches that point.
Points:

- "before_checkpoint", "during_checkpoint" (the checkpoint files are written,
  latest.json not yet), "after_checkpoint" (step: the epoch); "before_results"
  (step: epochs trained); "analysis_write" (step: 0).
- "torn_checkpoint" (step: the epoch): the checkpoint's files are cut short and a
  temporary folder is left, as a kill inside `tf.train.Checkpoint.write` leaves them.
- "write:<file name>" (e.g. "write:latest.json:2"): inside `tfwd.atomic.atomic_path`,
  after the temporary file is written and before it replaces the file; the step
  counts this process's writes of that file name (1: the first).
- "diverge" (step: the epoch): that epoch's training loss is reported as NaN.

A third field "stop" (e.g. "after_checkpoint:1:stop") sends SIGSTOP instead of
SIGKILL: the process halts where it is, holding its locks, until SIGCONT.
Unset, every call is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

_counts: dict[str, int] = {}


def count(point: str) -> int:
    """How many times this process has reached `point`, this time included (for "write:<file>")."""
    _counts[point] = _counts.get(point, 0) + 1
    return _counts[point]


def _armed(point: str, step: int) -> str | None:
    """The action ("kill" or "stop") if TFWD_FAULT names this point and step, else None."""
    spec = os.environ.get("TFWD_FAULT")
    if not spec:
        return None
    action = "kill"
    if spec.endswith(":stop"):
        spec, action = spec[: -len(":stop")], "stop"
    return action if spec == f"{point}:{step}" else None


def crash_point(point: str, step: int = 0, before: Callable[[], None] | None = None) -> None:
    """Kills (or stops) this process if TFWD_FAULT names this point and step.

    Args:
        point: the point's name.
        step: the epoch (or other step) reached.
        before: called first when the fault fires (to leave the files a real kill could).
    """
    action = _armed(point, step)
    if action is None:
        return
    if before is not None:
        before()
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def poisoned(point: str, step: int) -> bool:
    """True if TFWD_FAULT names this point and step (a fault that changes a value instead of killing)."""
    return _armed(point, step) is not None
