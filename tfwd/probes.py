"""Linear probes: how linearly decodable the label is at each layer (the paper's Figure 4).

A probe is softmax regression, one `Dense(num_classes)` head started at zero, on a
frozen layer's activations. The paper probes every tensor before and after each
residual add (taps="residual"): accuracy rises steadily through a model without
block structure and plateaus inside a block. Every tap gets one head per grid
setting and all heads train together, in one data pass per epoch: the base runs
once per batch in inference mode (BN uses its moving statistics, nothing in the
base changes), its activations pass through `tf.stop_gradient`, and the loss is the
sum of the heads' independent cross-entropies, so each head gets exactly the
gradient it would get alone.

Features are flattened by default, as the reference code: a tap of shape (H, W, C)
gives H*W*C features. A stage-1 tap of a CIFAR ResNet at width w has 16384w, so its
head has 163840w weights (1.6M at 10x: with three learning rates and Adam's two
slots, about 60 MB of float32 per tap; fine). pooling="gap" averages over space
(C features); pooling="maxpool2" max-pools 2x2 with stride 2, then flattens
(ceil(H/2)*ceil(W/2)*C, a quarter; the reference's --pooling, except that an odd
last row or column pools alone here where the reference pads it with zeros).

Protocol and defaults, and why:

- Optimizer: Adam (default) or SGD with momentum 0.9, constant learning rate (the
  reference: SGD, lr 0.01, 300 epochs). Adam's per-weight steps let one grid serve
  taps whose scales differ a lot (BN outputs before the add, sums that grow with
  depth after it) and converge in a few epochs: 10 by default (3,900 steps on all
  of CIFAR at batch 128, the reference's batch size).
- Grid: learning rates (Adam 1e-4, 1e-3, 1e-2; SGD 1e-3, 1e-2 = the reference's,
  1e-1), crossed with optional L2 strengths (the reference: 0). Each tap keeps the
  setting with the best accuracy on a validation split held out of the probes'
  training data (first on ties); only then are the chosen heads scored on the test
  split, which cannot influence any choice (the reference picks the best epoch by
  test accuracy). The last epoch's heads are used.
- Data: the run's training split without augmentation (the reference probed
  augmented images: `augment=True`). Validation: the run's own validation split if
  it has one, else 1000 class-balanced examples held out of the training split;
  for a run trained on a subset they lie outside it, so the base never saw them.

Example (trains probes on a finished run, minutes on a CPU; tests/probes_test.py runs it on a tiny one)::

    # -> 'runs/cifar10-resnet26-w2-s0/probes_residual'
    tfwd.probes.analyze("runs/cifar10-resnet26-w2-s0", epochs=10)
    # probes.csv there: per tap, the chosen learning rate, validation and test accuracy
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfwd import cka, errors, models, runs
from tfwd.data import Data, shuffle_seed

# The analysis' one name: this module, bin/probes, its output folders (RUN/probes_<taps>/), whose
# marker (tfwd.runs.OUTPUT_MARKER) holds it, and its entry in tfwd.analyses. tests/names_test.py checks that they agree.
KIND = "probes"
FILE = "probes.csv"
POOLINGS = ("flatten", "gap", "maxpool2")
OPTIMIZERS = ("adam", "sgd")
DEFAULT_LEARNING_RATES = {"adam": (1e-4, 1e-3, 1e-2), "sgd": (1e-3, 1e-2, 1e-1)}
DEFAULT_EPOCHS = 10
DEFAULT_VALIDATION_EXAMPLES = 1000
SGD_MOMENTUM = 0.9  # the reference code's probe optimizer
KINDS = ("pre", "post", "other")

Datasets = tf.data.Dataset | Callable[[int], tf.data.Dataset]


# --- features ---------------------------------------------------------------------------------


def pool_features(x: tf.Tensor, pooling: str = "flatten") -> tf.Tensor:
    """A probe's input: (batch, ...) activations as (batch, features) floats.

    Args:
        x: (batch, ...) activations; (batch, H, W, C) for spatial ones.
        pooling: "flatten" (H*W*C features), "gap" (mean over H and W: C features)
            or "maxpool2" (2x2 max-pools, stride 2, then flatten:
            ceil(H/2)*ceil(W/2)*C features). Tensors that are not 4-D are flattened
            whatever the pooling.

    Returns:
        (batch, `feature_size(x.shape[1:], pooling)`) tensor of x's dtype.
    """
    _check_choice("pooling", pooling, POOLINGS)
    if x.shape.rank == 4 and pooling == "gap":
        return tf.reduce_mean(x, axis=[1, 2])
    if x.shape.rank == 4 and pooling == "maxpool2":
        # SAME pads a ragged edge with -inf, so the last row/column pools alone.
        x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
    return tf.reshape(x, [tf.shape(x)[0], math.prod(x.shape[1:])])


def feature_size(shape: Sequence[int], pooling: str = "flatten") -> int:
    """Number of features `pool_features` gives for activations of per-example `shape`.

    Example:
        >>> feature_size((32, 32, 16), "flatten"), feature_size((32, 32, 16), "gap")
        (16384, 16)
    """
    _check_choice("pooling", pooling, POOLINGS)
    shape = tuple(shape)
    if len(shape) == 3 and pooling == "gap":
        return shape[-1]
    if len(shape) == 3 and pooling == "maxpool2":
        return math.ceil(shape[0] / 2) * math.ceil(shape[1] / 2) * shape[2]
    return math.prod(shape)


def tap_kinds(model: keras.Model, names: Sequence[str]) -> list[str]:
    """ "pre" (the residual branch just before an add), "post" (the add) or "other", per tap."""
    try:
        residual = models.tap_names(model, "residual")
    except ValueError:  # a plain network: nothing is pre- or post-residual
        residual = []
    adds = {n for n in residual if n.endswith("_add")}
    return ["post" if n in adds else "pre" if n in residual else "other" for n in names]


# --- training ---------------------------------------------------------------------------------


def train_probes(
    model: keras.Model,
    taps: str | Sequence[str],
    train: Datasets,
    validation: tf.data.Dataset,
    test: tf.data.Dataset | None = None,
    num_classes: int | None = None,
    epochs: int = DEFAULT_EPOCHS,
    pooling: str = "flatten",
    optimizer: str = "adam",
    learning_rates: Sequence[float] | None = None,
    l2: Sequence[float] = (0.0,),
    log_every: int = 1,
) -> dict[str, Any]:
    """Trains a linear probe per (tap, setting) on a frozen model, picks settings on validation.

    Every head trains for `epochs` epochs (the last epoch's heads are kept). Each
    tap's setting is chosen on `validation` alone; `test` is read afterwards, and
    only through the chosen heads.

    Args:
        model: the frozen base model; it is only called with training=False and
            none of its variables (BN moving statistics included) change.
        taps: tap kind or layer names, as `tfwd.models.tap_names`.
        train: batches of (inputs, int labels) for the probes' training, or
            epoch -> such a dataset (to reshuffle per epoch); iterated once per epoch.
        validation: (inputs, labels) batches that choose each tap's setting.
        test: (inputs, labels) batches that measure the chosen heads (None: skip).
        num_classes: C; default the model's output size.
        epochs: passes over `train`.
        pooling: "flatten", "gap" or "maxpool2" (see `pool_features`).
        optimizer: "adam" or "sgd" (momentum 0.9); constant learning rate.
        learning_rates: the grid; default `DEFAULT_LEARNING_RATES[optimizer]`.
        l2: L2 strengths of the grid (loss += l2 * sum of squared kernel weights).
        log_every: log progress every this many epochs.

    Returns:
        A dict with "taps" (L names), "kinds" (L of KINDS), "layer_indices" (L
        positions in the model's layer list, as taps="all"), "features" (L ints),
        "settings" (G dicts {"learning_rate", "l2"}, the grid), "train_loss" and
        "train_accuracy" ((epochs, L, G) float64 running means per epoch),
        "validation_accuracy" ((L, G) float64), "chosen" ((L,) int: argmax over the
        grid of the validation accuracy, first on ties), "test_accuracy" ((L,)
        float64 of the chosen heads, or None) and "seconds_per_epoch".

    Raises:
        ValueError: for an unknown tap, pooling or optimizer, an empty grid, a
            non-positive learning rate, a negative l2, or an empty validation set.

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8, width=0.25)
        >>> x = np.random.default_rng(0).random((64, 32, 32, 3), dtype="float32")
        >>> data = tf.data.Dataset.from_tensor_slices((x, np.arange(64) % 10)).batch(32)
        >>> result = train_probes(model, ["stem_relu", "pool"], data, data, data, epochs=1, learning_rates=[1e-3])
        >>> result["taps"], result["features"], result["test_accuracy"].shape
        (['stem_relu', 'pool'], [4096, 16], (2,))
    """
    settings = _grid(optimizer, learning_rates, l2)
    _check_choice("pooling", pooling, POOLINGS)
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1. Received: epochs={epochs!r}")
    names = models.tap_names(model, taps)
    all_names = models.tap_names(model, "all")
    tapped = models.activation_model(model, names)
    num_classes = num_classes or int(model.outputs[0].shape[-1])
    shapes = [tuple(model.get_layer(n).output.shape[1:]) for n in names]
    features = [feature_size(s, pooling) for s in shapes]
    heads = [[_head(num_classes, f, f"probe_{n}_{g}") for g in range(len(settings))] for n, f in zip(names, features)]
    optimizers = _optimizers(optimizer, settings, heads)
    step = _train_step(tapped, pooling, heads, settings, optimizers)

    losses, accuracies, seconds = _fit(step, train if callable(train) else (lambda _: train), epochs, log_every)
    validation_accuracy = _evaluate(tapped, pooling, heads, validation, "validation")
    chosen = select(validation_accuracy)
    _warn_at_grid_edge(settings, chosen, names)
    test_accuracy = None
    if test is not None:
        chosen_heads = [[heads[i][g]] for i, g in enumerate(chosen)]
        test_accuracy = _evaluate(tapped, pooling, chosen_heads, test, "test")[:, 0]
    shape = (epochs, len(names), len(settings))
    return {
        "taps": names,
        "kinds": tap_kinds(model, names),
        "layer_indices": [all_names.index(n) for n in names],
        "features": features,
        "settings": settings,
        "train_loss": np.reshape(losses, shape).astype(np.float64),
        "train_accuracy": np.reshape(accuracies, shape).astype(np.float64),
        "validation_accuracy": validation_accuracy,
        "chosen": chosen,
        "test_accuracy": test_accuracy,
        "seconds_per_epoch": float(np.mean(seconds)),
    }


def _fit(step, epoch_data, epochs, log_every):
    """Runs `step` over every epoch's batches; per epoch: mean loss and accuracy per head, seconds."""
    losses, accuracies, seconds = [], [], []
    for epoch in range(epochs):
        start, sums, seen = time.time(), 0.0, 0
        for inputs, labels in epoch_data(epoch):
            loss, correct = step(tf.cast(inputs, tf.float32), tf.cast(labels, tf.int32))
            n = int(labels.shape[0])
            sums, seen = sums + np.stack([loss.numpy() * n, correct.numpy()]), seen + n
        if not seen:
            raise ValueError(f"The probes' training data is empty (epoch {epoch}).")
        seconds.append(time.time() - start)
        losses.append(sums[0] / seen)
        accuracies.append(sums[1] / seen)
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            logging.info(
                "Probe epoch %d/%d: %d examples, %.1f s; %d heads, mean loss %.3f, best train accuracy %.3f.",
                epoch + 1,
                epochs,
                seen,
                seconds[-1],
                losses[-1].size,
                losses[-1].mean(),
                accuracies[-1].max(),
            )
    return losses, accuracies, seconds


def select(validation_accuracy: np.ndarray) -> np.ndarray:
    """Per tap, the grid index with the best validation accuracy ((L, G) -> (L,) int; first on ties)."""
    return np.argmax(np.asarray(validation_accuracy), axis=1)


def _warn_at_grid_edge(settings, chosen, names) -> None:
    """Logs the taps whose chosen learning rate is the grid's smallest or largest (of 3 or more)."""
    rates = sorted({s["learning_rate"] for s in settings})
    if len(rates) < 3:
        return
    edge = [n for n, g in zip(names, chosen) if settings[g]["learning_rate"] in (rates[0], rates[-1])]
    if edge:
        logging.warning(
            "%d of %d taps chose a learning rate at the edge of the grid %s (%s); a wider grid may do better.",
            len(edge),
            len(names),
            rates,
            errors.first_few(edge),
        )


def _evaluate(tapped: keras.Model, pooling: str, heads, dataset: tf.data.Dataset, split: str) -> np.ndarray:
    """Accuracy of heads[i][g] on tap i of `tapped` over `dataset`: an (L, G) float64 array."""

    @tf.function(input_signature=_signature(tapped), autograph=False)
    def step(inputs, labels):
        acts = _as_list(tapped(inputs, training=False))
        return tf.stack([_correct(h(pool_features(a, pooling)), labels) for a, row in zip(acts, heads) for h in row])

    correct, seen = 0, 0
    for inputs, labels in dataset:
        correct = correct + step(tf.cast(inputs, tf.float32), tf.cast(labels, tf.int32)).numpy()
        seen += int(labels.shape[0])
    if not seen:
        raise ValueError(f"The {split} dataset is empty: the probes need {split} examples.")
    return (np.asarray(correct, np.float64) / seen).reshape(len(heads), -1)


def _signature(tapped: keras.Model) -> list[tf.TensorSpec]:
    """(inputs, labels) specs; a fixed signature keeps a ragged last batch from retracing."""
    return [tf.TensorSpec((None, *tapped.inputs[0].shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int32)]


def _correct(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == labels, tf.float32))


def _as_list(outputs) -> list[tf.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _grid(optimizer: str, learning_rates: Sequence[float] | None, l2: Sequence[float]) -> list[dict[str, float]]:
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    learning_rates = DEFAULT_LEARNING_RATES[optimizer] if learning_rates is None else tuple(learning_rates)
    if not learning_rates or not all(lr > 0 for lr in learning_rates):
        raise ValueError(f"`learning_rates` must be a non-empty list of positive numbers. Received: {learning_rates!r}")
    if not l2 or not all(v >= 0 for v in l2):
        raise ValueError(f"`l2` must be a non-empty list of numbers >= 0. Received: l2={tuple(l2)!r}")
    return [{"learning_rate": float(lr), "l2": float(v)} for lr in learning_rates for v in l2]


def _check_choice(arg: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"`{arg}` must be one of {tuple(allowed)}. Received: {arg}={value!r}")


def _head(num_classes: int, features: int, name: str) -> keras.layers.Dense:
    head = keras.layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros", name=name)
    head.build((None, features))
    return head


def _optimizers(kind: str, settings, heads) -> list[tuple[keras.optimizers.Optimizer, list]]:
    """One optimizer per grid setting, over that setting's heads (a learning rate is per optimizer)."""
    result = []
    for g, s in enumerate(settings):
        if kind == "adam":
            opt = keras.optimizers.Adam(s["learning_rate"])
        else:
            opt = keras.optimizers.SGD(s["learning_rate"], momentum=SGD_MOMENTUM)
        variables = [v for row in heads for v in row[g].trainable_variables]
        opt.build(variables)  # create the slots eagerly, not inside the tf.function
        result.append((opt, variables))
    return result


def _train_step(tapped, pooling, heads, settings, optimizers):
    variables = [v for _, vs in optimizers for v in vs]

    @tf.function(input_signature=_signature(tapped), autograph=False)
    def step(inputs, labels):
        # The base runs outside the tape, in inference mode, and stop_gradient cuts it
        # off: nothing can flow back into it, and BN statistics stay as they are.
        acts = _as_list(tapped(inputs, training=False))
        features = [tf.stop_gradient(pool_features(a, pooling)) for a in acts]
        losses, correct, penalties = [], [], []
        with tf.GradientTape() as tape:
            for f, row in zip(features, heads):
                for head, s in zip(row, settings):
                    logits = head(f)
                    losses.append(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
                    correct.append(_correct(logits, labels))
                    if s["l2"]:
                        penalties.append(s["l2"] * tf.reduce_sum(tf.square(head.kernel)))
            total = tf.add_n(losses + penalties)  # independent heads: each gets its own gradient
        grads = tape.gradient(total, variables)
        start = 0
        for opt, vs in optimizers:
            opt.apply_gradients(zip(grads[start : start + len(vs)], vs))
            start += len(vs)
        return tf.stack(losses), tf.stack(correct)

    return step


# --- run directories --------------------------------------------------------------------------


# RUN_DIR/probes_<taps> ("custom" for a pattern or a list of layer names).
default_out_dir = functools.partial(runs.analysis_dir, kind=KIND)


def probe_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per tap of a `train_probes` result: position, tap, kind, stage, layer index,
    features, the chosen setting, its validation and test accuracy (probes.csv)."""
    test = result["test_accuracy"]
    return [
        {
            "position": i,
            "tap": name,
            "kind": result["kinds"][i],
            "stage": models.stage_of(name),
            "layer_index": result["layer_indices"][i],
            "features": result["features"][i],
            **result["settings"][g],
            "validation_accuracy": float(result["validation_accuracy"][i, g]),
            "test_accuracy": None if test is None else float(test[i]),
        }
        for i, (name, g) in enumerate(zip(result["taps"], result["chosen"]))
    ]


_COLUMN_TYPES = {
    "position": int,
    "stage": int,
    "layer_index": int,
    "features": int,
    "learning_rate": float,
    "l2": float,
    "validation_accuracy": float,
    "test_accuracy": float,
}


@dataclasses.dataclass(frozen=True, eq=False)
class ProbesResult:
    """What `load` reads from an `analyze` output folder.

    Attributes:
        rows: one row per tap in depth order (probes.csv, `probe_table`'s keys, typed): "position",
            "tap", "kind" ("pre", "post" or "other"), "stage", "layer_index", "features",
            "learning_rate", "l2" (the chosen setting), "validation_accuracy", "test_accuracy"
            (None when not measured), accuracies in [0, 1].
        settings: how the probes were trained (probes.json: run, taps, tap_names, epochs, grid, ...,
            "measured").
        cka: (L, L) float64 within-model CKA over the same taps (cka.npz), None without `cka_examples`.
    """

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    cka: np.ndarray | None = None


def load(folder: str) -> ProbesResult:
    """The `ProbesResult` of an `analyze` output folder.

    Raises:
        tfwd.runs.RunError: if the folder measured a run that was retrained since.
    """
    runs.check_measured(folder)
    with open(os.path.join(folder, FILE)) as f:
        rows = [
            {k: (_COLUMN_TYPES[k](v) if v != "" else None) if k in _COLUMN_TYPES else v for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    with open(os.path.join(folder, "probes.json")) as f:
        settings = json.load(f)
    within = None
    if os.path.exists(os.path.join(folder, cka.FILE)):
        within = cka.load(folder).blocks[0, 0]
    return ProbesResult(rows, settings, within)


def grid_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (tap, setting): validation accuracy and last-epoch training loss and accuracy."""
    return [
        {
            "tap": name,
            **s,
            "validation_accuracy": float(result["validation_accuracy"][i, g]),
            "train_loss": float(result["train_loss"][-1, i, g]),
            "train_accuracy": float(result["train_accuracy"][-1, i, g]),
            "chosen": bool(result["chosen"][i] == g),
        }
        for i, name in enumerate(result["taps"])
        for g, s in enumerate(result["settings"])
    ]


def _check_examples(arg: str, value: int | None, available: int, what: str) -> None:
    if value is not None and not 1 <= value <= available:
        raise ValueError(f"`{arg}` must be in [1, {available}] ({what}). Received: {arg}={value}")


def _probe_data(run, data_dir, train_examples, validation_examples, test_examples):
    """The run's data with the probes' training subset and validation split."""
    base = run.data(data_dir)
    cfg = base.config
    _check_examples("train_examples", train_examples, base.num_examples("train"), "the run's training examples")
    _check_examples("test_examples", test_examples, base.num_examples("test"), "the test split")
    if validation_examples is None:
        validation_examples = cfg.validation_examples or DEFAULT_VALIDATION_EXAMPLES
    if validation_examples < 1:
        raise ValueError(f"`validation_examples` must be >= 1. Received: validation_examples={validation_examples}")
    # A smaller balanced subset with the same data seed lies inside the run's subset,
    # and held-out examples come from the end of each class's order (tfwd.data).
    probe = dataclasses.replace(
        cfg, train_examples=train_examples or cfg.train_examples, validation_examples=validation_examples
    )
    return Data(probe)


@runs.reading_runs()  # the run stays locked for reading until the output is written
def analyze(
    run_dir: str,
    out_dir: str | None = None,
    taps: str | Sequence[str] = "residual",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 128,
    validation_examples: int | None = None,
    pooling: str = "flatten",
    optimizer: str = "adam",
    learning_rates: Sequence[float] | None = None,
    l2: Sequence[float] = (0.0,),
    train_examples: int | None = None,
    test_examples: int | None = None,
    augment: bool = False,
    cka_examples: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
) -> str:
    """Linear probes on a finished run, written as tables and the Figure 4 plot.

    Writes into `out_dir` (default `default_out_dir`), as a whole or not at all:
    probes.csv (`probe_table`: per tap its position, name, kind pre/post/other,
    stage, layer index, feature count, chosen learning rate and l2, validation and
    test accuracy), probes_grid.csv (`grid_table`), probes.json (the settings), and
    probes.png (accuracy against layer). With `cka_examples`, also cka.npz (the
    within-model CKA over the same taps, one pass over the first `cka_examples`
    test examples in minibatches of up to 256) and probes_cka.png (Figure 4: the
    heatmap above the probe accuracies). `load` reads the folder back as a `ProbesResult`.

    Args:
        run_dir: a finished run directory.
        out_dir: output folder.
        taps: "residual" (the paper's), another tap kind, or layer names.
        epochs: passes over the probes' training data.
        batch_size: probe training batch size (the reference: 128).
        validation_examples: held-out examples that choose each tap's setting; None:
            the run's validation split if it has one, else DEFAULT_VALIDATION_EXAMPLES.
        pooling, optimizer, learning_rates, l2: see `train_probes`.
        train_examples: train on a class-balanced subset of this many of the run's
            training examples (nested in the run's subset); None: all of them.
        test_examples: score on the first this many test examples; None: all.
        augment: train the probes on the run's augmented training batches
            (full batches only) instead of the plain images.
        cka_examples: compute the within-model CKA heatmap on this many test
            examples (>= 4); None: no heatmap.
        data_dir: TFDS data directory, if not the one the run recorded.
        seed: seed of the per-epoch shuffles (the heads start at zero).

    Returns:
        The output folder.

    Raises:
        tfwd.runs.RunError: for a missing or unfinished run.
        ValueError: for taps the model lacks (taps="residual" on a plain network),
            bad settings, or more examples than the run has.
    """
    run, output = runs.Output.for_run(KIND, run_dir, out_dir, taps=taps)
    model = run.model()
    names = models.tap_names(model, taps)  # fails fast, before any data is read
    _grid(optimizer, learning_rates, l2)
    if cka_examples is not None and cka_examples < 4:
        raise ValueError(f"`cka_examples` must be >= 4 for the unbiased CKA estimator. Received: {cka_examples}")
    data = _probe_data(run, data_dir, train_examples, validation_examples, test_examples)
    n_train = data.num_examples("train")
    if augment:
        train = lambda e: data.train_dataset(batch_size, seed, start_epoch=e, epochs=e + 1)  # noqa: E731
    else:
        train = lambda e: data.eval_dataset("train", batch_size, shuffle_seed=shuffle_seed(seed, e))  # noqa: E731
    n_validation = data.num_examples("validation")
    logging.info(
        "Probing %d taps of %s: %d training, %d validation examples.", len(names), run.name, n_train, n_validation
    )
    result = train_probes(
        model,
        names,
        train,
        data.eval_dataset("validation", 512),
        data.eval_dataset("test", 512, test_examples),
        num_classes=data.num_classes,
        epochs=epochs,
        pooling=pooling,
        optimizer=optimizer,
        learning_rates=learning_rates,
        l2=l2,
    )
    settings = dict(
        run=run.path,
        taps=taps,
        tap_names=names,
        epochs=epochs,
        batch_size=batch_size,
        pooling=pooling,
        optimizer=optimizer,
        grid=result["settings"],
        augment=augment,
        seed=seed,
        train_examples=n_train,
        validation_examples=n_validation,
        test_examples=test_examples or data.num_examples("test"),
        selection="per tap: the grid setting with the best validation accuracy (first on ties); test only scores it",
        seconds_per_epoch=result["seconds_per_epoch"],
        measured=runs.measured(),  # the digest of the run's model, results and settings
    )
    within = None
    if cka_examples is not None:
        # Equal minibatches of at most 256 (the paper's size): no tiny ragged last batch.
        cka_batch = math.ceil(cka_examples / math.ceil(cka_examples / 256))
        within = cka.cka_matrices(
            [model], lambda _: data.eval_dataset("test", cka_batch, cka_examples), passes=1, taps=names
        )
    _write(output, result, settings, run.name, 1 / data.num_classes, within)
    return output.path


def _write(output: runs.Output, result, settings, run_name, chance, within) -> None:
    """Writes the tables, settings and plots of `analyze` into its output folder at once."""
    from tfwd import plots  # matplotlib only when figures are drawn
    from tfwd.plots import probes as probe_plots

    table = probe_table(result)
    title = f"{runs.run_label(run_name)}: linear probes"
    with output.writing(f"Probes of {run_name}") as tmp:
        runs.write_csv(os.path.join(tmp, FILE), table)
        runs.write_csv(os.path.join(tmp, "probes_grid.csv"), grid_table(result))
        runs.write_json(os.path.join(tmp, "probes.json"), settings)
        ax = probe_plots.probe_accuracy(table, title=title, chance=chance)
        plots.save_figure(ax.figure, os.path.join(tmp, "probes.png"))
        if within is not None:
            cka.save(
                os.path.join(tmp, cka.FILE),
                within,
                [run_name],
                dict(taps=settings["tap_names"], split="test", passes=1),
            )
            fig = probe_plots.probes_with_cka(within["blocks"][(0, 0)], table, title=title, chance=chance)
            plots.save_figure(fig, os.path.join(tmp, "probes_cka.png"))
