"""Shared plotting helpers: a headless backend and atomic PNG writes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402

from tfwd import atomic  # noqa: E402


def save_figure(fig: plt.Figure, path: str, dpi: int = 120) -> str:
    """Saves `fig` to `path` atomically (format from the suffix), closes it, returns the path."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.rsplit(".", 1)[-1])
    plt.close(fig)
    return path


def mark_stages(ax, boundaries, axis: str = "both", **style) -> None:
    """Draws stage boundaries (layer indices where a stage starts) as thin lines."""
    style = {"color": "tab:green", "linestyle": "--", "linewidth": 0.8, "alpha": 0.9, **style}
    for b in boundaries:
        if axis in ("x", "both"):
            ax.axvline(b - 0.5, **style)
        if axis in ("y", "both"):
            ax.axhline(b - 0.5, **style)
