"""tfwd.runs: names, configs, atomic files, opening runs."""

import json
import os
import re

import numpy as np
import pytest

from tfwd import models, run_settings, runs
from tfwd.data import DataConfig


@pytest.mark.parametrize(
    "model,data,seed,name",
    [
        (runs.ModelConfig(62, 1), DataConfig(), 3, "cifar10-resnet62-w1-s3"),
        (
            runs.ModelConfig(38, 0.5, residual=False),
            DataConfig(train_examples=3125),
            0,
            "cifar10-resnet38-w0.5-nores-n3125-s0",
        ),
        (runs.ModelConfig(14, 4.0), DataConfig(dataset="cifar100"), 12, "cifar100-resnet14-w4-s12"),
    ],
    ids=["plain-name", "nores-subset", "cifar100"],
)
def test_run_names(model, data, seed, name):
    assert runs.RunConfig(model, data, runs.TrainConfig(seed=seed)).name == name


def test_every_arch_setting_has_an_architecture():
    # The `arch` values bin/train accepts are the families tfwd.models.ARCHITECTURES builds.
    assert tuple(models.ARCHITECTURES) == run_settings.ARCHS
    assert {s.arch for s in run_settings.SETTINGS if s.arch} <= set(models.ARCHITECTURES)


@pytest.mark.parametrize("use", ["name", "validate", "build"])
def test_an_unknown_arch_is_an_error_not_the_default_family(use):
    # A config read from JSON is never validated: its arch used to read as cifar_resnet.
    config = runs.ModelConfig(20, 1.0, arch="vgg")
    with pytest.raises(
        ValueError, match=r"`arch` must be one of \('cifar_resnet', 'imagenet_resnet'\)\. Received: arch='vgg'"
    ):
        {"name": lambda: config.name, "validate": config.validate, "build": lambda: config.build(10, 32)}[use]()


def test_config_round_trips_through_json():
    config = runs.RunConfig(
        runs.ModelConfig(20, 2.0, False), DataConfig(train_examples=100, data_seed=4), runs.TrainConfig(epochs=3)
    )
    again = runs.RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert config.differences(again) == []


def test_differences_ignore_data_location():
    a = runs.RunConfig(data=DataConfig(data_dir="/a"))
    b = runs.RunConfig(data=DataConfig(data_dir="/b", download=True), train=runs.TrainConfig(epochs=5))
    assert a.differences(b) == ["train.epochs: 300 != 5"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "x.json")
    runs.write_json(path, {"a": 1})

    def boom(f):
        f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        runs.atomic_write(path, boom)
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)


def test_npz_and_csv(tmp_path):
    runs.write_npz(str(tmp_path / "p.npz"), probs=np.eye(3, dtype=np.float32), labels=np.arange(3))
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_array_equal(f["labels"], np.arange(3))
    runs.write_csv(str(tmp_path / "h.csv"), [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}])
    assert open(tmp_path / "h.csv").read().splitlines() == ["epoch,loss", "1,2.0", "2,1.5"]


@pytest.mark.parametrize(
    "setup,match",
    [("missing", "does not exist"), ("empty", "no config.json"), ("corrupt", "corrupt")],
)
def test_opening_bad_run_directories(tmp_path, setup, match):
    path = tmp_path / "run"
    if setup != "missing":
        path.mkdir()
    if setup == "corrupt":
        (path / "config.json").write_text("{not json")
    with pytest.raises(runs.RunError, match=match):
        runs.Run(str(path))


