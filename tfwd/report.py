"""The paper's findings end to end: train (or reuse) a set of runs, analyse them, judge each claim.

A report spec (data/reports/*.json) is a JSON object:

    {
      "name": "science",
      "description": "...",
      "runs": {"flags": {...}, "grid": [...]},       a sweep spec body (tfwd.sweeps)
      "analyses": {                                  settings of each analysis of tfwd.analyses (all optional)
        "cka": {"examples": 2048, "passes": 2},      tfwd.cka.analyze, every run
        "pc": {"examples": 1000},                    tfwd.pc.analyze, every run
        "probes": {"epochs": 5},                     tfwd.probes.analyze, every residual run
        "prune_blocks": {"examples": 2000},          tfwd.prune_blocks.analyze, every residual run
        "cross_seed": {"examples": 2048, "passes": 1},  CKA of seeds 0 and 1 of every cell, and of
                                                     seed 0 of the widest and the deepest cell (claim (g))
        "dominant_datapoints": {"examples": 1000, "top": 10}  tfwd.dominant_datapoints.analyze, runs with a block
      },                                             (only when given); false skips an analysis (not cka)
      "block_structure": {"min_contrast": 0.3, ...} tfwd.blocks.find_block_structure
      "min_train_accuracy": 0.9,                      runs below it count in no claim (rules v2)
      "arm": {"name": "reference", "flags": {"recipe": "reference"}, "grid": [...]}
                                                     another recipe on some cells (trained into
                                                     out_dir/arm_<name>/): (c)-(f) judged again with its
                                                     runs in place of the same cells and seeds
    }

`build` trains what is missing (bin/train through tfwd.sweeps, skipping finished
runs), runs each analysis on every seed into a folder of the run named after a hash of
its settings and of the run's results.json and model.keras (so a rerun reuses it, and
changed settings or a retrained run never reuse a stale one),
judges the paper's claims (tfwd.findings, with the detector's sensitivity) and writes
report.html and findings.json: self-contained, figures embedded, with a table of runs,
the findings with their per-seed numbers and controls, and every setting used.

Beside them, report_<name>/outputs/ keeps what judging needs without the models (`export_outputs`,
about a megabyte per run): commit it, and `judge_outputs` applies a later detector or rule to it
without training or analysing anything again (bin/report --from_outputs).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import shutil
import time
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np
from absl import logging

from tfwd import analyses as registry, apps, blocks, findings, pc, runs, sweeps
from tfwd.progress import showing

OUTPUTS = "outputs"  # report_<name>/outputs/: the runs' small outputs (export_outputs)
WITHIN = "cka_within.npz"  # an exported run's within-model CKA: "cka" (L, L) and "names" (L,)
SPEC_KEYS = ("name", "description", "runs", "analyses", "block_structure", "min_train_accuracy", "arm")
ARM_KEYS = ("name", "description", "flags", "grid")


def load_spec(path: str) -> dict[str, Any]:
    """Reads a report spec and checks its keys and its runs. Raises ValueError naming the file."""
    path = apps.spec_path("reports", path)
    try:
        with open(path) as f:
            spec = json.load(f)
    except OSError as e:
        raise ValueError(f"Cannot read report spec {path}: {e.strerror or e}.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"Cannot read report spec {path}: {e}") from None
    return validate(spec, where=path)


def validate(spec: Any, where: str = "report spec") -> dict[str, Any]:
    if not isinstance(spec, dict) or "name" not in spec or "runs" not in spec:
        raise ValueError(f"{where}: a report spec is an object with at least 'name' and 'runs'.")
    kinds = [entry.kind for entry in registry.in_report()]
    unknown = sorted(set(spec) - set(SPEC_KEYS)) + sorted(set(spec.get("analyses", {})) - set(kinds))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}. Allowed: {list(SPEC_KEYS)}, analyses {kinds}.")
    check_analysis_settings(spec.get("analyses", {}), where)
    for kind, settings in spec.get("analyses", {}).items():
        if settings is not False:
            check_analysis_values(kind, settings, where)
    sweeps.expand(sweep_spec(spec))  # raises for invalid runs
    if "arm" in spec:
        arm = spec["arm"]
        if not isinstance(arm, dict) or not isinstance(arm.get("name"), str) or "grid" not in arm:
            raise ValueError(f"{where}: `arm` is an object with at least 'name' (a string) and 'grid'.")
        if not arm["name"].replace("_", "").replace("-", "").isalnum():
            raise ValueError(
                f"{where}: arm.name names a folder: letters, digits, '-' and '_'. Received: {arm['name']!r}"
            )
        unknown = sorted(set(arm) - set(ARM_KEYS))
        if unknown:
            raise ValueError(f"{where}: arm has unknown keys {unknown}. Allowed: {list(ARM_KEYS)}.")
        sweeps.expand(arm_sweep_spec(spec))
    return spec


# Settings that count something: >= 1 in every analysis (an entry's `minimums` may ask for more).
_COUNTS = ("batch_size", "epochs", "passes", "examples", "test_examples", "recalibration_examples")


def check_analysis_values(kind: str, settings: dict[str, Any], where: str = "report spec") -> None:
    """Checks the values of one analysis' settings (with its defaults in tfwd.analyses) that need no run or data,
    as the analysis itself would, so that a spec is refused before anything is trained or analysed.

    Raises:
        ValueError: naming the spec, the analysis and the setting.
    """
    entry = registry.REGISTRY[kind]
    defaults = {p.name: p.default for p in inspect.signature(entry.analyze).parameters.values()}
    s = {**defaults, **entry.defaults, **settings}

    def at_least(key: str, low: int) -> None:
        if s.get(key) is not None and s[key] < low:
            raise ValueError(f"`{key}` must be >= {low}. Received: {key}={s[key]!r}")

    try:
        for key in _COUNTS:
            at_least(key, 1)
        for key, low in entry.minimums.items():
            at_least(key, low)
        if entry.check is not None:
            entry.check(s)
    except ValueError as e:
        raise ValueError(f"{where}: analyses.{kind}: {e}") from None


# Arguments the report passes itself; a spec cannot set them.
_REPORT_SETS = ("run_dir", "run_dirs", "out_dir", "data_dir", "strategy")


def check_analysis_settings(analyses: Any, where: str = "report spec") -> None:
    """Checks each analysis' settings against its function's signature, before anything is trained.

    Raises:
        ValueError: for a setting the analysis function does not take, one the report sets
            itself, or a value of the wrong type, naming the analysis, setting and types.
    """
    if not isinstance(analyses, dict):
        raise ValueError(f"{where}: `analyses` must be an object. Received: {analyses!r}")
    for kind, settings in analyses.items():
        entry = registry.REGISTRY[kind]
        function = entry.analyze
        name = f"{function.__module__}.{function.__name__}"
        if settings is False and entry.skippable:
            continue
        if not isinstance(settings, dict):
            skip = " (or false to skip it)" if entry.skippable else ""
            raise ValueError(
                f"{where}: analyses.{kind} must be an object of {name} settings{skip}. Received: {settings!r}"
            )
        hints = typing.get_type_hints(function)
        allowed = [p for p in inspect.signature(function).parameters if p not in _REPORT_SETS]
        for key, value in settings.items():
            if key not in allowed:
                why = " (the report sets it)" if key in _REPORT_SETS else ""
                raise ValueError(f"{where}: analyses.{kind} has no setting {key!r}{why}. {name} takes: {allowed}.")
            if key in hints and not _fits(value, hints[key]):
                hint = hints[key]
                described = hint.__name__ if isinstance(hint, type) else str(hint).replace("collections.abc.", "")
                raise ValueError(f"{where}: analyses.{kind}.{key} must be {described}. Received: {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type annotation (unknown annotations accept anything)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):  # JSON numbers: an integer is a float too, a bool is neither
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if origin in (collections.abc.Sequence, list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value if args)
    if isinstance(hint, type) and hint in (str, bool, dict):
        return isinstance(value, hint)
    return True


def sweep_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": spec["name"], "description": spec.get("description", ""), **spec["runs"]}


def arm_sweep_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The arm's runs: the spec's flags, with the arm's flags and grid in place of what they set."""
    arm = spec["arm"]
    grid = arm["grid"] if isinstance(arm["grid"], list) else []
    cases = [c for entry in grid if isinstance(entry, dict) for c in entry.get("cases", [])]
    own = {k for part in grid + cases if isinstance(part, dict) for k in part} | set(arm.get("flags", {}))
    return {
        "name": f"{spec['name']}_arm_{arm['name']}",
        "description": arm.get("description", ""),
        "flags": {**{k: v for k, v in spec["runs"].get("flags", {}).items() if k not in own}, **arm.get("flags", {})},
        "grid": arm["grid"],
    }


