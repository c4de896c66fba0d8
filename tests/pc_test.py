"""tfwd.pc, tfwd.plots.pc and bin/pc: first-PC analyses against planted structure and float64 references."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tfwd import metrics, models, pc
from tfwd.plots import pc as pc_plots

NAMES = ["stem_relu", "stage1_block1_out", "stage2_block1_out", "stage2_block2_out", "stage3_block1_out", "logits"]


def centred_orthonormal(rng, n, r):
    """(n, r) orthonormal columns, each orthogonal to the all-ones vector (i.e. centred)."""
    g = rng.normal(size=(n, r))
    return np.linalg.qr(g - g.mean(0))[0]


def svd_reference(x):
    """Centred SVD of flattened features in float64: (u, s, vt)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return np.linalg.svd(x - x.mean(0), full_matrices=False)


def without_first_pc(x):
    """Xc - sigma_1 u_1 v_1^T, explicitly, in feature space."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    u, s, vt = svd_reference(x)
    return x - x.mean(0) - s[0] * np.outer(u[:, 0], vt[0])


# --- first PC of one representation ----------------------------------------------------------


@pytest.mark.parametrize(
    "n,p,singular_values",
    [
        (60, 40, [10.0, 3.0, 2.0, 1.0]),
        (60, 40, [2.0, 1.9, 1.0]),
        (30, 5, [4.0]),
        (20, 500, [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
        (400, 60, [3.0, 2.9] + [1.0] * 40),
    ],
    ids=["dominant", "close_second", "rank_one", "wide_p_gt_n", "lanczos_n_400"],
)
def test_planted_first_pc_and_fraction(n, p, singular_values):
    rng = np.random.default_rng(0)
    s = np.array(singular_values)
    u, v = centred_orthonormal(rng, n, len(s)), np.linalg.qr(rng.normal(size=(p, len(s))))[0]
    x = (u * s) @ v.T + 7.0 + rng.normal(size=p)  # a common offset: the PC is of the centred features
    first = pc.first_pc(x @ x.T)
    assert first.fraction == pytest.approx(s[0] ** 2 / np.sum(s**2), abs=1e-10)
    assert abs(first.scores @ u[:, 0]) == pytest.approx(1.0, abs=1e-8)
    assert first.eigenvalue == pytest.approx(s[0] ** 2, rel=1e-9)
    assert first.total == pytest.approx(np.sum(s**2), rel=1e-9)
    assert np.linalg.norm(first.scores) == pytest.approx(1.0, abs=1e-12)
    assert first.scores[np.argmax(np.abs(first.scores))] > 0  # the sign convention


def test_fraction_matches_svd_of_unstructured_features():
    x = np.random.default_rng(1).normal(size=(50, 3, 4)) * np.arange(1, 13).reshape(3, 4)
    u, s, _ = svd_reference(x)
    first = pc.first_pc(metrics.gram(x))
    assert first.fraction == pytest.approx(s[0] ** 2 / np.sum(s**2), abs=1e-12)
    assert abs(first.scores @ u[:, 0]) == pytest.approx(1.0, abs=1e-8)
    # The Gram of Xc - s1 u1 v1^T, built in feature space, is what remove_first_pc returns.
    np.testing.assert_allclose(pc.remove_first_pc(metrics.gram(x), first), metrics.gram(without_first_pc(x)), atol=1e-9)


def test_constant_layer_is_defined_not_nan():
    x = np.random.default_rng(2).normal(size=(16, 5))
    grams = np.stack([metrics.gram(x), metrics.gram(np.ones((16, 5)) * 3.0)])
    first = pc.first_pc(grams[1])
    assert first.fraction == 0.0 and not np.any(first.scores)
    out = pc.analyze_grams(grams, ["stage3_block1_out", "stage3_block2_out"])
    np.testing.assert_array_equal(out["cka"], np.eye(2))
    np.testing.assert_array_equal(out["cka_without_pc"], np.eye(2))
    np.testing.assert_array_equal(out["pc_cosine"], np.eye(2))


# --- the reference code's TruncatedSVD estimator --------------------------------------------


def sklearn_svd_fraction(x):
    """The reference code's estimator itself: TruncatedSVD(1) fitted to the centred features, transposed.

    algorithm="arpack" solves for the top singular vector to machine precision (the reference
    code's default randomized solver approximates it), so the two agree to rounding.
    """
    from sklearn.decomposition import TruncatedSVD

    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return TruncatedSVD(1, algorithm="arpack", random_state=0).fit((x - x.mean(0)).T).explained_variance_ratio_[0]


def defined_svd_fraction(x):
    """The same ratio from its definition in NumPy: variances over the features (ddof 0) of Xc^T u_1 and of Xc^T."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    u, _, _ = svd_reference(x)
    xc = x - x.mean(0)
    return np.var(xc.T @ u[:, 0]) / np.var(xc, axis=1).sum()


def features_with_offsets(rng, n, p, offset):
    """Unequal feature scales, a common shift, and a per-example offset shared by every feature."""
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3.0, size=p) + rng.normal(size=p) + 4.0
    return x + offset * rng.normal(size=(n, 1))


