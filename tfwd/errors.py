"""The errors tfwd expects users to meet; apps print them as one line and exit 1."""

from tfwd.data import DataNotFoundError
from tfwd.runs import RunError
from tfwd.training import TrainingDivergedError

EXPECTED = (ValueError, DataNotFoundError, RunError, TrainingDivergedError, OSError)
