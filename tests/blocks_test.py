"""tfwd.blocks: synthetic shapes with known answers, a brute-force reference, and heatmaps labelled by eye."""

import json
import os

import numpy as np
import pytest

from tfwd import blocks

ROOT = os.path.join(os.path.dirname(__file__), "..")


def resnet_names(depth: int) -> list[str]:
    """The layer names of tfwd's CIFAR ResNet of `depth` (taps="all"), without building it."""
    n = (depth - 2) // 6
    names = ["stem_conv", "stem_bn", "stem_relu"]
    for s in (1, 2, 3):
        for b in range(1, n + 1):
            names += [f"stage{s}_block{b}_{k}" for k in ("conv1", "bn1", "relu1", "conv2", "bn2")]
            names += [f"stage{s}_block{b}_shortcut"] if s > 1 and b == 1 else []
            names += [f"stage{s}_block{b}_add", f"stage{s}_block{b}_out"]
    return names + ["pool", "logits"]


NAMES = resnet_names(38)
BRANCH = np.array([n.rsplit("_", 1)[-1] in ("conv1", "bn1", "relu1", "conv2", "bn2", "shortcut") for n in NAMES])


def band(names=NAMES, tau=6.0, floor=0.25, noise=0.02, seed=0):
    """The diagonal band every network has: CKA decays with distance in residual blocks."""
    rng = np.random.default_rng(seed)
    depth = np.cumsum([n.endswith("_out") for n in names]).astype(float)
    index = np.arange(len(names))
    d = np.abs(depth[:, None] - depth[None, :]) + 0.15 * np.abs(index[:, None] - index[None, :])
    e = rng.normal(scale=noise, size=d.shape)
    return floor + (1 - floor) * np.exp(-d / tau) + (e + e.T) / 2


def block(c, a, b, level=0.93, stripe=1.0):
    """Layers a..b (inclusive) made alike at `level`; branch layers dimmed by `stripe` (dark stripes)."""
    c = c.copy()
    c[a : b + 1, a : b + 1] = np.maximum(c[a : b + 1, a : b + 1], level)
    dim = np.where(BRANCH[a : b + 1], stripe, 1.0)
    c[a : b + 1, a : b + 1] *= dim[:, None] * dim[None, :]
    return c


def finish(c):
    c = np.clip((c + c.T) / 2, 0, 1)
    np.fill_diagonal(c, 1.0)
    return c


# name: (heatmap, expected blocks as (first, last) layer names, largest first)
SHAPES = {
    "diagonal_band_alone": (band(), []),
    "smooth_fade": (band(tau=25.0, floor=0.1), []),
    "striped_block": (block(band(), 10, 94, stripe=0.7), [("stage1_block2_conv1", "stage3_block1_add")]),
    "brighter_inner_part": (
        block(block(band(), 10, 110, level=0.78), 45, 80, level=0.97),
        [("stage1_block2_conv1", "stage3_block4_conv1")],
    ),
    "two_adjacent_blocks": (
        block(block(band(), 10, 60), 61, 120, level=0.9),
        [("stage2_block3_bn1", "stage3_block5_conv2"), ("stage1_block2_conv1", "stage2_block3_conv1")],
    ),
    "clean_block_late": (block(band(), 95, 130), [("stage3_block1_out", "stage3_block6_out")]),
    # a striped block against a pale outside (CKA ~0.6 beside it), as in the narrow demo cells
    "block_on_pale_outside": (
        block(band(tau=4.0, floor=0.6), 3, 94, level=0.9, stripe=0.85),
        [("stage1_block1_conv1", "stage3_block1_add")],
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_synthetic_shapes(shape):
    c, expected = SHAPES[shape]
    found = blocks.find_block_structure(finish(c), NAMES)
    got = [(b.start_name, b.end_name) for b in found.blocks]
    index = {n: i for i, n in enumerate(NAMES)}
    assert len(got) == len(expected), got
    for (s0, e0), (s1, e1) in zip(got, expected):  # within one layer of the planted edges
        assert abs(index[s0] - index[s1]) <= 1 and abs(index[e0] - index[e1]) <= 1, got
    assert found.found == bool(expected)
    if expected:
        assert (found.start_name, found.end_name) == got[0] and found.size == found.blocks[0].size


def test_stripes_without_names_still_point_at_the_whole_block():
    """Without layer names every layer is the stream: the stripes dilute the contrast (0.21 here against 0.55
    on the stream), but the most contrasted square is still the whole block, not a sliver."""
    found = blocks.find_block_structure(finish(SHAPES["striped_block"][0]))
    assert (found.peak_start, found.peak_end) == (10, 94)
    loose = blocks.find_block_structure(finish(SHAPES["striped_block"][0]), min_contrast=0.15)
    assert loose.found and blocks.iou((loose.start, loose.end), (10, 94)) >= 0.9


def test_planted_block_fields():
    c = finish(block(band(), 30, 100))
    found = blocks.find_block_structure(c, NAMES)
    a, b = found.start, found.end
    assert found.size == b - a + 1 and found.fraction == pytest.approx(found.size / len(NAMES))
    assert found.mean_cka == pytest.approx(c[a : b + 1, a : b + 1][~np.eye(found.size, dtype=bool)].mean())
    assert found.contains(60) and not found.contains(10) and not found.contains(120)
    assert 0.9 <= found.squareness <= 1.1 and found.peak_contrast >= found.contrast - 0.05


def test_small_block_below_min_fraction_is_not_reported():
    c = finish(block(band(), 100, 116))  # 3 of 19 stream layers: under 20%
    assert not blocks.find_block_structure(c, NAMES, min_layers=3).found
    assert blocks.find_block_structure(c, NAMES, min_fraction=0.1, min_layers=3).found


def test_short_square_below_min_layers_is_not_reported():
    """Three stream layers alike are as long as the band around the diagonal of a shallow net: no block by default."""
    c = 0.2 + 0.8 * np.eye(12)
    c[6:9, 6:9] = np.maximum(c[6:9, 6:9], 0.95)  # without names every layer is the stream
    assert not blocks.find_block_structure(c).found
    found = blocks.find_block_structure(c, min_layers=3)
    assert found.found and (found.start, found.end) == (6, 8)


def test_block_must_leave_min_outside_stream_layers_out():
    c = 0.2 + 0.8 * np.eye(20)
    c[:18, :18] = np.maximum(c[:18, :18], 0.95)  # two layers left out
    found = blocks.find_block_structure(c)
    assert (found.start, found.end) == (0, 17)
    for min_outside in (3, 5):  # a seed leaves that many out and growing keeps them out
        found = blocks.find_block_structure(c, min_outside=min_outside)
        assert found.found and found.size == 20 - min_outside and 0 <= found.start and found.end <= 17


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.45, 0.6])
def test_found_exactly_when_peak_reaches_the_threshold(threshold):
    for c, _ in SHAPES.values():
        found = blocks.find_block_structure(finish(c), NAMES, min_contrast=threshold)
        assert found.found == (found.peak_contrast >= threshold)


