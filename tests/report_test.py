"""tfwd.report, tfwd.html and bin/report: a report on real runs (the rules: tests/findings_test.py)."""

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from tfwd import dominant_datapoints, findings, html, report, runs


def bin_report(root, bin_env, *flags, timeout=600):
    """Runs bin/report with `flags`, checks that it succeeded, and returns the finished process."""
    result = subprocess.run(
        [sys.executable, str(root / "bin" / "report"), *flags],
        env=bin_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_spec_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        report.validate({"name": "x", "runs": {"grid": [{"depth": [8]}]}, "analysis": {}})
    with pytest.raises(ValueError, match="unknown keys"):
        report.validate({"name": "x", "runs": {"grid": [{"depth": [8]}]}, "analyses": {"tsne": {}}})
    with pytest.raises(ValueError, match="6n"):
        report.validate({"name": "x", "runs": {"grid": [{"depth": [9]}]}})
    path = tmp_path / "s.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="Cannot read report spec"):
        report.load_spec(str(path))
    shipped = glob.glob(os.path.join(os.path.dirname(__file__), "..", "data", "reports", "*.json"))
    assert len(shipped) >= 6  # cpu, demo, demo_cells, demo_schedules, science, science_depth
    for path in shipped:  # every shipped spec is valid and named after its file
        assert report.load_spec(path)["name"] == os.path.splitext(os.path.basename(path))[0]


@pytest.mark.parametrize(
    "arm, message",
    [
        ({"flags": {"recipe": "reference"}}, "at least 'name'"),
        ({"name": "../up", "grid": [{"seed": [0]}]}, "names a folder"),
        ({"name": "ref", "grid": [{"seed": [0]}], "runs": {}}, "arm has unknown keys"),
        ({"name": "ref", "grid": [{"depth": [9]}]}, "6n"),
        ({"name": "ref", "flags": {"recipe": "fast"}, "grid": [{"seed": [0]}]}, "recipe"),
    ],
)
def test_an_arm_is_checked_before_anything_runs(arm, message):
    spec = {"name": "x", "runs": {"flags": {"depth": 8}, "grid": [{"seed": [0]}]}, "arm": arm}
    with pytest.raises(ValueError, match=message):
        report.validate(spec)


def test_an_arm_is_judged_beside_the_spec(tiny_runs, tfds_dir, tmp_path):
    """A second recipe on seed 0 (in out_dir/arm_<name>/): (c)-(f) with each, both runs side by side."""
    from tfwd import training
    from tfwd.data import DataConfig

    flags = {"depth": 8, "width": 0.25, "train_examples": 256, "epochs": 1, "batch_size": 32}
    spec = {
        "name": "tiny_arm",
        "runs": {"flags": flags, "grid": [{"seed": [0, 1]}]},
        "analyses": {
            "cka": {"examples": 96, "passes": 1, "batch_size": 48},
            "pc": {"examples": 96, "batch_size": 48},
            **{k: False for k in ("probes", "prune_blocks", "cross_seed", "dominant_datapoints")},
        },
        "arm": {
            "name": "slow",
            "description": "A tenth of the learning rate.",
            "flags": {"learning_rate": 0.01},
            "grid": [{"seed": [0]}],
        },
    }
    out_dir = tmp_path / "runs"
    for run in tiny_runs:  # copies: the arm's folder goes beside them
        shutil.copytree(run, out_dir / os.path.basename(run), ignore=shutil.ignore_patterns("report_*"))
    with pytest.raises(runs.RunError, match=f"Runs not finished in {out_dir / 'arm_slow'}"):
        report.build(report.validate(spec), str(out_dir), data_dir=tfds_dir, train=False)
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=256),
        runs.TrainConfig(epochs=1, batch_size=32, seed=0, learning_rate=0.01),
    )
    training.train(config, str(out_dir / "arm_slow"), verbose=0, tensorboard=False)
    path = report.build(spec, str(out_dir), data_dir=tfds_dir, train=False)
    folder = os.path.dirname(path)
    assert "arm_heatmaps.png" in os.listdir(folder)
    saved = json.load(open(os.path.join(folder, "findings.json")))
    arm = saved["arm"]
    assert arm["name"] == "slow" and [c["id"] for c in arm["claims"]] == list("cdef")
    (row,) = arm["runs"]
    name = os.path.basename(tiny_runs[0])
    assert row["run"] == name
    for side, run_dir in (("base", tiny_runs[0]), ("arm", str(out_dir / "arm_slow" / name))):
        results = json.load(open(os.path.join(run_dir, runs.RESULTS)))
        assert row[side]["test_accuracy"] == pytest.approx(results["test_accuracy"])
        assert row[side]["train_accuracy"] == pytest.approx(results["accuracy"])
    again = report.judge_outputs(spec, os.path.join(folder, report.OUTPUTS), str(tmp_path / "again"))
    assert json.load(open(os.path.join(os.path.dirname(again), "findings.json")))["arm"] == arm
    page = open(path).read()
    assert "Learning-rate arm: slow" in page and "A tenth of the learning rate." in page
    assert "slow: lr 0.01, cosine per step" in page and "spec: lr 0.1, cosine per step" in page
    assert page.count("data:image/png;base64,") == 1 + 1 + 2  # heatmaps, arm heatmaps, each run's first PC


