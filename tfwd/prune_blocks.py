"""Block deletion: how much a trained ResNet needs each residual block (the paper's Figure 5).

Nguyen, Raghu & Kornblith (ICLR 2021, Figure 5) delete residual blocks of a
trained model, one at a time backwards from the end of a stage, keep the
shortcut path, and measure test accuracy after each deletion: inside the block
structure accuracy barely moves.

Deleting block P removes its residual branch (P_conv1 ... P_bn2, P_add, P_out)
and passes its input through the identity shortcut. That is exact: the block
would output ReLU(branch(x) + x), and without the branch ReLU(x) = x because
the block's input x is itself the output of a ReLU (the previous block's
`_out`, or `stem_relu` / the stem's max pool). Blocks with a projection
shortcut (`P_shortcut`, wherever a block changes the shape of its input: the
first block of stages 2 and 3 in tfwd's CIFAR ResNets, of every stage in the
standard ImageNet ones) have no identity path to keep: they are skipped, and
asking for them raises. Stage 1's first block of a CIFAR ResNet maps 16w to 16w channels with
an identity shortcut, so it can be deleted.

BN statistics are left as trained by default, as in the paper: its account of
the experiment mentions no fine-tuning or BN recalibration (and the reference
code has no block deletion at all). The question is what the trained blocks
contribute, not how well a repaired network does. `recalibrate_bn` re-estimates
them, which separates a deletion's direct effect from the shift it causes in
the input statistics of the BN layers downstream.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfwd import runs
from tfwd.models import layers

# The analysis' one name: this module, bin/prune_blocks, its output folder (RUN/prune_blocks/), whose
# marker (tfwd.runs.OUTPUT_MARKER) holds it, and its entry in tfwd.analyses. tests/names_test.py
# checks that they agree.
KIND = "prune_blocks"
FILE = "prune_blocks.json"
_BLOCK = re.compile(r"^(stage(\d+)_block(\d+))_")
DEFAULT_RECALIBRATION_EXAMPLES = 2048


@dataclasses.dataclass(frozen=True)
class Block:
    """One residual block of a tfwd ResNet.

    Attributes:
        name: the layer-name prefix, e.g. "stage2_block3".
        stage: stage number, from 1.
        index: block number within the stage, from 1.
        projection: True when the block has a projection shortcut (`{name}_shortcut`),
            which makes it impossible to delete.
    """

    name: str
    stage: int
    index: int
    projection: bool

    @property
    def deletable(self) -> bool:
        return not self.projection


def residual_blocks(model: keras.Model) -> list[Block]:
    """The residual blocks of a tfwd ResNet, in depth order.

    Args:
        model: a functional model with tfwd's layer names (`tfwd.models.cifar_resnet`
            or `imagenet_resnet`, trained or not).

    Returns:
        A list of `Block`s sorted by (stage, index).

    Raises:
        ValueError: if the model has no `stage{s}_block{b}_*` layers, or no residual
            adds (a plain network, residual=False).

    Example:
        >>> blocks = residual_blocks(tfwd.models.cifar_resnet(depth=14))
        >>> [b.name for b in blocks if b.projection]
        ['stage2_block1', 'stage3_block1']
    """
    names = [layer.name for layer in model.layers]
    prefixes = {m.group(1): (int(m.group(2)), int(m.group(3))) for n in names if (m := _BLOCK.match(n))}
    if not prefixes:
        raise ValueError(
            f"Block deletion needs tfwd's layer names (stage{{s}}_block{{b}}_*); model {model.name!r} has none. "
            f"Received: a model whose layers run from {names[0]!r} to {names[-1]!r}."
        )
    if not any(n.endswith("_add") and _BLOCK.match(n) for n in names):
        raise ValueError(
            f"Block deletion needs residual connections to carry a deleted block's input, and model {model.name!r} "
            "has no `*_add` layers. Received: a plain network (residual=False)."
        )
    blocks = [
        Block(prefix, stage, index, projection=any(n.startswith(f"{prefix}_shortcut") for n in names))
        for prefix, (stage, index) in prefixes.items()
    ]
    return sorted(blocks, key=lambda b: (b.stage, b.index))


def _check_deletable(model: keras.Model, blocks: list[str]) -> None:
    available = {b.name: b for b in residual_blocks(model)}
    deletable = [name for name, b in available.items() if b.deletable]
    unknown = [b for b in blocks if b not in available]
    if unknown:
        raise ValueError(
            f"`blocks` names blocks that model {model.name!r} does not have: {unknown}. Deletable blocks: {deletable}."
        )
    repeated = sorted({b for b in blocks if blocks.count(b) > 1})
    if repeated:
        raise ValueError(
            f"`blocks` must name each block at most once. Received: blocks={blocks!r} (repeats {repeated})"
        )
    projection = [b for b in blocks if available[b].projection]
    if projection:
        raise ValueError(
            f"Blocks {projection} have a projection shortcut (a strided 1x1 conv that changes the shape), so no "
            f"identity path can carry their input; they cannot be deleted. Deletable blocks: {deletable}. "
            f"Received: blocks={blocks!r}"
        )


def delete_blocks(model: keras.Model, blocks: Sequence[str], copy: bool = False) -> keras.Model:
    """The model with some residual blocks deleted: their input passes through unchanged.

    The graph is rebuilt layer by layer from `model`'s own layers (keras'
    `clone_model` with a call function), so every kept layer computes exactly
    what it computed in `model`: with no block deleted the outputs are identical.

    Args:
        model: a trained tfwd ResNet (functional keras.Model, residual=True).
        blocks: names of the blocks to delete, e.g. ["stage3_block3", "stage3_block2"];
            any order, each at most once; [] rebuilds the whole model.
        copy: False (default) shares the layer objects, hence the weights, with
            `model` (cheap; changing one changes the other). True gives the new model
            its own layers holding copies of the weights; then per-layer `.input` /
            `.output`, hence `tfwd.models.activation_model`, refer to the new graph.

    Returns:
        A keras.Model mapping the same (batch, H, W, C) float32 images to
        (batch, num_classes) logits, without the deleted blocks' layers.

    Raises:
        ValueError: for a plain model, an unknown block, or a block with a projection
            shortcut (the first block of stages 2 and 3).

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=20)
        >>> len(model.layers) - len(delete_blocks(model, ["stage3_block3"]).layers)
        7
    """
    if isinstance(blocks, str):
        raise ValueError(f"`blocks` must be a sequence of block names, not one string. Received: blocks={blocks!r}")
    blocks = list(blocks)
    _check_deletable(model, blocks)
    prefixes = tuple(f"{b}_" for b in blocks)

    def call(layer, *args, **kwargs):
        if not layer.name.startswith(prefixes):
            return layer(*args, **kwargs)
        # Every layer of a deleted block forwards its input. The branch and the
        # identity shortcut then both lead back to the block's input x, so the add
        # sees [x, x] and forwards x, and so does the final ReLU: ReLU(x) = x since
        # x is a ReLU's output (module docstring). The block's output becomes x.
        inputs = {id(t): t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)}
        if len(inputs) != 1:
            raise ValueError(
                f"Cannot delete the block of layer {layer.name!r}: it reads {len(inputs)} distinct tensors, "
                "not only the block's input (not a tfwd residual block?)."
            )
        return next(iter(inputs.values()))

    # type(), not __class__ (which names Keras' class, see tfwd.models.layers): copies keep the fused kernel.
    clone = (lambda layer: type(layer).from_config(layer.get_config())) if copy else (lambda layer: layer)
    pruned = keras.models.clone_model(model, clone_function=clone, call_function=call)
    if copy:
        for layer in pruned.layers:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    name = f"{model.name}-minus{len(blocks)}" if blocks else model.name
    return keras.Model(pruned.input, pruned.output, name=name)


def deletion_schedule(model: keras.Model) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """The deletions of the paper's Figure 5: per stage, backwards from its last block.

    Within each stage, starting from the full model, the last block is deleted,
    then the last two, and so on; the other stages stay whole. Blocks with a
    projection shortcut are skipped.

    Args:
        model: a tfwd ResNet with residual connections.

    Returns:
        (steps, skipped): steps is a list of (stage, deleted block names in deletion
        order, last block first), stage by stage; skipped lists the blocks that
        cannot be deleted.

    Example:
        >>> steps, skipped = deletion_schedule(tfwd.models.cifar_resnet(depth=14))
        >>> for step in steps:
        ...     print(step)
        (1, ['stage1_block2'])
        (1, ['stage1_block2', 'stage1_block1'])
        (2, ['stage2_block2'])
        (3, ['stage3_block2'])
        >>> skipped
        ['stage2_block1', 'stage3_block1']
    """
    blocks = residual_blocks(model)
    steps = []
    for stage in sorted({b.stage for b in blocks}):
        backwards = [b.name for b in sorted(blocks, key=lambda b: -b.index) if b.stage == stage and b.deletable]
        steps += [(stage, backwards[:k]) for k in range(1, len(backwards) + 1)]
    return steps, [b.name for b in blocks if b.projection]


def _images(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def accuracy(model: keras.Model, dataset: tf.data.Dataset) -> tuple[float, int]:
    """Top-1 accuracy of a model with BN in inference mode.

    Args:
        model: maps (batch, H, W, C) float32 images to (batch, num_classes) logits.
        dataset: batches of (images, int labels), e.g. `Data.eval_dataset("test", 500)`;
            the last batch may be smaller (one trace serves every batch size).

    Returns:
        (accuracy in [0, 1], number of examples).

    Raises:
        ValueError: for an empty dataset.

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8, width=0.25)
        >>> x = np.random.default_rng(0).random((64, 32, 32, 3), dtype="float32")
        >>> dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(64) % 10)).batch(32)
        >>> acc, n = accuracy(delete_blocks(model, ["stage1_block1"]), dataset)
        >>> n, 0 <= acc <= 1
        (64, True)
    """
    # One trace per model. A partial (no __code__) keeps TensorFlow from counting the
    # traces of different models as retracing of one function and warning about it.
    logits = tf.function(
        functools.partial(model, training=False), input_signature=[_image_spec(model)], autograph=False
    )
    correct = total = 0
    for images, labels in dataset:
        predicted = np.argmax(logits(tf.cast(images, tf.float32)).numpy(), axis=-1)
        correct += int(np.sum(predicted == np.asarray(labels)))
        total += int(labels.shape[0])
    if not total:
        raise ValueError("`dataset` must yield at least one example. Received: an empty dataset.")
    return correct / total, total


def recalibrate_bn(model: keras.Model, dataset: tf.data.Dataset) -> keras.Model:
    """A copy of `model` whose BN moving statistics are re-estimated on `dataset`.

    Nothing but the moving statistics changes, and `model` itself is left untouched
    (its layers may be shared with other models). One pass over `dataset` runs the
    copy in training mode, as BN saw its inputs during training: each BN layer
    normalizes with the statistics of the current batch. Per channel, with batches
    of n_k examples,

        moving_mean     = sum_k n_k mean_k / sum_k n_k   (the mean over all examples)
        moving_variance = sum_k n_k var_k / sum_k n_k    (var_k: biased, as Keras' BN)

    the cumulative average that BN's exponential moving average approximates
    (as PyTorch's `torch.optim.swa_utils.update_bn`). Statistics are accumulated
    in float64.

    Args:
        model: a functional keras.Model (a pruned model from `delete_blocks`, say).
        dataset: batches of images, or of (images, labels); the batch size should be
            the one BN saw in training.

    Returns:
        A new keras.Model with its own layers.

    Raises:
        ValueError: for an empty dataset.

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8, width=0.25)
        >>> x = np.random.default_rng(0).random((64, 32, 32, 3), dtype="float32")
        >>> images = tf.data.Dataset.from_tensor_slices(x).batch(32)
        >>> fixed = recalibrate_bn(delete_blocks(model, ["stage1_block1"]), images)
        >>> bn = fixed.get_layer("stem_bn")  # its moving mean is now the mean over the 64 images
        >>> bool(np.allclose(bn.moving_mean, fixed.get_layer("stem_conv")(x).numpy().mean(axis=(0, 1, 2)), atol=1e-5))
        True
    """
    copy = _copy(model)
    bns = [layer for layer in copy.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        logging.info("recalibrate_bn: model %s has no BatchNormalization layer.", model.name)
        return copy
    for bn in bns:
        bn.trainable = True  # a frozen BN would normalize with its moving statistics in training mode
    probe = keras.Model(copy.input, [bn.input for bn in bns])
    axes = [[i for i in range(len(bn.input.shape)) if i != bn.axis % len(bn.input.shape)] for bn in bns]

    moments = tf.function(
        functools.partial(_moments, probe, axes), input_signature=[_image_spec(copy)], autograph=False
    )

    sums, total = None, 0
    for batch in dataset:
        images = tf.cast(_images(batch), tf.float32)
        n = int(images.shape[0])
        stats = [(n * m.numpy(), n * v.numpy()) for m, v in moments(images)]
        sums = stats if sums is None else [(a + m, b + v) for (a, b), (m, v) in zip(sums, stats)]
        total += n
    if not total:
        raise ValueError("`dataset` must yield at least one example to recalibrate BN. Received: an empty dataset.")
    for bn, (mean, var) in zip(bns, sums):
        bn.moving_mean.assign((mean / total).astype(np.float32))
        bn.moving_variance.assign((var / total).astype(np.float32))
    return copy


def _image_spec(model: keras.Model) -> tf.TensorSpec:
    """Any batch size of the model's images: one trace serves a ragged last batch too."""
    return tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)


