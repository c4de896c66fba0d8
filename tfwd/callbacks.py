"""Keras callbacks: block structure watched as it forms during training.

`CKAMonitor` measures the within-model CKA heatmap (`tfwd.metrics.CKA`, BN in inference mode)
on a fixed set of images every few epochs, and writes it to TensorBoard (the heatmap with the
detected block outlined, and the scalars of `SCALARS`) and to an .npz history that
`load_history` reads and `tfwd.plots.cka_history_figure` draws. It only reads the model:
training reaches the same weights with or without it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence

import keras
import numpy as np
from absl import logging as absl_logging

from tfwd import atomic, blocks, metrics, pc
from tfwd.models import saved, taps as tap_lib

HISTORY = "cka_history.npz"
# One value per measurement, in the history and in TensorBoard (as "cka/<name>"):
# - block_fraction: the detected block's share of the layers (0 without a block);
# - block_contrast: its contrast, or the peak contrast when there is no block (how near the
#   heatmap is to one; NaN when no range is square enough), see `tfwd.blocks.BlockStructure`;
# - pc_fraction_inside / pc_fraction_outside: the first-PC variance fraction of the residual
#   stream's layers (`tfwd.blocks.residual_stream`) inside / outside the block, taken together
#   (`tfwd.pc.pooled_first_pc`), over the monitor's images; NaN when no such layer exists.
SCALARS = ("block_fraction", "block_contrast", "pc_fraction_inside", "pc_fraction_outside")


def find_block(matrix: np.ndarray, names: Sequence[str]) -> blocks.BlockStructure:
    """The block structure of one heatmap (the one call into the detector, kept in one place)."""
    return blocks.find_block_structure(matrix, names)


class CKAMonitor(keras.callbacks.Callback):
    """Within-model CKA on fixed images every `every` epochs, to TensorBoard and an .npz history.

    Args:
        images: (n, height, width, channels) images the model takes (n >= 4), e.g. test images;
            streamed through the metric in minibatches of `batch_size`, in inference mode.
        taps: the layers compared, as `tfwd.models.activation_model` takes them ("all", "blocks",
            "residual" or a list of layer names).
        every: measure after every `every`-th epoch (epochs every, 2 * every, ...); >= 1.
        log_dir: TensorBoard folder for the heatmap image and the scalars `cka/<name>` of
            `SCALARS` (a NaN scalar is left out); None: no TensorBoard.
        history_path: .npz file that gets `epochs` (k,), `matrices` (k, L, L), `names` (L,),
            `block_start` and `block_end` (k,) (the block's first and last layer, -1 without
            one) and each of `SCALARS` (k,), rewritten atomically after each measurement;
            None: none written. `load_history` reads it.
        batch_size: minibatch size n of the CKA estimator (>= 4), also the batch of the forward
            passes that build the first-PC fractions' Gram matrices (which span all the images).

    Cost: per measurement, one forward pass of the images for the heatmap, and B (B + 1) / 2
    passes over B batches for the residual stream's Gram matrices (`tfwd.pc.layer_grams`).

    Raises:
        ValueError: for bad arguments, images of a shape the model does not take, or a layer
            name that is not in the model (naming the nearest).

    Example::

        monitor = tfwd.callbacks.CKAMonitor(test_images[:512], every=10, log_dir="runs/x/tensorboard")
        model.fit(train, epochs=300, callbacks=[monitor])
    """

    def __init__(
        self,
        images,
        taps: str | Sequence[str] = "all",
        every: int = 10,
        log_dir: str | None = None,
        history_path: str | None = None,
        batch_size: int = 256,
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"`every` must be an integer >= 1 (epochs between measurements). Received: every={every!r}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 4:
            raise ValueError(f"`batch_size` must be an integer >= 4. Received: batch_size={batch_size!r}")
        images = np.array(images, dtype=np.float32)  # a copy: the set stays fixed whatever the caller does
        if images.ndim != 4 or len(images) < 4:
            raise ValueError(
                "`images` must be at least 4 images of shape (n, height, width, channels). "
                f"Received: images of shape {images.shape}"
            )
        self.images, self.taps, self.every = images, taps, every
        self.log_dir, self.history_path, self.batch_size = log_dir, history_path, batch_size
        self.epochs: list[int] = []
        self.matrices: list[np.ndarray] = []
        self.spans: list[tuple[int, int]] = []  # the block's (start, end) per measurement, (-1, -1) if none
        self.scalars: dict[str, list[float]] = {name: [] for name in SCALARS}
        self.names: list[str] = []
        self._acts = None

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        expected = saved.image_input(model)
        if any(e is not None and e != g for e, g in zip(expected, self.images.shape[1:])):
            raise ValueError(
                f"`images` must have the shape the model takes, (n, {', '.join(str(e) for e in expected)}). "
                f"Received: images of shape {self.images.shape}"
            )
        self.names = tap_lib.tap_names(model, self.taps)  # raises for a layer not in the model
        self._acts = tap_lib.activation_model(model, self.names)

    def measure(self) -> np.ndarray:
        """The (L, L) CKA matrix of the model now, on the monitor's images."""
        cka = metrics.CKA()
        for batch in self._batches():
            cka.update_state(self._acts(batch, training=False))
        return np.asarray(keras.ops.convert_to_numpy(cka.result()), dtype=np.float32)

    def _batches(self) -> list[np.ndarray]:
        return [self.images[start : start + self.batch_size] for start in range(0, len(self.images), self.batch_size)]

    def first_pc_fractions(self, block: blocks.BlockStructure) -> tuple[float, float]:
        """First-PC variance fractions of the residual stream inside and outside `block` (see `SCALARS`)."""
        stream = blocks.residual_stream(self.names, len(self.names))
        inside = np.array([block.contains(int(i)) for i in stream])
        with _quietly():
            grams = pc.layer_grams(self.model, self._batches(), [self.names[i] for i in stream])

        def pooled(members: np.ndarray) -> float:
            return pc.pooled_first_pc(grams[members]).fraction if members.any() else float("nan")

        return pooled(inside), pooled(~inside)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (epoch + 1) % self.every:
            return
        matrix = self.measure()
        block = find_block(matrix, self.names)
        inside, outside = self.first_pc_fractions(block)
        fraction, contrast = _block_scalars(block)
        values = dict(
            block_fraction=fraction, block_contrast=contrast, pc_fraction_inside=inside, pc_fraction_outside=outside
        )
        self.epochs.append(epoch + 1)
        self.matrices.append(matrix)
        self.spans.append((block.start, block.end))
        for name in SCALARS:
            self.scalars[name].append(float(values[name]))
        if self.log_dir is not None:
            self._to_tensorboard(epoch + 1, matrix, block, values)
        if self.history_path is not None:
            atomic.write_npz(self.history_path, **self.history())

    def history(self) -> dict[str, np.ndarray]:
        """The measurements so far, as the history file holds them (see `load_history`)."""
        spans = np.asarray(self.spans, dtype=np.int64).reshape(-1, 2)
        return dict(
            epochs=np.asarray(self.epochs, dtype=np.int64),
            matrices=np.stack(self.matrices) if self.matrices else np.zeros((0, len(self.names), len(self.names))),
            names=np.asarray(self.names),
            block_start=spans[:, 0],
            block_end=spans[:, 1],
            **{name: np.asarray(values, dtype=np.float64) for name, values in self.scalars.items()},
        )

    def resume(self, epoch: int) -> None:
        """Takes over the measurements of epochs <= `epoch` from `history_path` (a run resumed after `epoch`).

        A missing history file leaves the monitor empty.
        """
        if self.history_path is None or not os.path.exists(self.history_path):
            return
        old = load_history(self.history_path)
        kept = old["epochs"] <= epoch
        self.epochs = old["epochs"][kept].tolist()
        self.matrices = list(old["matrices"][kept])
        self.spans = [(int(a), int(b)) for a, b in zip(old["block_start"][kept], old["block_end"][kept])]
        self.scalars = {name: old[name][kept].tolist() for name in SCALARS}

    def _to_tensorboard(self, epoch: int, matrix: np.ndarray, block: blocks.BlockStructure, values: dict) -> None:
        import tensorflow as tf  # TensorBoard's writer: the TensorFlow backend

        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default(step=epoch):
            for name in SCALARS:
                if np.isfinite(values[name]):  # TensorBoard draws no NaN; the history keeps it
                    tf.summary.scalar(f"cka/{name}", values[name])
            tf.summary.image("cka/heatmap", _png(matrix, self.names, block, epoch)[None])
        writer.close()