def test_report_on_finished_runs_and_reuse(tiny_runs, tfds_dir, tmp_path, root, bin_env):
    spec = {
        "name": "tiny",
        "description": "two seeds of a tiny ResNet-8",
        "runs": {
            "flags": {"depth": 8, "width": 0.25, "train_examples": 256, "epochs": 1, "batch_size": 32},
            "grid": [{"seed": [0, 1]}],
        },
        "analyses": {
            "cka": {"examples": 128, "passes": 1, "batch_size": 64},
            "pc": {"examples": 128, "batch_size": 64},
            "probes": {"epochs": 1, "test_examples": 256, "cka_examples": 128},
            "prune_blocks": {"examples": 256},
            "cross_seed": {"examples": 128, "batch_size": 64},
        },
    }
    out_dir = os.path.dirname(tiny_runs[0])
    path = report.build(spec, out_dir, data_dir=tfds_dir, train=False)
    folder = os.path.dirname(path)
    assert sorted(os.listdir(folder)) == [
        runs.OUTPUT_MARKER,
        "cross_seed.png",
        "findings.json",
        "heatmaps.png",
        report.OUTPUTS,
        "report.html",
    ]
    page = open(path).read()
    assert page.count("data:image/png;base64,") == 2 + 2 * 3  # report figures + each run's PC, probes, deletion
    for name in (os.path.basename(r) for r in tiny_runs):
        assert name in page
    assert "find_block_structure with its defaults" in page and "(d) post-residual (`_add`) probes" in page
    saved = json.load(open(os.path.join(folder, "findings.json")))
    assert [f["id"] for f in saved["claims"]] == list("abcdefg")
    at = {f"{c:.2f}" for c in findings.SENSITIVITY}
    assert all(set(f["measured"]["verdict_at_contrast"]) == at for f in saved["claims"])
    assert saved["spec"] == "tiny" and {os.path.basename(r) for r in tiny_runs} == set(saved["runs"])
    assert all("peak_contrast" in r["block"] for r in saved["runs"].values())
    assert {"cka", "pc", "probes", "prune_blocks", "cross_seed", "training"} <= set(saved["timings_seconds"])
    made = sorted(d for d in os.listdir(tiny_runs[0]) if d.startswith("report_"))
    assert [d.rsplit("_", 1)[0] for d in made] == [
        "report_cka",
        "report_cross_seed",
        "report_pc",
        "report_probes",
        "report_prune_blocks",
    ]
    seed1 = sorted(d.rsplit("_", 1)[0] for d in os.listdir(tiny_runs[1]) if d.startswith("report_"))
    assert seed1 == ["report_cka", "report_pc", "report_probes", "report_prune_blocks"]  # every seed is analysed
    # bin/report on the same spec reuses every analysis (nothing recomputed) and says where the report is.
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(spec))
    result = bin_report(
        root, bin_env, f"--spec={spec_file}", f"--out_dir={out_dir}", f"--data_dir={tfds_dir}", "--notrain"
    )
    assert result.stdout.strip().endswith(f"report: {path}")
    assert f"CKA heatmaps: {os.path.join(folder, 'heatmaps.png')}" in result.stdout
    again = json.load(open(os.path.join(folder, "findings.json")))
    assert all(again["timings_seconds"][k] == 0 for k in ("cka", "pc", "probes", "prune_blocks", "cross_seed"))
    assert sorted(d for d in os.listdir(tiny_runs[0]) if d.startswith("report_")) == made
    check_outputs_rejudged(spec, folder, out_dir, tmp_path, root, bin_env)


