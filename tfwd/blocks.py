"""Block structure, measured: the largest contiguous range of layers that are all alike.

Nguyen, Raghu & Kornblith (2021) see the block structure in CKA heatmaps: "a
large, contiguous set of layers" whose representations have very high CKA with
one another, mostly in the later stages of wide or deep models, or of models
trained on little data. The paper gives no rule; tfwd uses this one:

    A block is a contiguous range of layers [i, j] such that at least `fill` of
    the off-diagonal pairs inside it have CKA >= `threshold`, and whose mean CKA
    exceeds the mean CKA between its layers and all others by `min_contrast`. The block
    structure of a heatmap is the largest such range spanning at least
    `min_fraction` of the layers (and at least `min_layers` layers); ties go to
    the higher mean CKA. Its end layers are then trimmed while they are alike
    to fewer than `fill` of the block's other layers. If there is no such
    range, the model has no block structure.

Why this rule. Every network has a bright diagonal band (neighbouring layers are
alike), so size matters: a block must span a sizeable share of depth. The
paper's blocks also have sharp edges: block layers are dark against the rest of
the network, while the early layers of small networks are broadly alike and
fade smoothly into the later ones; the contrast tells them apart. Requiring
a *fraction* of pairs above the threshold, not all of them, tolerates the odd
layer inside a block (a pre-BN conv output, a stripe in the heatmap) that a
strict minimum would break the block at; trimming the ends keeps that
tolerance from annexing a neighbouring layer. Counting pairs over a 2-D prefix sum
makes every range's test O(1), so the search is O(L^2) even for the 500+ layers
of ResNet-164. Defaults (threshold 0.85, fill 0.9, 20% of depth, contrast 0.35)
were set on tfwd's heatmaps of CIFAR-10 runs on 782-12,500 images: the
ResNet-38 (1x) block on 3,125 images has contrast 0.45 (mean CKA 0.94 inside),
while the broadly similar early layers of ResNet-14 at 1x and 2x reach 0.23-0.29
(tests/blocks_test.py keeps these heatmaps as fixtures). Pass your own to probe
how robust a conclusion is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

THRESHOLD = 0.85
FILL = 0.9
MIN_FRACTION = 0.2
MIN_LAYERS = 4
MIN_CONTRAST = 0.35


@dataclasses.dataclass(frozen=True)
class BlockStructure:
    """The block structure found in one CKA heatmap (or its absence).

    Attributes:
        found: whether a block satisfies the criterion.
        start, end: first and last layer index of the block (inclusive); -1 if none.
        start_name, end_name: their names, when names were given.
        size: number of layers in the block (0 if none).
        fraction: size / number of layers.
        mean_cka: mean off-diagonal CKA inside the block (nan if none).
        contrast: mean_cka minus the mean CKA between block layers and all other
            layers (how much the block stands out; nan if none or no other layers).
        fill: fraction of off-diagonal pairs inside with CKA >= threshold.
        peak_contrast: the highest contrast of any range that passes the size and fill
            tests, found or not (nan when no range passes them): how far the heatmap is
            from having a block, or how clearly it has one. A block needs
            peak_contrast >= min_contrast (and survives trimming its ends).
        peak_start, peak_end: that range (-1 when none).
    """

    found: bool
    start: int = -1
    end: int = -1
    start_name: str | None = None
    end_name: str | None = None
    size: int = 0
    fraction: float = 0.0
    mean_cka: float = float("nan")
    contrast: float = float("nan")
    fill: float = float("nan")
    peak_contrast: float = float("nan")
    peak_start: int = -1
    peak_end: int = -1

    def contains(self, index: int) -> bool:
        """Whether layer `index` lies inside the block."""
        return self.found and self.start <= index <= self.end

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def find_block_structure(
    cka,
    names: Sequence[str] | None = None,
    threshold: float = THRESHOLD,
    fill: float = FILL,
    min_fraction: float = MIN_FRACTION,
    min_layers: int = MIN_LAYERS,
    min_contrast: float = MIN_CONTRAST,
) -> BlockStructure:
    """Finds the block structure of a within-model CKA heatmap (see the module docstring).

    Args:
        cka: (L, L) symmetric CKA matrix, layers in depth order.
        names: optional L layer names, reported for the block's ends.
        threshold: CKA a pair of layers must reach to count as alike.
        fill: fraction of the block's off-diagonal pairs that must reach `threshold`.
        min_fraction: smallest block, as a fraction of L.
        min_layers: smallest block, in layers.
        min_contrast: how much the block's mean CKA must exceed the mean CKA between
            its layers and the other layers (not checked for a block of all layers).

    Returns:
        A BlockStructure.

    Raises:
        ValueError: for a non-square matrix, names of the wrong length, or
            parameters outside [0, 1].

    Example:
        >>> c = np.full((10, 10), 0.2) + 0.8 * np.eye(10)
        >>> c[5:, 5:] = 0.95
        >>> b = find_block_structure(c)
        >>> b.found, b.start, b.end
        (True, 5, 9)
    """
    c = np.asarray(cka, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"`cka` must be a square (L, L) matrix with L >= 2. Received shape {c.shape}.")
    n = c.shape[0]
    if names is not None and len(names) != n:
        raise ValueError(f"`names` must have one name per layer ({n}). Received {len(names)} names.")
    for arg, value in (("threshold", threshold), ("fill", fill), ("min_fraction", min_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{arg}` must be in [0, 1]. Received: {arg}={value!r}")
    smallest = max(int(min_layers), int(np.ceil(min_fraction * n)), 2)
    if smallest > n:
        return BlockStructure(False)

    alike = np.nan_to_num(c, nan=0.0) >= threshold
    np.fill_diagonal(alike, False)
    clean = np.where(np.eye(n, dtype=bool), 0.0, np.nan_to_num(c, nan=0.0))
    counts = _square_sums(alike.astype(np.int64))
    values = _square_sums(clean)
    row_totals = np.concatenate([[0.0], clean.sum(1).cumsum()])  # off-diagonal row sums, cumulated
    best = None
    off_diagonal = ~np.eye(n, dtype=bool)
    if smallest <= n and alike[off_diagonal].mean() >= fill:  # the whole network: no contrast to check
        best = (0, n, float(alike[off_diagonal].mean()), float(clean.sum() / (n * (n - 1))))
    peak = (float("nan"), -1, -1)
    for size in range(n - 1, smallest - 1, -1):  # the whole network has no outside, so no contrast
        starts = np.arange(0, n - size + 1)
        pairs = size * (size - 1)
        filled = _range_sums(counts, starts, size) / pairs
        inside = _range_sums(values, starts, size)
        means = inside / pairs
        outside = (row_totals[starts + size] - row_totals[starts] - inside) / (size * (n - size))
        contrast = means - outside
        passing = filled >= fill
        if passing.any():
            i = int(starts[passing][np.argmax(contrast[passing])])
            if not contrast[i] <= peak[0]:  # also replaces the initial nan
                peak = (float(contrast[i]), i, i + size - 1)
        ok = passing & (contrast >= min_contrast)
        if best is None and ok.any():
            i = int(starts[ok][np.argmax(means[ok])])
            best = (i, size, float(filled[i]), float(means[i]))
    peak_fields = dict(peak_contrast=peak[0], peak_start=peak[1], peak_end=peak[2])
    if best is None:
        return BlockStructure(False, **peak_fields)
    start, end = _trim(alike, best[0], best[0] + best[1] - 1, fill)
    size = end - start + 1
    if size < smallest:
        return BlockStructure(False, **peak_fields)
    pairs = size * (size - 1)
    filled = float(alike[start : end + 1, start : end + 1].sum()) / pairs
    mean = float(c[start : end + 1, start : end + 1][~np.eye(size, dtype=bool)].mean())
    outside = np.r_[0:start, end + 1 : n]
    contrast = mean - float(c[start : end + 1][:, outside].mean()) if outside.size else float("nan")
    return BlockStructure(
        found=True,
        start=start,
        end=end,
        start_name=names[start] if names is not None else None,
        end_name=names[end] if names is not None else None,
        size=size,
        fraction=size / n,
        mean_cka=mean,
        contrast=contrast,
        fill=filled,
        **peak_fields,
    )


def _trim(alike: np.ndarray, start: int, end: int, fill: float) -> tuple[int, int]:
    """Drops end layers alike to fewer than `fill` of the others: the pair count can absorb a
    neighbour of the block (alike only to the few block layers next to it) at either end."""

    def row_fill(r):
        return alike[r, start : end + 1].sum() / (end - start)

    while end - start > 1 and (row_fill(start) < fill or row_fill(end) < fill):
        if row_fill(start) <= row_fill(end):
            start += 1
        else:
            end -= 1
    return start, end


def _square_sums(a: np.ndarray) -> np.ndarray:
    """2-D prefix sums with a zero border: s[i, j] = a[:i, :j].sum()."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=a.dtype)
    s[1:, 1:] = a.cumsum(0).cumsum(1)
    return s


def _range_sums(s: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    """Sums of a[i:i+size, i:i+size] for each start i, from prefix sums."""
    ends = starts + size
    return s[ends, ends] - s[starts, ends] - s[ends, starts] + s[starts, starts]
