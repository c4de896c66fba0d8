"""Shared plotting helpers: figures outside pyplot, and atomic writes.

Figures are `matplotlib.figure.Figure` objects made directly, never through pyplot: saving one
renders it with a file backend (Agg for PNG), so drawing works headless and leaves the caller's
pyplot backend as it was. A notebook shows a returned Figure; `ax.figure` is an Axes' Figure.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from tfwd import atomic


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], layout: str | None = None, **kwargs):
    """A new (Figure, Axes or array of Axes), as `pyplot.subplots` gives, without pyplot."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str, dpi: int = 120) -> str:
    """Saves `fig` to `path` atomically (format from the suffix), closes it if pyplot holds it, returns the path."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.rsplit(".", 1)[-1])
    if fig.canvas.manager is not None:  # a caller's pyplot figure: free it as before
        import matplotlib.pyplot as plt  # only for a figure pyplot already holds

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