def check_outputs_rejudged(spec, folder, runs_dir, tmp_path, root, bin_env):
    """The report's outputs/ (small, no model, naming no folder of this machine) give the same findings when judged
    again, through bin/report; what they lack is named and left out."""
    outputs = os.path.join(folder, report.OUTPUTS)
    names = sorted(os.listdir(outputs))
    files = [os.path.join(d, f) for d, _, found in os.walk(outputs) for f in found]
    assert not [f for f in files if f.endswith((".png", ".keras"))]
    for file in files:
        if file.endswith(".npz"):
            with np.load(file) as f:
                text = " ".join(str(f[k]) for k in f.files if f[k].dtype.kind == "U")
        else:
            text = open(file).read()
        assert os.path.abspath(runs_dir) not in text, file
    measured = json.load(open(os.path.join(outputs, names[0], "analyses", "probes", "probes.json")))["measured"]
    assert [m["run"] for m in measured] == [names[0]]
    assert sorted(os.listdir(os.path.join(outputs, names[0], "analyses"))) == [
        "cka",
        "cross_seed",
        "pc",
        "probes",
        "prune_blocks",
    ]
    with np.load(os.path.join(outputs, names[0], "analyses", "pc", "pc.npz")) as f:  # figures' arrays at half size
        assert {k: str(f[k].dtype) for k in ("scores", "cka", "fraction")} == {
            "scores": "float32",
            "cka": "float32",
            "fraction": "float64",
        }
    saved = json.load(open(os.path.join(folder, "findings.json")))
    spec_file = tmp_path / "again.json"
    spec_file.write_text(json.dumps(spec))
    bin_report(root, bin_env, f"--spec={spec_file}", f"--from_outputs={outputs}", f"--out_dir={tmp_path / 'again'}")
    again = json.load(open(tmp_path / "again" / f"report_{spec['name']}" / "findings.json"))
    assert again["claims"] == saved["claims"] and again["runs"] == saved["runs"]
    assert "missing_outputs" not in again
    # Without seed 1's first-PC output, its runs and (c) go on without it, and the report says so.
    shutil.copytree(outputs, tmp_path / "partial")
    shutil.rmtree(tmp_path / "partial" / names[1] / "analyses" / "pc")
    path = report.judge_outputs(spec, str(tmp_path / "partial"), str(tmp_path / "partial_report"))
    partial = json.load(open(os.path.join(os.path.dirname(path), "findings.json")))
    assert partial["missing_outputs"] == [f"{names[1]}/analyses/pc"]
    assert partial["runs"] == saved["runs"]
    assert "Not in the outputs judged" in open(path).read()
    with pytest.raises(runs.RunError, match="holds none of the runs"):
        report.judge_outputs(spec, str(tmp_path), str(tmp_path / "none"))


