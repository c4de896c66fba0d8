"""Linear-probe accuracy against layer, alone or under the CKA heatmap (the paper's Figure 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tfwd.layer_names import stage_boundaries
from tfwd.plots import common
from tfwd.plots.common import mark_stages
from tfwd.plots.heatmaps import heatmap

# Figure 4 draws post-residual accuracies with x markers and pre-residual ones with dots.
KIND_STYLES = {
    "post": {"marker": "x", "color": "tab:blue", "label": "post-residual"},
    "pre": {"marker": "o", "color": "tab:orange", "label": "pre-residual", "markersize": 4},
    "other": {"marker": "s", "color": "tab:gray", "label": "other", "markersize": 4},
}


def probe_accuracy(
    table: Sequence[Mapping[str, Any]],
    ax: Axes | None = None,
    title: str | None = None,
    metric: str = "test_accuracy",
    chance: float | None = None,
) -> Axes:
    """Probe accuracy against layer, one line per tap kind, stage boundaries marked.

    Args:
        table: one row per tap in depth order, as `tfwd.probes.probe_table` (or
            probes.csv) gives: each with "tap" (layer name), "kind" ("pre", "post"
            or "other") and `metric`. Row i is drawn at x = i, the tap's position,
            so the axis lines up with a CKA heatmap over the same taps.
        ax: Axes to draw on; a new figure when None.
        title: the title.
        metric: the column to plot ("test_accuracy" or "validation_accuracy").
        chance: draw a dotted line at this accuracy (1 / num_classes), if given.

    Returns:
        The Axes.

    Example:
        >>> rows = [{"tap": "stage1_block1_bn2", "kind": "pre", "test_accuracy": 0.4},
        ...         {"tap": "stage1_block1_add", "kind": "post", "test_accuracy": 0.5}]
        >>> ax = probe_accuracy(rows, chance=0.1)
    """
    if ax is None:
        _, ax = common.subplots(figsize=(4.2, 2.6))
    names = [row["tap"] for row in table]
    kinds = [row["kind"] for row in table]
    unknown = sorted(set(kinds) - set(KIND_STYLES))
    if unknown:
        raise ValueError(f"`table` kinds must be in {tuple(KIND_STYLES)}. Received: {unknown}")
    values = np.array([np.nan if row[metric] in (None, "") else float(row[metric]) for row in table])
    for kind, style in KIND_STYLES.items():
        x = np.array([i for i, k in enumerate(kinds) if k == kind])
        if x.size:
            ax.plot(x, values[x], linewidth=1.0, **style)
    if chance is not None:
        ax.axhline(chance, color="0.5", linestyle=":", linewidth=0.8)
    mark_stages(ax, stage_boundaries(names), axis="x")
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_xlabel("Layer")
    ax.set_ylabel(metric.replace("_", " ").capitalize())
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def probes_with_cka(
    cka_matrix,
    table: Sequence[Mapping[str, Any]],
    title: str | None = None,
    metric: str = "test_accuracy",
    chance: float | None = None,
    size: float = 4.0,
) -> Figure:
    """Figure 4: a model's within-model CKA heatmap above its probe accuracies, layers aligned.

    Args:
        cka_matrix: (L, L) CKA between the same L taps as `table`'s rows.
        table: see `probe_accuracy`.
        title: the heatmap's title.
        metric, chance: see `probe_accuracy`.
        size: width of the figure in inches, colour bar excluded.

    Returns:
        The figure: axes[0] the heatmap, axes[1] the accuracies, axes[2] the colour bar.

    Raises:
        ValueError: if the matrix is not L x L for the table's L rows.
    """
    matrix = np.asarray(cka_matrix)
    if matrix.shape != (len(table), len(table)):
        raise ValueError(
            f"`cka_matrix` must be (L, L) for the table's L = {len(table)} taps. Received shape: {matrix.shape}"
        )
    fig = Figure(figsize=(size + 0.5, size * 1.55))
    grid = fig.add_gridspec(2, 2, height_ratios=(1.0, 0.55), width_ratios=(1.0, 0.04), hspace=0.3, wspace=0.05)
    top, bottom, bar = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[0, 1])
    names = [row["tap"] for row in table]
    heatmap(matrix, ax=top, title=title, rows=names, cols=names, colorbar=False)
    fig.colorbar(top.images[0], cax=bar, label="CKA")
    probe_accuracy(table, ax=bottom, metric=metric, chance=chance)
    return fig
