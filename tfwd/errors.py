"""The errors tfwd expects users to meet; apps print them as one line and exit 1."""

from tfwd.data import DataNotFoundError
from tfwd.runs import RunError
from tfwd.training import TrainingDivergedError

EXPECTED = (ValueError, DataNotFoundError, RunError, TrainingDivergedError, OSError)


def one_line(error: BaseException) -> str:
    """The message an app prints for an expected error: one line that names the problem and the fix."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where} (check that the output folder exists, is writable and has free space)."
    return " ".join(str(error).split())