def test_analyses_set_to_false_are_skipped(tiny_runs, tfds_dir, tmp_path):
    spec = {
        "name": "cka_only",
        "runs": {
            "flags": {"depth": 8, "width": 0.25, "train_examples": 256, "epochs": 1, "batch_size": 32},
            "grid": [{"seed": [0, 1]}],
        },
        "analyses": {
            "cka": {"examples": 96, "passes": 1, "batch_size": 48},  # settings no other test uses: a fresh folder
            **{k: False for k in ("pc", "probes", "prune_blocks", "cross_seed", "dominant_datapoints")},
        },
    }
    runs_before = {r: set(os.listdir(r)) for r in tiny_runs}
    path = report.build(report.validate(spec), os.path.dirname(tiny_runs[0]), data_dir=tfds_dir, train=False)
    for run in tiny_runs:  # one new folder per run: its CKA
        made = set(os.listdir(run)) - runs_before[run]
        assert [d.rsplit("_", 1)[0] for d in made] == ["report_cka"]
    saved = json.load(open(os.path.join(os.path.dirname(path), "findings.json")))
    verdicts = {f["id"]: f["verdict"] for f in saved["claims"]}
    assert verdicts["c"] == verdicts["d"] == verdicts["e"] == verdicts["f"] == "not measured"
    assert {"pc", "probes", "prune_blocks", "cross_seed"}.isdisjoint(saved["timings_seconds"])
    for run in tiny_runs:
        for d in set(os.listdir(run)) - runs_before[run]:
            shutil.rmtree(os.path.join(run, d))  # leave the shared runs as other tests expect them
    shutil.rmtree(os.path.dirname(path))


@pytest.mark.parametrize("retrained", ["results", "model", "other-seed"])
def test_cached_analyses_are_keyed_on_the_runs_content(tiny_runs, tmp_path, retrained):
    run, other = (shutil.copytree(r, tmp_path / os.path.basename(r)) for r in tiny_runs)
    calls = []

    def compute(out):
        calls.append(out)
        os.makedirs(out)

    settings = {"examples": 128, "other": other.name}
    first = report._cached("cross_seed", str(run), settings, compute, {}, inputs=[str(other)])
    assert report._cached("cross_seed", str(run), settings, compute, {}, inputs=[str(other)]) == first
    assert len(calls) == 1  # reused
    # The run is retrained (--overwrite): new results.json, or a new model.keras; or the other seed is.
    target = other if retrained == "other-seed" else run
    if retrained == "model":
        stat = os.stat(target / "model.keras")
        os.utime(target / "model.keras", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    else:
        results = json.loads((target / "results.json").read_text())
        runs.write_json(str(target / "results.json"), {**results, "test_accuracy": results["test_accuracy"] + 0.01})
    again = report._cached("cross_seed", str(run), settings, compute, {}, inputs=[str(other)])
    assert again != first and calls == [first, again]  # analysed again, into a new folder


@pytest.mark.parametrize(
    "analyses,message",
    [
        ({"pc": {"examples": 100, "dtype": "float64"}}, None),
        ({"probes": {"l2": [0, 1e-3], "learning_rates": None, "augment": True}}, None),
        ({"cka": {"taps": ["stem_conv", "pool"]}}, None),
        ({"cka": {"passes": 2.5}}, r"analyses.cka.passes must be int. Received: 2.5"),
        ({"probes": {"l2": [0.1, "a"]}}, r"analyses.probes.l2 must be Sequence\[float\]. Received: \[0.1, 'a'\]"),
        ({"prune_blocks": {"recalibrate_bn": "yes"}}, r"analyses.prune_blocks.recalibrate_bn must be bool"),
        ({"cross_seed": {"examples": True}}, r"analyses.cross_seed.examples must be int \| None. Received: True"),
        (
            {"dominant_datapoints": {"layer": "x", "top": 3, "topk": 3}},
            r"analyses.dominant_datapoints has no setting 'topk'",
        ),
        ({"pc": {"data_dir": "x"}}, r"analyses.pc has no setting 'data_dir' \(the report sets it\)"),
        ({"cka": []}, r"analyses.cka must be an object of tfwd.cka.analyze settings"),
        ({k: False for k in ("pc", "probes", "prune_blocks", "cross_seed", "dominant_datapoints")}, None),
        ({"cka": False}, r"analyses.cka must be an object of tfwd.cka.analyze settings. Received: False"),
        ({"probes": True}, r"analyses.probes must be an object .* \(or false to skip it\). Received: True"),
    ],
    ids=[
        "pc",
        "probes",
        "cka-layer-names",
        "float-for-int",
        "list-item",
        "string-for-bool",
        "bool-for-int",
        "unknown",
        "report-sets-it",
        "not-an-object",
        "skipped",
        "cka-cannot-be-skipped",
        "true-is-not-settings",
    ],
)
def test_analysis_settings_are_checked_against_the_functions(analyses, message):
    spec = {"name": "x", "runs": {"grid": [{"depth": [8]}]}, "analyses": analyses}
    if message is None:
        assert report.validate(spec) is spec
    else:
        with pytest.raises(ValueError, match=message):
            report.validate(spec)


def test_unfinished_runs_without_training_is_an_error(tmp_path, tfds_dir):
    spec = {
        "name": "none",
        "runs": {"flags": {"depth": 8, "width": 0.25, "train_examples": 256, "epochs": 1}, "grid": [{"seed": [5]}]},
    }
    with pytest.raises(runs.RunError, match="Runs not finished"):
        report.build(spec, str(tmp_path), data_dir=tfds_dir, train=False)


@pytest.mark.slow
def test_demo_report_end_to_end(tmp_path, root, bin_env):
    """./run.sh demo's job from scratch: one 300-epoch training, a block, its first PC and dominant datapoints
    (5-10 minutes on 2 cores)."""
    result = bin_report(
        root, bin_env, f"--spec={root / 'data' / 'reports' / 'demo.json'}", f"--out_dir={tmp_path}", timeout=3600
    )
    path = tmp_path / "report_demo" / "report.html"
    assert result.stdout.strip().endswith(f"report: {path}")
    saved = json.load(open(tmp_path / "report_demo" / "findings.json"))
    assert [f["id"] for f in saved["claims"]] == list("abcdefg")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cifar10-")) == [
        "cifar10-resnet38-w1-n128-s0"
    ]
    # The demo shows the phenomenon: a block (docs/science/demo_cell.md: three seeds of three) and its
    # dominant datapoints.
    assert saved["runs"]["cifar10-resnet38-w1-n128-s0"]["block"]["found"]
    assert saved["dominant_datapoints"]
    made = sorted(p.name.rsplit("_", 1)[0] for p in (tmp_path / "cifar10-resnet38-w1-n128-s0").glob("report_*"))
    assert made == ["report_cka", "report_dominant_datapoints", "report_pc"]  # probes and deletion are skipped


