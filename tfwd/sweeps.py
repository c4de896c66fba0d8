"""Sweeps: the bin/train runs behind a figure, listed in a JSON spec, printed or run.

A spec (data/sweeps/*.json holds one per paper figure) is a JSON object:

    {
      "name": "figure7",                        required: letters, digits, "_", "-", "."
      "description": "ResNet-62 (1x) against ResNet-14 (2x) ...",      optional text
      "flags": {"dataset": "cifar10", "epochs": 300},                  optional
      "grid": [                                  required: a non-empty list of grids
        {"seed": {"range": [0, 100]},
         "cases": [{"depth": 62, "width": 1}, {"depth": 14, "width": 2}]}
      ]
    }

- "flags" are bin/train flags shared by every run.
- Each grid maps bin/train flags to a non-empty list of values, or to
  {"range": [start, stop]} for the integers start, ..., stop - 1. Its runs are the
  cross product of the lists, in the order the keys are written (the first key
  varies slowest). The optional "cases" key is one axis whose values are objects
  setting several flags together (architectures that differ in depth and width).
- The runs of the spec are those of its grids, grid after grid, in that order.
- Values have the flag's type: integers (depth, seed, train_examples, ...),
  numbers (width, learning_rate, ...), true/false (residual, deterministic, ...),
  strings or one of the allowed choices (dataset, arch, strategy), lists of
  numbers (blocks, widths). null means bin/train's default (train_examples: all).
- Errors: a key that is not a bin/train flag (out_dir comes from the caller and
  overwrite is refused: a sweep never deletes runs), a flag set twice for one
  run, a value of the wrong type or below the flag's bound (tfwd.run_settings),
  an invalid run (a depth that is not 6n + 2, ...), and two runs with the same
  run directory.

Runs are independent processes. `commands` prints one bin/train command per run,
so any launcher can spread them over machines (`xargs -P`, a cluster array job);
`run` launches them here, a few at a time, skipping finished runs (results.json
present) and resuming unfinished ones (bin/train resumes from its checkpoint).

Example:
    >>> spec = load_spec("data/sweeps/figure7.json")
    >>> len(expand(spec))
    200
    >>> commands(spec, "runs")[0]
    'bin/train --depth=62 --width=1 --seed=0 --dataset=cifar10 --epochs=300 --out_dir=runs'
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from absl import logging

from tfwd import apps, data, run_settings, runs, training
from tfwd.progress import TrainingLogs, showing

# bin/train's flags and their kinds (tfwd.run_settings), in the order commands list them (tests
# check the names against bin/train --helpfull). out_dir is the caller's; overwrite is refused.
TRAIN_FLAGS: dict[str, Any] = run_settings.KINDS
SPEC_KEYS = ("name", "description", "flags", "grid")
# A spec of up to this many runs is checked whole when it is loaded; the runs of a larger
# one (a range of millions of seeds) are checked as they are listed, so --limit stays cheap.
CHECK_ON_LOAD = 10_000
# Once `run` has its `limit` runs to launch, it looks this many runs further to list those
# left unstarted, and counts the rest without making them.
LOOKAHEAD = 10_000
Runner = Callable[[Sequence[str], str], int]


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its bin/train flags and the RunConfig bin/train will build from them.

    Attributes:
        flags: bin/train flags (without out_dir) in TRAIN_FLAGS order; None values omitted.
        config: the run's tfwd.runs.RunConfig.
    """

    flags: dict[str, Any]
    config: runs.RunConfig

    @property
    def name(self) -> str:
        """The run directory's name (RunConfig.name)."""
        return self.config.name

    def argv(self, out_dir: str, program: str = "bin/train") -> list[str]:
        """The command as an argument list: [program, "--depth=62", ..., "--out_dir=..."]."""
        return [program, *(_flag(k, v) for k, v in self.flags.items()), f"--out_dir={out_dir}"]

    def command(self, out_dir: str, program: str = "bin/train") -> str:
        """The command as one shell-quoted line."""
        return shlex.join(self.argv(out_dir, program))


def _flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, list):
        return f"--{name}=" + ",".join(_flag_number(v) for v in value)
    return f"--{name}={_flag_number(value) if isinstance(value, float) else value}"


