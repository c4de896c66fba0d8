"""The registry of tfwd's analyses: one entry per analysis, which tfwd.report loops over.

Every analysis is one module with the same small surface (docs/adding_an_analysis.md):

    KIND                         its one name: the module tfwd.<KIND>, the binary bin/<KIND>, the
                                 marker of its output folders
    analyze(...) -> str          computes, writes an output folder through tfwd.runs.Output, returns it
    load(folder) -> a result     reads that folder back as a frozen dataclass with documented fields

An entry says how the report runs it: the report spec's key, its default settings, whether it
needs a residual network or a detected block, and whether it reads each run or a pair of seeds.
The report reads nothing else to run, cache, load and validate the settings of an analysis.

Example:
    >>> [entry.kind for entry in per_run()]
    ['cka', 'pc', 'probes', 'prune_blocks', 'dominant_datapoints']
    >>> REGISTRY["probes"].residual, REGISTRY["cross_seed"].pair
    (True, True)
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ARGUMENTS = ("run_dir", "run_dirs", "patterns")


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One registered analysis.

    Attributes:
        kind: its name in a report spec ("analyses": {kind: settings}), in the report's cached
            folders (RUN/report_<kind>_<hash>) and in its timings.
        module: the module that implements the protocol ("tfwd.cka"); its KIND is `kind`, except for
            an entry that runs another analysis on pairs of runs (cross_seed runs tfwd.cka).
        argument: what `analyze` takes first: "run_dir" (one run directory), "run_dirs" (a list:
            the report passes one run, or the pair), "patterns" (two glob patterns of runs; the
            report does not run it).
        defaults: the report's settings for it; a spec's settings override them.
        residual: needs residual adds: the report skips it on plain networks.
        needs_block: the report runs it only on runs where the detector finds a block.
        on_request: the report runs it only when the spec gives its settings.
        skippable: a spec may set it to false to skip it.
        pair: the report runs it on seeds 0 and 1 of every cell trained with both, not on each run.
        minimums: lower bounds of settings beyond the report's >= 1 (the unbiased CKA needs 4 examples).
        check: further checks of its settings (defaults applied) that need no run or data; raises ValueError.
        figures: (file, caption) of the figures of its folder that the report shows for each run.
        version: of what its folder holds; a higher one makes the report compute cached folders again.
    """

    kind: str
    module: str
    argument: str = "run_dir"
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    residual: bool = False
    needs_block: bool = False
    on_request: bool = False
    skippable: bool = True
    pair: bool = False
    minimums: Mapping[str, int] = dataclasses.field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None
    figures: Sequence[tuple[str, str]] = ()
    version: int = 1

    def __post_init__(self):
        if self.argument not in ARGUMENTS:
            raise ValueError(f"`argument` must be one of {ARGUMENTS}. Received: argument={self.argument!r}")
        object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))

    @property
    def in_report(self) -> bool:
        """Whether tfwd.report runs it (on runs or pairs of runs; populations are compared by hand)."""
        return self.argument != "patterns"

    def implementation(self) -> types.ModuleType:
        """The module (imported on first use: the analyses import TensorFlow)."""
        return importlib.import_module(self.module)

    @property
    def analyze(self) -> Callable[..., str]:
        return self.implementation().analyze

    @property
    def load(self) -> Callable[[str], Any]:
        return self.implementation().load

    def target(self, run_dirs: Sequence[str]) -> str | list[str]:
        """`analyze`'s first argument for these runs (one, or the pair)."""
        return list(run_dirs) if self.argument == "run_dirs" else run_dirs[0]


def _check_probes(settings: dict[str, Any]) -> None:
    from tfwd import probes

    probes._grid(settings["optimizer"], settings["learning_rates"], settings["l2"])


def _check_dominant_datapoints(settings: dict[str, Any]) -> None:
    from tfwd import dominant_datapoints

    dominant_datapoints.check_top(settings["top"], settings["examples"])


_CKA_MINIMUMS = {"batch_size": 4, "examples": 4}  # the unbiased HSIC_1 estimator needs n >= 4

# In the report's order: the within-model CKA first (the detector and every rule read it).
REGISTRY: dict[str, Analysis] = {
    entry.kind: entry
    for entry in (
        Analysis(
            "cka",
            "tfwd.cka",
            argument="run_dirs",
            defaults={"taps": "all", "examples": 2048, "passes": 2, "batch_size": 256},
            skippable=False,
            minimums=_CKA_MINIMUMS,
        ),
        Analysis(
            "pc",
            "tfwd.pc",
            defaults={"taps": "all", "examples": 1000, "batch_size": 250},
            minimums={"examples": 4},
            figures=[("first_pc.png", "First principal component (Figure 3)")],
            version=2,  # 2: with the TruncatedSVD estimator (fraction_svd)
        ),
        Analysis(
            "probes",
            "tfwd.probes",
            defaults={"epochs": 5, "test_examples": 2000, "cka_examples": 1024},
            residual=True,
            minimums={"cka_examples": 4},
            check=_check_probes,
            figures=[("probes_cka.png", "Linear probes under the CKA heatmap (Figure 4)")],
        ),
        Analysis(
            "prune_blocks",
            "tfwd.prune_blocks",
            defaults={"examples": 2000},
            residual=True,
            figures=[("prune_blocks.png", "Block deletion (Figure 5)")],
        ),
        Analysis(
            "cross_seed",
            "tfwd.cka",
            argument="run_dirs",
            defaults={"taps": "all", "examples": 2048, "passes": 1, "batch_size": 256},
            pair=True,
            minimums=_CKA_MINIMUMS,
        ),
        Analysis(
            "dominant_datapoints",
            "tfwd.dominant_datapoints",
            defaults={"examples": 1000, "top": 10},
            needs_block=True,
            on_request=True,
            check=_check_dominant_datapoints,
            figures=[
                ("dominant_datapoints.png", "Dominant datapoints (Nguyen et al. 2022)"),
                ("cka_without_top.png", "CKA with and without the dominant datapoints"),
            ],
        ),
        Analysis("compare_predictions", "tfwd.compare_predictions", argument="patterns"),
    )
}


def in_report() -> list[Analysis]:
    """The analyses tfwd.report runs, in its order."""
    return [entry for entry in REGISTRY.values() if entry.in_report]


def per_run() -> list[Analysis]:
    """The analyses the report runs on each run, in its order (the within-model CKA first)."""
    return [entry for entry in in_report() if not entry.pair]


def per_pair() -> list[Analysis]:
    """The analyses the report runs on seeds 0 and 1 of each cell."""
    return [entry for entry in in_report() if entry.pair]