@pytest.mark.slow
def test_science_spec_in_miniature(tmp_path, root, bin_env):
    """data/reports/science.json shrunk: the same flags, grids, analyses and rules on tiny runs (a few minutes)."""
    spec = json.load(open(root / "data" / "reports" / "science.json"))
    spec["name"] = "science_mini"
    spec["runs"]["flags"].update(epochs=3, validation_examples=200, validation_every=2)
    spec["runs"]["grid"] = [
        {"cases": [{"depth": 8, "train_examples": 256}, {"depth": 14, "train_examples": 256}], "seed": [0, 1]},
        {"depth": [8], "train_examples": [512], "seed": [0, 1]},
    ]
    spec["runs"]["flags"]["width"] = 0.25
    spec["analyses"] = {
        "cka": {"examples": 256, "passes": 1, "batch_size": 128},
        "pc": {"examples": 200, "batch_size": 100},
        "probes": {"epochs": 1, "test_examples": 256, "cka_examples": 128},
        "prune_blocks": {"examples": 256},
        "cross_seed": {"examples": 256, "batch_size": 128},
        "dominant_datapoints": {"examples": 100, "top": 5},
    }
    spec["block_structure"] = {"min_contrast": 0.0, "min_squareness": 0.0}  # force blocks, to exercise every rule
    spec["min_train_accuracy"] = 0.0  # 3 epochs fit nothing: count every run
    spec_file = tmp_path / "mini.json"
    spec_file.write_text(json.dumps(spec))
    bin_report(root, bin_env, f"--spec={spec_file}", f"--out_dir={tmp_path}", timeout=3600)
    saved = json.load(open(tmp_path / "report_science_mini" / "findings.json"))
    assert len(saved["runs"]) == 6 and all("peak_contrast" in r["block"] for r in saved["runs"].values())
    claims = {c["id"]: c for c in saved["claims"]}
    assert set(claims) == set("abcdefg")
    assert {row["seed"] for row in claims["a"]["seeds"]} == {0, 1}  # the depth series on every seed
    assert {row["seed"] for row in claims["b"]["seeds"]} == {0, 1}  # ResNet-8 on 256 and 512 images
    for key in "cdef":
        seeds = {row["run"] for row in claims[key]["seeds"]}
        assert seeds, key  # every block run is measured
    assert saved["dominant_datapoints"] and all(len(d["examples"]) == 5 for d in saved["dominant_datapoints"].values())


