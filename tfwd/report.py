"""The paper's findings end to end: train (or reuse) a set of runs, analyse them, judge each claim.

A report spec (data/reports/*.json) is a JSON object:

    {
      "name": "cpu",
      "description": "...",
      "runs": {"flags": {...}, "grid": [...]},       a sweep spec body (tfwd.sweeps)
      "analyses": {                                  settings of each analysis (all optional)
        "cka": {"examples": 2048, "passes": 2},      tfwd.cka.analyze_runs, every run
        "pc": {"examples": 1000},                    tfwd.pca.analyze_run, seed-0 runs
        "probes": {"epochs": 5},                     tfwd.probes.analyze_run, seed-0 runs
        "prune_blocks": {"examples": 2000},          tfwd.pruning.analyze_run, seed-0 runs
        "cross_seed": {"examples": 2048, "passes": 1}  CKA of seeds 0 and 1 of one config
      },
      "block_structure": {"threshold": 0.85, ...}    tfwd.blocks.find_block_structure
    }

`build` trains what is missing (bin/train through tfwd.sweeps, skipping finished
runs), runs each analysis into a folder of the run named after a hash of its
settings (so a rerun reuses it, and changed settings never reuse a stale one),
judges the paper's claims (`findings`) and writes report.html: self-contained,
figures embedded, with a table of runs, the findings with their numbers, and
every setting used.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

from tfwd import blocks, cka, pca, probes, pruning, runs, sweeps

SPEC_KEYS = ("name", "description", "runs", "analyses", "block_structure")
ANALYSES = ("cka", "pc", "probes", "prune_blocks", "cross_seed")


def load_spec(path: str) -> dict[str, Any]:
    """Reads a report spec and checks its keys and its runs. Raises ValueError naming the file."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Cannot read report spec {path}: {e}") from None
    return validate(spec, where=path)


def validate(spec: Any, where: str = "report spec") -> dict[str, Any]:
    if not isinstance(spec, dict) or "name" not in spec or "runs" not in spec:
        raise ValueError(f"{where}: a report spec is an object with at least 'name' and 'runs'.")
    unknown = sorted(set(spec) - set(SPEC_KEYS)) + sorted(set(spec.get("analyses", {})) - set(ANALYSES))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}. Allowed: {list(SPEC_KEYS)}, analyses {list(ANALYSES)}.")
    sweeps.expand(sweep_spec(spec))  # raises for invalid runs
    return spec


def sweep_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": spec["name"], "description": spec.get("description", ""), **spec["runs"]}


