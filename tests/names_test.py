"""One name per analysis: its module tfwd.<name>, its binary bin/<name> and the kind of folder it writes.

The former names (tfwd.pca, tfwd.pruning, tfwd.dominant, tfwd.populations, bin/probe) are gone.
Nothing here trains or reads data: the analyses are stopped where they reserve their output folder.
"""

import importlib
import importlib.machinery
import os
import re
import types

import pytest

import tfwd
from tfwd import runs

ANALYSES = ("cka", "pc", "probes", "prune_blocks", "dominant_datapoints", "compare_predictions")
RENAMED = {
    "pca": "pc",
    "pruning": "prune_blocks",
    "dominant": "dominant_datapoints",
    "populations": "compare_predictions",
}

RUN = os.path.join("runs", "cifar10-resnet38-w1-s0")
SAVED = os.path.join(os.sep, "models", "net.keras")
# Each analysis' entry point with defaults, and the folder it writes by default: these folder
# names are what users' scripts and earlier results depend on.
CALLS = {
    "cka": (lambda m: m.analyze_models([SAVED]), os.path.join(os.sep, "models", "net_cka_all_test")),
    "pc": (lambda m: m.analyze(RUN), os.path.join(RUN, "pc_all_test")),
    "probes": (lambda m: m.analyze(RUN), os.path.join(RUN, "probes_residual")),
    "prune_blocks": (lambda m: m.analyze(RUN), os.path.join(RUN, "prune_blocks")),
    "dominant_datapoints": (lambda m: m.analyze(RUN), os.path.join(RUN, "dominant_datapoints")),
    "compare_predictions": (lambda m: m.analyze("runs/a-*", "runs/b-*", "out"), "out"),
}


class _Reserved(Exception):
    """Raised by the stand-in for the reservation of a runs.Output: where, and as what kind."""

    def __init__(self, out_dir, kind):
        super().__init__(out_dir, kind)
        self.out_dir, self.kind = out_dir, kind


def test_the_analyses_are_public_modules_and_the_former_names_are_not():
    assert set(ANALYSES) <= set(tfwd.PUBLIC_MODULES)
    assert not set(RENAMED) & (set(tfwd.PUBLIC_MODULES) | set(tfwd.__all__) | set(dir(tfwd)))


@pytest.mark.parametrize("name", ANALYSES)
def test_module_binary_and_output_kind_share_the_analysis_name(name, root, monkeypatch):
    module = importlib.import_module(f"tfwd.{name}")
    assert module.__name__ == f"tfwd.{name}" and module.KIND == name

    binary = root / "bin" / name
    assert binary.is_file() and os.access(binary, os.X_OK)
    imported = re.findall(r"^\s+from tfwd import (.+)$", binary.read_text(), flags=re.M)
    assert any(name in line.split(", ") for line in imported), f"bin/{name} does not call tfwd.{name}"

    def reserve(output, kind, path):
        raise _Reserved(path, kind)

    monkeypatch.setattr(runs.Output, "__init__", reserve)
    monkeypatch.setattr(runs, "Run", lambda path: types.SimpleNamespace(path=path))  # no run is read
    call, folder = CALLS[name]
    with pytest.raises(_Reserved) as reserved:
        call(module)
    assert (reserved.value.kind, reserved.value.out_dir) == (name, folder)


def test_cka_of_runs_writes_its_kind_beside_the_runs():
    from tfwd import cka

    assert cka.default_out_dir([RUN], "all", "test") == os.path.join(RUN, "cka_all_test")
    assert cka.default_out_dir(["runs/a", "runs/b"], "blocks", "test") == os.path.join("runs", "cka_blocks_test_a__b")


@pytest.mark.parametrize("old,new", RENAMED.items())
def test_a_former_name_is_gone(old, new):
    with pytest.raises(AttributeError, match=rf"no attribute '{old}'\. Available: .*\b{new}\b"):
        getattr(tfwd, old)
    # Looked up in the package's own folders (an editable install's finder may know another checkout).
    assert importlib.machinery.PathFinder.find_spec(f"tfwd.{old}", tfwd.__path__) is None
    assert importlib.machinery.PathFinder.find_spec(f"tfwd.plots.{old}", tfwd.plots.__path__) is None
    assert importlib.import_module(f"tfwd.plots.{new}").__name__ == f"tfwd.plots.{new}"  # figures: the analysis' name


def test_bin_probe_is_gone(root):
    assert not os.path.lexists(root / "bin" / "probe") and os.access(root / "bin" / "probes", os.X_OK)
