"""Block structure, measured: large contiguous squares of layers far more alike to each other than to the rest.

Nguyen, Raghu & Kornblith (2021) see the block structure in CKA heatmaps: "a large,
contiguous set of layers" whose representations have very high CKA with one another. The
paper gives no rule; a block is what a reader sees, and tfwd's rule is checked against
heatmaps labelled by eye (`data/labels/block_labels.json`, docs/science/detector.md):

1. **Read the residual stream.** The branch layers inside each residual block (conv, BN,
   ReLU) are less alike to everything and draw dark stripes through a block. The rule is
   applied first to the stream: the stem's output and every residual block's output
   (`*_out`; Keras Applications' ResNets name theirs the same way). Without such names
   every layer is the stream.
2. **Score every range of the stream.** For a contiguous range B of k stream layers: its
   *contrast* is the mean CKA between B's layers (off the diagonal) minus their mean CKA
   with the max(2, k // 3) stream layers on each side of B (fewer at the network's ends):
   how sharp its edges are, so a smooth fade scores low. Its *squareness* is
   (corner - outside) / (inside - outside), where corner is the mean CKA between the
   first and the last third of B and outside its mean CKA with every other stream layer:
   about 1 for a square, whose far corner is as bright as its inside, and near 0 for the
   diagonal band, whose far corner is as dark as the outside.
3. **The seed** is the range of the highest contrast among those that span at least
   `min_fraction` of the stream and `min_layers` stream layers (a few consecutive residual
   blocks are always alike: in a shallow net a stage's square is the diagonal band), leave at
   least `min_outside` stream layers outside, and reach `min_squareness`; that contrast is the
   heatmap's `peak_contrast`, reported whether or not it is a block (nan when no range is long
   and square enough). A block exists exactly when it reaches `min_contrast`.
4. **Grow to the whole square.** The seed can be the brightest part of a block. Layers
   join or leave at either end, one at a time, while a layer's mean CKA with the block is
   on the block's side of the midpoint between the block's inside mean and its mean with
   the outside (a two-means split, no threshold of its own); a grown range that is no
   longer square enough falls back to the seed; it never leaves fewer than `min_outside`
   stream layers outside. The range is then extended
   over the branch layers at its ends by the same midpoint, on the full heatmap; branch
   layers between the block's stream layers belong to it, stripes or not.
5. **More blocks.** Steps 3-4 repeat on the stream layers not yet in a block (other blocks
   count as outside). Blocks are reported largest first.
6. **Short streams.** A stream of fewer than `min_stream` layers (ResNet-14 has 7) is too
   short to read a square from: one faded corner cell decides it. Every layer is then read
   as the stream, and squareness is measured against the `max(2, k // 3)` layers beside the
   range instead of all the rest: in a short net the rest is mostly the last stage, dark
   against everything, so a smooth fade would look square against it.

Defaults (`MIN_CONTRAST`, `MIN_SQUARENESS`, `MIN_FRACTION`, `MIN_LAYERS`, `MIN_OUTSIDE`,
`MIN_STREAM`; version 5 of the rule) were chosen on the development part of the labelled
heatmaps and the synthetic shapes only; the held-out part judges them (tests/blocks_test.py,
docs/science/detector.md). Pass your own to probe how robust a conclusion is.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

MIN_CONTRAST = 0.2
MIN_SQUARENESS = 0.7
MIN_FRACTION = 0.25
MIN_LAYERS = 4
MIN_OUTSIDE = 1
MIN_STREAM = 10
MAX_BLOCKS = 4


@dataclasses.dataclass(frozen=True)
class Block:
    """One block: a contiguous range of layers of a within-model CKA heatmap.

    Attributes:
        start, end: first and last layer index (inclusive, in the full heatmap).
        start_name, end_name: their names, when names were given.
        size: number of layers; fraction: size / number of layers.
        mean_cka: mean off-diagonal CKA over all the block's layers (branch layers included).
        contrast: stream contrast of the block (step 2 of the module docstring).
        squareness: (corner - outside) / (inside - outside) on the stream.
    """

    start: int
    end: int
    start_name: str | None
    end_name: str | None
    size: int
    fraction: float
    mean_cka: float
    contrast: float
    squareness: float

    def contains(self, index: int) -> bool:
        """Whether layer `index` lies inside the block."""
        return self.start <= index <= self.end


@dataclasses.dataclass(frozen=True)
class BlockStructure:
    """The block structure found in one CKA heatmap (or its absence).

    The fields without `blocks` describe the largest block (the block structure of the
    paper's figures); `blocks` lists every block, largest first.

    Attributes:
        found: whether the heatmap has a block.
        start, end: first and last layer index of the largest block (inclusive); -1 if none.
        start_name, end_name: their names, when names were given.
        size: number of layers in the largest block (0 if none); fraction: size / layers.
        mean_cka, contrast, squareness: the largest block's (nan if none); see `Block`.
        peak_contrast: the contrast of the seed range (step 3), block or not: how far the
            heatmap is from a block, or how clearly it has one; nan when no range is square
            enough. `found` is exactly `peak_contrast >= min_contrast`.
        peak_start, peak_end: the seed range in full-heatmap indices (-1 when none).
        blocks: every block, largest first.
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
    squareness: float = float("nan")
    peak_contrast: float = float("nan")
    peak_start: int = -1
    peak_end: int = -1
    blocks: tuple[Block, ...] = ()

    def contains(self, index: int) -> bool:
        """Whether layer `index` lies inside the largest block."""
        return self.found and self.start <= index <= self.end

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def residual_stream(names: Sequence[str] | None, n: int) -> np.ndarray:
    """Indices of the residual stream: the stem's last layer and every `*_out` (all layers without such names)."""
    if names is None:
        return np.arange(n)
    outs = [i for i, name in enumerate(names) if str(name).endswith("_out")]
    stem = [i for i, name in enumerate(names) if str(name).startswith("stem")]
    if stem and outs and stem[-1] < outs[0]:
        outs.insert(0, stem[-1])
    return np.asarray(outs) if len(outs) >= 4 else np.arange(n)


def find_block_structure(
    cka,
    names: Sequence[str] | None = None,
    min_contrast: float = MIN_CONTRAST,
    min_squareness: float = MIN_SQUARENESS,
    min_fraction: float = MIN_FRACTION,
    max_blocks: int = MAX_BLOCKS,
    min_layers: int = MIN_LAYERS,
    min_outside: int = MIN_OUTSIDE,
    min_stream: int = MIN_STREAM,
) -> BlockStructure:
    """Finds the blocks of a within-model CKA heatmap (see the module docstring).

    Args:
        cka: (L, L) symmetric CKA matrix, layers in depth order (NaN counts as 0).
        names: optional L layer names: they select the residual stream (`*_out`) and name the
            block's ends.
        min_contrast: contrast the seed range must reach for a block.
        min_squareness: squareness a range must reach to be a seed.
        min_fraction: smallest seed, as a fraction of the stream layers.
        max_blocks: most blocks reported.
        min_layers: smallest seed, in stream layers.
        min_outside: fewest stream layers a block leaves outside it.
        min_stream: a residual stream with fewer layers is read as every layer, with
            squareness measured against the layers beside a range (step 6); 0 never does.

    Returns:
        A BlockStructure.

    Raises:
        ValueError: for a non-square matrix, names of the wrong length,
            `min_fraction` or `min_squareness` outside [0, 1], `min_layers` below 2,
            `min_outside` below 1 or `min_stream` below 0.

    Example:
        >>> c = np.full((12, 12), 0.2) + 0.8 * np.eye(12)
        >>> c[5:10, 5:10] = 0.95
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
    for arg, value in (("min_fraction", min_fraction), ("min_squareness", min_squareness)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{arg}` must be in [0, 1]. Received: {arg}={value!r}")
    for arg, value, lowest in (
        ("min_layers", min_layers, 2),
        ("min_outside", min_outside, 1),
        ("min_stream", min_stream, 0),
    ):
        if int(value) != value or value < lowest:
            raise ValueError(f"`{arg}` must be an integer >= {lowest}. Received: {arg}={value!r}")
    c = np.nan_to_num(c, nan=0.0)
    stream = residual_stream(names, n)
    short = len(stream) < min_stream
    if short:  # too few stream layers to hold a square: read every layer (step 6)
        stream = np.arange(n)
    s = c[np.ix_(stream, stream)]
    smallest = max(min_layers, int(np.ceil(min_fraction * len(stream))))
    free = np.ones(len(stream), dtype=bool)
    found: list[Block] = []
    peak = None
    while len(found) < max_blocks:
        seed = _seed(s, free, smallest, min_squareness, min_outside, short)
        if peak is None:
            peak = seed
        if seed is None or seed[0] < min_contrast:
            break
        a, b = _grow(s, free, seed[1], seed[2], smallest, min_outside)
        if _squareness(s, a, b, short) < min_squareness:  # grown past the square: keep the seed
            a, b = seed[1], seed[2]
        start, end = _extend(c, stream, a, b, found)
        free[a : b + 1] = False
        found.append(_block(c, names, start, end, _edge_contrast(s, a, b), _squareness(s, a, b, short)))
    peak_fields = {}
    if peak is not None:
        peak_fields = dict(peak_contrast=peak[0], peak_start=int(stream[peak[1]]), peak_end=int(stream[peak[2]]))
    if not found:
        return BlockStructure(False, **peak_fields)
    found.sort(key=lambda blk: (-blk.size, blk.start))
    top = found[0]
    fields = {f.name: getattr(top, f.name) for f in dataclasses.fields(Block)}
    return BlockStructure(True, **fields, **peak_fields, blocks=tuple(found))


def _seed(s, free, smallest, min_squareness, min_outside, against_near=False):
    """(contrast, a, b) of the most contrasted square-enough range of free stream layers, or None.

    Squareness is measured against every other stream layer, or against the `_band` layers
    beside the range when `against_near` (step 6).
    """
    m = len(s)
    sums = _square_sums(s - np.diag(np.diag(s)))
    taken = np.concatenate([[0], (~free).cumsum()])
    best = None
    for size in range(smallest, m - min_outside + 1):
        a = np.arange(0, m - size + 1)
        b = a + size  # exclusive
        ok = taken[b] == taken[a]  # no layer of an earlier block inside
        inside = _rect(sums, a, b, a, b) / (size * (size - 1))
        w = _band(size)
        left, right = np.maximum(a - w, 0), np.minimum(b + w, m)
        near = (_rect(sums, a, b, left, a) + _rect(sums, a, b, b, right)) / (size * (a - left + right - b))
        third = max(1, size // 3)
        corner = _rect(sums, a, a + third, b - third, b) / third**2
        outside = (_rect(sums, a, b, 0, m) - inside * size * (size - 1)) / (size * (m - size))
        base = near if against_near else outside
        span = inside - base
        square = np.divide(corner - base, span, out=np.zeros_like(span), where=span > 0)
        contrast = np.where(ok & (square >= min_squareness), inside - near, -np.inf)
        i = int(np.argmax(contrast))
        if np.isfinite(contrast[i]) and (best is None or contrast[i] > best[0]):
            best = (float(contrast[i]), i, i + size - 1)
    return best


def _band(size: int) -> int:
    """Stream layers on each side of a range that its edge contrast compares it with."""
    return max(2, size // 3)


def _rect(sums, r0, r1, c0, c1):
    """Sums of a[r0:r1, c0:c1] from 2-D prefix sums (vectorised over the bounds)."""
    return sums[r1, c1] - sums[r0, c1] - sums[r1, c0] + sums[r0, c0]


def _near(s, a, b):
    """Mean CKA of stream range [a, b] with the `_band` layers beside it (nan when there are none)."""
    w = _band(b - a + 1)
    near = np.r_[max(a - w, 0) : a, b + 1 : min(b + 1 + w, len(s))]
    return float(s[a : b + 1][:, near].mean()) if near.size else float("nan")


def _edge_contrast(s, a, b):
    """Mean CKA inside stream range [a, b] minus its mean CKA with the `_band` layers beside it."""
    return _inside_outside(s, a, b)[0] - _near(s, a, b)


def _inside_outside(s, a, b):
    """Mean CKA inside stream range [a, b] (off the diagonal) and between it and every other stream layer."""
    k = b - a + 1
    block = s[a : b + 1, a : b + 1]
    inside = (block.sum() - np.trace(block)) / (k * (k - 1))
    others = np.r_[0:a, b + 1 : len(s)]
    outside = float(s[a : b + 1][:, others].mean()) if others.size else float("nan")
    return float(inside), outside


def _grow(s, free, a, b, smallest, min_outside):
    """Moves the ends of stream range [a, b] by the two-means midpoint until no layer changes side."""
    for _ in range(4 * len(s)):
        inside, outside = _inside_outside(s, a, b)
        if outside != outside:
            break
        middle = (inside + outside) / 2
        k = b - a + 1
        mean = _with_range(s, a, b)  # each layer's mean CKA with the range's other layers
        moves = []
        room = k + 1 <= len(s) - min_outside
        if room and a > 0 and free[a - 1] and mean[a - 1] >= middle:
            moves.append((mean[a - 1] - middle, a - 1, b))
        if room and b < len(s) - 1 and free[b + 1] and mean[b + 1] >= middle:
            moves.append((mean[b + 1] - middle, a, b + 1))
        if k > smallest and mean[a] < middle:
            moves.append((middle - mean[a], a + 1, b))
        if k > smallest and mean[b] < middle:
            moves.append((middle - mean[b], a, b - 1))
        if not moves:
            break
        _, a, b = max(moves)
    return a, b


def _with_range(s, a, b):
    """Every stream layer's mean CKA with the layers of range [a, b] other than itself."""
    total = s[:, a : b + 1].sum(1)
    count = np.full(len(s), float(b - a + 1))
    total[a : b + 1] -= np.diag(s)[a : b + 1]
    count[a : b + 1] -= 1
    return total / count


def _extend(c, stream, a, b, found):
    """Full-heatmap range of stream range [a, b], its ends extended over the branch layers beside them."""
    block = stream[a : b + 1]
    rest = np.setdiff1d(stream, block)
    k = len(block)
    inside = (c[np.ix_(block, block)].sum() - k) / (k * (k - 1)) if k > 1 else 1.0
    middle = (inside + c[np.ix_(block, rest)].mean()) / 2 if rest.size else -np.inf
    lower = stream[a - 1] + 1 if a > 0 else 0
    upper = stream[b + 1] - 1 if b + 1 < len(stream) else len(c) - 1
    for other in found:  # never into an earlier block
        lower = other.end + 1 if other.end < block[0] else lower
        upper = min(upper, other.start - 1) if other.start > block[-1] else upper
    start, end = int(block[0]), int(block[-1])
    while start - 1 >= lower and c[start - 1, block].mean() >= middle:
        start -= 1
    while end + 1 <= upper and c[end + 1, block].mean() >= middle:
        end += 1
    return start, end


def _squareness(s, a, b, against_near=False):
    inside, outside = _inside_outside(s, a, b)
    if against_near:
        outside = _near(s, a, b)
    third = max(1, (b - a + 1) // 3)
    corner = s[a : a + third, b - third + 1 : b + 1].mean()
    return float((corner - outside) / (inside - outside)) if inside > outside else 0.0


def _block(c, names, start, end, contrast, squareness):
    size = end - start + 1
    inside = c[start : end + 1, start : end + 1]
    return Block(
        start=start,
        end=end,
        start_name=str(names[start]) if names is not None else None,
        end_name=str(names[end]) if names is not None else None,
        size=size,
        fraction=size / len(c),
        mean_cka=float((inside.sum() - np.trace(inside)) / (size * (size - 1))),
        contrast=float(contrast),
        squareness=float(squareness),
    )


def _square_sums(a: np.ndarray) -> np.ndarray:
    """2-D prefix sums with a zero border: s[i, j] = a[:i, :j].sum()."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=a.dtype)
    s[1:, 1:] = a.cumsum(0).cumsum(1)
    return s


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of two inclusive layer ranges (start, end)."""
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    union = max(a[1], b[1]) - min(a[0], b[0]) + 1
    return max(inter, 0) / union


def agrees(
    found: BlockStructure,
    labelled: Sequence[tuple[int, int]],
    optional: Sequence[tuple[int, int]] = (),
    min_iou: float = 0.7,
) -> bool:
    """Whether a detection agrees with a label read by eye (data/labels/block_labels.json).

    It agrees when every labelled block overlaps a detected block with an intersection over
    union of at least `min_iou`, and every detected block so overlaps a labelled or an
    optional one (a fainter square a reader may or may not call a block). A label of no
    block agrees only with no detection outside the optional squares.
    """
    detected = [(b.start, b.end) for b in found.blocks]
    hits = all(any(iou(lab, d) >= min_iou for d in detected) for lab in labelled)
    known = list(labelled) + list(optional)
    return hits and all(any(iou(d, k) >= min_iou for k in known) for d in detected)


def labelled_heatmap(label: dict, root: str = ".") -> tuple[np.ndarray, list[str], list[tuple[int, int]], list]:
    """One entry of data/labels/block_labels.json with a matrix: (cka, names, blocks, optional).

    `label["matrix"]` is "file.npz:key" (the matrix under key, its names under key + "_names") or
    a file holding "cka" and "names", relative to `root`; the labelled ranges come back as layer
    indices (start, end), inclusive.
    """
    path, _, key = label["matrix"].partition(":")
    data = np.load(os.path.join(root, path))
    cka, names = (data[key], data[key + "_names"]) if key else (data["cka"], data["names"])
    names = [str(n) for n in names]
    index = {n: i for i, n in enumerate(names)}
    blocks_, optional = ([(index[a], index[b]) for a, b in label[k]] for k in ("blocks", "optional"))
    return cka, names, blocks_, optional
