"""tfwd.sweeps: spec expansion to exact bin/train commands, validation, and running with skips."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import pytest

from tfwd import runs, sweeps

SPEC = {
    "name": "small",
    "flags": {"dataset": "cifar10", "epochs": 2, "learning_rate": 0.05, "data_dir": "my data"},
    "grid": [
        {
            "seed": {"range": [3, 5]},
            "cases": [{"depth": 20, "width": 1}, {"depth": 8, "width": 0.5, "residual": False}],
        },
        {"depth": [14], "train_examples": [None, 1000], "seed": [0]},
    ],
}
EXPECTED = [
    "bin/train --depth=20 --width=1 --seed=3 --dataset=cifar10 '--data_dir=my data' --epochs=2 --learning_rate=0.05 --out_dir=runs",
    "bin/train --depth=8 --width=0.5 --noresidual --seed=3 --dataset=cifar10 '--data_dir=my data' --epochs=2 --learning_rate=0.05 --out_dir=runs",
    "bin/train --depth=20 --width=1 --seed=4 --dataset=cifar10 '--data_dir=my data' --epochs=2 --learning_rate=0.05 --out_dir=runs",
    "bin/train --depth=8 --width=0.5 --noresidual --seed=4 --dataset=cifar10 '--data_dir=my data' --epochs=2 --learning_rate=0.05 --out_dir=runs",
    "bin/train --depth=14 --seed=0 --dataset=cifar10 '--data_dir=my data' --epochs=2 --learning_rate=0.05 --out_dir=runs",
    "bin/train --depth=14 --seed=0 --dataset=cifar10 '--data_dir=my data' --train_examples=1000 --epochs=2 --learning_rate=0.05 --out_dir=runs",
]
SPEC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sweeps")
SHIPPED = {  # runs per shipped spec (reference/paper.md, sections 1 and 4)
    "figure1": 10,  # 5 depths + 5 widths
    "figure2": 30,  # (5 depths + 5 widths) x 3 data sizes
    "figure3": 4,
    "figure4": 4,  # 2 widths x 2 seeds
    "figure5": 4,
    "figure6": 15,  # 5 models x 3 seeds
    "figure7": 200,  # 2 architectures x 100 seeds
    "figure7_imagenet": 100,  # 2 architectures x 50 seeds
    "plain_cnn": 5,
    "smoke": 2,
}


def load(name):
    return sweeps.load_spec(os.path.join(SPEC_DIR, f"{name}.json"))


# --- expansion ----------------------------------------------------------------------------------


def test_small_spec_expands_to_exact_commands():
    assert sweeps.commands(SPEC, "runs") == EXPECTED
    names = [r.name for r in sweeps.expand(SPEC)]
    assert names == [
        "cifar10-resnet20-w1-s3",
        "cifar10-resnet8-w0.5-nores-s3",
        "cifar10-resnet20-w1-s4",
        "cifar10-resnet8-w0.5-nores-s4",
        "cifar10-resnet14-w1-s0",
        "cifar10-resnet14-w1-n1000-s0",
    ]
    assert shlex.split(EXPECTED[0])[5] == "--data_dir=my data"  # quoting round-trips


def test_run_configs_follow_bin_train_defaults():
    run = sweeps.expand(SPEC)[4]
    assert run.config.train == runs.TrainConfig(epochs=2, batch_size=128, learning_rate=0.05, weight_decay=1e-4, seed=0)
    assert (run.config.model.depth, run.config.model.width, run.config.model.residual) == (14, 1.0, True)
    imagenet = sweeps.expand(load("figure7_imagenet"))
    assert [r.name for r in imagenet[:2]] == ["imagenet2012-resnet83-s0", "imagenet2012-resnet50-w1-1-2.8-1-s0"]
    assert imagenet[0].config.train.epochs == 120 and imagenet[0].config.train.weight_decay == 5e-5


def test_every_shipped_spec_is_counted_and_validates():
    files = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(SPEC_DIR, "*.json")))
    assert files == sorted(SHIPPED)
    for name, count in SHIPPED.items():
        spec = load(name)
        assert spec["name"] == name and spec["description"]
        assert len(sweeps.commands(spec, "runs")) == count, name


def test_shipped_specs_hold_the_papers_models():
    def models(name, **where):
        return sorted(
            {
                (r.config.model.depth, r.config.model.width)
                for r in sweeps.expand(load(name))
                if all(r.flags.get(k) == v for k, v in where.items())
            }
        )

    assert models("figure1") == sorted(
        [(d, 1.0) for d in (26, 44, 56, 110, 164)] + [(38, w) for w in (1.0, 2.0, 4.0, 8.0, 10.0)]
    )
    for subset in (12500, 3125):
        assert models("figure2", train_examples=subset) == sorted(
            [(d, 1.0) for d in (32, 44, 56, 110, 164)] + [(38, w) for w in (1.0, 2.0, 4.0, 8.0, 10.0)]
        )
    assert models("figure3") == [(38, 2.0), (38, 10.0), (44, 1.0), (110, 1.0)]
    figure7 = sweeps.expand(load("figure7"))
    for arch in ((62, 1.0), (14, 2.0)):
        seeds = [r.config.train.seed for r in figure7 if (r.config.model.depth, r.config.model.width) == arch]
        assert seeds == list(range(100))
    assert all(not r.config.model.residual for r in sweeps.expand(load("plain_cnn")))
    assert all(
        r.config.train.epochs == 300
        for name in SHIPPED
        if name not in ("smoke", "figure7_imagenet")
        for r in sweeps.expand(load(name))
    )


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param({"colour": "red"}, r"unknown keys \['colour'\]", id="unknown_top_level_key"),
        pytest.param({"name": "a b"}, r"`name` must be letters", id="bad_name"),
        pytest.param({"grid": []}, r"`grid` must be a non-empty list", id="empty_grid"),
        pytest.param({"grid": [{"depth": []}]}, r"grid\[0\]\['depth'\] must be a non-empty list", id="empty_values"),
        pytest.param({"grid": [{"detph": [20]}]}, r"unknown key 'detph'", id="unknown_flag"),
        pytest.param(
            {"flags": {"overwrite": True}}, r"unknown key 'overwrite' \(a sweep never deletes runs\)", id="overwrite"
        ),
        pytest.param({"flags": {"out_dir": "x"}}, r"unknown key 'out_dir' \(the caller sets it\)", id="out_dir"),
        pytest.param(
            {"grid": [{"depth": ["20"]}]}, r"`depth` must be an integer .* Received: '20'", id="string_for_int"
        ),
        pytest.param(
            {"grid": [{"depth": [20], "residual": ["no"]}]}, r"`residual` must be true or false", id="bad_bool"
        ),
        pytest.param({"flags": {"dataset": "mnist"}}, r"`dataset` must be one of \['cifar10'", id="bad_choice"),
        pytest.param({"grid": [{"depth": [21]}]}, r"grid\[0\]: .*depth.*21", id="depth_not_6n_plus_2"),
        pytest.param({"grid": [{"seed": {"range": [0]}}]}, r'\{"range": \[start, stop\]\}', id="bad_range"),
        pytest.param(
            {"grid": [{"depth": [20]}, {"depth": [20]}]},
            r"grid\[1\]: run cifar10-resnet20-w1-s0 appears twice",
            id="duplicate_run",
        ),
        pytest.param({"flags": {"depth": 20}, "grid": [{"depth": [20]}]}, r"\['depth'\] set twice", id="set_twice"),
        pytest.param(
            {"grid": [{"depth": [20], "blocks": [[3, 4, 6, 3]]}]},
            r"--blocks: only for --arch=imagenet_resnet; with cifar_resnet use --depth and --width",
            id="imagenet_flag_on_cifar",
        ),
        pytest.param({"grid": [{"epochs": [0]}]}, r"`epochs` must be a positive integer", id="zero_epochs"),
    ],
)
def test_invalid_specs_give_clear_errors(change, message):
    spec = {"name": "bad", "grid": [{"depth": [20]}], **change}
    with pytest.raises(ValueError, match=message):
        sweeps.expand(spec)


def test_load_spec_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x", "grid": [')
    with pytest.raises(ValueError, match=f"Sweep spec {re.escape(str(path))} is not valid JSON"):
        sweeps.load_spec(str(path))
    path.write_text(json.dumps({"name": "x", "grid": [{"depth": [21]}]}))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: Sweep spec x: grid"):
        sweeps.load_spec(str(path))


# --- running ------------------------------------------------------------------------------------


def finish(out_dir, run):
    path = os.path.join(out_dir, run.name)
    os.makedirs(path, exist_ok=True)
    runs.write_json(os.path.join(path, runs.CONFIG), run.config.to_dict())
    runs.write_json(os.path.join(path, runs.RESULTS), {"test_accuracy": 0.5})


class FakeRunner:
    """Records (argv, log path) and returns exit code 3 for the runs named in `fail`."""

    def __init__(self, fail=()):
        self.calls, self.fail, self._lock = [], fail, threading.Lock()

    def __call__(self, argv, log_path):
        with self._lock:
            self.calls.append((list(argv), log_path))
        return 3 if any(f"--seed={s}" in argv for s in self.fail) else 0


def test_run_skips_finished_runs_and_reports_failures(tmp_path):
    spec = {"name": "three", "flags": {"depth": 8, "width": 0.25}, "grid": [{"seed": [0, 1, 2]}]}
    planned = sweeps.expand(spec)
    finish(str(tmp_path), planned[1])
    runner = FakeRunner(fail=[2])
    result = sweeps.run(spec, str(tmp_path), runner=runner, program="train")
    logs = os.path.join(str(tmp_path), "logs")
    assert runner.calls == [
        (planned[0].argv(str(tmp_path), "train"), os.path.join(logs, "cifar10-resnet8-w0.25-s0.log")),
        (planned[2].argv(str(tmp_path), "train"), os.path.join(logs, "cifar10-resnet8-w0.25-s2.log")),
    ]
    assert result == {
        "finished": ["cifar10-resnet8-w0.25-s0"],
        "skipped": ["cifar10-resnet8-w0.25-s1"],
        "failed": [("cifar10-resnet8-w0.25-s2", os.path.join(logs, "cifar10-resnet8-w0.25-s2.log"))],
        "not_started": [],
        "unexamined": 0,
    }
    assert os.path.isdir(logs)


def test_run_limit_and_dry_run_launch_only_what_they_say(tmp_path):
    spec = {"name": "three", "flags": {"depth": 8}, "grid": [{"seed": [0, 1, 2]}]}
    finish(str(tmp_path), sweeps.expand(spec)[0])
    runner = FakeRunner()
    result = sweeps.run(spec, str(tmp_path), limit=1, runner=runner)
    assert [c[0][2] for c in runner.calls] == ["--seed=1"]
    assert result["not_started"] == ["cifar10-resnet8-w1-s2"] and result["skipped"] == ["cifar10-resnet8-w1-s0"]
    runner = FakeRunner()
    result = sweeps.run(spec, str(tmp_path), dry_run=True, runner=runner)
    assert runner.calls == [] and result["not_started"] == ["cifar10-resnet8-w1-s1", "cifar10-resnet8-w1-s2"]
    assert sweeps.commands(spec, str(tmp_path), skip_finished=True, limit=1) == [
        sweeps.expand(spec)[1].command(str(tmp_path))
    ]


def _rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_huge_range_is_made_lazily_up_to_the_limit(tmp_path):
    spec = {"name": "huge", "flags": {"depth": 8}, "grid": [{"seed": {"range": [0, 10**8]}}, {"depth": [14]}]}
    rss = _rss()
    started = time.time()
    assert sweeps.count(spec) == 10**8 + 1
    assert sweeps.commands(spec, "runs", limit=2) == [f"bin/train --depth=8 --seed={s} --out_dir=runs" for s in (0, 1)]
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(spec))
    assert sweeps.load_spec(str(path)) == spec  # checks its first CHECK_ON_LOAD runs only
    finish(str(tmp_path), next(sweeps.iter_runs(spec)))
    runner = FakeRunner()
    result = sweeps.run(spec, str(tmp_path), limit=2, runner=runner)
    assert [c[0][2] for c in runner.calls] == ["--seed=1", "--seed=2"]
    assert result["skipped"] == ["cifar10-resnet8-w1-s0"] and result["finished"] == [
        "cifar10-resnet8-w1-s1",
        "cifar10-resnet8-w1-s2",
    ]
    assert len(result["not_started"]) == sweeps.LOOKAHEAD
    assert result["unexamined"] == 10**8 + 1 - 3 - sweeps.LOOKAHEAD
    assert time.time() - started < 60 and _rss() - rss < 200 * 2**20


def test_run_parallel_runs_at_once(tmp_path):
    barrier = threading.Barrier(2, timeout=10)  # breaks (and fails the run) unless two runs overlap

    def runner(argv, log_path):
        barrier.wait()
        return 0

    spec = {"name": "two", "grid": [{"depth": [8], "seed": [0, 1]}]}
    assert sweeps.run(spec, str(tmp_path), parallel=2, runner=runner)["finished"] == [
        "cifar10-resnet8-w1-s0",
        "cifar10-resnet8-w1-s1",
    ]


def test_subprocess_runner_logs_output_and_exit_code(tmp_path):
    log = str(tmp_path / "x.log")
    assert sweeps.subprocess_runner([sys.executable, "-c", "import sys; print('out'); sys.exit(4)"], log) == 4
    text = open(log).read()
    assert text.startswith("$ ") and "out\n" in text
    assert sweeps.subprocess_runner([str(tmp_path / "missing")], log) == 127
    assert "cannot start" in open(log).read()


# --- the binaries ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_flags(root):
    """Flags defined by bin/train itself (and the data flags it shares), from --helpfull."""
    out = subprocess.run(
        [sys.executable, str(root / "bin" / "train"), "--helpfull"], capture_output=True, text=True, timeout=300
    ).stdout
    names, section = set(), None
    for line in out.splitlines():
        if line and not line[0].isspace():
            section = line.rstrip(":")
        elif section and (section.endswith("train") or section.endswith("_common")):
            match = re.match(r"\s+--(?:\[no\])?(\w+)", line)
            names.update([match.group(1)] if match else [])
    return names


def test_train_flags_match_bin_train(train_flags):
    assert set(sweeps.TRAIN_FLAGS) == train_flags - {"out_dir", "overwrite"}


def test_printed_commands_use_only_bin_train_flags(train_flags):
    for name in SHIPPED:
        for command in sweeps.commands(load(name), "runs"):
            argv = shlex.split(command)
            assert argv[0] == "bin/train"
            for arg in argv[1:]:
                flag = re.match(r"--(\w+)", arg).group(1)
                assert flag in train_flags or (flag.startswith("no") and flag[2:] in train_flags), (name, arg)


@pytest.mark.parametrize("spec_name", ["smoke", "plain_cnn", "figure7_imagenet"])
def test_bin_train_agrees_on_run_directory_and_config(spec_name, tmp_path, root, bin_env):
    """bin/train, given a sweep's command and a finished run at the name the sweep expects, reports it and exits 0.

    bin/train refuses a directory holding other settings, so this checks the name and the whole config.
    """
    run = sweeps.expand(load(spec_name))[0]
    finish(str(tmp_path), run)
    result = subprocess.run(
        run.argv(str(tmp_path), str(root / "bin" / "train")), env=bin_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"run directory: {tmp_path / run.name}"


def test_bin_sweep_prints_and_runs(tmp_path, root, bin_env):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "s", "flags": {"depth": 8}, "grid": [{"seed": [0, 1, 2]}]}))
    out = tmp_path / "runs"
    finish(str(out), sweeps.expand(json.loads(spec.read_text()))[0])
    fake = tmp_path / "fake_train"  # fails for seed 2, succeeds otherwise
    fake.write_text('#!/bin/sh\necho "training $*"\ncase "$*" in *--seed=2*) exit 3;; esac\n')
    fake.chmod(0o755)
    app = [sys.executable, str(root / "bin" / "sweep"), f"--spec={spec}", f"--out_dir={out}", f"--train={fake}"]
    printed = subprocess.run(app, env=bin_env, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout.splitlines() == [f"{fake} --depth=8 --seed={s} --out_dir={out}" for s in (1, 2)]
    ran = subprocess.run([*app, "--run", "--parallel=2"], env=bin_env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 1
    log = out / "logs" / "cifar10-resnet8-w1-s2.log"
    assert ran.stdout.splitlines() == [
        f"sweep s in {out}: 1 finished, 1 skipped (finished before), 1 failed, 0 not started (--limit)",
        f"  failed: cifar10-resnet8-w1-s2 (log: {log})",
    ]
    assert "training --depth=8 --seed=2" in log.read_text()
    bad = subprocess.run(
        [*app[:2], f"--spec={tmp_path / 'none.json'}"], env=bin_env, capture_output=True, text=True, timeout=300
    )
    errors = [line for line in bad.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
    assert bad.returncode == 1 and errors == [
        f"error: Cannot read sweep spec {tmp_path / 'none.json'}: No such file or directory."
    ]
    # 10^8 seeds with --limit: the first unfinished runs (seed 0 is finished), without making the others.
    spec.write_text(json.dumps({"name": "huge", "flags": {"depth": 8}, "grid": [{"seed": {"range": [0, 10**8]}}]}))
    huge = subprocess.run([*app, "--limit=2"], env=bin_env, capture_output=True, text=True, timeout=300)
    assert huge.returncode == 0, huge.stderr[-2000:]
    assert huge.stdout.splitlines() == [f"{fake} --depth=8 --seed={s} --out_dir={out}" for s in (1, 2)]


def test_python_programs_run_under_this_interpreter(tmp_path):
    # Started as VENV/bin/python bin/report, children must not fall back to the #! line's python3.
    script = tmp_path / "fake_train"
    script.write_text("#!/usr/bin/env python3\nimport sys\nprint('interpreter', sys.executable)\n")
    log = tmp_path / "log.txt"
    assert sweeps.subprocess_runner([str(script), "--depth=8"], str(log)) == 0
    assert f"interpreter {sys.executable}" in log.read_text()
    shell = tmp_path / "fake_sh"
    shell.write_text("#!/bin/sh\necho shell\n")
    shell.chmod(0o755)
    assert sweeps.subprocess_runner([str(shell)], str(log)) == 0 and "shell" in log.read_text()


def test_run_fetches_each_missing_dataset_once_before_any_training(tmp_path, monkeypatch):
    from tfwd import data

    events = []
    monkeypatch.setattr(data, "prepare", lambda config: events.append(("prepare", config.dataset)) or "folder")

    def runner(argv, log_path):
        events.append(("train", argv[2]))
        return 0

    spec = {"name": "two", "grid": [{"depth": [8], "seed": [0, 1]}, {"depth": [8], "dataset": ["cifar100"]}]}
    assert len(sweeps.run(spec, str(tmp_path), runner=runner, prepare_data=True)["finished"]) == 3
    assert events[:2] == [("prepare", "cifar10"), ("prepare", "cifar100")] and len(events) == 5
    events.clear()
    sweeps.run(spec, str(tmp_path / "other"), runner=runner)  # an injected runner trains nothing: no fetching
    assert [e for e in events if e[0] == "prepare"] == []


def test_run_stops_before_training_when_a_dataset_cannot_be_had(tmp_path, monkeypatch):
    from tfwd import data

    def missing(config):
        raise data.DataNotFoundError(f"Dataset {config.dataset!r} is not prepared in X.")

    monkeypatch.setattr(data, "prepare", missing)
    runner = FakeRunner()
    with pytest.raises(data.DataNotFoundError, match="'cifar10' is not prepared"):
        sweeps.run({"name": "one", "grid": [{"depth": [8]}]}, str(tmp_path), runner=runner, prepare_data=True)
    assert runner.calls == [] and os.listdir(tmp_path) == []