def arm_dir(spec: dict[str, Any], out_dir: str) -> str:
    """Where the arm's runs live: out_dir/arm_<name>/ (the run names do not carry the recipe)."""
    return os.path.join(out_dir, f"arm_{spec['arm']['name']}")


def _content(run_dir: str) -> dict[str, Any]:
    """What identifies a run's trained model: a hash of results.json, and model.keras's size and mtime.

    A run retrained with --overwrite (or resumed to more epochs) gets new ones, so its
    analyses are computed again instead of read from the cache of the old model.
    """
    with open(os.path.join(run_dir, runs.RESULTS), "rb") as f:
        results = hashlib.sha1(f.read()).hexdigest()
    model = os.stat(os.path.join(run_dir, runs.MODEL))
    return {"results": results, "model": [model.st_size, model.st_mtime_ns]}


def _analysis_dir(run_dir: str, kind: str, settings: dict[str, Any], inputs: Sequence[str] = ()) -> str:
    """run_dir/report_<kind>_<hash of the settings, the content of run_dir and `inputs`, and the output version>."""
    key = {"settings": settings, "runs": [_content(r) for r in (run_dir, *inputs)]}
    entry = registry.REGISTRY.get(kind)
    if entry is not None and entry.version > 1:  # version 1 folders keep their hash
        key["version"] = entry.version
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(run_dir, f"report_{kind}_{digest}")