@pytest.mark.parametrize(
    "n,p,offset",
    [(40, 12, 0.0), (40, 12, 5.0), (20, 300, 1.0), (60, 60, 2.0), (300, 24, 3.0), (9, 3, 1.0)],
    ids=["p_lt_n", "p_lt_n_offsets", "p_gt_n", "p_eq_n", "lanczos_n_300", "tiny"],
)
def test_svd_fraction_equals_scikit_learn_truncated_svd(n, p, offset):
    x = features_with_offsets(np.random.default_rng(n + p), n, p, offset)
    first = pc.first_pc(x @ x.T)
    expected = sklearn_svd_fraction(x)
    assert pc.svd_fraction(first, x.sum(1), p) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert defined_svd_fraction(x) == pytest.approx(expected, rel=1e-9, abs=1e-12)  # the other tests' reference


def test_per_example_offsets_raise_the_exact_fraction_but_not_the_svd_estimator():
    """The two estimators differ exactly by each example's mean over the features."""
    x = features_with_offsets(np.random.default_rng(9), 80, 20, 10.0)
    first = pc.first_pc(x @ x.T)
    assert first.fraction > 0.9  # the offsets are the first PC of the centred features
    assert pc.svd_fraction(first, x.sum(1), 20) == pytest.approx(sklearn_svd_fraction(x), rel=1e-9)
    assert pc.svd_fraction(first, x.sum(1), 20) < 0.3
    centred = x - x.mean(1, keepdims=True)  # no offsets left: both estimators agree
    first = pc.first_pc(centred @ centred.T)
    assert pc.svd_fraction(first, centred.sum(1), 20) == pytest.approx(first.fraction, abs=1e-12)


def test_svd_fraction_degenerate_and_errors():
    x = np.random.default_rng(10).normal(size=(12, 1)) * np.ones((1, 5))  # every example constant across features
    first = pc.first_pc(x @ x.T)
    assert first.fraction == pytest.approx(1.0) and pc.svd_fraction(first, x.sum(1), 5) == 0.0
    constant = pc.first_pc(np.ones((12, 12)))
    assert pc.svd_fraction(constant, np.full(12, 3.0), 5) == 0.0
    with pytest.raises(ValueError, match="`sums` must have one value per example"):
        pc.svd_fraction(first, x.sum(1)[:5], 5)
    with pytest.raises(ValueError, match="`width` must be >= 1"):
        pc.svd_fraction(first, x.sum(1), 0)


def test_analyze_grams_reports_both_estimators():
    rng = np.random.default_rng(11)
    feats = [features_with_offsets(rng, 30, p, 2.0) for p in (7, 40)]
    grams = np.stack([metrics.gram(f) for f in feats])
    out = pc.analyze_grams(grams, NAMES[3:5], sums=np.stack([f.sum(1) for f in feats]), widths=[7, 40])
    np.testing.assert_allclose(out["fraction_svd"], [defined_svd_fraction(f) for f in feats], rtol=1e-10)
    assert np.all(out["fraction_svd"] < out["fraction"])  # the per-example offsets count only in the exact one
    assert pc.analyze_grams(grams, NAMES[3:5])["fraction_svd"] is None
    with pytest.raises(ValueError, match="give both or neither"):
        pc.analyze_grams(grams, NAMES[3:5], sums=np.zeros((2, 30)))
    with pytest.raises(ValueError, match="`sums` must be \\(L, n\\)"):
        pc.analyze_grams(grams, NAMES[3:5], sums=np.zeros((2, 29)), widths=[7, 40])


