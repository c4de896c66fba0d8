"""CKA heatmaps (the paper's Figures 1, 2, 6 and E.1), and wide against deep with blocks marked (Figure 6)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tfwd.layer_names import stage_boundaries, stage_of
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


def _stage_ticks(ax: Axes, names: Sequence[str], axis: str) -> None:
    """Ticks at the middle of each stage's layers, labelled stem, s1, s2, ..., head."""
    edges = [0, *stage_boundaries(names), len(names)]
    ticks = [(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:])]
    labels = []
    for start in edges[:-1]:
        stage = stage_of(names[start])
        labels.append("stem" if stage == 0 else "head" if stage < 0 else f"s{stage}")
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, labels, fontsize=7)


def wide_deep_heatmap(
    matrix,
    rows: Sequence[str],
    cols: Sequence[str],
    row_blocks: Sequence[tuple[int, int]] = (),
    col_blocks: Sequence[tuple[int, int]] = (),
    row_label: str = "Layer (model 1)",
    col_label: str = "Layer (model 2)",
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """The cross-model CKA heatmap of two architectures with both models' blocks marked (the paper's Figure 6).

    Each model's blocks are bands beside its axis (the largest cyan, any other white on grey), the square where
    the two largest blocks meet is outlined, and a dotted line joins the layers at equal relative depth
    (index / (layers - 1)), the layers claim (g) matches.

    Args:
        matrix: (R, C) CKA, row i layer i of the first model (y axis), column j layer j of the second (x axis).
        rows, cols: the R and C layer names (stage ticks and boundaries).
        row_blocks, col_blocks: each model's blocks as inclusive (start, end) layer ranges, largest first.
        row_label, col_label: axis labels (the model names).
        ax: Axes to draw on; a new figure when None.
        title: the title.

    Returns:
        The Axes; the bands and the outline are patches with gid "block_y", "block_x" and "blocks_meet".
    """
    matrix = np.asarray(matrix)
    if ax is None:
        _, ax = common.subplots(figsize=(4.6, 4.0))
    heatmap(matrix, ax=ax, title=title, rows=rows, cols=cols, xlabel=col_label, ylabel=row_label)
    _stage_ticks(ax, rows, "y")
    _stage_ticks(ax, cols, "x")
    r, c = matrix.shape
    ax.plot([0, c - 1], [0, r - 1], color="white", linestyle=":", linewidth=0.8)
    for axis, ranges in (("y", row_blocks), ("x", col_blocks)):
        for k, (start, end) in enumerate(ranges):
            color = "cyan" if k == 0 else "white"
            if axis == "x":  # below the heatmap, in data units along x and axes units across
                xy, w, h, transform = (start - 0.5, -0.05), end - start + 1, 0.03, ax.get_xaxis_transform()
            else:
                xy, w, h, transform = (-0.05, start - 0.5), 0.03, end - start + 1, ax.get_yaxis_transform()
            band = Rectangle(xy, w, h, transform=transform, clip_on=False, facecolor=color, edgecolor="0.3", lw=0.5)
            band.set_gid(f"block_{axis}")
            ax.add_patch(band)
    if row_blocks and col_blocks:
        (r0, r1), (c0, c1) = row_blocks[0], col_blocks[0]
        meet = Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, edgecolor="cyan", linewidth=1.5)
        meet.set_gid("blocks_meet")
        ax.add_patch(meet)
    ax.tick_params(axis="x", pad=9)  # room for the bands
    ax.tick_params(axis="y", pad=9)
    return ax
