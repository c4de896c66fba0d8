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
import errno
import fcntl
import glob
import hashlib
import io
import json
import os
import re
import shutil
import stat
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
    suffix = suffix if len(suffix.encode()) <= 16 else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{temporary_stem(base, len(suffix) + 4)}.", suffix=".tmp" + suffix, dir=folder)
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


# Longest file name most file systems allow (bytes); a temporary sibling of a name near it must be shorter.
NAME_MAX = 255
# Bytes a temporary name adds around its stem: ".", ".p<pid>." with up to 10 digits, 8 random characters and
# ".old.tmp" (atomic_dir), or "." + 8 random characters + ".tmp" + a suffix (atomic_path).
_TEMPORARY_EXTRA = 40


def temporary_stem(base: str, suffix_bytes: int = 0) -> str:
    """`base` as the stem of a temporary sibling's name: itself, or, where the temporary name would pass NAME_MAX
    bytes, its start and a hash of the whole (so a legal name of up to 255 bytes still gets a temporary sibling).

    Example:
        >>> temporary_stem("pc_all_test")
        'pc_all_test'
        >>> len(temporary_stem("x" * 250).encode()) + _TEMPORARY_EXTRA <= NAME_MAX
        True
    """
    room = NAME_MAX - _TEMPORARY_EXTRA - suffix_bytes
    if len(base.encode()) <= room:
        return base
    digest = hashlib.sha1(base.encode()).hexdigest()[:10]
    start = base.encode()[: room - len(digest) - 1].decode(errors="ignore")
    return f"{start}~{digest}"


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


def path_problem(path: str, flag: str = "--out_dir", above_only: bool = False) -> str | None:
    """Why a folder cannot be made or used at `path` (None if nothing stands in the way), as one sentence.

    Names the real reason: a file where a folder is needed (`path` itself, unless `above_only`, or
    one above it), or a symlink loop on the way. Permissions and free space are left to the write.

    Example:
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     open(os.path.join(folder, "f"), "w").close()
        ...     path_problem(os.path.join(folder, "f", "runs")).endswith("f is a file, not a folder.")
        True
    """
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:i])
        try:
            st = os.stat(prefix)
        except FileNotFoundError:
            return None  # made later, from here down
        except OSError as e:
            if e.errno == errno.ELOOP:
                where = "is a symlink loop" if prefix == path else f"lies inside a symlink loop ({prefix})"
                return f"{flag} {path} {where}; choose a path that resolves to a folder."
            return None  # ENOTDIR is reported at the file above; permissions are left to the write
        if not stat.S_ISDIR(st.st_mode):
            if prefix == path and above_only:
                return None
            if prefix == path:
                return f"{flag} {path} is a file, not a folder; choose another {flag}."
            return f"{flag} {path} cannot be made: {prefix} is a file, not a folder."
    return None


def check_folder_path(path: str, flag: str = "--out_dir") -> None:
    """Raises tfwd.errors.RunError naming the real reason if no folder can be made or used at `path`."""
    problem = path_problem(path, flag)
    if problem:
        raise errors.RunError(problem)


def check_output_dir(path: str, kind: str) -> None:
    """Raises tfwd.errors.RunError unless `path` is free for an analysis of `kind` to write.

    Free: `path` does not exist, is an empty folder, or is a folder holding the marker
    of an earlier `kind` output and nothing that its marker does not list (the new output
    replaces it as a whole). Analyses call this before they compute, so a wrong --out_dir
    fails at once.
    """
    problem = path_problem(path, above_only=True)  # a file at `path` itself is named below, with what to do
    if problem:
        raise errors.RunError(problem)
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


