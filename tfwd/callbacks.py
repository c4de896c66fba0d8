"""Keras callbacks: block structure watched as it forms during training.

`CKAMonitor` measures the within-model CKA heatmap (`tfwd.metrics.CKA`, BN in inference mode)
on a fixed set of images every few epochs, and writes it to TensorBoard (the heatmap with the
detected block outlined, the block's fraction of the layers and its contrast) and to an .npz
history. It only reads the model: training reaches the same weights with or without it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import keras
import numpy as np

from tfwd import atomic, blocks, metrics
from tfwd.models import saved, taps as tap_lib

HISTORY = "cka_history.npz"


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
        log_dir: TensorBoard folder for the heatmap image and the scalars `cka/block_fraction` and
            `cka/block_contrast` (0 and NaN without a block); None: no TensorBoard.
        history_path: .npz file that gets `epochs` (k,), `matrices` (k, L, L) and `names` (L,),
            rewritten atomically after each measurement; None: none written.
        batch_size: minibatch size n of the CKA estimator (>= 4).

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
        for start in range(0, len(self.images), self.batch_size):
            cka.update_state(self._acts(self.images[start : start + self.batch_size], training=False))
        return np.asarray(keras.ops.convert_to_numpy(cka.result()), dtype=np.float32)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (epoch + 1) % self.every:
            return
        matrix = self.measure()
        self.epochs.append(epoch + 1)
        self.matrices.append(matrix)
        block = find_block(matrix, self.names)
        if self.log_dir is not None:
            self._to_tensorboard(epoch + 1, matrix, block)
        if self.history_path is not None:
            atomic.write_npz(
                self.history_path,
                epochs=np.asarray(self.epochs, dtype=np.int64),
                matrices=np.stack(self.matrices),
                names=np.asarray(self.names),
            )

    def _to_tensorboard(self, epoch: int, matrix: np.ndarray, block: blocks.BlockStructure) -> None:
        import tensorflow as tf  # TensorBoard's writer: the TensorFlow backend

        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default(step=epoch):
            tf.summary.scalar("cka/block_fraction", block.fraction if block.found else 0.0)
            tf.summary.scalar("cka/block_contrast", block.contrast if block.found else float("nan"))
            tf.summary.image("cka/heatmap", _png(matrix, self.names, block, epoch)[None])
        writer.close()


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
