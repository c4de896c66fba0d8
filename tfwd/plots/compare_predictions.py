"""Populations of models compared example by example and class by class (Figure 7, F.1-F.4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes

from tfwd.plots import common

COMPARISON, CONTROL = "tab:blue", "tab:orange"  # the paper's colours in Figure 7c


def per_example_scatter(
    acc_x,
    acc_y,
    control_y=None,
    ax: Axes | None = None,
    names: Sequence[str] = ("A", "B"),
    models: int | None = None,
    jitter: float = 0.3,
    seed: int = 0,
) -> Axes:
    """Per-example accuracy of one group against another (Figure 7a/b), with a baseline.

    Args:
        acc_x: (N,) fraction of group A's models right on each test example (x axis).
        acc_y: (N,) the same for group B (y axis, blue).
        control_y: (N,) optional, the same for a disjoint other set of group A's
            models (orange): the baseline of architecturally identical models.
        ax: Axes to draw on; a new figure when None.
        names: names of groups A and B.
        models: models behind each accuracy; the values then lie on a grid of step
            1 / models, and points are jittered by up to `jitter` steps (display
            only, seeded) so that the two clouds do not hide each other.
        jitter: half-width of the uniform jitter in grid steps (0: none).
        seed: seed of the jitter.

    Returns:
        The Axes; axes in %, with the diagonal.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> acc_a1, acc_b, acc_a2 = (rng.integers(0, 51, 1000) / 50 for _ in range(3))  # 50 models, 1000 examples
        >>> ax = per_example_scatter(acc_a1, acc_b, acc_a2, models=50)
        >>> len(ax.collections)  # the baseline (orange) and the comparison (blue)
        2
    """
    if ax is None:
        _, ax = common.subplots(figsize=(4.2, 4.2))
    rng = np.random.default_rng(seed)
    step = jitter / models if models else 0.0

    def shake(v):
        v = np.asarray(v, np.float64)
        return 100 * (v + rng.uniform(-step, step, v.shape))

    each = f" ({models} models each)" if models else ""
    style = dict(s=3, alpha=0.3, linewidths=0)
    ax.plot([0, 100], [0, 100], color="0.6", linewidth=0.8, zorder=0)
    if control_y is not None:
        ax.scatter(
            shake(acc_x), shake(control_y), color=CONTROL, label=f"{names[0]} vs {names[0]} (disjoint halves)", **style
        )
    ax.scatter(shake(acc_x), shake(acc_y), color=COMPARISON, label=f"{names[0]} vs {names[1]}{each}", **style)
    ax.set(xlim=(-3, 103), ylim=(-3, 103), xlabel=f"{names[0]}: accuracy per example (%)")
    ax.set_ylabel("other group: accuracy per example (%)")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=7, markerscale=4)
    return ax


def per_class_differences(
    acc_a,
    diff,
    control_diff=None,
    ax: Axes | None = None,
    names: Sequence[str] | None = None,
    groups: Sequence[str] = ("A", "B"),
    models: int | None = None,
    annotate: Sequence[int] = (),
) -> Axes:
    """Per-class accuracy difference against group A's class accuracy (Figure 7c).

    Args:
        acc_a: (C,) group A's mean accuracy on each class (x axis).
        diff: (C,) accuracy of B minus A per class (blue).
        control_diff: (C,) optional, the same between two halves of A (orange).
        ax: Axes to draw on; a new figure when None.
        names: C class names, for the annotated classes.
        groups: names of groups A and B.
        models: models per side of each difference, shown in the legend.
        annotate: class indices to label with their names.

    Returns:
        The Axes; both axes in %.
    """
    if ax is None:
        _, ax = common.subplots(figsize=(5.0, 3.8))
    x, y = 100 * np.asarray(acc_a), 100 * np.asarray(diff)
    each = f" ({models} models each)" if models else ""
    ax.axhline(0, color="0.6", linewidth=0.8, zorder=0)
    if control_diff is not None:
        label = f"{groups[0]} - {groups[0]} (control)"
        ax.scatter(x, 100 * np.asarray(control_diff), s=8, alpha=0.6, color=CONTROL, linewidths=0, label=label)
    ax.scatter(x, y, s=8, alpha=0.7, color=COMPARISON, linewidths=0, label=f"{groups[1]} - {groups[0]}{each}")
    for c in annotate:
        text = names[c] if names is not None else str(c)
        ax.annotate(text, (x[c], y[c]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set(xlabel=f"{groups[0]} class accuracy (%)", ylabel="accuracy difference (%)")
    ax.legend(fontsize=7, markerscale=2)
    return ax
