"""tfwd.dominant_datapoints and bin/dominant_datapoints: first-PC scores against an independent float64 SVD."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfwd import blocks, dominant_datapoints, models


def _svd_reference(x, top):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, 0] * s[0]
    order = np.argsort(-np.abs(scores))
    squared = scores**2
    norms = np.linalg.norm(x, axis=1)
    rest = np.setdiff1d(np.arange(len(x)), order[:top])
    return {
        "scores": scores,
        "top": order[:top],
        "first_pc_fraction": s[0] ** 2 / np.sum(s**2),
        "top_share": squared[order[:top]].sum() / squared.sum(),
        "norm_ratio": norms[order[:top]].mean() / norms[rest].mean(),
    }


@pytest.mark.parametrize("shape,top", [((60, 5), 3), ((40, 4, 4, 3), 7), ((30, 200), 1)], ids=["wide-n", "conv", "p>n"])
def test_scores_and_shares_match_an_svd(shape, top):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=shape[1:])
    got, want = dominant_datapoints.first_pc_scores(x, top), _svd_reference(x, top)
    sign = np.sign(np.dot(got["scores"], want["scores"]))
    np.testing.assert_allclose(got["scores"], sign * want["scores"], rtol=1e-9, atol=1e-9)
    assert got["scores"][np.argmax(np.abs(got["scores"]))] > 0
    np.testing.assert_array_equal(np.sort(got["top"]), np.sort(want["top"]))
    for key in ("first_pc_fraction", "top_share", "norm_ratio"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key


def test_planted_dominant_examples_are_found():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 30))
    planted = [17, 88, 150]
    x[planted] += 40.0 * rng.normal(size=30)  # large activations along one shared direction
    result = dominant_datapoints.first_pc_scores(x, top=3)
    assert sorted(result["top"].tolist()) == planted
    assert result["top_share"] > 0.9 and result["norm_ratio"] > 5 and result["first_pc_fraction"] > 0.5


def test_top_must_leave_examples():
    with pytest.raises(ValueError, match="`top` must be in"):
        dominant_datapoints.first_pc_scores(np.zeros((5, 3)), top=5)


def test_default_layer_is_the_block_output_nearest_the_middle_of_the_block():
    names = models.tap_names(models.cifar_resnet(depth=14), "all")
    c = np.eye(len(names))
    c[9:32, 9:32] = 1.0  # four residual-stream layers: stage1_block1_out .. stage2_block2_out
    block = blocks.find_block_structure(c, names)
    assert block.found and (block.start, block.end) == (9, 31)
    chosen = dominant_datapoints.default_layer(names, block)
    outs = [i for i, n in enumerate(names) if n.endswith("_out") and 9 <= i <= 31]
    assert chosen in [names[i] for i in outs]
    assert abs(names.index(chosen) - 20) == min(abs(i - 20) for i in outs)
    assert dominant_datapoints.default_layer(names, blocks.BlockStructure(False)) == "stage3_block1_out"


@pytest.mark.parametrize("residual", [True, False], ids=["resnet", "plain"])
def test_analyze_model_removes_the_top_examples_from_the_cka(residual):
    import tensorflow as tf

    from tfwd import cka

    model = models.cifar_resnet(depth=8, width=0.25, residual=residual)
    images = np.random.default_rng(2).uniform(size=(40, 32, 32, 3)).astype("float32")
    result = dominant_datapoints.analyze_model(model, images, top=4, batch_size=18)
    assert result["layer"].endswith("_out") and len(result["names"]) == result["cka"].shape[0]
    keep = np.setdiff1d(np.arange(40), result["top"])
    reference = cka.cka_matrices(
        [model], lambda _: tf.data.Dataset.from_tensor_slices(images[keep]).batch(18), passes=1
    )
    np.testing.assert_allclose(result["cka_without_top"], reference["blocks"][(0, 0)], atol=1e-6)
    acts = models.activation_model(model, [result["layer"]])(images, training=False)
    np.testing.assert_allclose(
        result["scores"], dominant_datapoints.first_pc_scores(acts.numpy(), 4)["scores"], rtol=1e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="nearest: stage1_block1_out"):
        dominant_datapoints.analyze_model(model, images, layer="stage1_block1_outt")


def _run(root, env, *args):
    result = subprocess.run(
        [sys.executable, str(root / "bin" / "dominant_datapoints"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.returncode, result.stdout, result.stderr.strip().splitlines()


def test_binary_writes_the_json_and_figures(root, bin_env, tmp_path, tiny_runs):
    out = tmp_path / "dd"
    code, stdout, _ = _run(root, bin_env, f"--run={tiny_runs[0]}", "--examples=60", "--top=5", f"--out_dir={out}")
    assert code == 0, stdout
    with open(out / "dominant_datapoints.json") as f:
        info = json.load(f)
    assert {
        "layer",
        "examples",
        "scores",
        "first_pc_fraction",
        "top_share",
        "norm_ratio",
        "block",
        "block_without_top",
    } <= set(info)
    assert len(info["examples"]) == 5 and all(0 <= i < 60 for i in info["examples"])
    assert np.all(np.diff(np.abs(info["scores"])) <= 1e-12)  # most dominant first
    assert 0 < info["top_share"] <= 1 and 0 <= info["first_pc_fraction"] <= 1
    assert {"dominant_datapoints.png", "cka_without_top.png", "dominant_datapoints.npz"} <= set(os.listdir(out))
    loaded = dominant_datapoints.load(str(out))  # the same summary, typed
    assert isinstance(loaded, dominant_datapoints.DominantDatapointsResult)
    assert dataclasses.asdict(loaded) == info and loaded.examples == info["examples"] and loaded.top_share > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--layer=stage1_blok1_out"],
            "error: `layer` 'stage1_blok1_out' is not a layer of this model; nearest: stage1_block1_out",
        ),
        (
            ["--examples=20", "--top=20"],
            "error: `top` must be in [1, examples - 1] = [1, 19]. Received: top=20, examples=20",
        ),
        pytest.param(
            ["unfinished"], "error: Run {run} has no model.keras: it has not finished training", marks=pytest.mark.slow
        ),
    ],
    ids=["unknown-layer", "top-not-below-examples", "unfinished-run"],
)
def test_binary_bad_inputs(root, bin_env, tmp_path, tiny_runs, args, message):
    run = tiny_runs[0]
    if args == ["unfinished"]:
        run = shutil.copytree(tiny_runs[0], tmp_path / os.path.basename(tiny_runs[0]))
        os.remove(run / "model.keras")
        args = []
    code, _, lines = _run(root, bin_env, f"--run={run}", f"--out_dir={tmp_path / 'out'}", *args)
    assert code == 1
    assert lines[-1].startswith(message.format(run=run))
    assert not os.path.exists(tmp_path / "out")
