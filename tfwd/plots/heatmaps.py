"""CKA heatmaps (the paper's Figures 1, 2, 6 and E.1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tfwd.layer_names import stage_boundaries
from tfwd.plots import common
from tfwd.plots.common import mark_stages


def heatmap(
    matrix,
    ax: Axes | None = None,
    title: str | None = None,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    cmap: str = "magma",
    colorbar: bool = True,
) -> Axes:
    """Draws a layer x layer CKA matrix on a fixed 0..1 colour scale.

    Args:
        matrix: (R, C) CKA values; row i is layer i of the first model (y axis,
            from the bottom), column j layer j of the second (x axis).
        ax: Axes to draw on; a new figure when None.
        title: the title (the model names, for example).
        rows, cols: layer names of the rows and columns; stage boundaries are
            drawn where the stage in the names changes.
        xlabel, ylabel: axis labels (default "Layer").
        cmap: a matplotlib colormap; "magma" as in the paper.
        colorbar: add a colour bar.

    Returns:
        The Axes.
    """
    matrix = np.asarray(matrix)
    if ax is None:
        _, ax = common.subplots(figsize=(4.2, 3.6))
    image = ax.imshow(matrix, origin="lower", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    if rows is not None:
        mark_stages(ax, stage_boundaries(rows), axis="y")
    if cols is not None:
        mark_stages(ax, stage_boundaries(cols), axis="x")
    ax.set_xlabel(xlabel or "Layer")
    ax.set_ylabel(ylabel or "Layer")
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="CKA")
    return ax


def cka_grid(blocks: dict, names: Sequence[Sequence[str]], model_names: Sequence[str], size: float = 3.2) -> Figure:
    """All within- and cross-model heatmaps of K models as a K x K grid (upper triangle and diagonal).

    Args:
        blocks: {(i, j): (L_i, L_j) matrix} for i <= j, as `tfwd.cka.cka_matrices` returns.
        names: each model's layer names.
        model_names: each model's name, used in titles and axis labels.
        size: inches per panel.

    Returns:
        The figure; panel (i, j) shows model i's layers (y) against model j's (x).
    """
    k = len(model_names)
    fig, axes = common.subplots(k, k, figsize=(size * k + 0.6, size * k), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i][j]
            if j < i:
                ax.axis("off")
                continue
            title = model_names[i] if i == j else f"{model_names[i]} (y) vs {model_names[j]} (x)"
            heatmap(blocks[(i, j)], ax=ax, title=title, rows=names[i], cols=names[j], colorbar=(j == k - 1))
    fig.tight_layout()
    return fig