def _moments(probe: keras.Model, axes: list[list[int]], images: tf.Tensor) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """Per-channel batch mean and biased variance of every BN input, BN in training mode."""
    return [tf.nn.moments(tf.cast(x, tf.float64), a) for x, a in zip(probe(images, training=True), axes)]


def _copy(model: keras.Model) -> keras.Model:
    clone = layers.fuse(keras.models.clone_model(model))  # Keras clones tfwd's BatchNormalization as its own
    for layer in clone.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def stagewise_deletion(
    model: keras.Model, dataset: tf.data.Dataset, recalibration_dataset: tf.data.Dataset | None = None
) -> dict[str, Any]:
    """The paper's Figure 5 procedure: test accuracy after each deletion of `deletion_schedule`.

    Each pruned model is built once, sharing the trained layers (or, with
    recalibration, as a recalibrated copy), and evaluated in one pass over `dataset`.

    Args:
        model: a trained tfwd ResNet with residual connections.
        dataset: evaluation batches of (float32 images, int labels), e.g. the test split.
        recalibration_dataset: None (default, as the paper) keeps the trained BN
            statistics; batches of training images re-estimate every pruned model's
            BN statistics with `recalibrate_bn` first.

    Returns:
        {"full_accuracy": accuracy of `model` (as trained), "examples": examples
        evaluated, "skipped": blocks that cannot be deleted, "steps": a list of
        {"stage", "blocks_deleted", "deleted" (names, last block first), "accuracy"}
        in schedule order}; with recalibration also "full_accuracy_recalibrated"
        (the whole model with re-estimated statistics, the baseline that isolates
        the recalibration's own effect).

    Raises:
        ValueError: for a plain model or an empty dataset.

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8, width=0.25)
        >>> x = np.random.default_rng(0).random((32, 32, 32, 3), dtype="float32")
        >>> result = stagewise_deletion(model, tf.data.Dataset.from_tensor_slices((x, np.arange(32) % 10)).batch(32))
        >>> [(s["stage"], s["deleted"]) for s in result["steps"]], result["skipped"]
        ([(1, ['stage1_block1'])], ['stage2_block1', 'stage3_block1'])
    """
    steps, skipped = deletion_schedule(model)
    if skipped:
        logging.info("Skipping blocks with a projection shortcut (they cannot be deleted): %s.", ", ".join(skipped))
    full, examples = accuracy(model, dataset)
    result: dict[str, Any] = {"full_accuracy": full, "examples": examples, "skipped": skipped, "steps": []}
    logging.info("Full model %s: test accuracy %.4f on %d examples.", model.name, full, examples)
    if recalibration_dataset is not None:
        result["full_accuracy_recalibrated"] = accuracy(recalibrate_bn(model, recalibration_dataset), dataset)[0]
    for stage, deleted in steps:
        pruned = delete_blocks(model, deleted)
        if recalibration_dataset is not None:
            pruned = recalibrate_bn(pruned, recalibration_dataset)
        acc = accuracy(pruned, dataset)[0]
        logging.info("Stage %d, %d block(s) deleted (%s): accuracy %.4f.", stage, len(deleted), ", ".join(deleted), acc)
        result["steps"].append({"stage": stage, "blocks_deleted": len(deleted), "deleted": deleted, "accuracy": acc})
    return result