def test_wide_against_deep_in_the_report(tiny_runs, tfds_dir, tmp_path):
    """Claim (g) end to end: the widest (ResNet-8 at 0.5x) and the deepest (ResNet-14 at 0.25x) cell on the same
    256 images, seed 0 of each, beside the two seeds of ResNet-8 at 0.25x: their cross-model CKA, cached, judged and
    drawn."""
    from tfwd import cka, training
    from tfwd.data import DataConfig

    out_dir = tmp_path / "runs"
    shutil.copytree(tiny_runs[0], out_dir / os.path.basename(tiny_runs[0]))
    for depth, width in ((8, 0.5), (14, 0.25)):
        training.train(
            runs.RunConfig(
                runs.ModelConfig(depth, width),
                DataConfig(data_dir=tfds_dir, train_examples=256),
                runs.TrainConfig(epochs=1, batch_size=32, seed=0),
            ),
            str(out_dir),
            verbose=0,
            tensorboard=False,
        )
    spec = {
        "name": "wide_deep",
        "runs": {
            "flags": {"train_examples": 256, "epochs": 1, "batch_size": 32, "seed": 0},
            "grid": [
                {"cases": [{"depth": 8, "width": 0.25}, {"depth": 8, "width": 0.5}, {"depth": 14, "width": 0.25}]}
            ],
        },
        "analyses": {
            "cka": {"examples": 128, "passes": 1, "batch_size": 64},
            "cross_seed": {"examples": 96, "batch_size": 48},
            **{k: False for k in ("pc", "probes", "prune_blocks", "dominant_datapoints")},
        },
        "block_structure": {"min_contrast": 0.0, "min_squareness": 0.0},  # force blocks, to judge both models
        "min_train_accuracy": 0.0,  # one epoch fits nothing: count every run
    }
    path = report.build(spec, str(out_dir), data_dir=tfds_dir, train=False)
    folder = os.path.dirname(path)
    assert "wide_deep.png" in os.listdir(folder)
    wide, deep = "cifar10-resnet8-w0.5-n256-s0", "cifar10-resnet14-w0.25-n256-s0"
    made = [d for d in os.listdir(out_dir / wide) if d.startswith("report_wide_deep_")]
    assert len(made) == 1 and not any(d.startswith("report_wide_deep_") for d in os.listdir(out_dir / deep))
    loaded = cka.load(str(out_dir / wide / made[0]))
    assert [os.path.basename(m) for m in loaded.models] == [wide, deep]
    assert loaded.settings["examples"] == 96  # the cross-seed CKA's settings
    saved = json.load(open(os.path.join(folder, "findings.json")))
    g = next(c for c in saved["claims"] if c["id"] == "g")
    assert [(r["role"], r["run"], r["other"]) for r in g["seeds"]] == [("wide", wide, deep), ("deep", deep, wide)]
    # The numbers are the rule's on the saved matrix and the blocks the report found.
    names = loaded.names
    expected = findings.wide_against_deep(
        loaded.blocks[0, 1],
        *names,
        *(blocks_of(saved["runs"][r]["block"]) for r in (wide, deep)),
    )
    for row, want in zip(g["seeds"], expected):
        for key in ("inside_mean", "outside_mean"):  # a mean over no layer is NaN, null in findings.json
            assert row[key] == (pytest.approx(want[key]) if want[key] == want[key] else None), key
        assert row["shows"] == want["shows"]
    assert g["verdict"] == findings._verdict([w["shows"] for w in expected if w["shows"] is not None])
    assert g["verdict"] != "not measured"
    exported = os.path.join(folder, report.OUTPUTS, wide, "analyses", "wide_deep")
    assert [os.path.basename(m) for m in cka.load(exported).models] == [wide, deep]
    rejudged = report.judge_outputs(spec, os.path.join(folder, report.OUTPUTS), str(tmp_path / "again"))
    assert json.load(open(os.path.join(os.path.dirname(rejudged), "findings.json")))["claims"] == saved["claims"]
    # Again: the cross-model CKA is reused, not computed.
    path = report.build(spec, str(out_dir), data_dir=tfds_dir, train=False)
    again = json.load(open(os.path.join(os.path.dirname(path), "findings.json")))
    assert again["timings_seconds"]["wide_deep"] == 0
    # Without the cross-model CKA (cross_seed off), (g) is not measured.
    spec["analyses"]["cross_seed"] = False
    spec["name"] = "wide_deep_off"
    path = report.build(spec, str(out_dir), data_dir=tfds_dir, train=False)
    off = json.load(open(os.path.join(os.path.dirname(path), "findings.json")))
    g = next(c for c in off["claims"] if c["id"] == "g")
    assert g["verdict"] == "not measured" and "cross-model CKA not computed" in g["measured"]["summary"]


