"""First-principal-component figures (the paper's Figure 3 and the label of Figure D.5).

The arrays come from `tfwd.pc.analyze_grams` (or `tfwd.pc.load`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tfwd.layer_names import stage_boundaries
from tfwd.plots import common
from tfwd.plots.common import mark_stages
from tfwd.plots.heatmaps import heatmap


def _stages_label(last_stages: Sequence[int]) -> str:
    return "stages " + "+".join(str(s) for s in last_stages) if len(last_stages) > 1 else f"stage {last_stages[0]}"


def variance_explained(
    fraction,
    names: Sequence[str],
    ax: Axes | None = None,
    title: str | None = None,
    last_stages_fraction: float | None = None,
    last_stages: Sequence[int] = (),
    fraction_svd=None,
) -> Axes:
    """The first PC's fraction of variance per layer, on 0..1, with stage boundaries.

    Args:
        fraction: (L,) first-PC variance fractions, in layer order.
        names: the L layer names (stage boundaries are drawn where the stage changes).
        ax: Axes to draw on; a new figure when None.
        title: the title.
        last_stages_fraction: the first-PC fraction of the last stages' taps taken
            together; drawn as a dotted horizontal line and named in the legend
            (Figure D.5's label). Skipped when None or NaN.
        last_stages: the stages pooled for it, for the legend.
        fraction_svd: (L,) the reference code's TruncatedSVD estimator of the same
            fractions (`tfwd.pc.svd_fraction`), drawn dashed; skipped when None.

    Returns:
        The Axes; the curve is its first line (the dashed one, if any, its second).
    """
    fraction = np.asarray(fraction)
    if fraction.shape != (len(names),):
        raise ValueError(f"`fraction` must have one value per layer ({len(names)}). Received shape {fraction.shape}.")
    if fraction_svd is not None and np.shape(fraction_svd) != fraction.shape:
        raise ValueError(
            f"`fraction_svd` must have one value per layer ({len(names)}). Received shape {np.shape(fraction_svd)}."
        )
    if ax is None:
        _, ax = common.subplots(figsize=(4.2, 3.2))
    layers = np.arange(len(fraction))
    label = "per layer" if fraction_svd is None else "per layer, exact"
    ax.plot(layers, fraction, marker=".", markersize=3, linewidth=1.0, color="tab:blue", label=label)
    if fraction_svd is not None:
        label = "per layer, TruncatedSVD (reference code)"
        ax.plot(layers, np.asarray(fraction_svd), linestyle="--", linewidth=1.0, color="tab:orange", label=label)
    mark_stages(ax, stage_boundaries(names), axis="x")
    if last_stages_fraction is not None and np.isfinite(last_stages_fraction):
        label = (
            f"{_stages_label(last_stages) if len(last_stages) else 'last stages'} together: {last_stages_fraction:.2f}"
        )
        ax.axhline(last_stages_fraction, color="tab:red", linestyle=":", linewidth=1.0, label=label)
    if fraction_svd is not None or (last_stages_fraction is not None and np.isfinite(last_stages_fraction)):
        ax.legend(fontsize=7, loc="lower left")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(-0.5, len(fraction) - 0.5)
    ax.set_xlabel("Layer")
    ax.set_ylabel("Fraction of variance, first PC")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def first_pc_figure(
    cka,
    pc_cosine,
    fraction,
    cka_without_pc,
    names: Sequence[str],
    title: str | None = None,
    last_stages_fraction: float | None = None,
    last_stages: Sequence[int] = (),
    size: float = 3.4,
    fraction_svd=None,
) -> Figure:
    """The four panels of Figure 3 for one model, laid out as in the paper.

    Top left "Similarity of First PCs" (|cos| of the layers' first PCs, 0..1), top
    right "CKA", bottom left "Variance Explained" (see `variance_explained`), bottom
    right "CKA w/o First PC". Heatmaps put layer i on the y axis (from the bottom)
    and layer j on the x axis, with stage boundaries.

    Args:
        cka: (L, L) CKA matrix.
        pc_cosine: (L, L) |<u_1^a, u_1^b>|.
        fraction: (L,) first-PC variance fractions.
        cka_without_pc: (L, L) CKA with every layer's first PC removed.
        names: the L layer names.
        title: the figure's title (the model, say).
        last_stages_fraction, last_stages, fraction_svd: see `variance_explained`.
        size: inches per panel.

    Returns:
        The figure; its first four Axes are the panels in reading order.
    """
    for arg, value in (("cka", cka), ("pc_cosine", pc_cosine), ("cka_without_pc", cka_without_pc)):
        if np.shape(value) != (len(names), len(names)):
            raise ValueError(f"`{arg}` must be (L, L) with L = {len(names)} layers. Received shape {np.shape(value)}.")
    fig, axes = common.subplots(2, 2, figsize=(2 * size + 1.2, 2 * size))
    cosine_ax = heatmap(
        pc_cosine, ax=axes[0, 0], title="Similarity of First PCs", rows=names, cols=names, colorbar=False
    )
    fig.colorbar(cosine_ax.images[0], ax=cosine_ax, fraction=0.046, pad=0.04, label="|cosine|")
    heatmap(cka, ax=axes[0, 1], title="CKA", rows=names, cols=names)
    variance_explained(
        fraction,
        names,
        ax=axes[1, 0],
        title="Variance Explained",
        last_stages_fraction=last_stages_fraction,
        last_stages=last_stages,
        fraction_svd=fraction_svd,
    )
    heatmap(cka_without_pc, ax=axes[1, 1], title="CKA w/o First PC", rows=names, cols=names)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