@dataclasses.dataclass(frozen=True)
class PruneBlocksResult:
    """What `load` reads from an `analyze` output folder (its prune_blocks.json).

    Attributes:
        full_accuracy: test accuracy of the whole model, BN as trained, in [0, 1].
        examples: test examples evaluated.
        skipped: blocks that cannot be deleted (a projection shortcut), by name.
        steps: the deletions in schedule order, each {"stage", "blocks_deleted", "deleted" (block
            names, last block first), "accuracy"} (see `stagewise_deletion`).
        model: the model's name.
        settings: how it was measured (run, split, batch_size, recalibrate_bn, ..., "measured").
        full_accuracy_recalibrated: the whole model with re-estimated BN statistics (None
            without recalibration).
    """

    full_accuracy: float
    examples: int
    skipped: list[str]
    steps: list[dict[str, Any]]
    model: str
    settings: dict[str, Any]
    full_accuracy_recalibrated: float | None = None


def load(folder: str) -> PruneBlocksResult:
    """The `PruneBlocksResult` of an `analyze` output folder.

    Raises:
        tfwd.runs.RunError: if the folder measured a run that was retrained since.
    """
    runs.check_measured(folder)
    with open(os.path.join(folder, FILE)) as f:
        return PruneBlocksResult(**json.load(f))