# --- Gram matrices, streamed -----------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,sizes,memory_limit,rtol",
    [
        ("float64", (16, 16, 8), 2**31, 1e-11),
        ("float32", (16, 16, 8), 2**31, 1e-5),
        ("float64", (40,), 2**31, 1e-11),
        ("float64", (7, 33), 0, 1e-11),
    ],
    ids=["float64_ragged", "float32", "one_batch", "memmap_store"],
)
def test_streamed_grams_equal_one_shot_float64(dtype, sizes, memory_limit, rtol):
    import keras

    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(8, 0.25)
    images = np.random.default_rng(3).random((sum(sizes), 32, 32, 3)).astype("float32")
    batches = np.split(images, np.cumsum(sizes)[:-1])
    grams = pc.layer_grams(model, batches, taps="all", dtype=dtype, memory_limit=memory_limit)
    assert grams.shape == (28, 40, 40) and grams.dtype == np.dtype(dtype)
    assert isinstance(grams, np.memmap) == (memory_limit == 0)
    np.testing.assert_array_equal(grams, grams.transpose(0, 2, 1))
    # The reference: each layer's activations (same forward passes), concatenated, one float64 product.
    tapped = models.activation_model(model, "all")
    outputs = [tapped(b, training=False) for b in batches]
    for layer in range(28):
        x = np.concatenate([np.asarray(o[layer], np.float64).reshape(len(o[layer]), -1) for o in outputs])
        reference = pc.double_center(x @ x.T)  # the store holds shifted features: compare centred
        scale = np.abs(reference).max()
        np.testing.assert_allclose(pc.double_center(grams[layer]), reference, rtol=0, atol=rtol * scale + 1e-30)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_streamed_sums_give_the_svd_estimator_of_the_same_activations(dtype, rtol):
    import keras

    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(8, 0.25)
    images = np.random.default_rng(12).random((40, 32, 32, 3)).astype("float32")
    batches = np.split(images, [16, 32])
    grams, sums, widths = pc.layer_grams(model, batches, taps="blocks", dtype=dtype, with_sums=True)
    np.testing.assert_array_equal(grams, pc.layer_grams(model, batches, taps="blocks", dtype=dtype))
    out = pc.analyze_model(model, batches, taps="blocks", dtype=dtype)
    tapped = models.activation_model(model, "blocks")
    outputs = [tapped(b, training=False) for b in batches]
    assert sums.shape == (5, 40) and sums.dtype == np.float64
    for layer in range(5):
        x = np.concatenate([np.asarray(o[layer], np.float64).reshape(len(o[layer]), -1) for o in outputs])
        assert widths[layer] == x.shape[1]
        # The store's features are shifted by a common vector: their sums differ from X 1 by a constant.
        centred = x.sum(1) - x.sum(1).mean()
        np.testing.assert_allclose(
            sums[layer] - sums[layer].mean(), centred, rtol=0, atol=rtol * np.abs(x).sum(1).max()
        )
        assert out["fraction_svd"][layer] == pytest.approx(defined_svd_fraction(x), abs=rtol)
        assert out["fraction"][layer] == pytest.approx(pc.first_pc(x @ x.T).fraction, abs=rtol)


# --- analyses across layers ------------------------------------------------------------------


