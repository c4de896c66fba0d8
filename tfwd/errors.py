"""Every error tfwd expects users to meet, defined in one place; apps print them as one line and exit 1.

This module imports only the standard library, so any module (and bin/_common, before
TensorFlow loads) can name these types. Each is re-exported where it was first defined
(`tfwd.runs.RunError`, `tfwd.data.DataNotFoundError`, `tfwd.training.TrainingDivergedError`,
`tfwd.checkpoints.CheckpointError`), so `except tfwd.runs.RunError` keeps working.
"""


class RunError(RuntimeError):
    """A run directory is missing, incomplete, corrupt, or holds a different run."""


class CheckpointError(RunError):
    """A checkpoint exists but cannot be read into this model."""


class DataNotFoundError(RuntimeError):
    """A dataset is not on disk (and was not, or could not be, downloaded)."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


EXPECTED = (ValueError, DataNotFoundError, RunError, TrainingDivergedError, OSError)


def first_few(names, most: int = 3) -> str:
    """The first `most` of `names`, comma-separated, with ", ..." when there are more: for one-line messages."""
    names = list(names)
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def one_line(error: BaseException) -> str:
    """The message an app prints for an expected error: one line that names the problem and the fix."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where} (check that the output folder exists, is writable and has free space)."
    return " ".join(str(error).split())