def _cached(
    kind: str,
    run_dir: str,
    settings: dict[str, Any],
    compute: Callable[[str], str],
    timings: dict,
    inputs: Sequence[str] = (),
) -> str:
    """compute(out_dir), out_dir as its one positional argument, unless a folder for exactly these settings and runs
    exists; records the seconds spent.

    The folder is keyed on the settings and on the content of `run_dir` and of the other
    runs the analysis reads (`inputs`), see `_content`.
    """
    out = _analysis_dir(run_dir, kind, settings, inputs)
    if os.path.isdir(out):
        try:
            runs.check_measured(out)
            timings.setdefault(kind, 0.0)
            return out
        except runs.RunError as e:  # a run retrained since, with the same results and model size and time
            logging.info("Report: %s Computing it again.", e)
    start = time.time()
    logging.info("Report: %s of %s.", kind, os.path.basename(run_dir))
    compute(out)
    timings[kind] = timings.get(kind, 0.0) + time.time() - start
    return out


@dataclasses.dataclass
class Analyses:
    """Everything `analyze` measured on a set of finished runs.

    Attributes:
        runs: findings.JudgedRun per run (what the rules read), in the spec's order.
        opened: the tfwd.runs.Run of each, by name.
        blocks: the detected block structure of each (the spec's detector settings).
        cross_seed: findings.CrossSeed per cell trained with seeds 0 and 1, by cell label.
        dominant: the tfwd.dominant_datapoints results of the runs with a block, by name.
        dirs: the folder of each analysis of each run, by name and kind ("cross_seed" by cell).
        wide_deep: findings.CrossModel of seed 0 of the widest and the deepest fitted cell on each data subset
            that has both (claim (g)), rows the wide model's layers.
        results: what each analysis' `load` read, by run name (or cell label) and kind, as `dirs`.
        missing: runs and analyses the spec asks for that exported outputs lack (`load_outputs`; the arm's
            prefixed with its folder).
    """

    runs: list[findings.JudgedRun]
    opened: dict[str, runs.Run]
    blocks: dict[str, blocks.BlockStructure]
    cross_seed: dict[str, findings.CrossSeed]
    dominant: dict[str, Any]
    dirs: dict[str, dict[str, str]]
    wide_deep: list[findings.CrossModel] = dataclasses.field(default_factory=list)
    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    missing: list[str] = dataclasses.field(default_factory=list)


