"""CKA heatmaps of trained models: every within- and cross-model matrix from one data pass.

The paper's Figure 1 (within a model) and Figures 6 / E.1 (across seeds and
architectures). The settings of the paper's reference code are the defaults of
bin/cka: the test split, minibatches of 256, 10 passes reshuffled with a seed, no
augmentation, BN in inference mode, and every layer's output (taps="all").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfwd import distribute, metrics, models, plots, runs


def cka_matrices(
    model_list: Sequence[keras.Model],
    dataset_for_pass: Callable[[int], tf.data.Dataset],
    passes: int = 10,
    taps: str | Sequence[str] = "all",
    strategy: tf.distribute.Strategy | None = None,
    dtype: str = "float64",
) -> dict[str, Any]:
    """Minibatch CKA between all tapped layers of several models, in one pass per epoch of data.

    The tap lists of all models are concatenated and fed to one `tfwd.metrics.CKA`,
    so each minibatch's Gram matrices are computed once and every within- and
    cross-model block comes out of the same joint matrix.

    Args:
        model_list: K models with the same input shape (built under `strategy`'s
            scope when one is given).
        dataset_for_pass: p -> a dataset of (images, labels) batches for pass p
            (reshuffle it per pass; labels are ignored). Each batch is one minibatch;
            under a strategy with several replicas, each replica takes whole
            minibatches, so the result does not depend on the replica count.
        passes: passes over the data.
        taps: tap kind or layer names, as `tfwd.models.tap_names`.
        strategy: optional tf.distribute strategy.
        dtype: accumulator dtype of the metric.

    Returns:
        {"names": K lists of layer names, "blocks": {(i, j): (L_i, L_j) float64 arrays}
        for i <= j ((i, i) is model i's within-model CKA), "examples": examples seen
        per pass, "batches": minibatches seen in all}.
    """
    if not model_list:
        raise ValueError("`model_list` must hold at least one model.")
    if passes < 1:
        raise ValueError(f"`passes` must be >= 1. Received: passes={passes!r}")
    strategy = strategy or tf.distribute.get_strategy()
    names = [models.tap_names(m, taps) for m in model_list]
    with strategy.scope():
        tapped = [models.activation_model(m, taps) for m in model_list]
        cka = metrics.CKA(num_layers=sum(map(len, names)), dtype=dtype)

    def update(images):
        acts = []
        for model in tapped:
            acts += model(images, training=False)
        cka.update_state(acts)
        return tf.constant(True)

    def replica_step(images):
        # A replica left without data at the end of a pass gets an empty batch;
        # skip it rather than run convolutions on zero examples.
        return tf.cond(tf.shape(images)[0] > 0, lambda: update(images), lambda: tf.constant(False))

    # reduce_retracing: a ragged last batch generalizes the batch dimension
    # instead of compiling the step again on every pass.
    @tf.function(reduce_retracing=True)
    def step(images):
        strategy.run(replica_step, args=(images,))

    examples = 0
    for p in range(passes):
        start, examples = time.time(), 0
        for images in _distribute(strategy, dataset_for_pass(p).map(lambda x, *_: x)):
            try:
                step(images)
            except tf.errors.InvalidArgumentError as e:
                raise ValueError(_explain(e.message, names)) from e
            examples += sum(int(t.shape[0]) for t in strategy.experimental_local_results(images))
        logging.info(
            "CKA pass %d/%d: %d examples, %.0f images/s.", p + 1, passes, examples, examples / (time.time() - start)
        )
    joint = cka.result().numpy()
    return {
        "names": names,
        "blocks": metrics.split_blocks(joint, [len(n) for n in names]),
        "examples": examples,
        "batches": int(cka.batches.numpy()),
    }


def _distribute(strategy: tf.distribute.Strategy, batches: tf.data.Dataset):
    """Whole minibatches, dealt round-robin to the replicas.

    With one replica this is the dataset itself. With several (local devices or
    workers), input pipeline i takes every k-th minibatch and hands each of its
    replicas whole minibatches, so the result equals the single-device result
    with the same batch size; a replica left without data at the end gets an
    empty batch, which the metric ignores.
    """
    if strategy.num_replicas_in_sync == 1:
        return strategy.experimental_distribute_dataset(batches)

    def per_pipeline(context):
        return batches.shard(context.num_input_pipelines, context.input_pipeline_id)

    return strategy.distribute_datasets_from_function(per_pipeline)


def _explain(message: str, names: Sequence[Sequence[str]]) -> str:
    """Turns the metric's run-time error into one line naming the model and layer."""
    match = re.search(r"CKA: layer (\d+) has NaN or Inf", message)
    if not match:
        return message.strip().splitlines()[0]
    index = int(match.group(1))
    for k, layer_names in enumerate(names):
        if index < len(layer_names):
            return f"Model {k} layer {layer_names[index]!r} has NaN or Inf activations; CKA is undefined for it."
        index -= len(layer_names)
    return match.group(0)


def save(path: str, result: dict[str, Any], model_names: Sequence[str], settings: dict[str, Any]) -> None:
    """Writes a `cka_matrices` result to an .npz (matrices, layer names, model names, settings)."""
    arrays = {f"cka_{i}_{j}": m for (i, j), m in result["blocks"].items()}
    arrays.update({f"layers_{i}": np.array(n) for i, n in enumerate(result["names"])})
    arrays["models"] = np.array(list(model_names))
    arrays["settings"] = np.array(json.dumps({**settings, "examples": result["examples"], "batches": result["batches"]}))
    runs.write_npz(path, **arrays)


def load(path: str) -> dict[str, Any]:
    """Reads an .npz written by `save`: {"models", "names", "blocks", "settings"}."""
    with np.load(path) as f:
        model_names = [str(m) for m in f["models"]]
        k = len(model_names)
        return {
            "models": model_names,
            "names": [[str(n) for n in f[f"layers_{i}"]] for i in range(k)],
            "blocks": {(i, j): f[f"cka_{i}_{j}"] for i in range(k) for j in range(i, k)},
            "settings": json.loads(str(f["settings"])),
        }


def default_out_dir(run_dirs: Sequence[str], taps: str, split: str) -> str:
    """RUN/cka_{taps}_{split} for one run; beside the runs, named after them, for several."""
    tag = f"cka_{taps if isinstance(taps, str) else 'custom'}_{split}"
    if len(run_dirs) == 1:
        return os.path.join(run_dirs[0], tag)
    names = "__".join(os.path.basename(os.path.normpath(r)) for r in run_dirs)
    if len(names) > 120:
        names = f"{len(run_dirs)}runs-{hashlib.sha1(names.encode()).hexdigest()[:10]}"
    return os.path.join(os.path.dirname(os.path.normpath(run_dirs[0])), f"{tag}_{names}")


def analyze_runs(
    run_dirs: Sequence[str],
    out_dir: str | None = None,
    taps: str | Sequence[str] = "all",
    split: str = "test",
    examples: int | None = None,
    batch_size: int = 256,
    passes: int = 10,
    seed: int = 0,
    data_dir: str | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> str:
    """CKA of one or more finished runs, written as cka.npz plus PNG heatmaps.

    Writes into `out_dir` (default: `default_out_dir`), as a whole or not at all:
    cka.npz (see `save`), one within-model heatmap per run (`within_<run>.png`),
    one cross-model heatmap per pair (`cross_<runA>__<runB>.png`) and, for
    several runs, the grid of all of them (`grid.png`).

    Args:
        run_dirs: finished run directories on the same dataset.
        out_dir: output folder.
        taps: "all", "blocks", "residual" or layer names.
        split: "test" (the paper), "validation" or "train" (the first run's subset).
        examples: use the first `examples` examples of the split (None: all).
        batch_size: minibatch size n (>= 4; the paper uses 256).
        passes: reshuffled passes over the data (the paper uses 10).
        seed: seed of the per-pass shuffles.
        data_dir: TFDS data directory, if not the one the runs recorded.
        strategy: a tf.distribute strategy to spread the minibatches over (the
            models are loaded in its scope; only the chief writes).

    Returns:
        The output folder.

    Raises:
        tfwd.runs.RunError: for a missing or unfinished run.
        ValueError: for runs on different datasets or a batch size under 4.
    """
    if batch_size < 4:
        raise ValueError(f"`batch_size` must be >= 4 for the unbiased CKA estimator. Received: batch_size={batch_size}")
    opened = [runs.Run(r) for r in run_dirs]
    datasets = {(r.config.data.dataset, r.config.data.image_size) for r in opened}
    if len(datasets) > 1:
        raise ValueError(f"CKA compares models on the same examples; these runs use different datasets: {sorted(datasets)}.")
    out_dir = out_dir or default_out_dir([r.path for r in opened], taps, split)
    runs.check_output_dir(out_dir, "cka")
    data = opened[0].data(data_dir)
    if examples is not None and not 4 <= examples <= data.num_examples(split):
        raise ValueError(f"`examples` must be in [4, {data.num_examples(split)}] for split {split!r}. Received: {examples}")
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        loaded = [r.model() for r in opened]
    result = cka_matrices(
        loaded,
        lambda p: data.eval_dataset(split, batch_size, examples, shuffle_seed=seed * 1_000_003 + p),
        passes=passes,
        taps=taps,
        strategy=strategy,
    )
    if not distribute.is_chief(strategy):
        return out_dir
    names = [r.name for r in opened]
    labels = [n.split("-", 1)[1] for n in names]  # titles drop the shared dataset prefix
    settings = dict(runs=[r.path for r in opened], taps=taps, split=split, batch_size=batch_size, passes=passes, seed=seed)
    with runs.atomic_dir(out_dir, "cka") as tmp:
        save(os.path.join(tmp, "cka.npz"), result, names, settings)
        for (i, j), matrix in result["blocks"].items():
            file = f"within_{names[i]}.png" if i == j else f"cross_{names[i]}__{names[j]}.png"
            ax = plots.heatmap(
                matrix, title=labels[i] if i == j else f"{labels[i]} vs {labels[j]}",
                rows=result["names"][i], cols=result["names"][j],
                xlabel=f"{labels[j]} layer", ylabel=f"{labels[i]} layer",
            )
            plots.save_figure(ax.figure, os.path.join(tmp, file))
        if len(opened) > 1:
            plots.save_figure(plots.cka_grid(result["blocks"], result["names"], labels), os.path.join(tmp, "grid.png"))
    logging.info("CKA of %d run(s) written to %s.", len(opened), out_dir)
    return out_dir
