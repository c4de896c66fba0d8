"""Figures of the dominant-datapoint analysis (tfwd.dominant_datapoints)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from tfwd.plots import common
from tfwd.plots.report import block_heatmaps


def image_grid(
    images: np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float],
    indices: Sequence[int],
    title: str = "",
    columns: int = 5,
) -> Figure:
    """The dominant examples, most dominant first, each titled with its test index, label and score.

    Args:
        images: (K, H, W, C) images in [0, 1].
        labels: K class names.
        scores: K first-PC scores.
        indices: K test-set indices.
    """
    k = len(images)
    rows, cols = max(1, math.ceil(k / columns)), min(columns, max(1, k))
    # Constrained layout keeps each row's two-line titles clear of the images above (tight_layout let them overlap).
    fig, axes = common.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows + 0.4), squeeze=False, layout="constrained")
    for ax, image, label, score, index in zip(axes.flat, images, labels, scores, indices):
        ax.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
        ax.set_title(f"#{index} {label}\nscore {score:.3g}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def with_and_without(result: dict, top: int, title: str = "") -> Figure:
    """Within-model CKA with every example and without the top K, the detected block outlined on each."""
    panels = [
        {
            "matrix": result["cka"],
            "names": result["names"],
            "title": f"{title}: all examples",
            "block": result["block"],
        },
        {
            "matrix": result["cka_without_top"],
            "names": result["names"],
            "title": f"{title}: without the top {top}",
            "block": result["block_without_top"],
        },
    ]
    return block_heatmaps(panels, columns=2, size=3.6)