@runs.reading_runs()  # the run stays locked for reading until the output is written
def analyze(
    run_dir: str,
    out_dir: str | None = None,
    recalibrate_bn: bool = False,
    recalibration_examples: int = DEFAULT_RECALIBRATION_EXAMPLES,
    examples: int | None = None,
    batch_size: int = 500,
    data_dir: str | None = None,
) -> str:
    """Block deletion on a finished run's test set, written as CSV, JSON and a plot.

    Writes into `out_dir`, as a whole or not at all:

    - prune_blocks.csv: one row per deletion (columns stage, blocks_deleted,
      deleted: space-separated block names, last block first, accuracy in [0, 1]);
    - prune_blocks.json: full_accuracy, examples, skipped blocks, the steps and the
      settings (`load` reads it as a `PruneBlocksResult`);
    - prune_blocks.png: accuracy per deletion, grouped by stage, with stage
      boundaries and the full model's accuracy (`tfwd.plots.deletion_accuracy`).

    Args:
        run_dir: a finished run directory (from bin/train) of a residual model.
        out_dir: output folder; default `run_dir/prune_blocks`.
        recalibrate_bn: re-estimate BN statistics of every pruned model (off by
            default: the paper does not). The keyword is public (bin/prune_blocks'
            flag, report specs, the "recalibrate_bn" key of the settings), so it keeps
            the name of the function `recalibrate_bn`, which `stagewise_deletion` calls;
            this function never calls it, so the shadowing is harmless here.
        recalibration_examples: the first N examples of the run's training subset,
            without augmentation, in batches of the run's training batch size; capped
            at the subset's size.
        examples: evaluate on the first N test examples (None: all).
        batch_size: evaluation batch size (it does not change the result).
        data_dir: TFDS data directory, if not the one the run recorded.

    Returns:
        The output folder.

    Raises:
        tfwd.runs.RunError: for a missing or unfinished run.
        ValueError: for a plain (residual=False) model or out-of-range arguments.

    Example (needs a finished run; tests/prune_blocks_test.py runs it on a tiny one)::

        analyze("runs/cifar10-resnet38-w10-s0", examples=1000)  # -> 'runs/cifar10-resnet38-w10-s0/prune_blocks'
    """
    from tfwd.plots.common import save_figure  # matplotlib only when drawing
    from tfwd.plots.prune_blocks import deletion_accuracy  # matplotlib only when drawing

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if recalibrate_bn and recalibration_examples < 1:
        raise ValueError(
            f"`recalibration_examples` must be >= 1. Received: recalibration_examples={recalibration_examples!r}"
        )
    run, output = runs.Output.for_run(KIND, run_dir, out_dir)
    model = run.model()
    deletion_schedule(model)  # a plain model fails here, before any data is read
    data = run.data(data_dir)
    if examples is not None and not 1 <= examples <= data.num_examples("test"):
        raise ValueError(
            f"`examples` must be in [1, {data.num_examples('test')}] (the test split). Received: examples={examples!r}"
        )
    settings = {"run": run.path, "split": "test", "batch_size": batch_size, "recalibrate_bn": recalibrate_bn}
    settings["measured"] = runs.measured()  # the digest of the run's model, results and settings
    recalibration = None
    if recalibrate_bn:
        available = data.num_examples("train")
        if recalibration_examples > available:
            logging.warning(
                "recalibration_examples=%d > %d training examples: using all.", recalibration_examples, available
            )
        n, batch = min(recalibration_examples, available), run.config.train.batch_size
        settings.update(recalibration_examples=n, recalibration_batch_size=batch)
        recalibration = data.eval_dataset("train", batch, n)
    result = stagewise_deletion(model, data.eval_dataset("test", batch_size, examples), recalibration)
    rows = [{**step, "deleted": " ".join(step["deleted"])} for step in result["steps"]]
    with output.writing(f"Block deletion of {run.name}") as tmp:
        runs.write_csv(os.path.join(tmp, "prune_blocks.csv"), rows)
        runs.write_json(os.path.join(tmp, FILE), {**result, "model": model.name, "settings": settings})
        ax = deletion_accuracy(
            [s["stage"] for s in rows],
            [s["blocks_deleted"] for s in rows],
            [s["accuracy"] for s in rows],
            result["full_accuracy"],
            title=run.name + (" (BN recalibrated)" if recalibrate_bn else ""),
        )
        save_figure(ax.figure, os.path.join(tmp, "prune_blocks.png"))
    return output.path
