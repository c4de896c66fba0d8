"""CKA heatmaps of trained models: every within- and cross-model matrix from one data pass.

The paper's Figure 1 (within a model) and Figures 6 / E.1 (across seeds and
architectures). The settings of the paper's reference code are the defaults of
bin/cka: the test split, minibatches of 256, 10 passes reshuffled with a seed, no
augmentation, BN in inference mode, and every layer's output (taps="all").

Three entry points, one computation (`cka_matrices`):

- `analyze`: tfwd run directories (bin/cka --runs), on the data they were trained on.
- `analyze_models`: saved Keras models that tfwd did not train (bin/cka --models), on a
  dataset named by the caller.
- `compare_models`: Keras models in memory, on a NumPy array or a tf.data pipeline.

Models need one image input (batch, height, width, channels); a model whose input
size is fixed and differs from the images' sees them resized (bilinear).
"""

from __future__ import annotations

import dataclasses
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

from tfwd import distribute, metrics, models, runs
from tfwd.data import Data, DataConfig, shuffle_seed

# The analysis' one name: this module, bin/cka, its output folders (RUN/cka_<taps>_<split>/, or
# named after the runs or models), whose marker (tfwd.runs.OUTPUT_MARKER) holds it, and its entry
# in tfwd.analyses. tests/names_test.py checks that they agree.
KIND = "cka"
FILE = "cka.npz"
PIXELS = ("unit", "raw")  # images in [0, 1] (tfwd's models) or [0, 255] (models that scale their own input)
MODEL_DATASETS = ("cifar10", "cifar100", "image_folder")
MODEL_SPLITS = ("test", "train")


