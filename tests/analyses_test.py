"""tfwd.analyses: every analysis has the same protocol, and the registry alone tells the report what to run."""

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import sys
import types
import typing

import pytest

from tfwd import analyses, report, runs

MODULES = ("cka", "pc", "probes", "prune_blocks", "dominant_datapoints", "compare_predictions")


def test_every_analysis_module_is_registered():
    assert {entry.module for entry in analyses.REGISTRY.values()} == {f"tfwd.{name}" for name in MODULES}
    assert [entry.kind for entry in analyses.per_run()][0] == "cka"  # the detector reads it before the others


@pytest.mark.parametrize("kind", list(analyses.REGISTRY))
def test_a_registered_analysis_has_kind_analyze_and_load(kind):
    entry = analyses.REGISTRY[kind]
    module = entry.implementation()
    assert module.KIND == module.__name__.split(".")[-1]  # one name: module, binary (tests/names_test.py), folders
    assert entry.pair or module.KIND == kind  # a pair entry (cross_seed) runs another analysis on two runs
    parameters = list(inspect.signature(module.analyze).parameters)
    first = {"run_dir": ["run_dir"], "run_dirs": ["run_dirs"], "patterns": ["group_a", "group_b"]}[entry.argument]
    assert parameters[: len(first)] == first and "out_dir" in parameters
    assert typing.get_type_hints(module.analyze)["return"] is str  # the output folder
    assert list(inspect.signature(module.load).parameters) == ["folder"]
    result = typing.get_type_hints(module.load)["return"]
    assert dataclasses.is_dataclass(result) and result.__dataclass_params__.frozen
    undocumented = [f.name for f in dataclasses.fields(result) if f"        {f.name}:" not in result.__doc__]
    assert not undocumented, f"{result.__name__} does not document {undocumented}"
    assert set(entry.defaults) <= set(parameters), "the report's defaults are settings of analyze"


def test_an_entry_refuses_an_unknown_argument():
    with pytest.raises(ValueError, match=r"`argument` must be one of \('run_dir', 'run_dirs', 'patterns'\)"):
        analyses.Analysis("x", "tfwd.x", argument="runs")


# --- the report runs what the registry lists --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tally:
    """What a stand-in analysis wrote.

    Attributes:
        runs: the names of the runs it read.
        top: its setting.
    """

    runs: list[str]
    top: int


def _stand_in(kind: str, calls: list) -> types.ModuleType:
    """A module with the protocol: analyze writes the names of the runs it read through runs.Output."""

    def write(output, opened, top):
        with output.writing(kind) as tmp:
            runs.write_json(os.path.join(tmp, "tally.json"), {"runs": [r.name for r in opened], "top": top})
        return output.path

    @runs.reading_runs()
    def analyze(run_dir: str, out_dir: str | None = None, data_dir: str | None = None, top: int = 3) -> str:
        calls.append((kind, os.path.basename(run_dir), top))
        run, output = runs.Output.for_run(kind, run_dir, out_dir)
        return write(output, [run], top)

    @runs.reading_runs()
    def analyze_pair(run_dirs: list[str], out_dir: str | None = None, data_dir: str | None = None, top: int = 3) -> str:
        calls.append((kind, tuple(os.path.basename(r) for r in run_dirs), top))
        return write(runs.Output(kind, out_dir), [runs.Run(r) for r in run_dirs], top)

    def load(folder: str) -> Tally:
        with open(os.path.join(folder, "tally.json")) as f:
            return Tally(**json.load(f))

    module = types.ModuleType(f"stand_in_{kind}")
    module.KIND, module.load = kind, load
    module.analyze = analyze_pair if kind == "pairwise" else analyze
    module.analyze.__module__ = module.__name__  # as the report's messages name it
    return module


@pytest.fixture
def stand_ins(monkeypatch):
    """The real CKA entries and five stand-ins, each showing one of the report's rules."""
    calls = []
    for kind in ("tally", "block_only", "asked", "skipped", "pairwise"):
        monkeypatch.setitem(sys.modules, f"stand_in_{kind}", _stand_in(kind, calls))
    entries = [
        analyses.REGISTRY["cka"],
        analyses.Analysis("tally", "stand_in_tally", defaults={"top": 2}, minimums={"top": 1}),
        analyses.Analysis("block_only", "stand_in_block_only", needs_block=True),
        analyses.Analysis("asked", "stand_in_asked", on_request=True),
        analyses.Analysis("skipped", "stand_in_skipped"),
        analyses.Analysis("pairwise", "stand_in_pairwise", argument="run_dirs", pair=True),
        analyses.REGISTRY["cross_seed"],  # the wide-against-deep step reads its settings; skipped in these specs
    ]
    monkeypatch.setattr(analyses, "REGISTRY", {entry.kind: entry for entry in entries})
    return calls


