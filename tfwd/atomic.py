"""Atomic files and output folders, without TensorFlow.

Every file tfwd writes goes through `atomic_path` (a temporary file in the same folder,
then a rename), and every analysis writes its folder through `atomic_dir`: a killed
process never leaves a half-written file or folder behind. This module imports only the
standard library and NumPy, so `tfwd.plots` and other light modules use it without loading
TensorFlow; `tfwd.runs` re-exports every name.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import glob
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tfwd import errors, faults

# A run directory's config (tfwd.runs.CONFIG): `check_output_dir` names such a folder.
RUN_CONFIG = "config.json"

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path` (same suffix); renames it over `path` on success.

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "numbers.npy")
        ...     with atomic_path(path) as tmp:  # tmp: folder/.numbers.npy.XXXX.tmp.npy
        ...         np.save(tmp, np.arange(3))
        ...     np.load(path).tolist(), os.listdir(folder)
        ([0, 1, 2], ['numbers.npy'])
    """
    folder, base = os.path.split(os.path.abspath(path))
    suffix = "".join(os.path.splitext(base)[1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + suffix, dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
    try:
        yield tmp
        faults.crash_point(f"write:{base}", faults.count(f"write:{base}"))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# An analysis' output folder holds this file: its first line names the analysis that wrote it,
# the next ones every file and folder the analysis wrote (paths relative to the folder). A
# folder is only ever replaced when it holds the marker of the same analysis and nothing the
# marker does not list: tfwd never deletes what it did not create (a run directory, a folder
# of runs, the current directory, a user's file, a user's notes put into an output folder).
OUTPUT_MARKER = ".tfwd_output"


def _entries(path: str) -> list[str]:
    """Every file and folder below `path`, as paths relative to it, the marker left out."""
    found = []
    for folder, dirs, files in os.walk(path):
        relative = os.path.relpath(folder, path)
        found += [os.path.normpath(os.path.join(relative, name)) for name in dirs + files]
    return sorted(name for name in found if name != OUTPUT_MARKER)


def unlisted_entries(path: str) -> list[str]:
    """What the output folder `path` holds that its marker does not list (not written by tfwd).

    A marker of an earlier version names only the analysis: nothing is known to be unlisted then.
    """
    with open(os.path.join(path, OUTPUT_MARKER)) as f:
        listed = f.read().splitlines()[1:]
    return sorted(set(_entries(path)) - set(listed)) if listed else []


def check_output_dir(path: str, kind: str) -> None:
    """Raises tfwd.errors.RunError unless `path` is free for an analysis of `kind` to write.

    Free: `path` does not exist, is an empty folder, or is a folder holding the marker
    of an earlier `kind` output and nothing that its marker does not list (the new output
    replaces it as a whole). Analyses call this before they compute, so a wrong --out_dir
    fails at once.
    """
    if not os.path.lexists(path) or (os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)):
        return
    marker = os.path.join(path, OUTPUT_MARKER)
    if os.path.isdir(path) and not os.path.islink(path) and os.path.isfile(marker):
        with open(marker) as f:
            written_by = f.readline().strip()
        if written_by == kind:
            unlisted = unlisted_entries(path)
            if unlisted:
                raise errors.RunError(
                    f"{path} holds the output of tfwd {kind!r} and also {errors.first_few(unlisted)}, which tfwd did "
                    "not write; an analysis replaces its earlier output as a whole, so move those or choose another "
                    "--out_dir."
                )
            return
        raise errors.RunError(
            f"{path} holds the output of tfwd {written_by!r}, not {kind!r}; choose another --out_dir "
            f"(an analysis only replaces its own earlier output)."
        )
    what = (
        "a file"
        if not os.path.isdir(path)
        else ("a run directory" if os.path.exists(os.path.join(path, RUN_CONFIG)) else "a folder tfwd did not write")
    )
    raise errors.RunError(
        f"--out_dir {path} is {what}; tfwd writes an analysis only into a new folder or over its own "
        f"earlier output. Choose another --out_dir."
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: str, base: str) -> None:
    """Removes temporary folders of `base` left by processes that no longer run."""
    for stale in glob.glob(os.path.join(parent, f".{glob.escape(base)}.*.tmp")):
        match = re.match(r"\.(.+)\.p(\d+)\.[^.]+(\.old)?\.tmp$", os.path.basename(stale))
        if match and match.group(1) == base and not _alive(int(match.group(2))):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _turn(folder: str) -> Iterator[None]:
    """An exclusive flock on `folder` itself (no file is made): outputs that finish at the same time
    in one folder take turns to check and swap in. Where the folder cannot be opened or the file
    system has no flock, no turn is taken."""
    fd = None
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the flock


@contextlib.contextmanager
def atomic_dir(path: str, kind: str) -> Iterator[str]:
    """Yields a temporary folder beside `path`; on success it replaces `path` as a whole.

    `path` must be free for an output of `kind` (`check_output_dir`): it does not exist
    or holds an earlier `kind` output. The new folder gets the marker. A process killed
    inside the block leaves `path` as it was; its temporary folder (named after its
    process id) is removed by a later call once that process is gone, never while it runs.
    Two analyses that finish together into the same `path` swap in one after the other
    (the last one's output stays, whole).
    """
    check_output_dir(path, kind)
    parent, base = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    _remove_stale(parent, base)
    tmp = tempfile.mkdtemp(prefix=f".{base}.p{os.getpid()}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        written = _entries(tmp)
        with open(os.path.join(tmp, OUTPUT_MARKER), "w") as f:
            f.write("".join(line + "\n" for line in [kind, *written]))
        faults.crash_point("analysis_write")
        with _turn(parent):
            check_output_dir(path, kind)  # again: another process may have written there meanwhile
            if os.path.exists(path):
                old = tempfile.mkdtemp(prefix=f".{base}.p{os.getpid()}.", suffix=".old.tmp", dir=parent)
                os.replace(path, os.path.join(old, base))
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str, write: Callable[[io.IOBase], None], binary: bool = False) -> None:
    """Calls write(file) on a temporary file, then renames it over `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)


def write_json(path: str, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable))


def write_npz(path: str, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    def write(f):
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
