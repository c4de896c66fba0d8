"""One writer per run directory: the lock training holds, and the files a killed writer leaves.

Two processes training one run at once would mix their files (config.json of one,
history and model of the other), and `--overwrite` would delete a run another
process is writing. `RunLock` makes one process the run's writer; a second is
refused with one line naming the holder's process id.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import glob
import os
import shutil
import time

from tfwd import atomic
from tfwd.runs import CHECKPOINTS, LOCK, RUN_FILES, RunError


class RunLock:
    """An exclusive lock on a run directory, held by the one process that trains it.

    `fcntl.flock` on `run_dir/.lock` (the directory is created if needed). The kernel
    releases it when the holder exits or is killed, so a lock left by a dead process
    never blocks; the file itself stays (removing it would let two processes lock
    two different files). The holder writes its process id into the file, for the
    message of the process it refuses.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as parent:
        ...     run_dir = os.path.join(parent, "cifar10-resnet8-w1-s0")
        ...     with RunLock(run_dir):  # this process trains the run
        ...         try:
        ...             RunLock(run_dir).__enter__()  # a second writer
        ...         except RunError as e:
        ...             print("refused, naming this process:", f"pid {os.getpid()}" in str(e))
        refused, naming this process: True
    """

    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        except OSError as e:
            parent = os.path.dirname(os.path.abspath(self.run_dir))
            problem = atomic.path_problem(parent) if e.errno in (errno.EEXIST, errno.ELOOP) else None
            if problem:  # the real reason, not "File exists"
                raise RunError(problem) from e
            raise RunError(
                f"Cannot write the run directory {self.run_dir}: {e.strerror or e}. Choose a writable --out_dir."
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            trainer, readers = _holders(self.path)
            if readers:
                raise RunBusyError(
                    f"{self.run_dir} is being read by an analysis (pid {', '.join(readers)}); wait for it to finish "
                    "or stop it, then rerun.",
                    readers=readers,
                ) from None
            raise RunBusyError(
                f"{self.run_dir} is being trained by another process (pid {trainer}); wait for it to "
                "finish or stop it, then rerun."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


class RunBusyError(RunError):
    """Another process holds a run's lock. `readers`: the process ids of the analyses reading it, if they hold it."""

    def __init__(self, message: str, readers: list[str] | None = None):
        super().__init__(message)
        self.readers = readers or []


_READER = " reading"


def _holders(path: str) -> tuple[str, list[str]]:
    """Who holds the lock file `path`: (the training's pid or "unknown", the pids of live readers).

    The trainer truncates the file and writes its pid when it locks; each reader appends
    "<pid> reading" when it locks. Lines of readers that have exited are ignored.
    """
    for _ in range(20):  # a holder writes its pid just after it locks: give it a moment
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        readers = [line[: -len(_READER)] for line in lines if line.endswith(_READER)]
        holding = _flock_holders(path)  # a live process that has since closed its lock is no reader
        readers = [
            pid
            for pid in dict.fromkeys(readers)
            if pid.isdigit() and atomic.process_alive(int(pid)) and (holding is None or int(pid) in holding)
        ]
        trainers = [line for line in lines if line.isdigit() and atomic.process_alive(int(line))]
        if readers or trainers:
            return (trainers[0] if trainers else "unknown"), readers
        time.sleep(0.05)
    return "unknown", []


# How long an analysis waits for a training to release a finished run (bin/train of a finished run holds the
# lock a moment to find it finished) before it refuses.
READ_WAIT_SECONDS = 3.0


class ReadLock:
    """A shared lock on a run directory, held by an analysis while it reads the run and writes its output.

    Any number of analyses hold it at once; training holds the exclusive `RunLock`, so a
    run is never retrained (`--overwrite`) under an analysis of it, and an analysis never
    starts on a run being trained: either is refused with one line naming the other's pid.
    Where the lock file cannot be opened (a read-only run), no lock is taken.
    """

    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK)
        self._fd: int | None = None

    def __enter__(self) -> ReadLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return self
        deadline = time.monotonic() + READ_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    return self  # a file system without flock
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            os.close(fd)
            trainer, _ = _holders(self.path)
            raise RunBusyError(
                f"{self.run_dir} is being trained by another process (pid {trainer}); wait for it to finish, then "
                "rerun the analysis."
            ) from None
        with contextlib.suppress(OSError):
            os.write(fd, f"{os.getpid()}{_READER}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def _flock_holders(path: str) -> set[int] | None:
    """The pids holding a flock on `path`, from Linux's /proc/locks; None where that cannot be read."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as f:
            text = f.read()
    except OSError:
        return None
    holders = set()
    for line in text.splitlines():  # "1: FLOCK  ADVISORY  READ 1904 fd:01:123456 0 EOF"
        parts = line.split()
        if "FLOCK" not in parts or "->" in parts:
            continue
        i = parts.index("FLOCK")
        try:
            pid, where = int(parts[i + 3]), parts[i + 4]
            if int(where.rsplit(":", 1)[1]) == inode:
                holders.add(pid)
        except (IndexError, ValueError):
            continue
    return holders


# Names of the temporary copies `atomic_path` makes of the run files, beside them, and of
# checkpoints/latest.json, in that folder.
_RUN_FILE_TEMPORARIES = [f".{name}.*.tmp{os.path.splitext(name)[1]}" for name in RUN_FILES]
LATEST_TEMPORARIES = ".latest.json.*.tmp.json"


def is_temporary(name: str) -> bool:
    """Whether `name`, in a run directory, is a temporary copy of one of its files (`RUN_FILES`)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _RUN_FILE_TEMPORARIES)


def remove_stale_temporaries(run_dir: str) -> list[str]:
    """Removes the temporary files and checkpoint parts a killed training of `run_dir` left.

    Call it only while holding the run's `RunLock`: then no other process writes these
    files, and every temporary copy of a run file (`RUN_FILES`, checkpoints/latest.json)
    and every unfinished TensorFlow checkpoint folder (`ckpt-N_temp`) is an orphan.

    Returns:
        The paths removed.
    """
    checkpoints = os.path.join(run_dir, CHECKPOINTS)
    patterns = [os.path.join(glob.escape(run_dir), pattern) for pattern in _RUN_FILE_TEMPORARIES]
    patterns.append(os.path.join(glob.escape(checkpoints), LATEST_TEMPORARIES))
    patterns.append(os.path.join(glob.escape(checkpoints), "ckpt-*_temp"))
    removed = [p for pattern in patterns for p in glob.glob(pattern)]
    for path in removed:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return removed