def brute_seed(s, smallest, min_squareness, min_outside, against_near=False):
    """Step 3 of the rule written out with loops over every range: (contrast, a, b); step 6's squareness if asked."""
    m, best = len(s), None
    for a in range(m):
        for b in range(a + smallest - 1, m):
            k = b - a + 1
            if m - k < min_outside:
                continue
            sub = s[a : b + 1, a : b + 1]
            inside = sub[~np.eye(k, dtype=bool)].mean()
            others = np.r_[0:a, b + 1 : m]
            outside = s[a : b + 1][:, others].mean()
            third = max(1, k // 3)
            corner = s[a : a + third, b - third + 1 : b + 1].mean()
            w = max(2, k // 3)
            near = s[a : b + 1][:, np.r_[max(a - w, 0) : a, b + 1 : min(b + 1 + w, m)]].mean()
            base = near if against_near else outside
            if inside <= base or (corner - base) / (inside - base) < min_squareness:
                continue
            contrast = inside - near
            if best is None or contrast > best[0] + 1e-12:
                best = (contrast, a, b)
    return best


@pytest.mark.parametrize("short", [False, True], ids=["stream", "short-stream"])
@pytest.mark.parametrize("seed", range(8))
def test_seed_matches_brute_force_on_random_matrices(seed, short):
    rng = np.random.default_rng(seed)
    a = rng.random((15, 15)) ** 0.4
    c = finish(a)
    if seed % 2:  # half of them with a block planted
        c[4:11, 4:11] = np.maximum(c[4:11, 4:11], 0.9)
        c = finish(c)
    min_layers, min_outside = (3, 1) if seed < 4 else (5, 2)
    found = blocks.find_block_structure(
        c,
        min_contrast=0.0,
        min_squareness=0.5,
        min_fraction=0.2,
        min_layers=min_layers,
        min_outside=min_outside,
        min_stream=16 if short else 10,  # the 15 layers are a short stream, or not
    )
    expected = brute_seed(c, min_layers, 0.5, min_outside, against_near=short)
    if expected is None:
        assert np.isnan(found.peak_contrast) and not found.found
    else:
        assert found.peak_contrast == pytest.approx(expected[0], abs=1e-9)
        assert (found.peak_start, found.peak_end) == expected[1:]


def test_residual_stream_selection():
    stream = blocks.residual_stream(NAMES, len(NAMES))
    assert NAMES[stream[0]] == "stem_relu" and all(NAMES[i].endswith("_out") for i in stream[1:])
    assert len(stream) == 19
    assert list(blocks.residual_stream(None, 5)) == list(range(5))
    assert list(blocks.residual_stream(["a", "b_out", "c"], 3)) == [0, 1, 2]  # too few: every layer


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cka=np.ones((3, 4))), "square"),
        (dict(cka=np.eye(3), names=["a"]), "one name per layer"),
        (dict(cka=np.eye(3), min_fraction=1.5), "min_fraction"),
        (dict(cka=np.eye(3), min_squareness=-0.1), "min_squareness"),
        (dict(cka=np.eye(3), min_layers=1), "min_layers"),
        (dict(cka=np.eye(3), min_outside=0), "min_outside"),
        (dict(cka=np.eye(3), min_outside=1.5), "min_outside"),
        (dict(cka=np.eye(3), min_stream=-1), "min_stream"),
    ],
    ids=[
        "not-square",
        "names",
        "min_fraction",
        "min_squareness",
        "min_layers",
        "min_outside",
        "min_outside-int",
        "min_stream",
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        blocks.find_block_structure(**kwargs)


def test_iou_and_agreement():
    assert blocks.iou((0, 9), (5, 14)) == pytest.approx(5 / 15)
    assert blocks.iou((0, 4), (10, 14)) == 0.0
    c = finish(block(band(), 30, 100))
    found = blocks.find_block_structure(c, NAMES)
    assert blocks.agrees(found, [(30, 100)])
    assert not blocks.agrees(found, [])  # a block where the label says none
    assert blocks.agrees(found, [], optional=[(30, 100)])  # ... unless it is a faint one
    assert not blocks.agrees(found, [(30, 100), (110, 130)])  # a labelled block missed


# Heatmaps labelled by eye (data/labels/block_labels.json) that have a committed matrix.
LABELS = json.load(open(os.path.join(ROOT, "data", "labels", "block_labels.json")))["heatmaps"]
# Block-or-none and IoU >= 0.7. Development labels carry a floor at the agreement the defaults were chosen at
# (version 5: 26 of 28; the two unfitted heatmaps with adjacent stage squares miss). The bar on held-out labels is
# 90% (version 5: 9 of 9).
AGREEMENT = {"dev": 0.92, "heldout": 0.9}
# Earlier versions, each on the held-out labels declared for it: the arguments that give it back and its result
# (docs/science/detector.md). Version 3 met the bar; version 4 did not (a wide ResNet-14's faded-corner square).
EARLIER = {
    "split_v3": (dict(min_outside=2, min_stream=0), 10, 11),
    "split_v4": (dict(min_stream=0), 3, 4),
}


def label_agrees(label, **kwargs):
    c, names, labelled, optional = blocks.labelled_heatmap(label, ROOT)
    return blocks.agrees(blocks.find_block_structure(c, names, **kwargs), labelled, optional)


@pytest.mark.parametrize("split", list(AGREEMENT))
def test_agreement_with_labels(split):
    labelled = [lab for lab in LABELS if lab["split"] == split and lab["matrix"]]
    assert labelled, f"no {split} label with a committed matrix"
    agree = [label_agrees(lab) for lab in labelled]
    missed = [lab["id"] for lab, ok in zip(labelled, agree) if not ok]
    assert np.mean(agree) >= AGREEMENT[split], f"{split}: {sum(agree)} of {len(agree)} agree; disagree: {missed}"


@pytest.mark.parametrize("split", list(EARLIER))
def test_earlier_versions_on_their_held_out_labels(split):
    kwargs, agreed, total = EARLIER[split]
    labelled = [lab for lab in LABELS if lab.get(split) == "heldout" and lab["matrix"]]
    assert [label_agrees(lab, **kwargs) for lab in labelled].count(True) == agreed and len(labelled) == total


def test_short_stream_reads_every_layer():
    """ResNet-14's 7 stream layers: a square whose far corner fades is a block, a smooth fade is not (step 6)."""
    names = resnet_names(14)
    fade = finish(band(names, tau=3.0))
    square = band(names, tau=3.0)
    square[3:39, 3:39] = np.maximum(square[3:39, 3:39], 0.9)
    square[3:11, 31:39] = square[31:39, 3:11] = 0.7  # the faded corner
    for c, expected in ((fade, None), (finish(square), (3, 38))):
        found = blocks.find_block_structure(c, names)
        assert (found.start, found.end) == expected if expected else not found.found
        v4 = blocks.find_block_structure(c, names, min_stream=0)  # the stream alone: one faded cell decides
        assert not v4.found


@pytest.mark.parametrize(
    "label", [lab for lab in LABELS if lab["id"].startswith("heldout_v5-")], ids=lambda lab: lab["id"]
)
def test_detection_stable_across_cka_estimates(label):
    """Version 5's held-out models measured on 1,024 test images (the labelled heatmap) and on 4,096 (two passes)."""
    c, names, labelled, optional = blocks.labelled_heatmap(label, ROOT)
    wider = dict(label, matrix=label["matrix"].replace("cka_within.npz", "cka_within_4096.npz"))
    c4096 = blocks.labelled_heatmap(wider, ROOT)[0]
    found, found4096 = (blocks.find_block_structure(m, names) for m in (c, c4096))
    assert found.found == found4096.found
    assert blocks.agrees(found4096, labelled, optional)
    if found.found:
        assert blocks.iou((found.start, found.end), (found4096.start, found4096.end)) >= 0.7
