"""Docstring examples run as tests (`--doctest-modules` over tfwd/, configured in pyproject.toml).

Each example sees `tfwd` and `np` (as after `import tfwd` and `import numpy as np`) and
prints NumPy scalars as a reader expects them (`1.0`, not `np.float64(1.0)`). Examples
must be true, cheap (tiny models, a few examples) and leave no file behind. Usage that
needs finished runs or minutes of compute is shown as a plain code block (`Example::`),
not as a `>>>` example, and is run by the tests of its module instead.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _pytest.doctest import DoctestItem  # noqa: E402

import tfwd  # noqa: E402

# Helper scripts that are not test modules (run as subprocesses by the tests).
collect_ignore = ["tests/_multiworker.py"]


@pytest.fixture(autouse=True)
def _doctest_context(request, doctest_namespace):
    if not isinstance(request.node, DoctestItem):
        yield
        return
    doctest_namespace.update(tfwd=tfwd, np=np)
    with np.printoptions(legacy="1.25"):
        yield
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close("all")