def _runs_it(entry: registry.Analysis, settings: dict[str, Any], run: runs.Run, block: Any) -> bool:
    """Whether the report runs a per-run analysis on `run`, under the spec's analyses settings."""
    if settings.get(entry.kind) is False or (entry.on_request and entry.kind not in settings):
        return False
    if entry.residual and not run.config.model.residual:  # probes and deletion need residual adds
        return False
    return not entry.needs_block or block.found


@runs.sharing_models()  # the analyses of a run open it one after another: load its model once
@runs.reading_runs()  # every run stays locked for reading until the report is written
def analyze(
    run_dirs: list[str],
    spec: dict[str, Any],
    data_dir: str | None = None,
    timings: dict | None = None,
    wide_deep: bool = True,
) -> Analyses:
    """Runs every analysis of the spec on every finished run (all seeds); returns what was measured.

    The analyses are those of `tfwd.analyses.per_run`, in its order, on every run: CKA, first
    PC, probes and block deletion (the last two for residual networks), and dominant
    datapoints, when the spec gives their settings, for every run in which the spec's detector
    finds a block; then those of `tfwd.analyses.per_pair` (cross-seed CKA) for every cell with
    seeds 0 and 1, and claim (g)'s cross-model CKA unless wide_deep is False. An analysis the
    spec sets to false is skipped (the findings that need it read "not measured").
    """
    timings = {} if timings is None else timings
    settings = spec.get("analyses", {})
    detector = spec.get("block_structure", {})
    out = Analyses([], {}, {}, {}, {}, {})
    for run_dir in run_dirs:
        run = runs.Run(run_dir)
        dirs, results = out.dirs.setdefault(run.name, {}), out.results.setdefault(run.name, {})
        block = None
        for entry in registry.per_run():  # the within-model CKA first: the detector reads it
            if not _runs_it(entry, settings, run, block):
                continue
            kind_settings = {**entry.defaults, **settings.get(entry.kind, {})}
            compute = functools.partial(entry.analyze, entry.target([run_dir]), data_dir=data_dir, **kind_settings)
            dirs[entry.kind] = _cached(entry.kind, run_dir, kind_settings, compute, timings)
            results[entry.kind] = entry.load(dirs[entry.kind])
            if entry.kind == "cka":
                within = results["cka"]
                block = blocks.find_block_structure(within.blocks[0, 0], within.names[0], **detector)
        _add_run(out, run, list(results["cka"].names[0]), results["cka"].blocks[0, 0], block)
    for entry in registry.per_pair():
        if settings.get(entry.kind) is not False:
            _pairs(entry, run_dirs, settings.get(entry.kind, {}), data_dir, timings, out)
    if wide_deep:
        _wide_deep(spec, data_dir, timings, out)
    return out


def cell_label(config: runs.RunConfig) -> str:
    """The run name without its seed: what the seeds of one cell share."""
    return config.name.rsplit("-s", 1)[0]