def cka_matrices(
    model_list: Sequence[keras.Model],
    dataset_for_pass: Callable[[int], tf.data.Dataset],
    passes: int = 10,
    taps: str | Sequence[str] = "all",
    strategy: tf.distribute.Strategy | None = None,
    dtype: str = "float64",
    resize: bool = False,
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
        resize: resize each minibatch (bilinear) to each model's input height and
            width where that size is fixed and differs from the images' (else the
            models must share the images' size).

    Returns:
        {"names": K lists of layer names, "blocks": {(i, j): (L_i, L_j) float64 arrays}
        for i <= j ((i, i) is model i's within-model CKA), "examples": examples seen
        per pass, "batches": minibatches counted in all, "skipped_batches": minibatches of n <= 3,
        which have no pairs and add nothing}.
    """
    if not model_list:
        raise ValueError("`model_list` must hold at least one model.")
    if passes < 1:
        raise ValueError(f"`passes` must be >= 1. Received: passes={passes!r}")
    strategy = strategy or tf.distribute.get_strategy()
    names = [models.tap_names(m, taps) for m in model_list]
    sizes = [models.image_input(m)[:2] if resize else (None, None) for m in model_list]
    with strategy.scope():
        tapped = [models.activation_model(m, taps) for m in model_list]
        cka = metrics.CKA(num_layers=sum(map(len, names)), dtype=dtype)

    def update(images):
        acts = []
        for model, size in zip(tapped, sizes):
            acts += model(_resized(images, size), training=False)
        cka.update_state(acts)  # the activation models' outputs name their BN taps' inputs: those Grams are shared
        return tf.constant(True)

    def replica_step(images):
        # A replica left without data at the end of a pass gets an empty batch;
        # skip it rather than run convolutions on zero examples.
        return tf.cond(tf.shape(images)[0] > 0, lambda: update(images), lambda: tf.constant(False))

    # reduce_retracing: a ragged last batch generalizes the batch dimension
    # instead of compiling the step again on every pass. autograph=False: the step has
    # no Python control flow on tensors, and converting the metric's per-layer code costs
    # seconds of tracing on models with every layer tapped (docs/performance.md, first-step cost).
    @tf.function(reduce_retracing=True, autograph=False)
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
    skipped = int(cka.skipped.numpy())
    if skipped:
        logging.warning(
            "%d minibatch(es) of 3 or fewer examples had no pairs and added nothing to CKA (a ragged last batch); "
            "choose --examples or --batch_size so that the last batch has 4 or more.",
            skipped,
        )
    joint = cka.result().numpy()
    return {
        "names": names,
        "blocks": metrics.split_blocks(joint, [len(n) for n in names]),
        "examples": examples,
        "batches": int(cka.batches.numpy()),
        "skipped_batches": skipped,
    }


def joint_channel_affine(model_list: Sequence[keras.Model], names: Sequence[Sequence[str]]) -> dict:
    """`CKA.update_state`'s channel_affine for the joint tap list of several models, written out.

    Each tapped BatchNormalization fed by a tapped layer of the same model
    (`tfwd.models.channel_affine_taps`), with its current inference-mode scale:
    BN taps (2 of the 7 taps of a ResNet block) then cost no Gram matrix of their own.
    The outputs of `tfwd.models.activation_model` carry the same pairs, which the metric
    reads by default; this is for activations that lost them (computed elsewhere, copied).
    """
    offsets = np.cumsum([0] + [len(n) for n in names])
    return {
        int(offset) + j: (int(offset) + i, models.channel_scale(bn))
        for model, layer_names, offset in zip(model_list, names, offsets)
        for j, (i, bn) in models.channel_affine_taps(model, layer_names).items()
    }


def _resized(images: tf.Tensor, size: tuple[int | None, int | None]) -> tf.Tensor:
    if None in size or tuple(images.shape[1:3]) == tuple(size):
        return images
    return tf.image.resize(images, size)


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
    arrays["settings"] = np.array(
        runs.json_text({**settings, "examples": result["examples"], "batches": result["batches"]})
    )
    runs.write_npz(path, **arrays)


@dataclasses.dataclass(frozen=True, eq=False)
class CKAResult:
    """What `load` reads from an output folder of `analyze` or `analyze_models` (its cka.npz, see `save`).

    Attributes:
        models: the K run (or model) names.
        names: K lists of layer names, in depth order.
        blocks: {(i, j): (L_i, L_j) float64 CKA} for i <= j; (i, i) is model i's within-model CKA.
        settings: how it was measured (taps, split, batch_size, passes, seed, examples, batches,
            "measured": the digest of each run or model).
    """

    models: list[str]
    names: list[list[str]]
    blocks: dict[tuple[int, int], np.ndarray]
    settings: dict[str, Any]


def load(folder: str) -> CKAResult:
    """The `CKAResult` of an output folder of `analyze` or `analyze_models`.

    Raises:
        tfwd.runs.RunError: if the folder measured a run that was retrained since.
    """
    runs.check_measured(folder)
    with np.load(os.path.join(folder, FILE)) as f:
        model_names = [str(m) for m in f["models"]]
        k = len(model_names)
        return CKAResult(
            models=model_names,
            names=[[str(n) for n in f[f"layers_{i}"]] for i in range(k)],
            blocks={(i, j): f[f"cka_{i}_{j}"] for i in range(k) for j in range(i, k)},
            settings=json.loads(str(f["settings"])),
        )


def _joined(names: Sequence[str], what: str) -> str:
    """Names joined by "__", or a count and a hash when that makes too long a folder name."""
    joined = "__".join(names)
    if len(joined) > 120:
        joined = f"{len(names)}{what}-{hashlib.sha1(joined.encode()).hexdigest()[:10]}"
    return joined


def default_out_dir(run_dirs: Sequence[str], taps: str | Sequence[str], split: str) -> str:
    """RUN/cka_{taps}_{split} for one run; beside the runs, named after them, for several."""
    if len(run_dirs) == 1:
        return runs.analysis_dir(run_dirs[0], taps, split, kind=KIND)
    tag = f"{KIND}_{runs.taps_tag(taps)}_{split}"
    names = _joined([os.path.basename(os.path.normpath(r)) for r in run_dirs], "runs")
    return os.path.join(os.path.dirname(os.path.normpath(run_dirs[0])), f"{tag}_{names}")


def model_labels(model_paths: Sequence[str]) -> list[str]:
    """Short, distinct names of saved models: file stems, with their folder's name where stems repeat."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in model_paths]
    if len(set(stems)) < len(stems):
        stems = [f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}_{s}" for p, s in zip(model_paths, stems)]
    if len(set(stems)) < len(stems):
        stems = [f"{i}_{s}" for i, s in enumerate(stems)]
    return stems


def default_models_out_dir(model_paths: Sequence[str], taps: str | Sequence[str], split: str) -> str:
    """<first model's folder>/<stem>[__<stem>...]_cka_{taps}_{split}: beside the models, named after them."""
    folder = os.path.dirname(os.path.abspath(model_paths[0]))
    stems = _joined(model_labels(model_paths), "models")
    return os.path.join(folder, f"{stems}_{KIND}_{runs.taps_tag(taps)}_{split}")


def _write(
    output: runs.Output, result: dict[str, Any], names: Sequence[str], labels: Sequence[str], settings: dict, what: str
) -> None:
    """cka.npz, within_<name>.png, cross_<a>__<b>.png and (several models) grid.png, as a whole."""
    from tfwd import plots  # matplotlib only when figures are drawn

    with output.writing(what) as tmp:
        save(os.path.join(tmp, FILE), result, names, settings)
        for (i, j), matrix in result["blocks"].items():
            file = f"within_{names[i]}.png" if i == j else f"cross_{names[i]}__{names[j]}.png"
            ax = plots.heatmap(
                matrix,
                title=labels[i] if i == j else f"{labels[i]} vs {labels[j]}",
                rows=result["names"][i],
                cols=result["names"][j],
                xlabel=f"{labels[j]} layer",
                ylabel=f"{labels[i]} layer",
            )
            plots.save_figure(ax.figure, os.path.join(tmp, file))
        if len(names) > 1:
            plots.save_figure(plots.cka_grid(result["blocks"], result["names"], labels), os.path.join(tmp, "grid.png"))


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 4:
        raise ValueError(f"`batch_size` must be >= 4 for the unbiased CKA estimator. Received: batch_size={batch_size}")


@runs.reading_runs()  # the runs stay locked for reading until the output is written
def analyze(
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
    cka.npz (see `save`; `load` reads the folder), one within-model heatmap per run (`within_<run>.png`),
    one cross-model heatmap per pair (`cross_<runA>__<runB>.png`) and, for
    several runs, the grid of all of them (`grid.png`).

    Args:
        run_dirs: finished run directories on the same dataset.
        out_dir: output folder.
        taps: "all", "blocks", "residual", "re:PATTERN" or layer names.
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
    _check_batch_size(batch_size)
    opened = [runs.Run(r) for r in run_dirs]
    datasets = {(r.config.data.dataset, r.config.data.image_size) for r in opened}
    if len(datasets) > 1:
        raise ValueError(
            f"CKA compares models on the same examples; these runs use different datasets: {sorted(datasets)}."
        )
    output = runs.Output(KIND, out_dir or default_out_dir([r.path for r in opened], taps, split))
    data = opened[0].data(data_dir)
    _check_examples(data, split, examples)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        loaded = [r.model() for r in opened]
    result = cka_matrices(
        loaded,
        lambda p: data.eval_dataset(split, batch_size, examples, shuffle_seed=shuffle_seed(seed, p)),
        passes=passes,
        taps=taps,
        strategy=strategy,
    )
    if not distribute.is_chief(strategy):
        return output.path
    names = [r.name for r in opened]
    labels = [runs.run_label(n) for n in names]  # titles drop the shared dataset prefix
    settings = dict(
        runs=[r.path for r in opened], taps=taps, split=split, batch_size=batch_size, passes=passes, seed=seed
    )
    settings["measured"] = runs.measured()  # the digest of each run's model, results and settings
    _write(output, result, names, labels, settings, f"CKA of {len(opened)} run(s)")
    return output.path


def _check_examples(data: Data, split: str, examples: int | None) -> None:
    if examples is not None and not 4 <= examples <= data.num_examples(split):
        raise ValueError(
            f"`examples` must be in [4, {data.num_examples(split)}] for split {split!r}. Received: {examples}"
        )


def _check_channels(model_list: Sequence[keras.Model], channels: int | None, source: str) -> None:
    for model in model_list:
        wanted = models.image_input(model)[2]
        if None not in (wanted, channels) and wanted != channels:
            raise ValueError(
                f"Model {model.name!r} takes {wanted}-channel images, but {source} have {channels} channels."
            )


def _image_batches(images: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """A dataset of images, (images, ...) tuples or {"image": ...} dicts as float32 minibatches of images."""
    spec = images.element_spec
    if isinstance(spec, dict):
        if "image" not in spec:
            raise ValueError(f"`images` yields dicts without an 'image' key. Received keys: {sorted(spec)}")
        images = images.map(lambda e: e["image"])
    elif isinstance(spec, tuple):
        images = images.map(lambda *e: e[0])
    rank = images.element_spec.shape.rank
    if rank == 3:
        images = images.batch(batch_size)
    elif rank != 4:
        raise ValueError(
            "`images` must yield images (height, width, channels) or minibatches of them (n, height, width, "
            f"channels). Received elements of shape {images.element_spec.shape}."
        )
    return images.map(lambda x: tf.cast(x, tf.float32))


def compare_models(
    model_list: keras.Model | Sequence[keras.Model],
    images: np.ndarray | tf.data.Dataset,
    taps: str | Sequence[str] = "all",
    batch_size: int = 256,
    passes: int = 1,
    seed: int = 0,
    strategy: tf.distribute.Strategy | None = None,
) -> dict[str, Any]:
    """Minibatch CKA between the layers of any Keras models in memory, on the same images.

    The library form of `bin/cka --models`: every within- and cross-model matrix
    from one pass per epoch of data (`cka_matrices`), BN in inference mode. A model
    whose input size is fixed and differs from the images' sees them resized
    (bilinear). Pixels go in as float32 as given: scale them as the models expect.

    Args:
        model_list: a functional or Sequential keras.Model, or a list of K of them,
            each with one image input (batch, height, width, channels).
        images: an (N, H, W, C) array, cut into minibatches of `batch_size` after a
            shuffle seeded per pass (as bin/cka); or a tf.data.Dataset of images,
            (images, ...) tuples or {"image": ...} dicts, either batched (each element
            is one minibatch, taken as it is on every pass: shuffle it yourself) or
            unbatched (batched here by `batch_size`).
        taps: "all", "re:PATTERN" or layer names found in every model (see
            `tfwd.models.tap_names`; "blocks" and "residual" need tfwd's layer names).
        batch_size: minibatch size n (>= 4; the paper uses 256).
        passes: passes over the data (the paper: 10 reshuffled passes).
        seed: seed of the per-pass shuffles of an array.
        strategy: optional tf.distribute strategy (build the models in its scope).

    Returns:
        As `cka_matrices`: {"names": K lists of layer names, "blocks": {(i, j):
        (L_i, L_j) float64 CKA} for i <= j, "examples": per pass, "batches": in all}.

    Raises:
        ValueError: for a model without one image input, images with another number
            of channels, bad taps, a batch under 4 examples, or NaN/Inf activations.

    Example:
        >>> import keras
        >>> resnet = tfwd.models.cifar_resnet(depth=8, width=0.25)
        >>> conv = keras.layers.Conv2D(4, 3, name="conv")
        >>> small = keras.Sequential([keras.Input((16, 16, 3)), conv, keras.layers.GlobalAveragePooling2D(name="gap")])
        >>> x = np.random.default_rng(0).random((64, 32, 32, 3), dtype="float32")
        >>> result = compare_models([resnet, small], x, batch_size=32)  # `small` sees 16x16 images
        >>> result["names"][1], result["blocks"][0, 1].shape, result["examples"]
        (['conv', 'gap'], (28, 2), 64)
    """
    model_list = [model_list] if isinstance(model_list, keras.Model) else list(model_list)
    _check_batch_size(batch_size)
    if isinstance(images, tf.data.Dataset):
        batches = _image_batches(images, batch_size)
        channels = batches.element_spec.shape[-1]

        def dataset_for_pass(p):
            return batches

    else:
        images = np.asarray(images)
        if images.ndim != 4 or len(images) < 4:
            raise ValueError(
                f"`images` must be an (N, height, width, channels) array with N >= 4. Received shape {images.shape}."
            )
        examples = tf.data.Dataset.from_tensor_slices(images).map(lambda x: tf.cast(x, tf.float32))
        channels = images.shape[-1]

        def dataset_for_pass(p):
            order = examples.shuffle(len(images), seed=shuffle_seed(seed, p), reshuffle_each_iteration=False)
            return order.batch(batch_size)

    _check_channels(model_list, channels, "the images")
    return cka_matrices(model_list, dataset_for_pass, passes=passes, taps=taps, strategy=strategy, resize=True)


def analyze_models(
    model_paths: Sequence[str],
    out_dir: str | None = None,
    dataset: str = "cifar10",
    data_dir: str | None = None,
    split: str = "test",
    examples: int | None = None,
    batch_size: int = 256,
    passes: int = 10,
    seed: int = 0,
    taps: str | Sequence[str] = "all",
    pixels: str = "unit",
    strategy: tf.distribute.Strategy | None = None,
) -> str:
    """CKA of saved Keras models that tfwd did not train, written as `analyze` writes it.

    The same computation, files and defaults as `analyze`, on a dataset named
    here: the first `examples` examples of `split` in stored order, reshuffled on
    every pass with `seed` (the same minibatches as `analyze` with the same
    settings), without augmentation, resized to each model's input size.

    Args:
        model_paths: saved models (.keras), each with one image input.
        out_dir: output folder (default: `default_models_out_dir`, beside the first model).
        dataset: "cifar10", "cifar100" or "image_folder" (with `data_dir`, the folder
            holding train/ and test/; images are read at the largest model input size).
        data_dir: TFDS data directory (image_folder: the folder's root).
        split: "test" or "train" (the whole training split).
        examples: the first N examples of the split (None: all).
        batch_size, passes, seed, strategy: as `analyze`.
        taps: "all", "re:PATTERN" or layer names found in every model.
        pixels: "unit" feeds float32 pixels in [0, 1] (tfwd's models); "raw" in
            [0, 255] (models that scale their own input, e.g. Keras Applications'
            EfficientNet and ResNet-RS).

    Returns:
        The output folder.

    Raises:
        ValueError: for a file that is not a saved Keras model, a model without one
            image input, bad taps or settings.
        tfwd.data.DataNotFoundError: when the dataset is not on disk (and not fetched).
    """
    _check_batch_size(batch_size)
    choices = (("pixels", pixels, PIXELS), ("dataset", dataset, MODEL_DATASETS), ("split", split, MODEL_SPLITS))
    for arg, value, allowed in choices:
        if value not in allowed:
            raise ValueError(f"`{arg}` must be one of {allowed} for saved models. Received: {arg}={value!r}")
    if not model_paths:
        raise ValueError("`models` must list at least one saved Keras model. Received: []")
    output = runs.Output(KIND, out_dir or default_models_out_dir(model_paths, taps, split))
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        loaded = [models.load_model(p) for p in model_paths]
    for path, model in zip(model_paths, loaded):  # bad models and taps fail before the data loads
        try:
            models.image_input(model)
            models.tap_names(model, taps)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    sides = [side for m in loaded for side in models.image_input(m)[:2] if side]
    image_size = max(sides) if dataset == "image_folder" and sides else None  # CIFAR: its own 32 pixels
    data = Data(DataConfig(dataset, data_dir=data_dir, image_size=image_size))
    _check_examples(data, split, examples)
    _check_channels(loaded, 3, f"the {dataset} images")
    scale = 255.0 if pixels == "raw" else 1.0

    def dataset_for_pass(p):
        batches = data.eval_dataset(split, batch_size, examples, shuffle_seed=shuffle_seed(seed, p))
        return batches.map(lambda x, y: (x * scale, y))

    result = cka_matrices(loaded, dataset_for_pass, passes=passes, taps=taps, strategy=strategy, resize=True)
    if not distribute.is_chief(strategy):
        return output.path
    labels = model_labels(model_paths)
    settings = dict(
        models=[os.path.abspath(p) for p in model_paths],
        dataset=dataset,
        data_dir=data_dir,
        split=split,
        taps=taps,
        pixels=pixels,
        batch_size=batch_size,
        passes=passes,
        seed=seed,
        input_shapes=[list(models.image_input(m)) for m in loaded],
        measured=[{"model": os.path.abspath(p), "sha256": runs.file_sha256(p)} for p in model_paths],
    )
    _write(output, result, labels, labels, settings, f"CKA of {len(loaded)} model(s)")
    return output.path
