"""Figures of the end-to-end report: CKA heatmaps with the detected block structure outlined."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.patches
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tfwd.plots import common
from tfwd.plots.heatmaps import heatmap, wide_deep_heatmap


def outline_block(ax: Axes, start: int, end: int, color: str = "cyan", linestyle: str = "-") -> None:
    """Draws the square of layers start..end (inclusive) on a heatmap."""
    size = end - start + 1
    square = (start - 0.5, start - 0.5)
    ax.add_patch(
        matplotlib.patches.Rectangle(
            square, size, size, fill=False, edgecolor=color, linewidth=1.5, linestyle=linestyle
        )
    )


def block_heatmaps(panels: Sequence[dict], columns: int = 4, size: float = 2.9, suptitle: str | None = None) -> Figure:
    """A grid of within-model CKA heatmaps, each with its detected block outlined.

    Args:
        panels: dicts with "matrix" (L, L), "names" (L layer names), "title",
            "block" (a tfwd.blocks.BlockStructure, or None) and optionally "fitted" (False
            marks a run whose blocks count nowhere: it did not fit its training data).
        columns: panels per row.
        size: inches per panel.
        suptitle: optional figure title.

    Returns:
        The figure.
    """
    rows = max(1, math.ceil(len(panels) / columns))
    cols = min(columns, max(1, len(panels)))
    fig, axes = common.subplots(rows, cols, figsize=(size * cols + 0.8, size * rows + 0.3), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        block = panel.get("block")
        title = panel["title"]
        if block is not None:
            if block.found:
                more = f" (+{len(block.blocks) - 1} more)" if len(block.blocks) > 1 else ""
                title += f"\nblock {block.fraction:.0%} of layers{more}, contrast {block.contrast:.2f}"
            elif block.peak_contrast != block.peak_contrast:  # nan: no range long and square enough
                title += "\nno block (no candidate range)"
            else:
                title += f"\nno block (peak contrast {block.peak_contrast:.2f})"
        if panel.get("fitted") is False:
            title += "\nnot fitted: counts nowhere"
        heatmap(panel["matrix"], ax=ax, title=title, rows=panel["names"], cols=panel["names"], colorbar=False)
        if block is not None:
            for k, b in enumerate(block.blocks):  # the largest in cyan, any other in white
                outline_block(ax, b.start, b.end, color="cyan" if k == 0 else "white")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.colorbar(axes.flat[0].images[0], ax=list(axes.flat), fraction=0.02, pad=0.01, label="CKA")
    return fig


def wide_deep_figure(panels: Sequence[dict], size: float = 4.2) -> Figure:
    """Claim (g)'s cross-model heatmaps side by side, each model's blocks marked (`heatmaps.wide_deep_heatmap`).

    Args:
        panels: dicts with "matrix" (R, C), "names" (the R and the C layer names), "labels" (the two model names),
            "blocks" (each model's tfwd.blocks.BlockStructure, or None) and "title".
        size: inches per panel.

    Returns:
        The figure.
    """
    fig, axes = common.subplots(1, max(1, len(panels)), figsize=(size * max(1, len(panels)) + 0.4, size), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        ranges = [[(b.start, b.end) for b in s.blocks] if s is not None else [] for s in panel["blocks"]]
        wide_deep_heatmap(
            panel["matrix"],
            *panel["names"],
            row_blocks=ranges[0],
            col_blocks=ranges[1],
            row_label=f"Layer of {panel['labels'][0]}",
            col_label=f"Layer of {panel['labels'][1]}",
            ax=ax,
            title=panel["title"],
        )
    fig.tight_layout()
    return fig