def _flag_number(v) -> str:
    """1.0 -> "1", 2.8 -> "2.8", 1e-05 -> "1e-05": exact, and short for integral values."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


# --- validation and expansion ---------------------------------------------------------------


def _check_value(name: str, value: Any, where: str) -> Any:
    """A flag's value, checked against its setting's kind and bound (tfwd.run_settings); None stays None."""
    if value is None:
        return None
    kind = TRAIN_FLAGS[name]
    if not run_settings.fits(value, kind, flag=True):
        should = run_settings.kind_name(kind) + ("" if isinstance(kind, tuple) else " (or null for the default)")
        raise ValueError(f"{where}: `{name}` must be {should}. Received: {value!r}")
    problem = run_settings.bound_problem(name, value) if kind in ("int", "float") else None
    if problem:
        raise ValueError(f"{where}: {problem}. Received: {value!r}")
    return float(value) if kind == "float" else value


def _check_flags(flags: Any, where: str) -> dict[str, Any]:
    if not isinstance(flags, dict):
        raise ValueError(f"{where} must be an object of bin/train flags. Received: {flags!r}")
    for key in flags:
        if key not in TRAIN_FLAGS:
            why = (
                " (a sweep never deletes runs)"
                if key == "overwrite"
                else " (the caller sets it)"
                if key == "out_dir"
                else ""
            )
            raise ValueError(f"{where}: unknown key {key!r}{why}. Allowed: {sorted(TRAIN_FLAGS)}")
    return {k: _check_value(k, v, where) for k, v in flags.items()}


class _Range(Sequence):
    """The flag dicts {key: start}, ..., {key: stop - 1} of a range axis, made on demand (a range
    of 10^8 seeds costs no memory)."""

    def __init__(self, key: str, bounds: range, where: str):
        self.key, self.values = key, bounds
        self.convert = float if TRAIN_FLAGS[key] == "float" else int
        _check_value(key, bounds[0], where)  # every value of the range has the first one's type

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        return {self.key: self.convert(self.values[i])}


def _axis(key: str, values: Any, where: str) -> Sequence[dict[str, Any]]:
    """One grid axis as a sequence of flag dicts."""
    where = f"{where}[{key!r}]"
    if isinstance(values, dict) and key != "cases":
        bounds = values.get("range") if set(values) == {"range"} else None
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(type(v) is int for v in bounds)):
            raise ValueError(
                f'{where} must be a list of values or {{"range": [start, stop]}} of integers. Received: {values!r}'
            )
        if key in TRAIN_FLAGS and range(*bounds):
            return _Range(key, range(*bounds), where)
        values = []  # an empty range, or an unknown key: the errors below
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} must be a non-empty list of values. Received: {values!r}")
    if key == "cases":
        return [_check_flags(case, f"{where}[{i}]") for i, case in enumerate(values)]
    if key not in TRAIN_FLAGS:
        raise ValueError(f"{where}: unknown key {key!r}. Allowed: {sorted(TRAIN_FLAGS)} and 'cases'")
    return [{key: _check_value(key, v, where)} for v in values]


def _product(axes: Sequence[Sequence[Any]]) -> Iterator[tuple]:
    """itertools.product without materializing the axes (product copies each into a tuple)."""
    if not axes:
        yield ()
        return
    for first in range(len(axes[0])):
        for rest in _product(axes[1:]):
            yield (axes[0][first], *rest)


def validate(spec: Any) -> dict[str, Any]:
    """Checks a spec's structure (see the module docstring); returns it. Raises ValueError."""
    if not isinstance(spec, dict):
        raise ValueError(f"A sweep spec must be a JSON object. Received: {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"Sweep spec: unknown keys {unknown}. Allowed: {list(SPEC_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"Sweep spec: `name` must be letters, digits, '_', '-' or '.'. Received: {name!r}")
    if not isinstance(spec.get("description", ""), str):
        raise ValueError(f"Sweep spec {name}: `description` must be a string.")
    _check_flags(spec.get("flags", {}), f"Sweep spec {name}: flags")
    grid = spec.get("grid")
    if not isinstance(grid, list) or not grid or not all(isinstance(g, dict) and g for g in grid):
        raise ValueError(f"Sweep spec {name}: `grid` must be a non-empty list of non-empty objects. Received: {grid!r}")
    return spec


def count(spec: dict[str, Any]) -> int:
    """How many runs a spec lists, without making them. Raises ValueError for an invalid spec."""
    validate(spec)
    where = f"Sweep spec {spec['name']}"
    sizes = ([len(_axis(k, v, f"{where}: grid[{g}]")) for k, v in grid.items()] for g, grid in enumerate(spec["grid"]))
    return sum(math.prod(axes) for axes in sizes)


def iter_runs(spec: dict[str, Any]) -> Iterator[SweepRun]:
    """The runs of a spec one at a time, in its deterministic order, each checked as it is made.

    A spec of millions of runs (a range of seeds) is never held in memory: take what you
    need (`itertools.islice`). Raises ValueError for an invalid spec, or when an invalid or
    repeated run is reached, naming the grid and the run.
    """
    validate(spec)
    shared = _check_flags(spec.get("flags", {}), f"Sweep spec {spec['name']}: flags")
    seen: dict[str, str] = {}
    for g, grid in enumerate(spec["grid"]):
        where = f"Sweep spec {spec['name']}: grid[{g}]"
        axes = [_axis(key, values, where) for key, values in grid.items()]
        for combo in _product(axes):
            flags = dict(shared)
            for part in combo:
                twice = sorted(set(part) & set(flags))
                if twice:
                    raise ValueError(f"{where}: {twice} set twice for one run (in flags, a grid key or a case).")
                flags.update(part)
            flags = {k: flags[k] for k in TRAIN_FLAGS if flags.get(k) is not None}
            run = SweepRun(flags, run_config(flags, where))
            described = shlex.join(run.argv(".")[1:-1])
            if run.name in seen:
                raise ValueError(f"{where}: run {run.name} appears twice ({seen[run.name]} and {described}).")
            seen[run.name] = described
            yield run


def expand(spec: dict[str, Any]) -> list[SweepRun]:
    """All runs of a spec as a list (`iter_runs`; for specs that fit in memory).

    Raises:
        ValueError: for an invalid spec or run, naming the grid and the run.
    """
    return list(iter_runs(spec))


def run_config(flags: dict[str, Any], where: str = "run") -> runs.RunConfig:
    """The RunConfig bin/train builds from these flags (tfwd.training.config_from_flags).

    Raises:
        ValueError: for flags bin/train would refuse (e.g. depth not 6n + 2), prefixed by `where`.
    """
    try:
        return training.config_from_flags(flags)
    except ValueError as e:
        raise ValueError(f"{where}: {e} Flags: {flags}") from None


def load_spec(path: str) -> dict[str, Any]:
    """Reads and validates a spec file and its first CHECK_ON_LOAD runs. Raises ValueError naming the file."""
    path = apps.spec_path("sweeps", path)
    try:
        with open(path) as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Sweep spec {path} is not valid JSON: {e}") from None
    except OSError as e:
        raise ValueError(f"Cannot read sweep spec {path}: {e.strerror or e}.") from None
    try:
        for _ in itertools.islice(iter_runs(spec), CHECK_ON_LOAD):
            pass
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return spec


def commands(
    spec: dict[str, Any],
    out_dir: str,
    program: str = "bin/train",
    skip_finished: bool = False,
    limit: int | None = None,
) -> list[str]:
    """One shell-quoted bin/train command per run of the spec, in order.

    Args:
        spec: a sweep spec.
        out_dir: the commands' --out_dir.
        program: the bin/train executable as the commands call it.
        skip_finished: leave out runs whose out_dir/<run>/results.json exists.
        limit: at most this many commands (None: all).

    Example:
        >>> commands({"name": "s", "grid": [{"depth": [8], "seed": [0, 1]}]}, "runs")
        ['bin/train --depth=8 --seed=0 --out_dir=runs', 'bin/train --depth=8 --seed=1 --out_dir=runs']
    """
    todo = (r for r in iter_runs(spec) if not (skip_finished and is_finished(out_dir, r)))
    return [r.command(out_dir, program) for r in itertools.islice(todo, limit)]


# --- running on this machine ----------------------------------------------------------------


def is_finished(out_dir: str, run: SweepRun) -> bool:
    """Whether the run directory out_dir/<run name> holds results.json."""
    return os.path.exists(os.path.join(out_dir, run.name, runs.RESULTS))


def _with_interpreter(argv: Sequence[str]) -> list[str]:
    """A Python script (bin/train) runs under this process's interpreter, not its #! line: started as
    `VENV/bin/python bin/report`, the children must see the same installed packages."""
    try:
        with open(argv[0], "rb") as f:
            first = f.readline()
    except OSError:
        return list(argv)
    return [sys.executable, *argv] if first.startswith(b"#!") and b"python" in first else list(argv)


def prepare_datasets(planned: Sequence[SweepRun]) -> list[str]:
    """Fetches each dataset these runs need that is not on disk, once, as their configs allow.

    Returns the data folders (see `tfwd.data.prepare`); raises DataNotFoundError, in
    one line, for a dataset that is missing and not fetched, before any run starts.
    """
    configs = {(r.config.data.dataset, r.config.data.data_dir, r.config.data.download): r.config.data for r in planned}
    return [data.prepare(config) for config in configs.values()]


def subprocess_runner(argv: Sequence[str], log_path: str) -> int:
    """Runs a command with stdout and stderr appended to `log_path`; returns its exit code.

    A Python script is started with this process's own interpreter (`_with_interpreter`).
    """
    argv = _with_interpreter(argv)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        try:
            done = subprocess.run(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            )
            return done.returncode
        except OSError as e:
            log.write(f"cannot start: {e}\n")
            return 127


def run(
    spec: dict[str, Any],
    out_dir: str,
    parallel: int = 1,
    limit: int | None = None,
    program: str = "bin/train",
    runner: Runner = subprocess_runner,
    dry_run: bool = False,
    prepare_data: bool | None = None,
    progress: TextIO | None = None,
) -> dict[str, list]:
    """Runs the unfinished runs of a spec on this machine, `parallel` at a time.

    Each run's output goes to out_dir/logs/<run name>.log (appended: a resumed
    run keeps the log of earlier attempts). TensorFlow already spreads one
    training over every core, so parallel=1 suits a small machine; raise it
    only when cores (or accelerators) are plentiful. A dataset the runs need that
    is not on disk is fetched here first, once (`prepare_datasets`), where TFDS's
    progress shows, rather than in every run's log at once.

    Args:
        spec: a sweep spec.
        out_dir: parent folder of the run directories (bin/train --out_dir).
        parallel: runs at a time (>= 1).
        limit: launch at most this many unfinished runs (None: all).
        program: the bin/train executable.
        runner: (argv, log_path) -> exit code; inject a fake one in tests.
        dry_run: plan only: launch nothing, everything to run is "not_started".
        prepare_data: fetch missing datasets before launching; None: only with the
            real `subprocess_runner` (an injected runner trains nothing).
        progress: a stream (sys.stderr) on which each training's epoch, loss, accuracy
            and time left are shown as they run (`tfwd.progress`); None shows nothing.

    Returns:
        {"finished": names run to exit code 0, "skipped": names already finished,
        "failed": [(name, log path)], "not_started": names left by `limit` or `dry_run`,
        "unexamined": how many runs were not looked at}. With a `limit`, `run` stops
        looking once LOOKAHEAD unfinished runs are left unstarted, so a sweep of millions
        of runs is never made whole.
    """
    if parallel < 1:
        raise ValueError(f"`parallel` must be >= 1. Received: parallel={parallel!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"`limit` must be >= 0 or None. Received: limit={limit!r}")
    result = {"finished": [], "skipped": [], "failed": [], "not_started": [], "unexamined": 0}
    launch, examined, todo, total = [], 0, 0, count(spec)
    for r in iter_runs(spec):
        examined += 1
        if is_finished(out_dir, r):
            result["skipped"].append(r.name)
            continue
        todo += 1
        if not dry_run and (limit is None or len(launch) < limit):
            launch.append(r)
        else:
            result["not_started"].append(r.name)
        if limit is not None and len(result["not_started"]) >= LOOKAHEAD:
            break  # a huge sweep: count the rest instead of making every run
    result["unexamined"] = total - examined
    logging.info(
        "Sweep %s: %d runs (%d not examined), %d finished, %d unfinished, launching %d.",
        spec["name"],
        total,
        result["unexamined"],
        len(result["skipped"]),
        todo,
        len(launch),
    )
    if not launch:
        return result
    if prepare_data or (prepare_data is None and runner is subprocess_runner):
        prepare_datasets(launch)
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    lock, counter = threading.Lock(), itertools.count(1)
    logs = TrainingLogs(total=len(launch))

    def one(r: SweepRun):
        log = os.path.join(out_dir, "logs", f"{r.name}.log")
        logs.add(r.name, log)
        try:
            code = runner(r.argv(out_dir, program), log)
        finally:
            logs.remove(r.name)
        with lock:
            if code == 0:
                result["finished"].append(r.name)
            else:
                result["failed"].append((r.name, log))
            status = "finished" if code == 0 else f"FAILED (exit {code})"
            logging.info("[%d/%d] %s %s (log: %s)", next(counter), len(launch), r.name, status, log)

    with showing(progress, logs.text), concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(one, r) for r in launch]:
            future.result()  # re-raises a runner's exception
    order = {r.name: i for i, r in enumerate(launch)}
    result["finished"].sort(key=order.get)
    result["failed"].sort(key=lambda x: order[x[0]])
    return result