def test_runs_share_a_model_only_inside_sharing_models_and_until_the_file_changes(tmp_path):
    config = runs.RunConfig(model=runs.ModelConfig(depth=8, width=0.25))
    runs.write_json(str(tmp_path / "config.json"), config.to_dict())
    path = str(tmp_path / runs.MODEL)
    config.model.build(10, 32).save(path)
    alone = runs.Run(str(tmp_path))
    assert alone.model() is alone.model()  # a Run loads its model once
    assert runs.Run(str(tmp_path)).model() is not alone.model()  # outside the block, nothing is shared
    with runs.sharing_models():
        first = runs.Run(str(tmp_path)).model()
        assert first is not alone.model()
        assert runs.Run(str(tmp_path)).model() is first  # another Run of the same file: no second load
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was rewritten
        reloaded = runs.Run(str(tmp_path)).model()
        assert reloaded is not first
    for a, b in zip(first.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not runs._SHARED  # released when the block ends


def test_unfinished_run_has_no_model(tmp_path):
    runs.write_json(str(tmp_path / "config.json"), runs.RunConfig().to_dict())
    run = runs.Run(str(tmp_path))
    assert not run.finished
    with pytest.raises(runs.RunError, match="not finished"):
        run.model()
    with pytest.raises(runs.RunError, match="not finished"):
        run.results()
    (tmp_path / "results.json").write_text("{truncated")
    with pytest.raises(runs.RunError, match="corrupt"):
        run.results()
    runs.write_json(str(tmp_path / "results.json"), {"test_accuracy": 0.5})
    assert run.finished and run.results() == {"test_accuracy": 0.5}


def _files(path):
    return sorted(f for f in os.listdir(path) if f != runs.OUTPUT_MARKER)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with runs.atomic_dir(str(target), "cka") as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("1")
    assert _files(target) == ["a.txt"]
    with pytest.raises(RuntimeError):
        with runs.atomic_dir(str(target), "cka") as tmp:
            open(os.path.join(tmp, "b.txt"), "w").write("2")
            raise RuntimeError("killed halfway")
    assert _files(target) == ["a.txt"]
    with runs.atomic_dir(str(target), "cka") as tmp:
        open(os.path.join(tmp, "c.txt"), "w").write("3")
    assert _files(target) == ["c.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_an_output_folder_holding_a_users_files_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with runs.atomic_dir(str(target), "pc") as tmp:
        os.makedirs(os.path.join(tmp, "figures"))
        open(os.path.join(tmp, "figures", "first_pc.png"), "w").write("1")
        open(os.path.join(tmp, "pc.json"), "w").write("{}")
    runs.check_output_dir(str(target), "pc")  # only its own output: free
    for extra in ["notes.txt", os.path.join("figures", "mine.png")]:
        (target / extra).write_text("a user's")
        before = _snapshot(target)
        with pytest.raises(runs.RunError, match=f"also {re.escape(extra)}, which tfwd did not write"):
            with runs.atomic_dir(str(target), "pc") as tmp:
                open(os.path.join(tmp, "pc.json"), "w").write("new")
        assert _snapshot(target) == before
        (target / extra).unlink()
    with runs.atomic_dir(str(target), "pc") as tmp:  # without them, replaced as a whole
        open(os.path.join(tmp, "pc.json"), "w").write("new")
    assert _files(target) == ["pc.json"] and (target / "pc.json").read_text() == "new"
    # An earlier version's marker names only the analysis: its folder is replaced as before.
    (target / runs.OUTPUT_MARKER).write_text("pc\n")
    (target / "extra.txt").write_text("written by that version")
    runs.check_output_dir(str(target), "pc")


def _user_data(tmp_path):
    """A run directory, a folder of runs, a user's file and a user's folder, with their listings."""
    holder = tmp_path / "runs"
    run = holder / "cifar10-resnet8-w1-s0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "ckpt-1.index").write_text("x")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cka.npz").write_text("not tfwd's")
    return {"run directory": run, "folder of runs": holder, "file": notes, "folder tfwd did not write": mine}


def _snapshot(path):
    if os.path.isfile(path):
        return open(path).read()
    return sorted(
        (os.path.relpath(os.path.join(d, f), path), open(os.path.join(d, f)).read())
        for d, _, fs in os.walk(path)
        for f in fs
    )


@pytest.mark.parametrize("what", ["run directory", "folder of runs", "file", "folder tfwd did not write"])
def test_an_analysis_never_replaces_what_it_did_not_write(tmp_path, what):
    target = _user_data(tmp_path)[what]
    before = _snapshot(target)
    with pytest.raises(runs.RunError, match="--out_dir"):
        runs.check_output_dir(str(target), "pc")
    with pytest.raises(runs.RunError, match="--out_dir"):
        with runs.atomic_dir(str(target), "pc") as tmp:
            open(os.path.join(tmp, "pc.npz"), "w").write("new")
    assert _snapshot(target) == before
    assert not [f for f in os.listdir(target.parent) if f.endswith(".tmp")]


def test_an_analysis_replaces_only_its_own_kind_of_output(tmp_path):
    target = tmp_path / "out"
    with runs.atomic_dir(str(target), "cka") as tmp:
        open(os.path.join(tmp, "cka.npz"), "w").write("1")
    runs.check_output_dir(str(target), "cka")
    (tmp_path / "empty").mkdir()
    runs.check_output_dir(str(tmp_path / "empty"), "pc")  # nothing to lose
    with pytest.raises(runs.RunError, match="holds the output of tfwd 'cka', not 'pc'"):
        runs.check_output_dir(str(target), "pc")


def test_temporary_folders_of_live_processes_are_kept_and_of_dead_ones_removed(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = tmp_path / f".out.p{os.getppid()}.abc123.tmp"
    gone = tmp_path / f".out.p{dead.pid}.def456.tmp"
    other = tmp_path / f".output.p{dead.pid}.ghi789.tmp"  # another output's name
    for folder in (live, gone, other):
        folder.mkdir()
    with runs.atomic_dir(str(tmp_path / "out"), "pc"):
        assert os.path.isdir(live) and not os.path.exists(gone)
    assert os.path.isdir(live) and os.path.isdir(other)


def test_two_analyses_finishing_together_swap_in_one_after_the_other(tmp_path, monkeypatch):
    import threading

    from tfwd import atomic

    target = tmp_path / "out"
    with runs.atomic_dir(str(target), "cka") as tmp:
        open(os.path.join(tmp, "cka.npz"), "w").write("earlier")
    checks = {}
    first_swapping, first_may_go = threading.Event(), threading.Event()
    check = atomic.check_output_dir

    def check_and_pause(path, kind):
        check(path, kind)
        name = threading.current_thread().name
        checks[name] = checks.get(name, 0) + 1
        if name == "first" and checks[name] == 2:  # the check before the swap
            first_swapping.set()
            first_may_go.wait(10)

    monkeypatch.setattr(atomic, "check_output_dir", check_and_pause)
    failures = []

    def analysis(label):
        try:
            with runs.atomic_dir(str(target), "cka") as tmp:
                open(os.path.join(tmp, "cka.npz"), "w").write(label)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            failures.append(e)

    first = threading.Thread(target=analysis, args=("first",), name="first")
    second = threading.Thread(target=analysis, args=("second",), name="second")
    first.start()
    assert first_swapping.wait(10)
    second.start()
    second.join(0.5)
    waited = second.is_alive()  # the second waits for its turn while the first swaps in
    first_may_go.set()
    first.join(10)
    second.join(10)
    assert waited and not failures
    assert (target / "cka.npz").read_text() == "second"
    assert (target / runs.OUTPUT_MARKER).read_text().splitlines() == ["cka", "cka.npz"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left


def test_an_analysis_removes_leftovers_of_its_kind_only(tmp_path):
    """Killed outputs of the same kind under another name (probes_residual vs probes_blocks) go; others stay."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftovers = {}
    for name, marker in [("probes_residual", "probes"), ("cka_all_test", "cka"), ("notes", None)]:
        folder = tmp_path / f".{name}.p{dead.pid}.abc123.tmp"
        folder.mkdir()
        (folder / "part.csv").write_text("")
        if marker:
            (folder / runs.OUTPUT_MARKER).write_text(marker + "\n")
        leftovers[name] = folder
    with runs.atomic_dir(str(tmp_path / "probes_blocks"), "probes") as tmp:
        assert (tmp_path / os.path.basename(tmp) / runs.OUTPUT_MARKER).read_text() == "probes\n"
    assert not leftovers["probes_residual"].exists()
    assert leftovers["cka_all_test"].is_dir() and leftovers["notes"].is_dir()


def test_a_legal_long_output_name_gets_a_short_temporary_sibling(tmp_path):
    target = tmp_path / ("p" * 250)  # 250 bytes: legal, but ".<name>.p<pid>.<random>.tmp" would not be
    with runs.atomic_dir(str(target), "pc") as tmp:
        assert len(os.path.basename(tmp).encode()) <= 255
        runs.write_json(os.path.join(tmp, "x" * 240 + ".json"), {"missing": float("nan")})
    assert json.loads((target / ("x" * 240 + ".json")).read_text()) == {"missing": None}
    assert sorted(os.listdir(tmp_path)) == [target.name]


def test_json_outputs_are_strict(tmp_path):
    path = tmp_path / "out.json"
    runs.write_json(str(path), {"contrast": float("nan"), "top": np.float32("inf"), "x": np.array([1.0, -np.inf])})

    def refuse(constant):
        raise AssertionError(constant)

    assert json.loads(path.read_text(), parse_constant=refuse) == {"contrast": None, "top": None, "x": [1.0, None]}