def shared_direction_layers(n=200, strength=10.0, seed=4):
    """Two layers = one strong shared direction (different loadings) + independent noise."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=n)
    a = strength * np.outer(u, rng.normal(size=20)) + rng.normal(size=(n, 20))
    b = strength * np.outer(u, rng.normal(size=30)) + rng.normal(size=(n, 30)) + 5.0
    return a, b


@pytest.mark.parametrize("tile_bytes", [1, 64 * 1024**2], ids=["one_row_tiles", "one_tile"])
def test_removing_a_shared_dominant_direction_collapses_cka(tile_bytes):
    a, b = shared_direction_layers()
    out = pc.analyze_grams(np.stack([metrics.gram(a), metrics.gram(b)]), NAMES[3:5], tile_bytes=tile_bytes)
    assert out["cka"][0, 1] > 0.95 and out["pc_cosine"][0, 1] > 0.99
    assert abs(out["cka_without_pc"][0, 1]) < 0.1
    # Both panels against explicit float64 references: unbiased CKA of the features, and of the
    # features with their first PC removed in feature space.
    assert out["cka"][0, 1] == pytest.approx(metrics.linear_cka(a, b, unbiased=True), abs=1e-10)
    expected = metrics.linear_cka(without_first_pc(a), without_first_pc(b), unbiased=True)
    assert out["cka_without_pc"][0, 1] == pytest.approx(expected, abs=1e-10)
    np.testing.assert_array_equal(np.diag(out["cka"]), [1.0, 1.0])


def test_without_shared_direction_cka_stays():
    """Removing the first PC does not wipe out similarity that is spread over many directions."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(150, 12)) * np.linspace(1.0, 1.5, 12)
    b = a @ np.linalg.qr(rng.normal(size=(12, 12)))[0]  # a rotation of a: same representation
    out = pc.analyze_grams(np.stack([metrics.gram(a), metrics.gram(b)]), NAMES[3:5])
    assert out["cka"][0, 1] == pytest.approx(1.0, abs=1e-10)
    assert out["cka_without_pc"][0, 1] == pytest.approx(1.0, abs=1e-10)


def test_pc_cosine_ignores_sign():
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(4, 30))
    scores /= np.linalg.norm(scores, axis=1, keepdims=True)
    cosine = pc.pc_cosine(scores)
    flipped = pc.pc_cosine(scores * np.array([[1.0], [-1.0], [-1.0], [1.0]]))
    np.testing.assert_array_equal(cosine, flipped)
    np.testing.assert_allclose(cosine, np.abs(scores @ scores.T), atol=1e-15)
    both = pc.pc_cosine(np.stack([scores[0], -scores[0]]))
    assert both[0, 1] == pytest.approx(1.0, abs=1e-15)


def test_sign_flipped_layer_has_the_same_first_pc():
    a, _ = shared_direction_layers()
    a = a - a.mean(0)
    out = pc.analyze_grams(np.stack([metrics.gram(a), metrics.gram(-a)]), NAMES[3:5])
    np.testing.assert_allclose(out["scores"][0], out["scores"][1], atol=1e-12)  # sign fixed the same way
    assert out["pc_cosine"][0, 1] == pytest.approx(1.0, abs=1e-12)


def test_last_stages_fraction_is_the_fraction_of_the_concatenated_features():
    rng = np.random.default_rng(7)
    feats = [rng.normal(size=(40, w)) * rng.uniform(0.5, 3.0, size=w) + 2.0 for w in (12, 30, 25, 20, 16, 10)]
    grams = np.stack([metrics.gram(f) for f in feats])
    out = pc.analyze_grams(grams, NAMES)
    assert out["last_stages"] == (2, 3)
    _, s, _ = svd_reference(np.concatenate(feats[2:5], axis=1))  # stage2 x2 and stage3, not the head
    assert out["last_stages_fraction"] == pytest.approx(s[0] ** 2 / np.sum(s**2), abs=1e-12)
    only_stage3 = pc.analyze_grams(grams, NAMES, stages=(3,))
    assert only_stage3["last_stages_fraction"] == pytest.approx(out["fraction"][4], abs=1e-12)
    assert np.isnan(pc.analyze_grams(grams, NAMES, stages=(7,))["last_stages_fraction"])


def test_pooled_first_pc_is_the_first_pc_of_the_concatenated_features():
    rng = np.random.default_rng(3)
    feats = [rng.normal(size=(40, w)) * rng.uniform(0.5, 3.0, size=w) + 2.0 for w in (12, 30, 25)]
    pooled = pc.pooled_first_pc(np.stack([metrics.gram(f) for f in feats]))
    u, s, _ = svd_reference(np.concatenate(feats, axis=1))
    assert pooled.fraction == pytest.approx(s[0] ** 2 / np.sum(s**2), abs=1e-12)
    assert abs(pooled.scores @ u[:, 0]) == pytest.approx(1.0, abs=1e-8)
    alone, one = pc.pooled_first_pc([metrics.gram(feats[1])]), pc.first_pc(metrics.gram(feats[1]))
    assert alone.fraction == pytest.approx(one.fraction, abs=1e-12)
    np.testing.assert_allclose(alone.scores, one.scores, atol=1e-10)
    with pytest.raises(ValueError, match=r"\(L, n, n\) Gram matrices with L >= 1. Received shape \(0,\)"):
        pc.pooled_first_pc([])