def _seed_pairs(items) -> dict[str, tuple[Any, Any]]:
    """(seed 0's, seed 1's) item of every cell trained with both, by cell label; `items` are (RunConfig, item)."""
    by_cell: dict[str, dict[int, Any]] = {}
    for config, item in items:
        by_cell.setdefault(cell_label(config), {})[config.train.seed] = item
    return {key: (seeds[0], seeds[1]) for key, seeds in by_cell.items() if 0 in seeds and 1 in seeds}


def _pairs(entry: registry.Analysis, run_dirs, settings, data_dir, timings, out: Analyses) -> None:
    """A pair analysis (cross-seed CKA) between seeds 0 and 1 of every configuration trained with both."""
    for key, pair in _seed_pairs((runs.read_config(d), d) for d in run_dirs).items():
        folder, loaded = _pair_analysis(entry, entry.kind, list(pair), settings, data_dir, timings)
        _add_pair(out, entry.kind, key, tuple(os.path.basename(p) for p in pair), folder, loaded)


def _add_pair(out: Analyses, kind: str, key: str, names: tuple[str, str], folder: str, loaded: Any) -> None:
    """Records a pair analysis of cell `key` (its runs `names`, seed 0 first); the cross-seed CKA is what (f) reads."""
    out.dirs.setdefault(key, {})[kind] = folder
    out.results.setdefault(key, {})[kind] = loaded
    if kind == "cross_seed":
        out.cross_seed[key] = findings.CrossSeed(names, list(loaded.names[0]), loaded.blocks[0, 1])


def _pair_analysis(
    entry: registry.Analysis, kind: str, pair: list[str], settings: dict[str, Any], data_dir, timings: dict
) -> tuple[str, Any]:
    """`entry`'s analysis of two runs (its defaults, then `settings`), cached as `kind` in the first run's folder
    and keyed on both; returns the folder and what `entry.load` reads from it."""
    pair_settings = {**entry.defaults, **settings}
    folder = _cached(
        kind,
        pair[0],
        {**pair_settings, "other": os.path.basename(pair[1])},
        functools.partial(entry.analyze, entry.target(pair), data_dir=data_dir, **pair_settings),
        timings,
        [pair[1]],
    )
    return folder, entry.load(folder)


def _add_run(out: Analyses, run: runs.Run, names: list[str], cka, block: blocks.BlockStructure) -> None:
    """Adds `run`, its within-model CKA and its block to `out`, with the analyses already in out.results[run.name]."""
    results, done = out.results[run.name], run.results()
    out.runs.append(
        findings.JudgedRun(
            run.name,
            run.config,
            names,
            cka,
            pc=results.get("pc"),
            probes=results.get("probes"),
            prune_blocks=results.get("prune_blocks"),
            train_accuracy=done.get("accuracy"),
            test_accuracy=done.get("test_accuracy"),
            val_accuracy=done.get("val_accuracy"),
        )
    )
    if "dominant_datapoints" in results:
        out.dominant[run.name] = results["dominant_datapoints"]
    out.opened[run.name] = run
    out.blocks[run.name] = block


def _wide_deep(spec: dict[str, Any], data_dir: str | None, timings: dict, out: Analyses) -> None:
    """Cross-model CKA of claim (g)'s pairs (findings.wide_deep_pairs), into out.wide_deep.

    Measured with the cross-seed CKA's settings, and skipped with it; cached in the wide run's folder under
    "wide_deep", keyed on both runs.
    """
    entry = registry.REGISTRY["cross_seed"]  # its analysis (tfwd.cka) and its settings
    settings = spec.get("analyses", {}).get(entry.kind, {})
    if settings is False:
        return
    for wide, deep in findings.wide_deep_pairs(out.runs, spec.get("min_train_accuracy", findings.FIT_MIN)):
        pair = [out.opened[wide.name].path, out.opened[deep.name].path]
        folder, loaded = _pair_analysis(entry, "wide_deep", pair, settings, data_dir, timings)
        _add_wide_deep(out, wide.name, deep.name, folder, loaded)


