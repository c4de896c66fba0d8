"""tfwd.blocks.find_block_structure: synthetic heatmaps with and without a block, noise, a brute-force reference."""

import os

import numpy as np
import pytest

from tfwd import blocks


def heatmap(n=60, block=None, noise=0.0, band=3.0, level=0.95, seed=0):
    """A network-like CKA matrix: a diagonal band decaying with distance, an optional block, noise."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    c = 0.2 + 0.8 * np.exp(-np.abs(i[:, None] - i[None, :]) / band)
    if block:
        a, b = block
        c[a : b + 1, a : b + 1] = np.maximum(c[a : b + 1, a : b + 1], level)
    e = rng.normal(scale=noise, size=(n, n))
    c = np.clip(c + (e + e.T) / 2, 0, 1)
    np.fill_diagonal(c, 1.0)
    return c


def brute_force(c, threshold, fill, smallest, min_contrast):
    n = len(c)
    best = None
    for size in range(n, smallest - 1, -1):
        for i in range(n - size + 1):
            sub = c[i : i + size, i : i + size]
            off = sub[~np.eye(size, dtype=bool)]
            rest = np.r_[0:i, i + size : n]
            contrast = off.mean() - c[i : i + size][:, rest].mean() if rest.size else np.inf
            if (
                np.mean(off >= threshold) >= fill
                and contrast >= min_contrast
                and (best is None or (best[1] == size and off.mean() > best[2]))
            ):
                best = (i, size, off.mean())
        if best:
            return trim(c >= threshold, best[0], best[0] + best[1] - 1, fill, c)
    return None


def trim(alike, start, end, fill, c):
    """The rule's end trimming: drop an end layer alike to fewer than `fill` of the other block layers."""
    alike = alike & ~np.eye(len(alike), dtype=bool)
    while end - start > 1:
        fills = {r: alike[r, start : end + 1].sum() / (end - start) for r in (start, end)}
        if min(fills.values()) >= fill:
            break
        if fills[start] <= fills[end]:
            start += 1
        else:
            end -= 1
    size = end - start + 1
    return start, size, c[start : end + 1, start : end + 1][~np.eye(size, dtype=bool)].mean()


@pytest.mark.parametrize("noise", [0.0, 0.03], ids=["clean", "noisy"])
def test_planted_block_is_found_exactly(noise):
    c = heatmap(block=(35, 55), noise=noise)
    names = [f"layer{k}" for k in range(60)]
    found = blocks.find_block_structure(c, names)
    assert found.found and (found.start, found.end) == (35, 55)
    assert (found.start_name, found.end_name) == ("layer35", "layer55")
    assert found.size == 21 and found.fraction == pytest.approx(21 / 60)
    assert found.mean_cka == pytest.approx(c[35:56, 35:56][~np.eye(21, dtype=bool)].mean())
    outside = np.r_[0:35, 56:60]
    assert found.contrast == pytest.approx(found.mean_cka - c[35:56][:, outside].mean())
    assert found.contains(40) and not found.contains(34)


@pytest.mark.parametrize("noise", [0.0, 0.03], ids=["clean", "noisy"])
def test_band_alone_is_not_a_block(noise):
    assert not blocks.find_block_structure(heatmap(noise=noise)).found


def test_small_block_below_min_fraction_is_not_reported():
    c = heatmap(block=(10, 17))  # 8 of 60 layers < 20%
    assert not blocks.find_block_structure(c).found
    assert blocks.find_block_structure(c, min_fraction=0.1).found


def test_one_odd_layer_does_not_split_the_block():
    c = heatmap(block=(20, 59))
    c[40, 20:] = c[20:, 40] = 0.5  # one dissimilar layer inside
    c[40, 40] = 1.0
    found = blocks.find_block_structure(c)
    assert (found.start, found.end) == (20, 59)
    strict = blocks.find_block_structure(c, fill=1.0)
    assert strict.size < 40


def test_largest_block_wins_and_ties_go_to_higher_mean():
    c = heatmap(n=80, block=(0, 20))
    c[50:71, 50:71] = np.maximum(c[50:71, 50:71], 0.99)
    np.fill_diagonal(c, 1.0)
    found = blocks.find_block_structure(c)
    assert (found.start, found.end) == (50, 70)  # same size as (0, 20), brighter


@pytest.mark.parametrize("seed,min_contrast", [(s, m) for s in range(5) for m in (0.0, 0.05)])
def test_matches_brute_force_on_random_matrices(seed, min_contrast):
    rng = np.random.default_rng(seed)
    n = 14
    a = rng.random((n, n)) ** 0.3
    c = (a + a.T) / 2
    np.fill_diagonal(c, 1.0)
    found = blocks.find_block_structure(
        c, threshold=0.8, fill=0.7, min_fraction=0.0, min_layers=3, min_contrast=min_contrast
    )
    expected = brute_force(c, 0.8, 0.7, 3, min_contrast)
    if expected is None:
        assert not found.found
    else:
        assert (found.start, found.size) == expected[:2]
        assert found.mean_cka == pytest.approx(expected[2])


def test_bright_region_without_sharp_edges_is_not_a_block():
    """Early layers of small networks: broadly alike (CKA ~0.9) but fading smoothly into the rest."""
    n = 60
    i = np.arange(n)
    c = np.clip(1.0 - 0.006 * np.abs(i[:, None] - i[None, :]) - 0.004 * np.maximum(i[:, None], i[None, :]), 0, 1)
    loose = blocks.find_block_structure(c, min_contrast=0.0)
    assert loose.found and loose.contrast < 0.35
    assert not blocks.find_block_structure(c).found


def test_whole_matrix_block():
    c = np.full((10, 10), 0.97)
    found = blocks.find_block_structure(c)
    assert (found.start, found.end, found.fraction) == (0, 9, 1.0)
    assert np.isnan(found.contrast)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cka=np.ones((3, 4))), "square"),
        (dict(cka=np.eye(3), names=["a"]), "one name per layer"),
        (dict(cka=np.eye(3), threshold=1.5), "threshold"),
        (dict(cka=np.eye(3), fill=-0.1), "fill"),
    ],
    ids=["not-square", "names", "threshold", "fill"],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        blocks.find_block_structure(**kwargs)


# Within-model CKA heatmaps tfwd measured on CIFAR-10 (30 epochs, taps="all", 2,048 test images,
# 2 passes; see data/fixtures/README.md). The paper: ResNet-38 (1x) on 1/16 of CIFAR-10 has a block.
HEATMAPS = np.load(os.path.join(os.path.dirname(__file__), "..", "data", "fixtures", "cifar10_heatmaps.npz"))


@pytest.mark.parametrize(
    "run,expected",
    [
        ("resnet14_w1_n782_s0", None),
        ("resnet14_w1_n3125_s0", None),
        ("resnet14_w2_n3125_s0", None),
        ("resnet38_w1_n3125_s0", ("stage1_block2_conv1", "stage2_block6_out")),
    ],
)
def test_heatmaps_of_real_runs(run, expected):
    names = [str(n) for n in HEATMAPS[run + "_names"]]
    found = blocks.find_block_structure(HEATMAPS[run], names)
    if expected is None:
        assert not found.found
    else:
        assert (found.start_name, found.end_name) == expected
        assert found.fraction > 0.5 and found.mean_cka > 0.9 and found.contrast > 0.4