def _block_scalars(block: blocks.BlockStructure) -> tuple[float, float]:
    """(block_fraction, block_contrast) of `SCALARS`: 0 and the peak contrast without a block."""
    return (block.fraction, block.contrast) if block.found else (0.0, block.peak_contrast)


@contextlib.contextmanager
def _quietly():
    """Informational logs and TensorFlow's warnings off: `pc.layer_grams` logs its progress, and
    traces anew at each call by design (TensorFlow would warn of retracing), at every measurement."""
    import tensorflow as tf  # the layer_grams backend

    logger, verbosity = tf.get_logger(), absl_logging.get_verbosity()
    level = logger.level
    logger.setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        absl_logging.set_verbosity(verbosity)


def load_history(path: str) -> dict[str, np.ndarray | list[str]]:
    """Reads a `CKAMonitor` history (a run's cka_history.npz).

    Returns:
        {"epochs": (k,) int, "matrices": (k, L, L), "names": list of L layer names,
        "block_start", "block_end": (k,) int (-1 without a block), and each of `SCALARS`:
        (k,) float64}. A history written before the scalars were recorded gets its block
        fields from the detector on its matrices and NaN first-PC fractions.

    Raises:
        ValueError: if `path` is not a readable CKA history.
    """
    try:
        with np.load(path) as f:
            history = {key: f[key] for key in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"`path` must be a CKA history (cka_history.npz). Received: path={path!r} ({e})") from None
    missing = [key for key in ("epochs", "matrices", "names") if key not in history]
    if missing:
        raise ValueError(
            f"`path` must be a CKA history with epochs, matrices and names; {path!r} lacks {', '.join(missing)}."
        )
    history["names"] = [str(n) for n in history["names"]]
    if "block_start" not in history:
        found = [find_block(m, history["names"]) for m in history["matrices"]]
        history["block_start"] = np.array([b.start for b in found], dtype=np.int64)
        history["block_end"] = np.array([b.end for b in found], dtype=np.int64)
        history["block_fraction"], history["block_contrast"] = (
            np.array([_block_scalars(b) for b in found]).reshape(-1, 2).T
        )
        history["pc_fraction_inside"] = history["pc_fraction_outside"] = np.full(len(found), np.nan)
    return history


def _png(matrix: np.ndarray, names: Sequence[str], block: blocks.BlockStructure, epoch: int) -> np.ndarray:
    """The heatmap with stage ticks and the block outlined, as an (h, w, 4) uint8 image."""
    import matplotlib  # drawing only (tfwd/__init__.py: lazy imports)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfwd.plots import heatmaps, report

    ax = heatmaps.heatmap(matrix, rows=names, cols=names, title=f"epoch {epoch}")
    if block.found:
        report.outline_block(ax, block.start, block.end)
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png", dpi=80)
    plt.close(ax.figure)
    buffer.seek(0)
    return (plt.imread(buffer) * 255).astype(np.uint8)
