"""The block structure as it forms: CKA heatmaps over training and the block against epochs."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from tfwd.plots.heatmaps import heatmap
from tfwd.plots.report import outline_block

# The history's per-measurement scalars (tfwd.callbacks.SCALARS) as drawn: label and style.
_LINES = (
    ("block_fraction", "block fraction of the layers", dict(color="black", linewidth=2, marker="o", markersize=3)),
    ("block_contrast", "contrast (peak contrast without a block)", dict(color="tab:red", linestyle="--")),
    ("pc_fraction_inside", "first-PC fraction, residual stream inside the block", dict(color="tab:blue")),
    ("pc_fraction_outside", "first-PC fraction, residual stream outside it", dict(color="tab:cyan", linestyle=":")),
)


def strip_indices(count: int, panels: int) -> list[int]:
    """Indices of `panels` measurements evenly spaced from the first to the last (all when fewer)."""
    if count <= panels:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, panels)})


def cka_history_figure(history: dict, panels: int = 6, title: str | None = None, size: float = 2.2) -> Figure:
    """A strip of within-model CKA heatmaps over training, and the block fraction against epochs.

    Args:
        history: a CKA history as `tfwd.callbacks.load_history` returns it: "epochs" (k,),
            "matrices" (k, L, L), "names" (L,), "block_start" and "block_end" (k,) (-1 without
            a block), and the (k,) scalars "block_fraction", "block_contrast",
            "pc_fraction_inside" and "pc_fraction_outside" (NaN where undefined).
        panels: heatmaps in the strip, at measurements evenly spaced from the first to the
            last (every measurement when there are at most `panels`); >= 1.
        title: optional figure title (the run, say).
        size: inches per heatmap.

    Returns:
        The figure: top, the heatmaps, each titled with its epoch and its block outlined in
        cyan; bottom, the four scalars against epochs from 0 to 1 (lower if a contrast is; dotted verticals mark
        the strip's epochs).

    Raises:
        ValueError: for a history without measurements or `panels` < 1.
    """
    epochs = np.asarray(history["epochs"])
    if not len(epochs):
        raise ValueError("`history` must hold at least one measurement. Received: a history of 0 epochs")
    if isinstance(panels, bool) or not isinstance(panels, int) or panels < 1:
        raise ValueError(f"`panels` must be an integer >= 1. Received: panels={panels!r}")
    shown = strip_indices(len(epochs), panels)
    columns = len(shown)
    fig = Figure(figsize=(max(size * columns, 6.5) + 0.8, size + 2.6), layout="constrained")
    grid = fig.add_gridspec(2, columns, height_ratios=[size, 2.2])
    names = [str(n) for n in history["names"]]
    for column, k in enumerate(shown):
        ax = fig.add_subplot(grid[0, column])
        heatmap(history["matrices"][k], ax=ax, title=f"epoch {epochs[k]}", rows=names, cols=names, colorbar=False)
        ax.set_xlabel("")
        ax.set_ylabel("Layer" if column == 0 else "")
        if history["block_start"][k] >= 0:
            outline_block(ax, int(history["block_start"][k]), int(history["block_end"][k]))
    fig.colorbar(fig.axes[0].images[0], ax=fig.axes[:columns], fraction=0.02, pad=0.01, label="CKA")
    lines = fig.add_subplot(grid[1, :])
    lowest = 0.0
    for key, label, style in _LINES:
        values = np.asarray(history[key], dtype=np.float64)
        lines.plot(epochs, values, label=label, **style)
        lowest = min(lowest, np.nanmin(values, initial=0.0))  # a peak contrast can be negative
    for k in shown:
        lines.axvline(epochs[k], color="gray", linestyle=":", linewidth=0.8)
    lines.set_ylim(lowest, 1.02)
    lines.set_xlabel("epoch")
    lines.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
