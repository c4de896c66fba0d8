"""First-principal-component analyses of the block structure (the paper's Figures 3 and D.5).

Nguyen, Raghu & Kornblith (2021, Sec. 4) explain the block structure by a dominant
first principal component that the block's layers share. For each tapped layer,
over a fixed analysis set of n examples, with X (n, p) the flattened activations
and Xc = X - 1 mean^T = sum_i sigma_i u_i v_i^T its centred SVD:

- fraction of variance of the first PC: sigma_1^2 / sum_i sigma_i^2, computed exactly
  from the centred Gram matrix Kc = Xc Xc^T (n, n): lambda_1(Kc) / trace(Kc), with
  lambda_1 solved to float64 precision;
- beside it, the reference code's estimator of the same fraction, scikit-learn's
  `TruncatedSVD(1).fit(Xc^T).explained_variance_ratio_[0]`, in closed form (see
  `svd_fraction`): its variance is over the p features, so it also removes each
  example's mean over the features;
- the first PC's per-example scores u_1 (an n-vector of unit norm, its sign fixed
  so that its largest-magnitude entry is positive), and the cosine similarity
  |<u_1^a, u_1^b>| of every pair of layers (sign-invariant; Figure 3 top left);
- the first-PC fraction of the last two stages' activations taken together, i.e. of
  the concatenated flattened features of all their taps (Figure D.5's label); the
  Gram matrix of a concatenation is the sum of the Gram matrices;
- CKA with the first PC removed from every layer, X - sigma_1 u_1 v_1^T, whose
  centred Gram matrix is Kc - lambda_1 u_1 u_1^T (Figure 3 bottom right), next to
  the ordinary CKA from the same Gram matrices.

CKA here is full-batch over the analysis set with the unbiased HSIC_1 estimator
(Song et al. 2012, in the U-centred form of Szekely & Rizzo 2014; see
`tfwd.metrics`): CKA_ab = <U(K_a), U(K_b)> / sqrt(<U(K_a), U(K_a)> <U(K_b), U(K_b)>).
The paper's heatmaps average HSIC_1 over minibatches of 256 instead (`tfwd.cka`);
both estimate the same population CKA, and removing the first PC is only defined
over one fixed set, so both CKA panels of Figure 3 use the full-batch estimator.

Memory and compute. Every layer's (n, n) Gram matrix is kept (L n^2 values; in
float32, n = 2000 costs 16 MB per layer: 1.1 GB for the 70 layers of ResNet-20 with
taps="all"). Stores above `memory_limit` live in a temporary file instead of RAM.
The Gram matrices are built block by block: for each batch i, the model runs again
on the batches j > i and K[i, j] = X_i X_j^T is written for every layer, so only two
batches' activations are ever held, at the price of B (B + 1) / 2 forward passes
for B batches (36 for the default 2000 examples in batches of 250). The products
cost n^2 p flops per layer of width p; each layer's top eigenpair is found by
Lanczos iterations (O(n^2) each), and the CKA matrices cost 2 L^2 n^2, in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import tensorflow as tf
from absl import logging

from tfwd import models, runs
from tfwd.metrics import double_center, u_center_means

# The analysis' one name: this module, bin/pc, its output folders (RUN/pc_<taps>_<split>/), whose
# marker (tfwd.runs.OUTPUT_MARKER) holds it, and its entry in tfwd.analyses. tests/names_test.py checks that they agree.
KIND = "pc"
FILE = "pc.npz"
# A layer whose PC-removed self-HSIC is below this fraction of its full self-HSIC has only
# rounding left once its first PC is removed (a rank-one layer); its CKA w/o the first PC
# is defined as 0 with every other layer rather than a ratio of rounding errors.
_EMPTY_RTOL = 1e-10
# Up to this many examples a dense eigendecomposition is as fast as Lanczos iterations.
_DENSE_MAX_N = 256


class FirstPC(NamedTuple):
    """The first principal component of one representation over n examples.

    Attributes:
        fraction: sigma_1^2 / sum_i sigma_i^2 in [0, 1] (0 for a representation that
            is constant over the examples).
        scores: u_1, (n,) float64, unit norm, largest-magnitude entry positive (all
            zeros for a constant representation).
        eigenvalue: lambda_1 = sigma_1^2, the first eigenvalue of the centred Gram matrix.
        total: sum_i sigma_i^2 = trace of the centred Gram matrix.
    """

    fraction: float
    scores: np.ndarray
    eigenvalue: float
    total: float


def _top_eigenpair(kc: np.ndarray) -> tuple[float, np.ndarray]:
    """The largest eigenvalue of a symmetric PSD matrix and a unit eigenvector, to float64 precision.

    Lanczos (ARPACK) iterated to machine precision (tol=0) from a fixed start vector
    costs O(n^2) per iteration, far less than a dense O(n^3) eigendecomposition
    at thousands of examples; LAPACK's dense solver serves small matrices
    and the rare case where Lanczos does not converge (lambda_1 ~ lambda_2).
    """
    n = kc.shape[0]
    if n > _DENSE_MAX_N:
        start = np.random.default_rng(0).normal(size=n)  # fixed: results do not vary between runs
        try:
            values, vectors = scipy.sparse.linalg.eigsh(kc, k=1, which="LA", tol=0, v0=start)
            return float(values[0]), vectors[:, 0]
        except scipy.sparse.linalg.ArpackNoConvergence:
            logging.info("Lanczos did not converge (n=%d); using a dense eigendecomposition.", n)
    values, vectors = scipy.linalg.eigh(kc, subset_by_index=[n - 1, n - 1])
    return float(values[0]), vectors[:, 0]


def first_pc(k) -> FirstPC:
    """The first principal component of centred features, exactly, from their (n, n) Gram matrix.

    Args:
        k: (n, n) Gram matrix X X^T of the flattened features X (n, p); centred or
            not (it is double-centred here, which centres X).

    Returns:
        A `FirstPC`. Ties lambda_1 = lambda_2 make u_1 any unit vector of the
        eigenspace (the one the solver returns).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 8)) * [5, 1, 1, 1, 1, 1, 1, 1]
        >>> round(first_pc(x @ x.T).fraction, 2)
        0.69
    """
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] < 2:
        raise ValueError(f"`k` must be an (n, n) Gram matrix with n >= 2. Received shape {k.shape}.")
    kc = double_center((k + k.T) / 2)
    total = float(np.trace(kc))
    n = k.shape[0]
    if not total > 0:
        return FirstPC(0.0, np.zeros(n), 0.0, 0.0)
    eigenvalue, u = _top_eigenpair(kc)
    u = u if u[np.argmax(np.abs(u))] > 0 else -u
    eigenvalue = max(eigenvalue, 0.0)
    return FirstPC(min(eigenvalue / total, 1.0), u, eigenvalue, total)


def svd_fraction(pc: FirstPC, sums, width: int) -> float:
    """The reference code's first-PC fraction, `TruncatedSVD(1).fit(Xc.T).explained_variance_ratio_[0]`, exactly.

    scikit-learn treats the p rows of Xc^T (the features) as its samples: its
    component is u_1 (the first PC's scores), and its variances are over the
    features, which also removes each example's mean over the features. With
    s = Xc 1 (each example's sum of centred features), the ratio of
    var_j((Xc^T u_1)_j) to sum_i var_j(Xc_ij) is

        (lambda_1 - (u_1 . s)^2 / p) / (trace(Kc) - |s|^2 / p).

    The reference code's randomized solver approximates u_1; this is the value it approximates.

    Args:
        pc: `first_pc` of the layer's Gram matrix.
        sums: (n,) each example's sum of its p flattened features (centred over the
            examples or not, or shifted by a common vector: they are centred here).
        width: p, the number of features.

    Returns:
        The ratio in [0, 1]; 0 when every example's centred features are constant
        across the features (scikit-learn divides by zero there).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 8)) + np.arange(50)[:, None]  # a per-example offset
        >>> first = first_pc(x @ x.T)
        >>> round(first.fraction, 2), round(svd_fraction(first, x.sum(1), 8), 2)
        (1.0, 0.01)
    """
    sums = np.asarray(sums, dtype=np.float64)
    if sums.shape != pc.scores.shape:
        raise ValueError(f"`sums` must have one value per example {pc.scores.shape}. Received shape {sums.shape}.")
    if width < 1:
        raise ValueError(f"`width` must be >= 1 (the number of features). Received: width={width}")
    sums = sums - sums.mean()
    denominator = pc.total - sums @ sums / width
    if not denominator > _EMPTY_RTOL * pc.total:
        return 0.0
    numerator = pc.eigenvalue - (pc.scores @ sums) ** 2 / width
    return float(np.clip(numerator / denominator, 0.0, 1.0))


def pooled_first_pc(grams) -> FirstPC:
    """The first principal component of several layers taken together, from their Gram matrices.

    The layers' flattened features over the same n examples are concatenated into one
    representation (as the paper's Figure D.5 pools the last two stages); the centred
    Gram matrix of a concatenation is the sum of the layers' centred Gram matrices.

    Args:
        grams: (L, n, n) Gram matrices of L >= 1 layers (centred or not), e.g. from `layer_grams`.

    Returns:
        The `FirstPC` of the concatenation (see `first_pc`).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 8)) * [5, 1, 1, 1, 1, 1, 1, 1]
        >>> round(pooled_first_pc([x @ x.T, x @ x.T]).fraction, 2)  # a layer twice: as the layer alone
        0.69
    """
    grams = np.asarray(grams)
    if grams.ndim != 3 or not len(grams):
        raise ValueError(f"`grams` must be (L, n, n) Gram matrices with L >= 1. Received shape {grams.shape}.")
    return first_pc(sum(double_center(np.asarray(k, dtype=np.float64)) for k in grams))


def remove_first_pc(k, pc: FirstPC | None = None) -> np.ndarray:
    """Centred Gram matrix of Xc - sigma_1 u_1 v_1^T, i.e. H K H - lambda_1 u_1 u_1^T, float64 (n, n)."""
    pc = pc or first_pc(k)
    return double_center(k) - pc.eigenvalue * np.outer(pc.scores, pc.scores)


def pc_cosine(scores) -> np.ndarray:
    """|<u_a, u_b>| for every pair of rows of (L, n) first-PC scores: (L, L) float64 in [0, 1].

    The sign of a principal component is arbitrary, so the absolute value is taken.
    The diagonal is 1 by definition (also for a constant layer, whose scores are 0
    and whose other entries are 0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    cosine = np.clip(np.abs(scores @ scores.T), 0.0, 1.0)
    np.fill_diagonal(cosine, 1.0)
    return cosine


def last_stages(names: Sequence[str], count: int = 2) -> tuple[int, ...]:
    """The `count` highest stage numbers among layer names (stem, pool and logits excluded)."""
    stages = sorted({models.stage_of(n) for n in names if models.stage_of(n) > 0})
    return tuple(stages[-count:])


# --- Gram matrices of a model's layers, block by block ------------------------------------------


def _allocate(shape: tuple[int, ...], dtype: str, memory_limit: int, scratch_dir: str | None) -> np.ndarray:
    """Zeros in RAM, or a memory-mapped temporary file when larger than `memory_limit` bytes."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size <= memory_limit:
        return np.zeros(shape, dtype)
    fd, path = tempfile.mkstemp(prefix="tfwd_pc_grams.", suffix=".tmp", dir=scratch_dir)
    os.close(fd)
    logging.info("Gram matrices (%.1f GB) are stored in a temporary file in %s.", size / 1e9, os.path.dirname(path))
    store = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
    os.remove(path)  # POSIX: the mapping keeps the data alive until the array is freed
    return store


def layer_grams(
    model: keras.Model,
    batches: Sequence[np.ndarray],
    taps: str | Sequence[str] = "all",
    dtype: str = "float32",
    memory_limit: int = 2 * 1024**3,
    scratch_dir: str | None = None,
    with_sums: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gram matrices of every tapped layer over all examples of `batches`, block by block.

    Every layer's features are flattened and shifted by one common vector (the
    first example's features): the Gram matrix changes by a 1^T + 1 a^T + c 11^T,
    which centring removes, and the products keep their precision when the
    features share a large offset (post-ReLU layers). BN runs in inference mode.

    Args:
        model: a tfwd model.
        batches: B arrays of images (b_i, H, W, C), in a fixed order; the examples
            are their concatenation (n = sum b_i).
        taps: tap kind or layer names, as `tfwd.models.tap_names`.
        dtype: dtype of the products and of the store: "float32" (as the CKA
            metric) or "float64".
        memory_limit: bytes of RAM the (L, n, n) store may use; a larger store is
            a memory-mapped temporary file in `scratch_dir` (default: the system's).
        scratch_dir: folder for that file.
        with_sums: also return each example's sum of its features (for `svd_fraction`).

    Returns:
        (L, n, n) `dtype` array, exactly symmetric: K_l = (X_l - 1 x_l^T)(X_l - 1 x_l^T)^T
        with x_l the first example's flattened features. With `with_sums`, the tuple
        (that array, (L, n) float64 row sums of X_l - 1 x_l^T, (L,) feature counts p_l).

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8, width=0.25)
        >>> x = np.random.default_rng(0).random((200, 32, 32, 3), dtype="float32")
        >>> layer_grams(model, [x[:100], x[100:]], taps="blocks").shape  # 5 taps, 200 examples
        (5, 200, 200)
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"`dtype` must be 'float32' or 'float64'. Received: dtype={dtype!r}")
    if not len(batches):
        raise ValueError("`batches` must hold at least one batch of images.")
    tapped = models.activation_model(model, taps)
    widths = [int(np.prod(t.shape[1:])) for t in tapped.outputs]
    edges = np.concatenate([[0], np.cumsum([len(b) for b in batches])])
    store = _allocate((len(widths), int(edges[-1]), int(edges[-1])), dtype, memory_limit, scratch_dir)
    flat = [tf.TensorSpec((None, w), dtype) for w in widths]
    shift_spec = [tf.TensorSpec((w,), dtype) for w in widths]

    # Fixed signatures: one trace per call of layer_grams, whatever the (ragged) batch sizes.
    @tf.function(
        input_signature=[tf.TensorSpec((None, *tapped.inputs[0].shape[1:]), tf.float32), shift_spec], autograph=False
    )
    def features(images, shift):
        acts = tapped(images, training=False)
        acts = acts if isinstance(acts, (list, tuple)) else [acts]
        return [tf.reshape(tf.cast(a, dtype), [tf.shape(a)[0], -1]) - s for a, s in zip(acts, shift)]

    @tf.function(input_signature=[flat], autograph=False)
    def row_sums(xs):
        return tf.stack([tf.reduce_sum(tf.cast(x, tf.float64), axis=1) for x in xs])

    @tf.function(input_signature=[flat, flat], autograph=False)
    def tiles(xs, ys):
        # einsum: oneDNN's faster Gram kernel on AVX-512 CPUs (see tfwd._grams.gram_formulation).
        return tf.stack([tf.einsum("ip,jp->ij", x, y) for x, y in zip(xs, ys)])

    def run(i, shift):
        return features(tf.convert_to_tensor(batches[i], tf.float32), shift)

    first = run(0, [tf.zeros([w], dtype) for w in widths])
    shift = [x[0] for x in first]
    sums = np.zeros((len(widths), int(edges[-1])))
    passes = 0
    for i in range(len(batches)):
        xi = [x - s for x, s in zip(first, shift)] if i == 0 else run(i, shift)
        rows = slice(edges[i], edges[i + 1])
        if with_sums:
            sums[:, rows] = row_sums(xi).numpy()
        for j in range(i, len(batches)):
            xj = xi if j == i else run(j, shift)
            block = tiles(xi, xj).numpy()
            if j == i:
                store[:, rows, rows] = (block + block.transpose(0, 2, 1)) / 2
            else:
                store[:, rows, edges[j] : edges[j + 1]] = block
                store[:, edges[j] : edges[j + 1], rows] = block.transpose(0, 2, 1)
        passes += len(batches) - i
        logging.info("Gram matrices: batch %d/%d done (%d forward passes so far).", i + 1, len(batches), passes)
    return (store, sums, np.array(widths)) if with_sums else store


# --- the analyses, from Gram matrices -----------------------------------------------------------


def _u_center_rows(rows: np.ndarray, means: np.ndarray, start: int) -> np.ndarray:
    """U-centres rows start.. of L Gram matrices in place: (L, b, n), with their means (L, n)."""
    b = rows.shape[1]
    rows -= means[:, start : start + b, None] + means[:, None, :]
    rows[:, np.arange(b), np.arange(start, start + b)] = 0.0
    return rows


def _cka_from_products(products: np.ndarray, floor: np.ndarray | float = 0.0) -> np.ndarray:
    """CKA_ab = S_ab / sqrt(S_aa S_bb); rows of layers with S_aa <= floor are 0; the diagonal is 1."""
    diag = np.diag(products).copy()
    diag[diag <= floor] = np.inf
    cka = products / np.sqrt(diag[:, None] * diag[None, :])
    np.fill_diagonal(cka, 1.0)
    return cka


def _cka_with_and_without_pc(grams, means, pcs, tile_bytes) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased full-batch CKA of the layers, and of the layers with their first PC removed.

    U-centring is linear and removes a 1^T + 1 a^T terms, so U(Kc - lambda u u^T) =
    U(K) - lambda U(u u^T). Both are built a few rows at a time for all layers, so
    the pairwise inner products cost 2 L^2 n^2 flops and no second (L, n, n) array.
    The 1 / (n (n - 3)) of HSIC_1 cancels in the ratio.
    """
    num_layers, n = grams.shape[0], grams.shape[1]
    scores = np.stack([pc.scores for pc in pcs])
    eigenvalues = np.array([pc.eigenvalue for pc in pcs])
    rank_one_means = np.stack([u_center_means(np.outer(u, u)) for u in scores])
    step = max(1, tile_bytes // (8 * num_layers * n))
    full, removed = np.zeros((num_layers, num_layers)), np.zeros((num_layers, num_layers))
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = _u_center_rows(np.array(grams[:, start:stop, :], dtype=np.float64), means, start)
        rank_one = _u_center_rows(scores[:, start:stop, None] * scores[:, None, :], rank_one_means, start)
        rows_removed = rows - eigenvalues[:, None, None] * rank_one
        rows, rows_removed = rows.reshape(num_layers, -1), rows_removed.reshape(num_layers, -1)
        full += rows @ rows.T
        removed += rows_removed @ rows_removed.T
    return _cka_from_products(full), _cka_from_products(removed, _EMPTY_RTOL * np.diag(full))


def analyze_grams(
    grams,
    names: Sequence[str],
    stages: Sequence[int] | None = None,
    tile_bytes: int = 64 * 1024**2,
    sums=None,
    widths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Every first-PC analysis of L layers from their Gram matrices over the same n examples.

    Args:
        grams: (L, n, n) Gram matrices (any float dtype; centred or not), e.g. from
            `layer_grams`; n >= 4 (the unbiased HSIC estimator).
        names: the L layer names.
        stages: stages whose taps are pooled for "last_stages_fraction" (default:
            `last_stages(names)`, the last two stages among the names).
        tile_bytes: float64 working memory per array in the CKA loop.
        sums, widths: (L, n) each example's sum of its features and (L,) the feature
            counts, as `layer_grams(..., with_sums=True)` returns them; given both,
            the reference code's estimator is computed too ("fraction_svd").

    Returns:
        {"names": list of L names, "fraction": (L,) first-PC variance fractions,
        "fraction_svd": (L,) the reference code's TruncatedSVD estimator of the
        same fraction (`svd_fraction`; None without `sums` and `widths`),
        "scores": (L, n) first-PC scores u_1, "eigenvalue": (L,) lambda_1,
        "total": (L,) total variance trace(Kc), "pc_cosine": (L, L) |<u_a, u_b>|,
        "cka": (L, L) unbiased full-batch CKA, "cka_without_pc": (L, L) the same
        with every layer's first PC removed, "last_stages": the pooled stages,
        "last_stages_fraction": first-PC fraction of their concatenated taps (NaN
        if no name belongs to them)}, float64. A layer constant over the
        examples has fraction 0, scores 0, and CKA 0 with every other layer.

    Raises:
        ValueError: for mismatched shapes, n < 4, or a non-finite Gram matrix.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(64, 10))
        >>> out = analyze_grams(np.stack([x @ x.T, 4 * x @ x.T]), ["stage2_block1_out", "stage3_block1_out"])
        >>> out["cka"][0, 1].round(6), out["pc_cosine"][0, 1].round(6)
        (1.0, 1.0)
    """
    grams = grams if isinstance(grams, np.ndarray) else np.asarray(grams)
    if grams.ndim != 3 or grams.shape[1] != grams.shape[2] or grams.shape[0] != len(names):
        raise ValueError(f"`grams` must be (L, n, n) with L = len(names) = {len(names)}. Received shape {grams.shape}.")
    num_layers, n = grams.shape[0], grams.shape[1]
    if n < 4:
        raise ValueError(f"The unbiased HSIC estimator needs n >= 4 examples. Received: n={n}")
    if (sums is None) != (widths is None):
        raise ValueError("`sums` and `widths` go together: give both or neither.")
    if sums is not None and (np.shape(sums) != (num_layers, n) or np.shape(widths) != (num_layers,)):
        raise ValueError(
            f"`sums` must be (L, n) = {(num_layers, n)} and `widths` (L,). "
            f"Received shapes {np.shape(sums)} and {np.shape(widths)}."
        )
    stages = tuple(last_stages(names) if stages is None else stages)
    pooled, pcs, means = np.zeros((n, n)), [], np.zeros((num_layers, n))
    for l in range(num_layers):
        k = np.asarray(grams[l], dtype=np.float64)
        if not np.all(np.isfinite(k)):
            raise ValueError(f"Layer {names[l]!r} has NaN or Inf activations (or its Gram matrix overflows).")
        pcs.append(first_pc(k))
        means[l] = u_center_means(k)
        if models.stage_of(names[l]) in stages:
            pooled += double_center(k)
    cka, cka_without_pc = _cka_with_and_without_pc(grams, means, pcs, tile_bytes)
    any_pooled = any(models.stage_of(name) in stages for name in names)
    fraction_svd = None
    if sums is not None:
        fraction_svd = np.array([svd_fraction(pc, s, int(p)) for pc, s, p in zip(pcs, sums, widths)])
    return {
        "names": list(names),
        "fraction": np.array([pc.fraction for pc in pcs]),
        "fraction_svd": fraction_svd,
        "scores": np.stack([pc.scores for pc in pcs]),
        "eigenvalue": np.array([pc.eigenvalue for pc in pcs]),
        "total": np.array([pc.total for pc in pcs]),
        "pc_cosine": pc_cosine([pc.scores for pc in pcs]),
        "cka": cka,
        "cka_without_pc": cka_without_pc,
        "last_stages": stages,
        "last_stages_fraction": first_pc(pooled).fraction if any_pooled else float("nan"),
    }


def analyze_model(
    model: keras.Model,
    batches: Sequence[np.ndarray],
    taps: str | Sequence[str] = "all",
    dtype: str = "float32",
    memory_limit: int = 2 * 1024**3,
    scratch_dir: str | None = None,
) -> dict[str, Any]:
    """`analyze_grams` of `layer_grams(model, batches, ...)`, pooling the model's last two stages.

    Example:
        >>> model = tfwd.models.cifar_resnet(8, 0.25)
        >>> out = analyze_model(model, [np.random.rand(64, 32, 32, 3).astype("float32")], taps="blocks")
        >>> out["fraction"].shape, out["cka_without_pc"].shape
        ((5,), (5, 5))
    """
    grams, sums, widths = layer_grams(model, batches, taps, dtype, memory_limit, scratch_dir, with_sums=True)
    stages = last_stages(models.tap_names(model, "all"))
    return analyze_grams(grams, models.tap_names(model, taps), stages=stages, sums=sums, widths=widths)


# --- files --------------------------------------------------------------------------------------

_ARRAYS = ("fraction", "scores", "eigenvalue", "total", "pc_cosine", "cka", "cka_without_pc")
# The arrays that only draw figures (the claims read `fraction` and `fraction_svd`): a report's exported copy
# keeps them at float32, half the size.
FIGURE_ARRAYS = ("scores", "pc_cosine", "cka", "cka_without_pc")


@dataclasses.dataclass(frozen=True, eq=False)
class PCResult:
    """What `load` reads from an `analyze` output folder: `analyze_grams`' result and its settings.

    Attributes:
        names: the L layer names, in depth order.
        fraction: (L,) float64 first-PC variance fractions sigma_1^2 / sum_i sigma_i^2.
        scores: (L, n) float64 first-PC scores u_1 (unit norm, largest-magnitude entry positive).
        eigenvalue: (L,) float64 lambda_1 of each centred Gram matrix.
        total: (L,) float64 total variance trace(Kc) of each layer.
        pc_cosine: (L, L) float64 |<u_a, u_b>| of the first PCs.
        cka: (L, L) float64 unbiased full-batch CKA.
        cka_without_pc: (L, L) float64 the same with every layer's first PC removed.
        last_stages: the stages pooled for `last_stages_fraction`.
        last_stages_fraction: first-PC fraction of their concatenated taps (NaN without such taps).
        settings: how it was measured (run, taps, split, examples, ..., "measured": the run's fingerprint).
        fraction_svd: (L,) float64 the reference code's TruncatedSVD estimator of `fraction`; None in
            folders written before tfwd computed it.
    """

    names: list[str]
    fraction: np.ndarray
    scores: np.ndarray
    eigenvalue: np.ndarray
    total: np.ndarray
    pc_cosine: np.ndarray
    cka: np.ndarray
    cka_without_pc: np.ndarray
    last_stages: tuple[int, ...]
    last_stages_fraction: float
    settings: dict[str, Any]
    fraction_svd: np.ndarray | None = None


def save(path: str, result: dict[str, Any], settings: dict[str, Any]) -> None:
    """Writes an `analyze_grams` result and the settings that produced it to an .npz, atomically."""
    runs.write_npz(
        path,
        names=np.array(result["names"]),
        last_stages=np.array(result["last_stages"], dtype=np.int64),
        last_stages_fraction=np.float64(result["last_stages_fraction"]),
        settings=np.array(runs.json_text(settings)),
        **{key: result[key] for key in _ARRAYS},
        # absent when not computed (see `analyze_grams`)
        **({} if result.get("fraction_svd") is None else {"fraction_svd": result["fraction_svd"]}),
    )


def load(folder: str) -> PCResult:
    """The `PCResult` of an `analyze` output folder (its pc.npz, see `save`).

    Raises:
        tfwd.runs.RunError: if the folder measured a run that was retrained since.
    """
    runs.check_measured(folder)
    with np.load(os.path.join(folder, FILE)) as f:
        return PCResult(
            names=[str(n) for n in f["names"]],
            last_stages=tuple(int(s) for s in f["last_stages"]),
            last_stages_fraction=float(f["last_stages_fraction"]),
            settings=json.loads(str(f["settings"])),
            fraction_svd=f["fraction_svd"] if "fraction_svd" in f.files else None,
            **{key: f[key] for key in _ARRAYS},
        )


# RUN_DIR/pc_{taps}_{split} ("custom" for a pattern or a list of layer names).
default_out_dir = functools.partial(runs.analysis_dir, kind=KIND)


@runs.reading_runs()  # the run stays locked for reading until the output is written
def analyze(
    run_dir: str,
    out_dir: str | None = None,
    taps: str | Sequence[str] = "all",
    split: str = "test",
    examples: int | None = 2000,
    batch_size: int = 250,
    data_dir: str | None = None,
    dtype: str = "float32",
) -> str:
    """The first-PC analyses of one finished run, written as pc.npz and Figure 3.

    Writes into `out_dir` (default `RUN_DIR/pc_<taps>_<split>`), as a whole or not
    at all: pc.npz (see `save`; `load` reads the folder back), first_pc.png (the four panels of
    Figure 3) and variance_explained.png (the first-PC fraction per layer, by both estimators).

    Args:
        run_dir: a finished run directory.
        out_dir: output folder.
        taps: "all", "blocks", "residual" or layer names.
        split: "test", "validation" or "train" (the run's subset).
        examples: the first `examples` examples of the split (None: all; >= 4).
            2000 by default, as the cost grows as L n^2 in memory and n^3 per
            layer in time (see the module docstring).
        batch_size: examples per forward pass (B batches cost B (B + 1) / 2 passes).
        data_dir: TFDS data directory, if not the one the run recorded.
        dtype: precision of the Gram matrices, "float32" or "float64".

    Returns:
        The output folder.

    Raises:
        tfwd.runs.RunError: for a missing or unfinished run.
        ValueError: for `examples` outside [4, size of the split] or a batch size under 1.
    """
    # matplotlib only when figures are drawn
    from tfwd.plots import common, pc as pc_plots

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    run, output = runs.Output.for_run(KIND, run_dir, out_dir, taps=taps, split=split)
    data = run.data(data_dir)
    available = data.num_examples(split)
    if examples is not None and not 4 <= examples <= available:
        raise ValueError(f"`examples` must be in [4, {available}] for split {split!r}. Received: examples={examples}")
    model = run.model()
    batches = [images.numpy() for images, _ in data.eval_dataset(split, batch_size, examples)]
    result = analyze_model(model, batches, taps, dtype)
    n = sum(len(b) for b in batches)
    settings = dict(
        run=run.path,
        taps=taps,
        split=split,
        examples=n,
        batch_size=batch_size,
        dtype=dtype,
        estimator="full-batch unbiased HSIC_1 over the analysis set",
        measured=runs.measured(),  # the digest of the run's model, results and settings
    )
    title = f"{runs.run_label(run.name)} ({split}, n={n})"
    extras = dict(
        last_stages_fraction=result["last_stages_fraction"],
        last_stages=result["last_stages"],
        fraction_svd=result["fraction_svd"],
    )
    with output.writing(f"First-PC analyses of {run.name}") as tmp:
        save(os.path.join(tmp, FILE), result, settings)
        figure = pc_plots.first_pc_figure(
            result["cka"],
            result["pc_cosine"],
            result["fraction"],
            result["cka_without_pc"],
            result["names"],
            title=title,
            **extras,
        )
        common.save_figure(figure, os.path.join(tmp, "first_pc.png"))
        ax = pc_plots.variance_explained(result["fraction"], result["names"], title=title, **extras)
        common.save_figure(ax.figure, os.path.join(tmp, "variance_explained.png"))
    return output.path