def process_alive(pid: int) -> bool:
    """Whether a process of this id exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The name of a temporary folder of `atomic_dir`: .<stem>.p<pid>.<random>[.old].tmp
_TEMPORARY_DIR = re.compile(r"\.(.+)\.p(\d+)\.[^.]+(\.old)?\.tmp$")


def _temporary_kind(path: str) -> str | None:
    """The analysis kind a temporary folder of `atomic_dir` was written for, from the marker it starts with."""
    match = _TEMPORARY_DIR.match(os.path.basename(path))
    candidates = [os.path.join(path, OUTPUT_MARKER)]
    if match and match.group(3):  # an .old.tmp folder holds the replaced output
        with contextlib.suppress(OSError):
            candidates += [os.path.join(path, name, OUTPUT_MARKER) for name in os.listdir(path)]
    for marker in candidates:
        with contextlib.suppress(OSError):
            with open(marker) as f:
                return f.readline().strip()
    return None


def stale_temporaries(parent: str, base: str | None = None, kind: str | None = None) -> list[str]:
    """Temporary folders of `atomic_dir` in `parent` whose process no longer runs.

    With `base`: those of the output `base`; with `kind`: also those of any output of that kind (their
    marker says so); with neither: those of every kind (a run directory cleared by --overwrite). A
    folder named like one but without a marker is only taken for `base`'s: it may be a user's.
    """
    found = []
    for stale in glob.glob(os.path.join(glob.escape(parent), ".*.tmp")):
        match = _TEMPORARY_DIR.match(os.path.basename(stale))
        if not match or not os.path.isdir(stale) or os.path.islink(stale) or process_alive(int(match.group(2))):
            continue
        written_for = _temporary_kind(stale)
        if base is not None and match.group(1) == temporary_stem(base):
            found.append(stale)
        elif written_for is not None and (written_for == kind or (base is None and kind is None)):
            found.append(stale)
    return sorted(found)


def _remove_stale(parent: str, base: str, kind: str) -> None:
    """Removes temporary folders of `base`, or of another output of `kind`, left by processes that no longer run."""
    for stale in stale_temporaries(parent, base, kind):
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
def atomic_dir(path: str, kind: str, before_swap: Callable[[], None] | None = None) -> Iterator[str]:
    """Yields a temporary folder beside `path`; on success it replaces `path` as a whole.

    `path` must be free for an output of `kind` (`check_output_dir`): it does not exist
    or holds an earlier `kind` output. The new folder gets the marker. A process killed
    inside the block leaves `path` as it was; its temporary folder (named after its
    process id) is removed by a later call once that process is gone, never while it runs.
    Two analyses that finish together into the same `path` swap in one after the other
    (the last one's output stays, whole). `before_swap`, if given, is called just before the
    swap (in the same turn); if it raises, the new output is discarded and `path` is left as it was.
    """
    check_output_dir(path, kind)
    parent, base = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    _remove_stale(parent, base, kind)
    stem = temporary_stem(base)
    tmp = tempfile.mkdtemp(prefix=f".{stem}.p{os.getpid()}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        with open(os.path.join(tmp, OUTPUT_MARKER), "w") as f:
            f.write(kind + "\n")  # for now the kind alone: a killed process' leftover says whose it is
        yield tmp
        written = _entries(tmp)
        with open(os.path.join(tmp, OUTPUT_MARKER), "w") as f:
            f.write("".join(line + "\n" for line in [kind, *written]))
        faults.crash_point("analysis_write")
        with _turn(parent):
            if before_swap is not None:
                before_swap()
            check_output_dir(path, kind)  # again: another process may have written there meanwhile
            if os.path.exists(path):
                old = tempfile.mkdtemp(prefix=f".{stem}.p{os.getpid()}.", suffix=".old.tmp", dir=parent)
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
    """Writes `obj` as strict JSON (`strict_json`: NaN and infinities as null), atomically."""
    atomic_write(path, lambda f: f.write(json_text(obj, indent=2)))


def json_text(obj: Any, **kwargs) -> str:
    """`obj` as strict JSON text: numpy values as Python ones, NaN and infinities as null (JSON has no NaN).

    Example:
        >>> json_text({"contrast": float("nan"), "n": np.int64(3), "x": np.array([1.5, np.inf])})
        '{"contrast": null, "n": 3, "x": [1.5, null]}'
    """
    return json.dumps(strict_json(obj), sort_keys=True, allow_nan=False, **kwargs)


def strict_json(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can hold: numpy scalars and arrays as Python values, NaN and +-inf as None."""
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return strict_json(_jsonable(obj))
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


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