def test_the_report_runs_caches_and_loads_what_the_registry_lists(stand_ins, tiny_runs, tfds_dir, tmp_path):
    run_dirs = [str(shutil.copytree(r, tmp_path / os.path.basename(r))) for r in tiny_runs]  # seeds 0 and 1
    names = [os.path.basename(r) for r in run_dirs]
    spec = {
        "name": "stand_ins",
        "runs": {"grid": [{"depth": [8]}]},
        "analyses": {"cka": {"examples": 64, "passes": 1, "batch_size": 32}, "skipped": False, "cross_seed": False},
    }
    timings = {}
    out = report.analyze(run_dirs, report.validate(spec), data_dir=tfds_dir, timings=timings)
    blocks = [out.blocks[name].found for name in names]
    expected = [("tally", name, 2) for name in names]  # the defaults of its entry
    expected += [("block_only", name, 3) for name, found in zip(names, blocks) if found]  # runs with a block only
    expected += [("pairwise", tuple(names), 3)]  # once, on seeds 0 and 1 of the cell
    assert sorted(stand_ins) == sorted(expected)  # neither "asked" (not in the spec) nor "skipped" (false)
    for name in names:
        assert out.results[name]["tally"] == Tally([name], 2)
        assert out.dirs[name]["tally"] == report._analysis_dir(os.path.join(tmp_path, name), "tally", {"top": 2})
        assert set(out.dirs[name]) == {"cka", "tally"} | ({"block_only"} if out.blocks[name].found else set())
        assert out.results[name]["cka"].blocks[0, 0].shape == (len(out.runs[0].names),) * 2
    cell = report.cell_label(runs.read_config(run_dirs[0]))
    assert out.results[cell]["pairwise"] == Tally(names, 3) and set(out.dirs[cell]) == {"pairwise"}
    assert [r.name for r in out.runs] == names and timings["tally"] > 0
    # Again: every folder is reused, nothing is computed.
    stand_ins.clear()
    again = {}
    report.analyze(run_dirs, spec, data_dir=tfds_dir, timings=again)
    assert stand_ins == [] and set(again.values()) == {0.0}
    # Settings given in the spec reach analyze, into another folder.
    report.analyze(run_dirs, {**spec, "analyses": {**spec["analyses"], "tally": {"top": 5}, "asked": {}}})
    assert sorted(stand_ins) == sorted([("tally", name, 5) for name in names] + [("asked", name, 3) for name in names])


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"tally": {"top": 0}}, r"analyses.tally: `top` must be >= 1. Received: top=0"),
        ({"tally": {"bottom": 1}}, r"analyses.tally has no setting 'bottom'. stand_in_tally.analyze takes: \['top'\]"),
        ({"tally": {"top": "2"}}, r"analyses.tally.top must be int. Received: '2'"),
        ({"pc": {}}, r"unknown keys \['pc'\]\. .* analyses \['cka', 'tally', 'block_only', 'asked', 'skipped', "),
        ({"cka": False}, r"analyses.cka must be an object of tfwd.cka.analyze settings. Received: False"),
        ({"tally": False, "asked": {"top": 4}}, None),
    ],
    ids=["minimum", "unknown-setting", "type", "unregistered", "not-skippable", "valid"],
)
def test_the_report_validates_settings_by_the_registry(stand_ins, settings, message):
    spec = {"name": "x", "runs": {"grid": [{"depth": [8]}]}, "analyses": settings}
    if message is None:
        assert report.validate(spec) is spec
    else:
        with pytest.raises(ValueError, match=message):
            report.validate(spec)


def test_a_new_output_version_moves_the_report_cache(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.RESULTS).write_text("{}")
    (run_dir / runs.MODEL).write_text("model")
    before = report._analysis_dir(str(run_dir), "pc", {"examples": 8})
    assert report._analysis_dir(str(run_dir), "cka", {"examples": 8}).endswith(
        "report_cka_"
        + hashlib.sha1(
            json.dumps({"runs": [report._content(str(run_dir))], "settings": {"examples": 8}}, sort_keys=True).encode()
        ).hexdigest()[:8]
    )  # version 1: the hash of folders written before versions existed
    monkeypatch.setitem(analyses.REGISTRY, "pc", dataclasses.replace(analyses.REGISTRY["pc"], version=3))
    after = report._analysis_dir(str(run_dir), "pc", {"examples": 8})
    assert before != after and os.path.dirname(before) == os.path.dirname(after)
