"""tfwd.report, tfwd.findings, tfwd.html and bin/report: rules on synthetic results, a report on real runs."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from tfwd import blocks, findings, report, runs
from tfwd.data import DataConfig


def entry(depth=14, width=1.0, n=3125, seed=0, block=None, layers=40, **extra):
    """A stand-in for one analysed run: its config, layer names and detected block."""
    config = runs.RunConfig(runs.ModelConfig(depth, width), DataConfig(train_examples=n), runs.TrainConfig(seed=seed))
    run = types.SimpleNamespace(config=config, name=config.name)
    names = [f"layer{i}" for i in range(layers)]
    if block:
        found = blocks.BlockStructure(True, block[0], block[1], size=block[1] - block[0] + 1, fraction=(block[1] - block[0] + 1) / layers)
    else:
        found = blocks.BlockStructure(False)
    return {"run": run, "cka": {"names": names, "matrix": np.eye(layers)}, "block": found, **extra}


def results(*entries, cross=None):
    out = {e["run"].name: e for e in entries}
    out["_cross_seed"] = cross or {}
    return out


class TestFindings:
    def test_capacity_depth_and_width_series(self):
        r = results(entry(14), entry(38, block=(20, 39)), entry(14, 2.0, block=(30, 39)))
        f = findings.capacity(r)
        assert f["verdict"] == "reproduced"
        assert "depth series, 3125 examples: ResNet-14 (1x) 0.00, ResNet-38 (1x) 0.50" in f["measured"]
        assert "width series, 3125 examples: ResNet-14 (1x) 0.00, ResNet-14 (2x) 0.25" in f["measured"]
        assert findings.capacity(results(entry(14, block=(0, 30)), entry(38)))["verdict"] == "not reproduced"
        mixed = results(entry(14), entry(38, block=(20, 39)), entry(14, 2.0))
        assert findings.capacity(mixed)["verdict"] == "partly reproduced"
        assert findings.capacity(results(entry(14)))["verdict"] == "not measured"

    def test_data_size(self):
        r = results(entry(14, n=782, block=(10, 39)), entry(14, n=12500))
        f = findings.data_size(r)
        assert f["verdict"] == "reproduced" and "782 examples 0.75, 12500 examples 0.00" in f["measured"]
        assert findings.data_size(results(entry(14, n=782), entry(14, n=12500, block=(0, 9))))["verdict"] == "not reproduced"

    def test_first_pc_inside_versus_outside(self):
        fraction = np.full(40, 0.2)
        fraction[20:] = 0.9
        e = entry(38, block=(20, 39), pc={"names": [f"layer{i}" for i in range(40)], "fraction": fraction})
        f = findings.first_pc(results(e))
        assert f["verdict"] == "reproduced" and "0.90 inside vs 0.20 outside" in f["measured"]
        e["pc"]["fraction"] = np.full(40, 0.6)
        assert findings.first_pc(results(e))["verdict"] == "not reproduced"

    def test_probes_flat_inside(self):
        taps = [{"tap": f"layer{i}", "kind": "post", "test_accuracy": acc} for i, acc in zip(range(0, 40, 4), [0.3, 0.4, 0.5, 0.6, 0.7, 0.71, 0.71, 0.72, 0.72, 0.72])]
        e = entry(38, block=(20, 39), probes=taps)
        f = findings.probes_flat(results(e))
        # outside: +10 points four times, +1 into the block (8.2 mean); inside: 0, +1, 0, 0 (0.25 mean)
        assert f["verdict"] == "reproduced" and "+0.25 points per block inside (4 steps) vs +8.20 outside (5)" in f["measured"]
        for t in taps[5:]:
            t["test_accuracy"] += 0.1 * taps.index(t)
        assert findings.probes_flat(results(e))["verdict"] == "not reproduced"

    def test_deletion_costs_inside_versus_outside(self):
        names = ["stage1_block1_out", "stage1_block2_out", "stage2_block2_out", "stage2_block3_out"]
        rows = [
            {"stage": 1, "blocks_deleted": 1, "deleted": "stage1_block2", "accuracy": 0.5},
            {"stage": 1, "blocks_deleted": 2, "deleted": "stage1_block2 stage1_block1", "accuracy": 0.3},
            {"stage": 2, "blocks_deleted": 1, "deleted": "stage2_block3", "accuracy": 0.79},
            {"stage": 2, "blocks_deleted": 2, "deleted": "stage2_block3 stage2_block2", "accuracy": 0.78},
        ]
        e = entry(38, block=(2, 3), layers=4, prune_blocks={"full_accuracy": 0.8, "rows": rows})
        e["cka"]["names"] = names
        f = findings.deletion(results(e))
        # inside: stage2 blocks cost 1 point each; outside: stage1 costs 30 then 20 points
        assert f["verdict"] == "reproduced" and "1.0 points per deleted block inside (2) vs 25.0 outside (2)" in f["measured"]

    def test_cross_seed(self):
        a = entry(38, block=(20, 39))
        diag = np.r_[np.full(20, 0.9), np.full(20, 0.4)]
        cross = {"x": {"runs": [a["run"].name, "other"], "matrix": np.diag(diag)}}
        f = findings.cross_seed(results(a, cross=cross))
        assert f["verdict"] == "reproduced" and "0.40 inside the block vs 0.90 outside" in f["measured"]
        cross["x"]["matrix"] = np.eye(40)
        assert findings.cross_seed(results(a, cross=cross))["verdict"] == "not reproduced"

    def test_nothing_to_judge(self):
        judged = findings.judge(results(entry(14)))
        assert [f["id"] for f in judged] == list("abcdef")
        assert [f["verdict"] for f in judged] == ["not measured"] * 6


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
    for shipped in ("cpu", "demo"):
        spec = report.load_spec(os.path.join(os.path.dirname(__file__), "..", "data", "reports", f"{shipped}.json"))
        assert spec["name"] == shipped


def test_report_on_finished_runs_and_reuse(tiny_runs, tfds_dir, tmp_path, root, bin_env):
    spec = {
        "name": "tiny",
        "description": "two seeds of a tiny ResNet-8",
        "runs": {"flags": {"depth": 8, "width": 0.25, "train_examples": 256, "epochs": 1, "batch_size": 32}, "grid": [{"seed": [0, 1]}]},
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
    assert sorted(os.listdir(folder)) == ["cross_seed.png", "findings.json", "heatmaps.png", "report.html"]
    page = open(path).read()
    assert page.count("data:image/png;base64,") == 2 + 3  # report figures + the seed-0 run's PC, probes, deletion
    for name in (os.path.basename(r) for r in tiny_runs):
        assert name in page
    assert "find_block_structure with its defaults" in page and "(d) In every seed-0 run with a block" in page
    saved = json.load(open(os.path.join(folder, "findings.json")))
    assert [f["id"] for f in saved["findings"]] == list("abcdef")
    assert {"cka", "pc", "probes", "prune_blocks", "cross_seed", "training"} <= set(saved["timings_seconds"])
    made = sorted(d for d in os.listdir(tiny_runs[0]) if d.startswith("report_"))
    assert [d.rsplit("_", 1)[0] for d in made] == ["report_cka", "report_cross_seed", "report_pc", "report_probes", "report_prune_blocks"]
    # bin/report on the same spec reuses every analysis (nothing recomputed) and says where the report is.
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, str(root / "bin" / "report"), f"--spec={spec_file}", f"--out_dir={out_dir}", f"--data_dir={tfds_dir}", "--notrain"],
        env=bin_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(f"report: {path}")
    assert f"CKA heatmaps: {os.path.join(folder, 'heatmaps.png')}" in result.stdout
    again = json.load(open(os.path.join(folder, "findings.json")))
    assert all(again["timings_seconds"][k] == 0 for k in ("cka", "pc", "probes", "prune_blocks", "cross_seed"))
    assert sorted(d for d in os.listdir(tiny_runs[0]) if d.startswith("report_")) == made


def test_unfinished_runs_without_training_is_an_error(tmp_path, tfds_dir):
    spec = {"name": "none", "runs": {"flags": {"depth": 8, "width": 0.25, "train_examples": 256, "epochs": 1}, "grid": [{"seed": [5]}]}}
    with pytest.raises(runs.RunError, match="Runs not finished"):
        report.build(spec, str(tmp_path), data_dir=tfds_dir, train=False)


@pytest.mark.slow
def test_demo_report_end_to_end(tmp_path, root, bin_env):
    """./run.sh demo's job from scratch: 3 trainings and every analysis (about 5 minutes on 2 cores)."""
    result = subprocess.run(
        [sys.executable, str(root / "bin" / "report"), f"--spec={root / 'data' / 'reports' / 'demo.json'}", f"--out_dir={tmp_path}"],
        env=bin_env, capture_output=True, text=True, timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "report_demo" / "report.html"
    assert result.stdout.strip().endswith(f"report: {path}")
    saved = json.load(open(tmp_path / "report_demo" / "findings.json"))
    assert [f["id"] for f in saved["findings"]] == list("abcdef")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cifar10-")) == [
        "cifar10-resnet14-w1-n782-s0", "cifar10-resnet14-w1-n782-s1", "cifar10-resnet26-w1-n782-s0"
    ]
