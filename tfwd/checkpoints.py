"""Resumable training checkpoints, safe against kill -9 at any instant.

A checkpoint is written in two steps: `tf.train.Checkpoint.write` stores the
variables under a new prefix (`ckpt-{epoch}.index`/`.data-*`; TensorFlow
writes them into a temporary folder and renames them into place), and only
then `latest.json` is atomically replaced to point at it. A process killed at
any point leaves `latest.json` naming the previous complete checkpoint. What a
kill inside `write` leaves (a `ckpt-N_temp` folder, cut-short `ckpt-N` files) is
never read, is overwritten when epoch N is trained again, and is removed by
`tfwd.runlock.remove_stale_temporaries` when training resumes.
"""

from __future__ import annotations

import glob
import json
import os
import re

import tensorflow as tf

from tfwd import atomic, faults
from tfwd.errors import CheckpointError

LATEST = "latest.json"


class Checkpoints:
    """Writes and restores one tf.train.Checkpoint in a folder, keeping the newest `keep`.

    Args:
        checkpoint: a tf.train.Checkpoint (model, optimizer, counters).
        folder: where the checkpoint files go (created if needed).
        keep: how many checkpoints to keep on disk.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, folder: str, keep: int = 2):
        self.checkpoint, self.folder, self.keep = checkpoint, folder, keep
        os.makedirs(folder, exist_ok=True)

    def latest(self) -> str | None:
        """Prefix of the newest complete checkpoint, or None."""
        path = os.path.join(self.folder, LATEST)
        try:
            with open(path) as f:
                prefix = os.path.join(self.folder, json.load(f)["prefix"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is corrupt ({e}); rerun with --overwrite to start again.") from e
        if not os.path.exists(prefix + ".index"):
            raise CheckpointError(f"{path} names {prefix}, which is missing; rerun with --overwrite to start again.")
        return prefix

    def save(self, step: int) -> str:
        """Writes checkpoint `step`, then points latest.json at it, then prunes old ones."""
        prefix = self.checkpoint.write(os.path.join(self.folder, f"ckpt-{step}"))
        faults.crash_point("torn_checkpoint", step, before=lambda: _tear(prefix))
        faults.crash_point("during_checkpoint", step)
        atomic.write_json(os.path.join(self.folder, LATEST), {"prefix": os.path.basename(prefix), "step": step})
        self._prune(step)
        return prefix

    def restore(self) -> bool:
        """Restores the newest checkpoint into the tracked objects; False if there is none.

        Raises:
            CheckpointError: if the files are unreadable or belong to another model.
        """
        prefix = self.latest()
        if prefix is None:
            return False
        try:
            self.checkpoint.read(prefix).assert_existing_objects_matched()
        except Exception as e:  # noqa: BLE001 - truncated files raise IndexError, DataLossError, ...
            raise CheckpointError(
                f"Checkpoint {prefix} is corrupt or from another model ({type(e).__name__}); rerun with --overwrite."
            ) from e
        return True

    def _prune(self, step: int) -> None:
        # Steps from every file, not only .index ones: a prune killed halfway can leave a
        # checkpoint's data without its index.
        names = (os.path.basename(p) for p in glob.glob(os.path.join(self.folder, "ckpt-*.*")))
        steps = sorted({int(m.group(1)) for m in map(re.compile(r"ckpt-(\d+)\.").match, names) if m})
        for old in steps[: -self.keep] if self.keep else steps:
            if old != step:
                for f in glob.glob(os.path.join(self.folder, f"ckpt-{old}.*")):
                    os.remove(f)


def _tear(prefix: str) -> None:
    """Leaves checkpoint `prefix` as a kill inside tf.train.Checkpoint.write can: its files
    cut in half, and TensorFlow's temporary folder holding a part (for tfwd.faults)."""
    os.makedirs(prefix + "_temp", exist_ok=True)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        with open(os.path.join(prefix + "_temp", "part-00000-of-00001" + path[len(prefix) :]), "wb") as f:
            f.write(b"\0" * 16)
