"""Linear CKA: the streaming minibatch metric and full-batch float64 references.

Minibatch CKA (Nguyen, Raghu & Kornblith 2021, Eq. 2-3). For minibatch k with n
examples, each layer's activations are flattened to X (n, p) and give a linear
Gram matrix K = X X^T. The unbiased HSIC estimator (Song et al. 2012) in its
U-centred form (Szekely & Rizzo 2014) is

    HSIC_1(K, L) = <U(K), U(L)>_F / (n (n - 3)),
    U(K)_ij = K_ij - r_i / (n-2) - r_j / (n-2) + T / ((n-1)(n-2))  for i != j,  U(K)_ii = 0,

with r_i the row sums and T the total of K after its diagonal is zeroed. Over
minibatches k = 1..B the metric pools the U-centred products, each minibatch
weighted by its n(n-3) pairs:

    CKA(X, Y) = sum_k <U(K_k), U(L_k)> / sqrt(sum_k <U(K_k), U(K_k)> * sum_k <U(L_k), U(L_k)>),

i.e. sum_k w_k HSIC_1(K_k, L_k) / sqrt(...) with w_k = n_k (n_k - 3). For equal
batches this is the paper's formula (every w_k is the same). With a ragged last
batch it lands closer to the full-batch value than weighting batches equally
(tests/metrics_test.py checks it; docs/performance.md has the numbers). A batch
of n <= 3 has no pairs (n(n-3) <= 0): it adds
nothing, and is counted in `CKA.skipped`. The reference code's MinibatchCKA sums
the same products (it never applies 1/(n(n-3))), but divides by zero for n <= 2.

The Gram matrices K are computed by the private `tfwd._grams` (the fastest product for this
CPU, and a BatchNormalization tap's Gram from its input's per-channel Grams).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from tfwd import _grams
from tfwd._grams import native_bfloat16

# --- full-batch references (float64 NumPy) ---------------------------------------------------


def _flat64(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def gram(x) -> np.ndarray:
    """Linear Gram matrix X X^T (float64) of (n, ...) activations."""
    x = _flat64(x)
    return x @ x.T


def u_center_means(k) -> np.ndarray:
    """m (n,) float64 with U(K)_ij = K_ij - m_i - m_j off the diagonal, for a symmetric (n, n) K (n >= 4).

    m_i = r_i / (n-2) - T / (2 (n-1) (n-2)), with r_i the row sums and T the total of K without its
    diagonal (the module docstring's U(K)). `tfwd.pc` U-centres its Gram matrices row by row with it.
    """
    k = np.asarray(k, dtype=np.float64)
    n = k.shape[0]
    means = (k.sum(0) - np.diag(k)) / (n - 2)
    return means - means.sum() / (2 * (n - 1))


def u_center(k) -> np.ndarray:
    """U-centring of a symmetric (n, n) Gram matrix (Szekely & Rizzo 2014), in float64; needs n >= 4."""
    means = u_center_means(k)
    k = np.asarray(k, dtype=np.float64) - means[:, None] - means[None, :]
    np.fill_diagonal(k, 0.0)
    return k


def double_center(k) -> np.ndarray:
    """H K H (H = I - 11^T/n) of an (n, n) Gram matrix, in float64: the Gram matrix of centred features."""
    k = np.asarray(k, dtype=np.float64)
    return k - k.mean(0)[None, :] - k.mean(1)[:, None] + k.mean()


def hsic(k: np.ndarray, l: np.ndarray, unbiased: bool = True) -> float:
    """HSIC of two (n, n) Gram matrices.

    unbiased=True: HSIC_1 = <U(K), U(L)> / (n(n-3)) (needs n >= 4).
    unbiased=False: HSIC_0 = tr(K H L H) / (n-1)^2 = <H K H, H L H> / (n-1)^2 with H = I - 11^T/n.
    """
    n = k.shape[0]
    if unbiased:
        if n < 4:
            raise ValueError(f"The unbiased HSIC estimator needs n >= 4 examples. Received: n={n}")
        return float(np.sum(u_center(k) * u_center(l)) / (n * (n - 3)))
    return float(np.sum(double_center(k) * double_center(l)) / (n - 1) ** 2)


def linear_cka(x, y, unbiased: bool = False) -> float:
    """Full-batch linear CKA (Kornblith et al. 2019) of two representations, in float64.

    Args:
        x: (n, ...) activations; flattened to (n, p1).
        y: (n, ...) activations of the same n examples; flattened to (n, p2).
        unbiased: use the unbiased HSIC_1 estimator instead of HSIC_0.

    Returns:
        HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) as a float. If either
        representation has zero variance across examples (its self-HSIC is 0),
        the result is defined as 0.0.

    Raises:
        ValueError: if x and y have different numbers of examples, or unbiased and n < 4.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(100, 20))
        >>> round(linear_cka(x, 3 * x @ np.linalg.qr(np.random.default_rng(1).normal(size=(20, 20)))[0]), 6)
        1.0
    """
    x, y = _flat64(x), _flat64(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of examples. Received: {x.shape[0]} and {y.shape[0]}")
    k, l = gram(x), gram(y)
    xx, yy = hsic(k, k, unbiased), hsic(l, l, unbiased)
    if xx <= 0 or yy <= 0:
        return 0.0
    return hsic(k, l, unbiased) / np.sqrt(xx * yy)


# --- the streaming metric -------------------------------------------------------------------


def _centered_grams(acts, gram_dtype, check_finite, channel_affine=None):
    """U-centred Gram matrices of a list of layers, each divided by its largest entry: ((L, n, n), (L,), n).

    The Gram matrices come from `tfwd._grams.layer_grams` (`channel_affine` as there). U-centring
    runs in the Gram matrix's dtype, widened to float32 for 16-bit Grams: in float64 it cost
    about 4x more and changed CKA by less than 1e-6 (tests compare the metric with float64 NumPy
    at 1e-6). Each Gram is divided by its largest absolute entry first, so that the products of
    `_pair_products` neither underflow nor overflow in float32 (a layer of 1e-11 activations has
    Gram entries of 1e-19 and products of 1e-38); the scales are returned and applied in the
    accumulator dtype.
    """
    n = ops.shape(acts[0])[0]
    # Scaled and U-centred all at once: a few ops on (L, n, n) instead of a dozen per layer,
    # which keeps the traced graph small (tracing cost grows with the op count).
    grams = _grams.layer_grams(acts, gram_dtype, check_finite, channel_affine)
    scales = ops.max(ops.abs(grams), axis=(1, 2), initial=0.0)  # an empty batch (n = 0) has no entries
    scales = ops.where(scales > 0, scales, ops.ones_like(scales))  # K = 0 (a constant layer) stays 0
    return _u_center(grams / scales[:, None, None], n), scales, n


def _pair_products(ga, scales_a, gb, scales_b, dtype):
    """<U(K_a), U(L_b)> for every pair of layers of (La, n, n) and (Lb, n, n): (La, Lb) in `dtype`.

    `ga` and `gb` are divided by `scales_a` and `scales_b` (`_centered_grams`); the
    products are multiplied back by them in `dtype`.

    Each row's n products are summed in the Grams' dtype and the n row sums in `dtype`
    (float64 by default): cheaper than one float64 product, and as close to it as float32
    rounding of n terms allows.
    """
    rows_a = ops.transpose(ga, (1, 0, 2))  # (n, La, n)
    rows_b = ops.transpose(gb, (1, 2, 0))  # (n, n, Lb)
    products = ops.sum(ops.cast(ops.matmul(rows_a, rows_b), dtype), axis=0)
    return products * ops.cast(scales_a, dtype)[:, None] * ops.cast(scales_b, dtype)[None, :]


def _self_products(g, scales, dtype):
    """<U(K), U(K)> of each layer of (L, n, n): (L,) in `dtype`, summed and scaled like `_pair_products`."""
    return ops.sum(ops.cast(ops.sum(ops.square(g), axis=2), dtype), axis=1) * ops.square(ops.cast(scales, dtype))


def _u_center(k, n):
    """U(K) of one (n, n) or a stack (..., n, n) of symmetric Grams (see the module docstring);
    finite for any n (a batch of n <= 3 is then weighted 0).

    The formula of `u_center_means`, in keras.ops: in the graph, on any backend, in the Grams'
    dtype. The references keep their NumPy twin so that they stay float64 on every backend
    (JAX computes float64 only with x64 enabled).
    """
    nf = ops.cast(n, k.dtype)
    off_diagonal = 1.0 - ops.eye(n, dtype=k.dtype)
    k = k * off_diagonal
    means = ops.sum(k, axis=-2) / ops.maximum(nf - 2.0, 1.0)  # column means = row means (K symmetric)
    means = means - ops.sum(means, axis=-1, keepdims=True) / ops.maximum(2.0 * (nf - 1.0), 1.0)
    return (k - means[..., :, None] - means[..., None, :]) * off_diagonal


def _check_batch(acts, argname: str) -> None:
    if not isinstance(acts, (list, tuple)) or not acts:
        raise ValueError(f"`{argname}` must be a non-empty list of (n, ...) activation tensors. Received: {acts!r}")
    sizes = {a.shape[0] for a in acts if len(a.shape) and a.shape[0] is not None}
    if len(sizes) > 1:
        raise ValueError(f"All activations must have the same batch size n. Received batch sizes {sorted(sizes)}.")


GRAM_DTYPES = (None, "float32", "float64", "bfloat16", "float16")


class CKA(keras.metrics.Metric):
    """Streaming minibatch linear CKA between every pair of layers, on every Keras backend.

    update_state(acts) accumulates, for a list of L layers' activations on one
    minibatch, the U-centred inner products <U(K), U(L)> of every pair of layers;
    result() is the L x L matrix CKA_ij = S_ij / sqrt(S_ii S_jj), with S the sums
    over minibatches (pairs-weighted pooling; see the module docstring).
    update_state(acts_a, acts_b) accumulates only the La x Lb cross-model block
    and the self terms of both models, and result() is La x Lb. To get every
    within-model and cross-model block of K models from one pass, concatenate
    their tap lists in one update_state(acts) and slice the joint matrix
    (`split_blocks`).

    Fed the outputs of `tfwd.models.activation_model(model, taps)(x, training=False)`,
    as they are or concatenated, the metric takes each tapped BatchNormalization whose
    input is tapped too from that input's per-channel Grams, at no product of its own
    (see update_state's `channel_affine`).

    The math is written in keras.ops, so the metric runs under TensorFlow, JAX
    and PyTorch. Under JAX, `stateless_update_state` and `stateless_result` work
    inside `jax.jit`; give `num_layers` up front there (the state cannot be created
    inside a traced function). Under TensorFlow the metric works in `tf.function`
    and under tf.distribute: the sums are summed across replicas (each replica's
    local batch is one minibatch). Gram matrices are computed in the activations'
    dtype (or `gram_dtype`); the sums use `dtype` (float64 needs
    `jax.config.update("jax_enable_x64", True)` under JAX).

    Degenerate cases, defined rather than NaN:
    - a layer that is constant over every minibatch (zero variance) has CKA 0
      with every other layer, and 1 with itself;
    - a minibatch of n <= 3 examples has no pairs and adds nothing (counted in
      `skipped`; an empty one, which tf.distribute hands a replica at the end of
      uneven data, adds nothing and is not counted);
    - batch sizes that differ between layers or lists and an empty list raise
      ValueError; NaN or Inf activations raise tf.errors.InvalidArgumentError under
      TensorFlow (with check_finite), and give NaN elsewhere.

    Args:
        num_layers: L (within-model), (La, Lb) (cross-model), or None to take the
            shape from the first update_state call (not inside jax.jit).
        dtype: accumulator dtype, "float64" by default.
        check_finite: under TensorFlow, check every Gram matrix for NaN/Inf.
        gram_dtype: None computes Gram matrices in the activations' dtype.
            "bfloat16" casts the (centred) activations first: faster only where the
            CPU multiplies bfloat16 natively (AVX512_BF16 or AMX; `native_bfloat16`),
            and it moves CKA by up to about 0.02. Elsewhere bfloat16 is emulated, slower
            and less precise, so it warns and computes in float32.
        name: metric name.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(256, 32)).astype("float32")
        >>> cka = CKA()
        >>> cka.update_state([x, x ** 2, 2 * x])
        >>> np.round(np.asarray(cka.result()), 3)[0]  # x vs x**2: unrelated; x vs 2x: the same
        array([ 1.   , -0.001,  1.   ])
    """

    def __init__(
        self,
        num_layers: int | tuple[int, int] | None = None,
        dtype: str = "float64",
        check_finite: bool = True,
        gram_dtype: str | None = None,
        name: str = "cka",
    ):
        super().__init__(name=name, dtype=dtype)
        if gram_dtype not in GRAM_DTYPES:
            raise ValueError(f"`gram_dtype` must be one of {GRAM_DTYPES}. Received: gram_dtype={gram_dtype!r}")
        self.requested_gram_dtype = gram_dtype
        if gram_dtype == "bfloat16" and not native_bfloat16():
            warnings.warn(
                "CKA(gram_dtype='bfloat16'): this CPU has no native bfloat16 (AVX512_BF16 or AMX), where bfloat16 "
                "Grams are slower and less precise than float32; computing them in float32 instead. Pass "
                "gram_dtype=None to silence this.",
                stacklevel=2,
            )
            gram_dtype = "float32"
        self.check_finite = check_finite
        self.gram_dtype = gram_dtype
        self.num_layers = None
        self._warned_small = False
        if num_layers is not None:
            self._build(num_layers)

    def _build(self, num_layers) -> None:
        cross = isinstance(num_layers, (tuple, list))
        shape = tuple(int(v) for v in num_layers) if cross else (int(num_layers), int(num_layers))
        if min(shape) < 1:
            raise ValueError(f"`num_layers` must be positive. Received: num_layers={num_layers!r}")
        self.num_layers = shape if cross else shape[0]
        self.hsic_xy = self.add_variable(shape=shape, initializer="zeros", dtype=self.dtype, name="hsic_xy")
        self.hsic_xx = self.add_variable(shape=shape[:1], initializer="zeros", dtype=self.dtype, name="hsic_xx")
        self.hsic_yy = self.add_variable(shape=shape[1:], initializer="zeros", dtype=self.dtype, name="hsic_yy")
        self.batches = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="batches")
        self.skipped = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="skipped")

    @property
    def cross(self) -> bool:
        return isinstance(self.num_layers, tuple)

    def update_state(self, acts_a, acts_b=None, sample_weight=None, channel_affine=None, channel_affine_b=None):
        """Accumulates one minibatch.

        Args:
            acts_a: list of L tensors (n, ...), one per layer, all on the same n examples.
            acts_b: optional list of Lb tensors (n, ...) of a second model on the same examples.
            sample_weight: not supported (must be None).
            channel_affine: {j: (i, scale)} over acts_a, i < j: layer j is layer i times
                `scale` (shape (C,), per channel of the last axis) plus a per-channel constant,
                as a BatchNormalization's output in inference mode is of its input (scale =
                gamma / sqrt(moving_variance + epsilon); `tfwd.models.channel_affine_taps` finds
                such pairs). Both Gram matrices then come from one batched product of layer i's
                per-channel Grams, and acts_a[j] is not read (on layers with at least
                `tfwd._grams.CHANNEL_GRAM_MIN_POSITIONS` = 256 positions). The result is the
                same up to rounding. None (the default) takes the pairs from the activations
                themselves: the outputs of `tfwd.models.activation_model(...)(x, training=False)`
                name their BN taps' inputs, in this list or concatenated with other models'.
                {} computes every Gram matrix.
            channel_affine_b: the same over acts_b.
        """
        if sample_weight is not None:
            raise ValueError("CKA does not support sample_weight.")
        acts_a = _as_list(acts_a, "acts_a")
        if channel_affine is None:  # read before conversion, which need not keep the tensors' attributes
            channel_affine = _grams.tagged_channel_affine(acts_a)
        acts_a = [ops.convert_to_tensor(a) for a in acts_a]
        _check_batch(acts_a, "acts_a")
        if acts_b is not None:
            acts_b = _as_list(acts_b, "acts_b")
            if channel_affine_b is None:
                channel_affine_b = _grams.tagged_channel_affine(acts_b)
            acts_b = [ops.convert_to_tensor(b) for b in acts_b]
            _check_batch(acts_b, "acts_b")
            _check_batch([acts_a[0], acts_b[0]], "acts_a and acts_b")
        expected = (len(acts_a), len(acts_b)) if acts_b is not None else len(acts_a)
        if self.num_layers is None:
            self._build(expected)
        elif expected != self.num_layers:
            raise ValueError(
                f"This CKA metric accumulates {self.num_layers} layers (tuple: cross-model); "
                f"received {expected}. Use a new metric or reset it with a matching num_layers."
            )
        static_n = acts_a[0].shape[0]
        if static_n is not None and 0 < static_n < 4 and not self._warned_small:
            self._warned_small = True
            warnings.warn(
                f"A CKA minibatch of n={static_n} <= 3 examples has no pairs and adds nothing; "
                "choose a batch size that leaves a last batch of 4 or more to use every example.",
                stacklevel=2,
            )

        ga, scales_a, n = _centered_grams(acts_a, self.gram_dtype, self.check_finite, channel_affine)
        nf = ops.cast(n, self.dtype)
        valid = ops.cast(nf >= 4, self.dtype)  # n(n-3) > 0: the batch has pairs
        if acts_b is None:
            xy = _pair_products(ga, scales_a, ga, scales_a, self.dtype) * valid
            self.hsic_xy.assign_add(xy)
            diag = ops.diagonal(xy)
            self.hsic_xx.assign_add(diag)
            self.hsic_yy.assign_add(diag)
        else:
            gb, scales_b, n_b = _centered_grams(acts_b, self.gram_dtype, self.check_finite, channel_affine_b)
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf  # TensorFlow backend only: this module is backend-neutral

                tf.debugging.assert_equal(n, n_b, message="acts_a and acts_b have different batch sizes.")
            self.hsic_xy.assign_add(_pair_products(ga, scales_a, gb, scales_b, self.dtype) * valid)
            self.hsic_xx.assign_add(_self_products(ga, scales_a, self.dtype) * valid)
            self.hsic_yy.assign_add(_self_products(gb, scales_b, self.dtype) * valid)
        self.batches.assign_add(valid)
        self.skipped.assign_add(ops.cast(nf > 0, self.dtype) * (1.0 - valid))

    def stateless_update_state(self, metric_variables, *args, **kwargs):
        if self.num_layers is None:
            raise ValueError(
                "CKA.stateless_update_state needs the layer count up front: build the metric with "
                "CKA(num_layers=L) (or (La, Lb)), since its state cannot be created inside a traced function. "
                "Received: num_layers=None"
            )
        return super().stateless_update_state(metric_variables, *args, **kwargs)

    def result(self):
        """The CKA matrix: (L, L) within-model, (La, Lb) cross-model."""
        if self.num_layers is None:
            raise ValueError("CKA.result() needs at least one update_state() call first.")
        xx = ops.convert_to_tensor(self.hsic_xx)
        yy = ops.convert_to_tensor(self.hsic_yy)
        denom = ops.sqrt(ops.maximum(xx[:, None] * yy[None, :], 0.0))
        xy = ops.convert_to_tensor(self.hsic_xy)
        cka = ops.where(denom > 0, xy / ops.where(denom > 0, denom, 1.0), 0.0)
        if not self.cross:
            eye = ops.eye(self.num_layers, dtype=cka.dtype)
            cka = cka * (1.0 - eye) + eye
        return cka

    def reset_state(self):
        for v in self.variables:
            v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self):
        return {
            "num_layers": self.num_layers,
            "dtype": self.dtype,
            "check_finite": self.check_finite,
            "gram_dtype": self.requested_gram_dtype,
            "name": self.name,
        }


def _as_list(acts, argname):
    if isinstance(acts, (list, tuple)):
        return list(acts)
    raise ValueError(
        f"`{argname}` must be a list of activation tensors, one per layer. Received: {type(acts).__name__}"
    )


def split_blocks(matrix, sizes: Sequence[int]) -> dict[tuple[int, int], np.ndarray]:
    """Slices a joint CKA matrix of concatenated models into per-model blocks.

    Args:
        matrix: (sum(sizes), sum(sizes)) CKA matrix from one update_state over the
            concatenated tap lists of K models.
        sizes: number of layers of each model, in concatenation order.

    Returns:
        {(i, j): (sizes[i], sizes[j]) array} for every pair of models, i <= j;
        (i, i) is model i's within-model matrix.
    """
    matrix = np.asarray(matrix)
    if matrix.shape != (sum(sizes),) * 2:
        raise ValueError(f"matrix of shape {matrix.shape} does not match layer counts {list(sizes)}.")
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return {
        (i, j): matrix[edges[i] : edges[i + 1], edges[j] : edges[j + 1]]
        for i in range(len(sizes))
        for j in range(i, len(sizes))
    }
