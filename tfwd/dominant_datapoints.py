"""Dominant datapoints: the few examples behind a block structure (beyond the paper).

Nguyen, Raghu & Kornblith (2022), "On the Origins of the Block Structure Phenomenon in
Neural Network Representations", trace block structure to *dominant datapoints*: a
small group of examples with very large activations that carry the block layers'
shared first principal component. This module measures that on one layer:

- X: the layer's activations on N images, flattened to (N, p), centred over the N
  examples (Xc = X - mean).
- The first principal component, from the top eigenpair (lambda_1, u_1) of the
  centred Gram matrix Xc Xc^T (float64, `tfwd.pc.first_pc`): each example's *score* is its coordinate
  along the component, sqrt(lambda_1) u_1 (= Xc v_1), signed so that the largest
  |score| is positive.
- first_pc_fraction = lambda_1 / sum of all eigenvalues (= sigma_1^2 / sum sigma_i^2).
- The top K examples by |score|; top_share = the sum of their squared scores over the
  sum of all squared scores (= their share of lambda_1); norm_ratio = the mean L2 norm
  of their (uncentred) activations over that of the other examples.
- Within-model CKA over every layer, on the N images and on the N images without the
  top K, with `tfwd.blocks.find_block_structure`'s verdict on both: if the block
  comes from those examples, it fades without them.

The default layer is the block output (`_out`) nearest the middle of the detected
block structure, or the middle block output of the last stage when there is none.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tfwd import blocks, cka, models, pc, runs

# The analysis' one name: this module, bin/dominant_datapoints, its output folder
# (RUN/dominant_datapoints/), whose marker (tfwd.runs.OUTPUT_MARKER) holds it, and its entry in
# tfwd.analyses. tests/names_test.py checks that they agree.
KIND = "dominant_datapoints"
FILE = "dominant_datapoints.json"


def first_pc_scores(activations: np.ndarray, top: int) -> dict[str, Any]:
    """The first-PC scores of N examples and their top K (see the module docstring).

    Args:
        activations: (N, ...) activations of one layer, N >= 2.
        top: K, 1 <= K < N.

    Returns:
        {"scores": (N,) float64, "order": (N,) indices by decreasing |score|,
        "top": (K,) the first K of them, "first_pc_fraction", "top_share",
        "norm_ratio"} (floats; first_pc_fraction is 0 for constant activations).

    Example:
        >>> x = np.zeros((50, 8)); x[:3] = 100.0  # three examples far from the rest
        >>> r = first_pc_scores(x + np.random.default_rng(0).normal(size=x.shape), top=3)
        >>> sorted(r["top"].tolist()), r["top_share"] > 0.9
        ([0, 1, 2], True)
    """
    x = np.asarray(activations, dtype=np.float64).reshape(len(activations), -1)
    n = len(x)
    if n < 2:
        raise ValueError(f"Need at least 2 examples for a principal component. Received: {n}")
    if not 1 <= top < n:
        raise ValueError(f"`top` must be in [1, {n - 1}] (fewer than the {n} examples). Received: top={top}")
    centred = x - x.mean(0)  # centred before the product: large common offsets keep their precision
    first = pc.first_pc(centred @ centred.T)
    scores = np.sqrt(first.eigenvalue) * first.scores
    order = np.argsort(-np.abs(scores), kind="stable")
    chosen = order[:top]
    squared = scores**2
    norms = np.linalg.norm(x, axis=1)
    rest = np.ones(n, dtype=bool)
    rest[chosen] = False
    rest_norm = norms[rest].mean()
    return {
        "scores": scores,
        "order": order,
        "top": chosen,
        "first_pc_fraction": first.fraction,
        "top_share": float(squared[chosen].sum() / squared.sum()) if squared.sum() > 0 else 0.0,
        "norm_ratio": float(norms[chosen].mean() / rest_norm) if rest_norm > 0 else float("inf"),
    }


def default_layer(names: Sequence[str], block: blocks.BlockStructure) -> str:
    """The block output (`_out`) nearest the middle of the block, or of the last stage without one."""
    outs = [i for i, n in enumerate(names) if n.endswith("_out")]
    if not outs:
        middle = (block.start + block.end) // 2 if block.found else len(names) // 2
        return names[middle]
    if block.found:
        middle = (block.start + block.end) / 2
        inside = [i for i in outs if block.contains(i)] or outs
        return names[min(inside, key=lambda i: (abs(i - middle), i))]
    last = max(models.stage_of(names[i]) for i in outs)
    stage = [i for i in outs if models.stage_of(names[i]) == last]
    return names[stage[(len(stage) - 1) // 2]]


def check_layer(layer: str, names: Sequence[str]) -> None:
    """Raises ValueError naming the nearest layers when `layer` is not one of `names`."""
    if layer not in names:
        near = difflib.get_close_matches(layer, names, n=3, cutoff=0.0)
        raise ValueError(
            f"`layer` {layer!r} is not a layer of this model; nearest: {', '.join(near)}. Received: layer={layer!r}"
        )


def _cka(model, images: np.ndarray, batch_size: int) -> tuple[list[str], np.ndarray]:
    # Equal minibatches of about batch_size: no ragged last batch.
    batches = max(1, round(len(images) / batch_size))
    size = -(-len(images) // batches)
    result = cka.cka_matrices(
        [model], lambda _: tf.data.Dataset.from_tensor_slices(images).batch(size), passes=1, taps="all"
    )
    return result["names"][0], result["blocks"][(0, 0)]


def analyze_model(
    model, images: np.ndarray, layer: str | None = None, top: int = 10, batch_size: int = 250
) -> dict[str, Any]:
    """Dominant datapoints of `model` on `images` (see the module docstring).

    Args:
        model: a tfwd model (functional keras.Model with tfwd's layer names).
        images: (N, H, W, C) float32 images in [0, 1], N >= top + 4.
        layer: the layer to analyse; None picks `default_layer`.
        top: K, the number of dominant examples.
        batch_size: minibatch size of the CKA estimates (about; batches are equal).

    Returns:
        `first_pc_scores`' keys plus "layer", "names" (every layer), "cka" and
        "cka_without_top" ((L, L) within-model CKA with and without the top K), and
        "block", "block_without_top" (BlockStructure of each).
    """
    names = models.tap_names(model, "all")
    if layer is not None:
        check_layer(layer, names)
    if not 1 <= top <= len(images) - 4:
        raise ValueError(
            f"`top` must be in [1, {len(images) - 4}] (leaving at least 4 of the {len(images)} examples). "
            f"Received: top={top}"
        )
    names, with_all = _cka(model, images, batch_size)
    block = blocks.find_block_structure(with_all, names)
    layer = layer or default_layer(names, block)
    acts = models.activation_model(model, [layer]).predict(images, batch_size=batch_size, verbose=0)
    result = first_pc_scores(acts, top)
    keep = np.ones(len(images), dtype=bool)
    keep[result["top"]] = False
    _, without = _cka(model, images[keep], batch_size)
    return {
        **result,
        "layer": layer,
        "names": names,
        "cka": with_all,
        "cka_without_top": without,
        "block": block,
        "block_without_top": blocks.find_block_structure(without, names),
    }


def _block_summary(b: blocks.BlockStructure) -> dict[str, Any]:
    return {
        "found": b.found,
        "start": b.start_name,
        "end": b.end_name,
        "fraction": b.fraction,
        "contrast": b.contrast,
        "peak_contrast": b.peak_contrast,
    }


def summary(result: dict[str, Any], labels: np.ndarray, class_names: Sequence[str], settings: dict) -> dict[str, Any]:
    """The contents of dominant_datapoints.json."""
    top = result["top"]
    return {
        "layer": result["layer"],
        "examples": [int(i) for i in top],
        "scores": [float(result["scores"][i]) for i in top],
        "labels": [class_names[int(labels[i])] for i in top],
        "first_pc_fraction": result["first_pc_fraction"],
        "top_share": result["top_share"],
        "norm_ratio": result["norm_ratio"],
        "block": _block_summary(result["block"]),
        "block_without_top": _block_summary(result["block_without_top"]),
        "settings": settings,
    }


@dataclasses.dataclass(frozen=True)
class DominantDatapointsResult:
    """What `load` reads from an `analyze` output folder (its dominant_datapoints.json, `summary`).

    Attributes:
        layer: the layer analysed.
        examples: the top K test examples by |first-PC score|, most dominant first (indices in
            the test split's stored order).
        scores: their first-PC scores.
        labels: their class names.
        first_pc_fraction: the layer's first-PC variance fraction over all the examples.
        top_share: the top K's share of lambda_1 (sum of their squared scores over all).
        norm_ratio: mean activation norm of the top K over that of the other examples.
        block: the detector's verdict on the CKA with every example ("found", "start", "end",
            "fraction", "contrast", "peak_contrast").
        block_without_top: the same without the top K.
        settings: how it was measured (run, split, examples, top, batch_size, "measured").
    """

    layer: str
    examples: list[int]
    scores: list[float]
    labels: list[str]
    first_pc_fraction: float
    top_share: float
    norm_ratio: float | None
    block: dict[str, Any]
    block_without_top: dict[str, Any]
    settings: dict[str, Any]


def load(folder: str) -> DominantDatapointsResult:
    """The `DominantDatapointsResult` of an `analyze` output folder.

    Raises:
        tfwd.runs.RunError: if the folder measured a run that was retrained since.
    """
    runs.check_measured(folder)
    with open(os.path.join(folder, FILE)) as f:
        return DominantDatapointsResult(**json.load(f))


def check_top(top: int, examples: int) -> None:
    """Raises ValueError unless `top` leaves at least 4 of `examples` (the CKA without them needs 4)."""
    if not 1 <= top < examples:
        raise ValueError(
            f"`top` must be in [1, examples - 1] = [1, {examples - 1}]. Received: top={top}, examples={examples}"
        )
    if top + 4 > examples:
        raise ValueError(f"`examples` must be >= top + 4 = {top + 4}. Received: examples={examples}")


# RUN_DIR/dominant_datapoints.
default_out_dir = functools.partial(runs.analysis_dir, kind=KIND)


@runs.reading_runs()  # the run stays locked for reading until the output is written
def analyze(
    run_dir: str,
    out_dir: str | None = None,
    layer: str | None = None,
    examples: int = 1000,
    top: int = 10,
    batch_size: int = 250,
    data_dir: str | None = None,
) -> str:
    """Dominant datapoints of a finished run on the first `examples` test images (stored order).

    Writes into `out_dir` (default RUN_DIR/dominant_datapoints), as a whole or not at all:
    dominant_datapoints.json (`summary`; `load` reads it), dominant_datapoints.npz (every example's score,
    the two CKA matrices and the layer names), dominant_datapoints.png (the top K images
    with their labels and scores) and cka_without_top.png (the heatmaps with and without
    them, the detector's verdict on each).

    Raises:
        tfwd.runs.RunError: for a missing or unfinished run, or an out_dir tfwd did not write.
        ValueError: for an unknown layer (naming the nearest) or `top` >= `examples`.
    """
    # matplotlib only when figures are drawn
    from tfwd.plots import common, dominant_datapoints as plots

    check_top(top, examples)
    run, output = runs.Output.for_run(KIND, run_dir, out_dir)
    model = run.model()
    if layer is not None:
        check_layer(layer, models.tap_names(model, "all"))
    data = run.data(data_dir)
    if not top + 4 <= examples <= data.num_examples("test"):
        raise ValueError(
            f"`examples` must be in [top + 4, {data.num_examples('test')}] = [{top + 4}, {data.num_examples('test')}]. "
            f"Received: examples={examples}"
        )
    images = np.concatenate([x.numpy() for x, _ in data.eval_dataset("test", 500, examples)])
    labels = data.labels("test")[:examples]
    result = analyze_model(model, images, layer, top, batch_size)
    settings = {"run": run.path, "split": "test", "examples": examples, "top": top, "batch_size": batch_size}
    settings["measured"] = runs.measured()  # the digest of the run's model, results and settings
    info = summary(result, labels, data.class_names, settings)
    label = runs.run_label(run.name)
    with output.writing(f"Dominant datapoints of {run.name}") as tmp:
        runs.write_json(os.path.join(tmp, FILE), info)
        runs.write_npz(
            os.path.join(tmp, "dominant_datapoints.npz"),
            scores=result["scores"],
            cka=result["cka"],
            cka_without_top=result["cka_without_top"],
            names=np.array(result["names"]),
        )
        fig = plots.image_grid(
            images[result["top"]],
            info["labels"],
            info["scores"],
            [int(i) for i in result["top"]],
            title=f"{label}: top {top} of {examples} by |first-PC score| at {result['layer']}",
        )
        common.save_figure(fig, os.path.join(tmp, "dominant_datapoints.png"))
        fig = plots.with_and_without(result, top, title=label)
        common.save_figure(fig, os.path.join(tmp, "cka_without_top.png"))
    logging.info(
        "Dominant datapoints of %s at %s: top %d hold %.0f%% of the first PC; block %s -> %s without them.",
        run.name,
        result["layer"],
        top,
        100 * info["top_share"],
        "found" if result["block"].found else "none",
        "found" if result["block_without_top"].found else "none",
    )
    return output.path