def _analysis_dir(run_dir: str, kind: str, settings: dict[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(run_dir, f"report_{kind}_{digest}")


def _cached(kind: str, run_dir: str, settings: dict[str, Any], compute: Callable[[str], str], timings: dict) -> str:
    """compute(out_dir) unless a folder for exactly these settings exists; records the seconds spent."""
    out = _analysis_dir(run_dir, kind, settings)
    if os.path.isdir(out):
        timings.setdefault(kind, 0.0)
        return out
    start = time.time()
    logging.info("Report: %s of %s.", kind, os.path.basename(run_dir))
    compute(out)
    timings[kind] = timings.get(kind, 0.0) + time.time() - start
    return out


def analyze(
    run_dirs: list[str], spec: dict[str, Any], data_dir: str | None = None, timings: dict | None = None
) -> dict[str, Any]:
    """Runs every analysis of the spec on finished runs; returns per-run results (loaded, not drawn).

    Returns:
        {run name: {"run": Run, "cka": {"names", "matrix"}, "block": BlockStructure,
        "pc", "probes", "prune_blocks" (for seed-0 runs), "dirs": {kind: folder}},
        "_cross_seed": {config name: {"runs": [a, b], "matrix", "names"}}}
    """
    timings = {} if timings is None else timings
    settings = spec.get("analyses", {})
    block_settings = spec.get("block_structure", {})
    results: dict[str, Any] = {}
    for run_dir in run_dirs:
        run = runs.Run(run_dir)
        entry: dict[str, Any] = {"run": run, "dirs": {}}
        s = {"taps": "all", "examples": 2048, "passes": 2, "batch_size": 256, **settings.get("cka", {})}
        out = _cached("cka", run_dir, s, lambda o: cka.analyze_runs([run_dir], out_dir=o, data_dir=data_dir, **s), timings)
        loaded = cka.load(os.path.join(out, "cka.npz"))
        entry["cka"] = {"names": loaded["names"][0], "matrix": loaded["blocks"][(0, 0)]}
        entry["block"] = blocks.find_block_structure(entry["cka"]["matrix"], entry["cka"]["names"], **block_settings)
        entry["dirs"]["cka"] = out
        if run.config.train.seed == 0:
            _seed0_analyses(run_dir, entry, settings, data_dir, timings)
        results[run.name] = entry
    results["_cross_seed"] = _cross_seed(run_dirs, settings.get("cross_seed", {}), data_dir, timings)
    return results


def _seed0_analyses(run_dir, entry, settings, data_dir, timings) -> None:
    s = {"taps": "all", "examples": 1000, "batch_size": 250, **settings.get("pc", {})}
    out = _cached("pc", run_dir, s, lambda o: pca.analyze_run(run_dir, out_dir=o, data_dir=data_dir, **s), timings)
    entry["pc"], entry["dirs"]["pc"] = pca.load(os.path.join(out, "pc.npz")), out
    if not entry["run"].config.model.residual:
        return  # probes and deletion need residual adds
    s = {"epochs": 5, "test_examples": 2000, "cka_examples": 1024, **settings.get("probes", {})}
    out = _cached("probes", run_dir, s, lambda o: probes.analyze_run(run_dir, out_dir=o, data_dir=data_dir, **s), timings)
    entry["probes"], entry["dirs"]["probes"] = _read_csv(os.path.join(out, "probes.csv")), out
    s = {"examples": 2000, **settings.get("prune_blocks", {})}
    out = _cached(
        "prune_blocks", run_dir, s, lambda o: pruning.analyze_run(run_dir, out_dir=o, data_dir=data_dir, **s), timings
    )
    with open(os.path.join(out, "prune_blocks.json")) as f:
        entry["prune_blocks"] = {"rows": _read_csv(os.path.join(out, "prune_blocks.csv")), **json.load(f)}
    entry["dirs"]["prune_blocks"] = out


def _cross_seed(run_dirs, settings, data_dir, timings) -> dict[str, Any]:
    """CKA between seeds 0 and 1 of every configuration trained with both."""
    by_config: dict[str, dict[int, str]] = {}
    for run_dir in run_dirs:
        config = runs.read_config(run_dir)
        key = config.name.rsplit("-s", 1)[0]
        by_config.setdefault(key, {})[config.train.seed] = run_dir
    s = {"taps": "all", "examples": 2048, "passes": 1, "batch_size": 256, **settings}
    out = {}
    for key, seeds in by_config.items():
        if 0 in seeds and 1 in seeds:
            pair = [seeds[0], seeds[1]]
            folder = _cached(
                "cross_seed", seeds[0], {**s, "other": os.path.basename(seeds[1])},
                lambda o, pair=pair: cka.analyze_runs(pair, out_dir=o, data_dir=data_dir, **s), timings,
            )
            loaded = cka.load(os.path.join(folder, "cka.npz"))
            out[key] = {"runs": [os.path.basename(p) for p in pair], "matrix": loaded["blocks"][(0, 1)],
                        "names": loaded["names"][0], "dir": folder}
    return out


def _read_csv(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(v: str):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def build(
    spec: dict[str, Any],
    out_dir: str,
    data_dir: str | None = None,
    parallel: int = 1,
    program: str = "bin/train",
    train: bool = True,
) -> str:
    """Trains what is missing, analyses everything, and writes the report; returns report.html's path.

    Args:
        spec: a report spec (see the module docstring; `load_spec` reads one).
        out_dir: parent folder of the run directories; the report goes to
            out_dir/report_<name>/.
        data_dir: TFDS data directory for training and analyses.
        parallel: trainings at a time.
        program: the bin/train executable.
        train: False only reports on runs that are already finished.

    Raises:
        RuntimeError: if a training fails (its log is named).
    """
    from tfwd import findings as findings_lib
    from tfwd import html

    started = time.time()
    report_dir = os.path.join(out_dir, f"report_{spec['name']}")
    runs.check_output_dir(report_dir, "report")  # before hours of training, not after
    sweep = sweep_spec(spec)
    if data_dir:
        sweep = {**sweep, "flags": {**sweep.get("flags", {}), "data_dir": data_dir}}
    planned = sweeps.expand(sweep)
    if train:
        outcome = sweeps.run(sweep, out_dir, parallel=parallel, program=program)
        if outcome["failed"]:
            raise RuntimeError(f"Trainings failed: {outcome['failed']}")
    run_dirs = [os.path.join(out_dir, r.name) for r in planned if sweeps.is_finished(out_dir, r)]
    missing = [r.name for r in planned if not sweeps.is_finished(out_dir, r)]
    if missing:
        raise runs.RunError(f"Runs not finished: {missing}. Run bin/report without --notrain to train them.")
    timings: dict[str, float] = {}
    results = analyze(run_dirs, spec, data_dir=data_dir, timings=timings)
    judged = findings_lib.judge(results)
    timings["training"] = sum(
        float(entry["run"].results().get("train_seconds", 0.0)) for name, entry in results.items() if name != "_cross_seed"
    )
    with runs.atomic_dir(report_dir, "report") as tmp:
        html.write_report(tmp, spec, results, judged, timings, time.time() - started)
    path = os.path.join(report_dir, "report.html")
    logging.info("Report written to %s.", path)
    return path
