"""The README's Python examples run as written, so they cannot rot."""

import pathlib
import re

import numpy as np
import pytest

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)


def _run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes stays out of the checkout
    namespace = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 1 and "import tfwd" in BLOCKS[0]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    namespace = _run(BLOCKS[index], tmp_path, monkeypatch)
    assert "tfwd" in namespace


def test_library_example_computes_cka(tmp_path, monkeypatch):
    """The Library block's matrix is the unbiased CKA of its one minibatch (float64 reference)."""
    import tfwd

    block = next(b for b in BLOCKS if "cka.update_state(acts(x" in b)
    ns = _run(block, tmp_path, monkeypatch)
    acts = [a.numpy() for a in ns["acts"](ns["x"], training=False)]
    matrix = ns["matrix"]
    assert matrix.shape == (len(acts), len(acts)) and np.all(np.diag(matrix) == 1.0)
    for i, j in [(0, 1), (3, len(acts) - 1), (10, 20)]:
        expected = tfwd.metrics.linear_cka(acts[i], acts[j], unbiased=True)
        np.testing.assert_allclose(matrix[i, j], expected, atol=1e-5)