@pytest.mark.parametrize(
    "grams,names,match",
    [
        (np.zeros((2, 5, 5)), ["a"], "len\\(names\\)"),
        (np.zeros((1, 3, 3)), ["a"], "n >= 4"),
        (np.zeros((1, 4, 5)), ["a"], "\\(L, n, n\\)"),
        (np.full((1, 5, 5), np.nan), ["stage3_block1_out"], "'stage3_block1_out' has NaN"),
    ],
    ids=["names", "too_few_examples", "not_square", "nan"],
)
def test_analyze_grams_errors(grams, names, match):
    with pytest.raises(ValueError, match=match):
        pc.analyze_grams(grams, names)


# --- figures ---------------------------------------------------------------------------------


def test_first_pc_figure_panels(tmp_path):
    rng = np.random.default_rng(8)
    cka, cosine, removed = (rng.random((6, 6)) for _ in range(3))
    fraction = rng.random(6)
    fig = pc_plots.first_pc_figure(
        cka, cosine, fraction, removed, NAMES, title="m", last_stages_fraction=0.625, last_stages=(2, 3)
    )
    panels = fig.axes[:4]
    titles = [ax.get_title() for ax in panels]
    assert titles == ["Similarity of First PCs", "CKA", "Variance Explained", "CKA w/o First PC"]
    for ax, matrix in zip([panels[0], panels[1], panels[3]], [cosine, cka, removed]):
        np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
        assert ax.images[0].get_clim() == (0.0, 1.0)
    line = panels[2].lines[0]
    np.testing.assert_array_equal(line.get_ydata(), fraction)
    assert panels[2].get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in panels[2].get_legend().get_texts()] == ["per layer", "stages 2+3 together: 0.62"]
    assert len(panels[2].lines) == 1 + 4 + 1  # curve, stage boundaries at 1, 2, 4, 5, pooled line
    assert "|cosine|" in [ax.get_ylabel() for ax in fig.axes[4:]]
    with pytest.raises(ValueError, match="pc_cosine"):
        pc_plots.first_pc_figure(cka, cosine[:5], fraction, removed, NAMES)


def test_variance_explained_draws_the_svd_estimator_beside_the_exact_fraction():
    rng = np.random.default_rng(14)
    fraction, fraction_svd = rng.random(6), rng.random(6)
    ax = pc_plots.variance_explained(fraction, NAMES, fraction_svd=fraction_svd)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), fraction)
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), fraction_svd)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["per layer, exact", "per layer, TruncatedSVD (reference code)"]
    fig = pc_plots.first_pc_figure(
        *rng.random((2, 6, 6)), fraction, rng.random((6, 6)), NAMES, fraction_svd=fraction_svd
    )
    np.testing.assert_array_equal(fig.axes[2].lines[1].get_ydata(), fraction_svd)
    with pytest.raises(ValueError, match="`fraction_svd` must have one value per layer"):
        pc_plots.variance_explained(fraction, NAMES, fraction_svd=fraction_svd[:5])


# --- runs and bin/pc -------------------------------------------------------------------------


