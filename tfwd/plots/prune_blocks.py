"""Accuracy after block deletion (the paper's Figure 5, bottom row)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.transforms as mtransforms
import numpy as np
from matplotlib.axes import Axes

from tfwd.plots import common
from tfwd.plots.common import mark_stages


def deletion_accuracy(
    stages: Sequence[int],
    blocks_deleted: Sequence[int],
    accuracy: Sequence[float],
    full_accuracy: float,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Test accuracy after each block deletion, grouped by stage.

    As in the paper's Figure 5, the x axis holds one group of points per stage
    (stages left to right) and, within a stage, the points run left to right
    from the most blocks deleted to the fewest; the tick labels give the number
    of blocks deleted. Green dashed lines separate the stages and a grey dashed
    line marks the full model's accuracy.

    Args:
        stages: (K,) stage of each deletion (`tfwd.prune_blocks.stagewise_deletion` steps).
        blocks_deleted: (K,) blocks deleted from that stage.
        accuracy: (K,) test accuracies in [0, 1].
        full_accuracy: accuracy of the model without deletions, in [0, 1].
        ax: Axes to draw on; a new figure when None.
        title: the title (the run's name, for example).

    Returns:
        The Axes; accuracies are drawn in percent, one line per stage.

    Example:
        >>> ax = deletion_accuracy([1, 1, 2], [1, 2, 1], [0.9, 0.8, 0.85], 0.92)
    """
    stages, blocks_deleted, accuracy = (np.asarray(a) for a in (stages, blocks_deleted, accuracy))
    if not len(stages) == len(blocks_deleted) == len(accuracy):
        raise ValueError(
            "`stages`, `blocks_deleted` and `accuracy` must have the same length. "
            f"Received: lengths {len(stages)}, {len(blocks_deleted)}, {len(accuracy)}"
        )
    if ax is None:
        _, ax = common.subplots(figsize=(max(3.0, 0.35 * len(stages) + 1.5), 3.0))
    label_at = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    start, starts, ticks, tick_labels = 0, [], [], []
    for stage in sorted(set(stages.tolist())):
        order = np.flatnonzero(stages == stage)
        order = order[np.argsort(-blocks_deleted[order], kind="stable")]  # most deleted first
        x = start + np.arange(len(order))
        ax.plot(x, 100 * accuracy[order], marker="o", markersize=4, color="tab:blue", label=f"stage {stage}")
        ax.text(x.mean(), 1.01, f"stage {stage}", transform=label_at, ha="center", va="bottom", fontsize=8)
        starts.append(start)
        ticks += x.tolist()
        tick_labels += [str(b) for b in blocks_deleted[order]]
        start += len(order)
    mark_stages(ax, starts[1:], axis="x")
    ax.axhline(100 * full_accuracy, color="grey", linestyle="--", linewidth=1, label="no deletion")
    ax.set_xticks(ticks, tick_labels, fontsize=7)
    ax.set_xlim(-0.5, max(start, 1) - 0.5)
    ax.set_xlabel("Blocks deleted from the end of the stage")
    ax.set_ylabel("Test accuracy (%)")
    if title:
        ax.set_title(title, fontsize=9, pad=14)
    return ax
