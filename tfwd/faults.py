"""Fault injection for tests: die with SIGKILL at a named point.

Set TFWD_FAULT=<point>:<step> (for example "during_checkpoint:2") and the
process kills itself, as `kill -9` would, the moment it reaches that point.
Points: "before_checkpoint", "during_checkpoint", "after_checkpoint" (step: the
epoch), "before_results" (step: epochs trained), "analysis_write" (step: 0).
Unset, every call is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def crash_point(point: str, step: int = 0) -> None:
    """Kills this process with SIGKILL if TFWD_FAULT names this point and step."""
    if os.environ.get("TFWD_FAULT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