def test_analyze_matches_in_memory_reference(tiny_runs, tmp_path):
    from tfwd import runs

    out = pc.analyze(tiny_runs[0], out_dir=str(tmp_path / "pc"), taps="blocks", examples=64, batch_size=24)
    assert sorted(os.listdir(out)) == [".tfwd_output", "first_pc.png", "pc.npz", "variance_explained.png"]
    for png in ("first_pc.png", "variance_explained.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    result = pc.load(out)
    run = runs.Run(tiny_runs[0])
    names = models.tap_names(run.model(), "blocks")
    assert result.names == names and result.settings["examples"] == 64 and result.last_stages == (2, 3)
    assert result.scores.shape == (5, 64) and result.cka.shape == result.pc_cosine.shape == (5, 5)
    assert np.all((result.fraction >= 0) & (result.fraction <= 1))
    np.testing.assert_array_equal(np.diag(result.pc_cosine), np.ones(5))
    # The reference: the same 64 test images in one float64 pass, SVD per layer.
    images = next(iter(run.data().eval_dataset("test", 64, 64)))[0]
    acts = [
        np.asarray(a, np.float64).reshape(64, -1)
        for a in models.activation_model(run.model(), "blocks")(images, training=False)
    ]
    for layer, x in enumerate(acts):
        u, s, _ = svd_reference(x)
        assert result.fraction[layer] == pytest.approx(s[0] ** 2 / np.sum(s**2), abs=1e-5)
        assert abs(result.scores[layer] @ u[:, 0]) == pytest.approx(1.0, abs=1e-4)
    assert result.cka[1, 3] == pytest.approx(metrics.linear_cka(acts[1], acts[3], unbiased=True), abs=1e-5)
    pooled = np.concatenate([x - x.mean(0) for x, n in zip(acts, names) if models.stage_of(n) in (2, 3)], axis=1)
    s = np.linalg.svd(pooled, compute_uv=False)
    assert result.last_stages_fraction == pytest.approx(s[0] ** 2 / np.sum(s**2), abs=1e-5)
    # The reference code's estimator, stored beside the exact one.
    np.testing.assert_allclose(result.fraction_svd, [defined_svd_fraction(x) for x in acts], rtol=0, atol=1e-5)


def test_load_reads_an_output_written_before_the_svd_estimator(tmp_path):
    x = np.random.default_rng(13).normal(size=(3, 10, 4))
    grams = np.stack([metrics.gram(f) for f in x])
    result = pc.analyze_grams(grams, NAMES[2:5], sums=x.sum(2), widths=[4, 4, 4])
    for folder in ("new", "old", "none"):
        os.makedirs(tmp_path / folder)
    pc.save(str(tmp_path / "new" / pc.FILE), result, {"taps": "all"})
    with np.load(tmp_path / "new" / pc.FILE) as f:
        old = {k: f[k] for k in f.files if k != "fraction_svd"}
    np.savez(tmp_path / "old" / pc.FILE, **old)
    loaded = pc.load(str(tmp_path / "old"))
    assert loaded.fraction_svd is None
    np.testing.assert_array_equal(loaded.fraction, result["fraction"])
    np.testing.assert_array_equal(pc.load(str(tmp_path / "new")).fraction_svd, result["fraction_svd"])
    # A result without it is saved without it.
    pc.save(str(tmp_path / "none" / pc.FILE), pc.analyze_grams(grams, NAMES[2:5]), {"taps": "all"})
    assert pc.load(str(tmp_path / "none")).fraction_svd is None


@pytest.mark.parametrize(
    "kwargs,match", [(dict(examples=2), "examples"), (dict(batch_size=0), "batch_size")], ids=["examples", "batch_size"]
)
def test_analyze_errors(tiny_runs, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pc.analyze(tiny_runs[0], out_dir=str(tmp_path / "x"), **kwargs)
    assert not os.path.exists(tmp_path / "x")


def test_default_out_dir():
    assert pc.default_out_dir("/r/a", "all", "test") == "/r/a/pc_all_test"
    assert pc.default_out_dir("/r/a", ["stem_relu"], "validation") == "/r/a/pc_custom_validation"


def test_bin_pc_smoke(tiny_runs, tmp_path, root, bin_env):
    cmd = [
        sys.executable,
        str(root / "bin" / "pc"),
        f"--run={tiny_runs[0]}",
        "--examples=64",
        "--batch_size=32",
        f"--out_dir={tmp_path / 'o'}",
    ]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"First-PC analyses: {tmp_path / 'o'}"
    loaded = pc.load(str(tmp_path / "o"))
    assert len(loaded.names) == 21 * 1 + 7 and loaded.settings["taps"] == "all"  # taps="all" of ResNet-8
    assert loaded.scores.shape == (28, 64)
    missing = subprocess.run(
        [*cmd[:2], f"--run={tmp_path / 'nope'}"], env=bin_env, capture_output=True, text=True, timeout=600
    )
    assert missing.returncode == 1 and missing.stderr.strip().endswith(
        f"error: Run directory {tmp_path / 'nope'} does not exist."
    )
    assert "Traceback" not in missing.stderr and [l for l in missing.stderr.splitlines() if l.startswith("error:")] == [
        f"error: Run directory {tmp_path / 'nope'} does not exist."
    ]
