"""The README's Python examples run as written, so they cannot rot; what they compute is checked.

Every relative link and image in the README and docs/ points at a file that exists.
"""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# [text](target) and ![alt](target), outside code spans and blocks; an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    return LINK.findall(text)


def test_links_are_found_where_they_are_written():
    text = 'See [a](docs/a.md#part), ![b](images/b.png "B") and `[c](not/a/link)`, not [d] (e).\n```\n[f](g)\n```\n'
    assert _links(text) == ["docs/a.md#part", "images/b.png"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_and_image_resolves(page):
    missing = []
    for target in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address, or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readme_opens_with_the_two_commands_and_links_its_results():
    first_block = re.search(r"^```bash\n(.*?)^```", README, flags=re.S | re.M)
    assert first_block.start() < README.index("\n## ")  # before any section
    assert [line.split()[:2] for line in first_block.group(1).splitlines()] == [
        ["./run.sh", "demo"],
        ["./run.sh", "test"],
    ]
    assert "](docs/science/README.md)" in README and "](docs/performance.md)" in README


def _check_library_example(ns):
    """The Library block's matrix is the unbiased CKA of its one minibatch (float64 HSIC_1 reference)."""
    import tfwd

    acts = [a.numpy() for a in ns["acts"](ns["x"], training=False)]
    matrix = ns["matrix"]
    assert matrix.shape == (len(acts), len(acts)) and np.all(np.diag(matrix) == 1.0)
    for i, j in [(0, 1), (3, len(acts) - 1), (10, 20)]:
        np.testing.assert_allclose(matrix[i, j], tfwd.metrics.linear_cka(acts[i], acts[j], unbiased=True), atol=1e-5)


def _check_own_model_example(ns):
    cka = ns["cka"]
    assert cka.shape == (10, 10)  # MobileNetV2's ten residual adds
    np.testing.assert_allclose(cka, cka.T, atol=1e-12)
    assert np.all(np.diag(cka) == 1.0) and np.all(cka[~np.eye(10, dtype=bool)] < 1.0)


CHECKS = {"cka.update_state(acts(x": _check_library_example, "compare_models(": _check_own_model_example}


def test_the_readme_has_the_examples_it_should():
    assert "import tfwd" in BLOCKS[0]
    assert all(any(key in block for block in BLOCKS) for key in CHECKS)


# Appended to a block that picks another Keras backend, which must run in a fresh process.
BACKEND_CHECK = """
import numpy as _np
from tfwd.metrics import linear_cka as _reference
_m = _np.asarray(matrix)
for _i in range(len(acts)):
    for _j in range(len(acts)):
        _want = 1.0 if _i == _j else _reference(acts[_i], acts[_j], unbiased=True)
        assert abs(_m[_i, _j] - _want) < 1e-6, (_i, _j, _m[_i, _j], _want)
import keras as _keras
print("checked under", _keras.backend.backend())
"""


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes stays out of the checkout
    if "KERAS_BACKEND" in BLOCKS[index]:
        done = subprocess.run(
            [sys.executable, "-c", BLOCKS[index] + BACKEND_CHECK], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        backend = re.search(r'KERAS_BACKEND"\] = "(\w+)"', BLOCKS[index]).group(1)
        assert done.stdout.strip().endswith(f"checked under {backend}")
        return
    namespace = {"__name__": "__readme__"}
    exec(compile(BLOCKS[index], "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert "tfwd" in namespace
    for key, check in CHECKS.items():
        if key in BLOCKS[index]:
            check(namespace)