def blocks_of(saved: dict):
    """A tfwd.blocks.BlockStructure back from its findings.json dict."""
    from tfwd import blocks

    return blocks.BlockStructure(**{**saved, "blocks": tuple(blocks.Block(**b) for b in saved["blocks"])})


def test_findings_json_names_runs_instead_of_locating_them(tmp_path):
    # The dominant-datapoint settings hold the run's path; findings.json is shared, so it keeps the name.
    run = str(tmp_path / "runs" / "cifar10-resnet56-w1-n782-s1")
    block = {"found": True, "start": "a", "end": "b", "fraction": 0.5, "contrast": 0.4, "peak_contrast": 0.5}
    section = dominant_datapoints.DominantDatapointsResult(
        "stage3_block4_out", [3, 1], [9.0, 8.0], ["cat", "dog"], 0.6, 0.7, 3.0, block, block,
        {"run": run, "examples": 1000, "top": 2},
    )  # fmt: skip
    analyses = report.Analyses([], {}, {}, {}, {os.path.basename(run): section}, {})
    saved = html.findings_json({"name": "s"}, analyses, [], {"training": 3600.0}, 7200.0)
    assert saved["dominant_datapoints"] == {
        "cifar10-resnet56-w1-n782-s1": {
            **dataclasses.asdict(section),
            "examples": [3, 1],
            "settings": {"run": "cifar10-resnet56-w1-n782-s1", "examples": 1000, "top": 2},
        }
    }
    assert str(tmp_path) not in json.dumps(saved) and saved["hours"] == {"training": 1.0, "total": 2.0}
    assert section.settings["run"] == run  # the analysis' own record is left as it is


def test_runs_with_a_cka_history_get_its_figure(tmp_path):
    # A history as bin/train --cka_every writes it (here only its epochs, matrices and names); the other run has none.
    names = ["stem_relu"] + [f"stage{s}_block{b}_out" for s in (1, 2, 3) for b in (1, 2)] + ["logits"]
    matrices = np.stack([np.eye(8) + 0.1, np.eye(8) + 0.1])
    matrices[1, 3:7, 3:7] = 0.95  # a block forms by epoch 20
    with_history, without = tmp_path / "cifar10-resnet14-w1-s0", tmp_path / "cifar10-resnet14-w1-s1"
    for run in (with_history, without):
        run.mkdir()
    np.savez(with_history / "cka_history.npz", epochs=np.array([10, 20]), matrices=matrices, names=np.array(names))
    opened = {r.name: types.SimpleNamespace(path=str(r)) for r in (with_history, without)}
    (tmp_path / "report").mkdir()
    sections = html.cka_history_sections(str(tmp_path / "report"), opened)
    assert len(sections) == 1 and sections[0].startswith("<h3>cifar10-resnet14-w1-s0: Block structure as it formed")
    assert sections[0].count("data:image/png;base64,") == 1
    assert os.listdir(tmp_path / "report") == ["cka_history_cifar10-resnet14-w1-s0.png"]