def _add_wide_deep(out: Analyses, wide: str, deep: str, folder: str, loaded: Any) -> None:
    """Records claim (g)'s cross-model CKA of runs `wide` and `deep` (rows the wide model's layers)."""
    out.wide_deep.append(findings.CrossModel((wide, deep), tuple(loaded.names), loaded.blocks[0, 1]))
    out.dirs.setdefault(wide, {})["wide_deep"] = folder


@runs.reading_runs()  # the runs analysed stay locked for reading until the report is written
def build(
    spec: dict[str, Any],
    out_dir: str,
    data_dir: str | None = None,
    parallel: int = 1,
    program: str = "bin/train",
    train: bool = True,
    progress: TextIO | None = None,
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
        progress: a stream (sys.stderr) for the trainings' progress and a heartbeat
            while analyses run (`tfwd.progress`); None shows nothing.

    Raises:
        ValueError: for an invalid spec (runs or analysis settings), before anything runs.
        runs.RunError: if a training fails, or a run is missing with train=False.
    """
    started = time.time()
    validate(spec)  # every setting, before hours of training
    runs.check_folder_path(out_dir)  # a file or a symlink loop is named as such, before any training
    report_dir = os.path.join(out_dir, f"report_{spec['name']}")
    runs.check_output_dir(report_dir, "report")  # before hours of training, not after
    sweeps_ = [(sweep_spec(spec), out_dir)] + (
        [(arm_sweep_spec(spec), arm_dir(spec, out_dir))] if "arm" in spec else []
    )
    run_dirs = [_finished_runs(s, d, data_dir, train, parallel, program, progress) for s, d in sweeps_]
    timings: dict[str, float] = {}
    with showing(progress):  # analyses log as they go; this fills their quiet stretches
        analyses = analyze(run_dirs[0], spec, data_dir=data_dir, timings=timings)
        arm = analyze(run_dirs[1], spec, data_dir=data_dir, timings=timings, wide_deep=False) if "arm" in spec else None
    return _write(spec, report_dir, analyses, arm, timings, started)


def _write(
    spec: dict[str, Any], report_dir: str, analyses: Analyses, arm: Analyses | None, timings: dict, started: float
) -> str:
    """Judges the claims (and the arm) and writes report_dir: report.html, findings.json, figures and outputs/."""
    from tfwd import html  # matplotlib only when a report is drawn

    detector, fit_min = spec.get("block_structure"), spec.get("min_train_accuracy", findings.FIT_MIN)
    judged = findings.judge_with_sensitivity(analyses.runs, analyses.cross_seed, detector, fit_min, analyses.wide_deep)
    compared = (
        None
        if arm is None
        else findings.judge_arm(analyses.runs, analyses.cross_seed, arm.runs, arm.cross_seed, detector, fit_min)
    )
    trained = list(analyses.opened.values()) + (list(arm.opened.values()) if arm else [])
    timings["training"] = sum(float(r.results().get("train_seconds", 0.0)) for r in trained)
    with runs.atomic_dir(report_dir, "report") as tmp:
        html.write_report(tmp, spec, analyses, judged, timings, time.time() - started, arm=(arm, compared))
        export_outputs(os.path.join(tmp, OUTPUTS), spec, analyses, arm)
    path = os.path.join(report_dir, "report.html")
    logging.info("Report written to %s.", path)
    return path


def _finished_runs(sweep, out_dir, data_dir, train, parallel, program, progress) -> list[str]:
    """Trains the sweep's missing runs into out_dir (train=True); returns their folders.

    Raises:
        runs.RunError: if a training fails, or a run is not finished with train=False.
    """
    if data_dir:
        sweep = {**sweep, "flags": {**sweep.get("flags", {}), "data_dir": data_dir}}
    planned = sweeps.expand(sweep)
    if train:
        outcome = sweeps.run(sweep, out_dir, parallel=parallel, program=program, progress=progress)
        if outcome["failed"]:
            raise runs.RunError(f"Trainings failed: {outcome['failed']} (each run's log names the cause).")
    missing = [r.name for r in planned if not sweeps.is_finished(out_dir, r)]
    if missing:
        raise runs.RunError(
            f"Runs not finished in {out_dir}: {missing}. Run bin/report without --notrain to train them."
        )
    return [os.path.join(out_dir, r.name) for r in planned]


def export_outputs(folder: str, spec: dict[str, Any], analyses: Analyses, arm: Analyses | None = None) -> None:
    """Writes what judging needs, without the models, into folder/<run>/ (the arm's runs into folder/arm_<name>/).

    Each run gets its config.json, results.json and history.csv, its within-model CKA (`WITHIN`) and
    the output folder of every analysis as analyses/<kind>/, figures left out; an analysis of a pair
    of seeds goes under seed 0's run, claim (g)'s cross-model CKA under the wide run. `load_outputs`
    reads it back.
    """
    parts = [(analyses, folder)] + ([(arm, os.path.join(folder, f"arm_{spec['arm']['name']}"))] if arm else [])
    where = {}  # each run's folder, as analyses record it, to its place in the export
    for part, base in parts:
        for r in part.runs:
            path = part.opened[r.name].path
            where[path] = where[os.path.relpath(path)] = os.path.relpath(os.path.join(base, r.name), folder)
    for part, base in parts:
        for r in part.runs:
            target = os.path.join(base, r.name)
            os.makedirs(target)
            for file in (runs.CONFIG, runs.RESULTS, runs.HISTORY):
                source = os.path.join(part.opened[r.name].path, file)
                if os.path.exists(source):
                    shutil.copyfile(source, os.path.join(target, file))
            np.savez_compressed(os.path.join(target, WITHIN), cka=r.cka, names=np.asarray(r.names))
        for key, dirs in part.dirs.items():
            owner = key if key in part.opened else f"{key}-s0"  # a cell's pair analyses: under seed 0
            for kind, source in dirs.items():
                target = os.path.join(base, owner, "analyses", kind)
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.png", runs.OUTPUT_MARKER))
                _unlocate(target, where)
                if kind == pc.KIND:
                    downcast_figure_arrays(os.path.join(target, pc.FILE))


def downcast_figure_arrays(path: str) -> None:
    """Rewrites an exported pc.npz with its figure-only arrays (`tfwd.pc.FIGURE_ARRAYS`) at float32."""
    with np.load(path) as f:
        arrays = {k: f[k].astype(np.float32) if k in pc.FIGURE_ARRAYS else f[k] for k in f.files}
    np.savez_compressed(path, **arrays)


def _unlocate(folder: str, where: dict[str, str]) -> None:
    """Rewrites the run folders an exported analysis records (its settings, `measured`) as their places in the
    export: a committed copy names the runs it measured, not the folders of the machine that ran it."""

    def rewrite(text: str) -> str:
        for path in sorted(where, key=len, reverse=True):
            text = text.replace(path, where[path])
        return text

    for root, _, files in os.walk(folder):
        for file in files:
            path = os.path.join(root, file)
            if file.endswith((".json", ".csv")):
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(rewrite(text))
            elif file.endswith(".npz"):
                with np.load(path) as f:
                    arrays = {k: f[k] for k in f.files}
                for k, a in arrays.items():
                    if a.dtype.kind == "U":
                        arrays[k] = np.asarray([rewrite(str(v)) for v in a.ravel()]).reshape(a.shape)
                np.savez_compressed(path, **arrays)


def load_outputs(spec: dict[str, Any], folder: str) -> tuple[Analyses, Analyses | None]:
    """The spec's runs and analyses read back from exported outputs (`export_outputs`), blocks found by the spec's
    detector; what the spec asks for and `folder` lacks is listed in each Analyses' `missing` (and left out)."""
    validate(spec)
    main = _load_part(sweep_spec(spec), folder, spec)
    arm = _load_part(arm_sweep_spec(spec), arm_dir(spec, folder), spec) if "arm" in spec else None
    if arm is not None:
        main.missing += [f"{os.path.basename(arm_dir(spec, folder))}/{m}" for m in arm.missing]
    if spec.get("analyses", {}).get("cross_seed") is False:
        return main, arm
    for wide, deep in findings.wide_deep_pairs(main.runs, spec.get("min_train_accuracy", findings.FIT_MIN)):
        path = os.path.join(folder, wide.name, "analyses", "wide_deep")
        loaded = registry.REGISTRY["cross_seed"].load(path) if os.path.isdir(path) else None
        if loaded is None or [os.path.basename(m) for m in loaded.models] != [wide.name, deep.name]:
            main.missing.append(f"{wide.name}/analyses/wide_deep (against {deep.name})")
            continue
        _add_wide_deep(main, wide.name, deep.name, path, loaded)
    return main, arm


def _load_part(sweep: dict[str, Any], folder: str, spec: dict[str, Any]) -> Analyses:
    """`load_outputs` of one sweep (the spec's, or its arm's) from folder/<run>/."""
    settings, detector = spec.get("analyses", {}), spec.get("block_structure", {})
    out = Analyses([], {}, {}, {}, {}, {})
    for planned in sweeps.expand(sweep):
        run_dir = os.path.join(folder, planned.name)
        if not all(os.path.exists(os.path.join(run_dir, f)) for f in (runs.CONFIG, runs.RESULTS, WITHIN)):
            out.missing.append(planned.name)
            continue
        run = runs.Run(run_dir)
        with np.load(os.path.join(run_dir, WITHIN)) as f:
            cka, names = f["cka"], [str(n) for n in f["names"]]
        block = blocks.find_block_structure(cka, names, **detector)
        dirs, results = out.dirs.setdefault(run.name, {}), out.results.setdefault(run.name, {})
        for entry in registry.per_run():
            if entry.kind != "cka" and _runs_it(entry, settings, run, block):
                path = os.path.join(run_dir, "analyses", entry.kind)
                loaded = _exported(entry, path, run.name, out)
                if loaded is not None:
                    dirs[entry.kind], results[entry.kind] = path, loaded
        _add_run(out, run, names, cka, block)
    for key, pair in _seed_pairs((run.config, run.name) for run in out.opened.values()).items():
        for entry in registry.per_pair():
            if settings.get(entry.kind) is not False:
                path = os.path.join(folder, pair[0], "analyses", entry.kind)
                loaded = _exported(entry, path, pair[0], out)
                if loaded is not None:
                    _add_pair(out, entry.kind, key, pair, path, loaded)
    return out


def _exported(entry: registry.Analysis, path: str, owner: str, out: Analyses) -> Any:
    """What `entry.load` reads from the exported analysis at `path`; None, listed in out.missing (under the run
    `owner`), when it is absent."""
    if not os.path.isdir(path):
        out.missing.append(f"{owner}/analyses/{entry.kind}")
        return None
    return entry.load(path)


def judge_outputs(spec: dict[str, Any], folder: str, out_dir: str) -> str:
    """Judges the spec again on exported outputs (`load_outputs`), with nothing trained or analysed; writes
    out_dir/report_<name>/ as `build` does and returns report.html's path."""
    started = time.time()
    analyses, arm = load_outputs(spec, folder)
    if analyses.missing:
        logging.warning("Report: not in %s, left out of the findings: %s.", folder, ", ".join(analyses.missing))
    if not analyses.runs:
        raise runs.RunError(f"{folder} holds none of the runs of spec {spec['name']!r} (as bin/report exports them).")
    report_dir = os.path.join(out_dir, f"report_{spec['name']}")
    return _write(spec, report_dir, analyses, arm, {}, started)
