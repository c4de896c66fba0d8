"""Linear CKA: the streaming minibatch metric and full-batch float64 references.

Minibatch CKA (Nguyen, Raghu & Kornblith 2021, Eq. 2-3). For minibatch k with n
examples, each layer's activations are flattened to X (n, p) and give a linear
Gram matrix K = X X^T. The unbiased HSIC estimator (Song et al. 2012) in its
U-centred form (Szekely & Rizzo 2014) is

    HSIC_1(K, L) = <U(K), U(L)>_F / (n (n - 3)),
    U(K)_ij = K_ij - r_i / (n-2) - r_j / (n-2) + T / ((n-1)(n-2))  for i != j,  U(K)_ii = 0,

with r_i the row sums and T the total of K after its diagonal is zeroed. Over
minibatches k = 1..B,

    CKA(X, Y) = sum_k HSIC_1(K_k, L_k) / sqrt(sum_k HSIC_1(K_k, K_k) * sum_k HSIC_1(L_k, L_k)).

Every minibatch carries its own 1/(n(n-3)) factor, so a ragged last batch counts
like any other (the reference code weights batches by about n^2 instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

# --- full-batch references (float64 NumPy) ---------------------------------------------------


def _flat64(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def gram(x) -> np.ndarray:
    """Linear Gram matrix X X^T (float64) of (n, ...) activations."""
    x = _flat64(x)
    return x @ x.T


def u_center(k: np.ndarray) -> np.ndarray:
    """U-centring of a symmetric (n, n) Gram matrix (Szekely & Rizzo 2014); needs n >= 4."""
    k = np.array(k, dtype=np.float64)
    n = k.shape[0]
    np.fill_diagonal(k, 0.0)
    means = k.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None] + means[None, :]
    np.fill_diagonal(k, 0.0)
    return k


def hsic(k: np.ndarray, l: np.ndarray, unbiased: bool = True) -> float:
    """HSIC of two (n, n) Gram matrices.

    unbiased=True: HSIC_1 = <U(K), U(L)> / (n(n-3)) (needs n >= 4).
    unbiased=False: HSIC_0 = tr(K H L H) / (n-1)^2 with H = I - 11^T/n.
    """
    n = k.shape[0]
    if unbiased:
        if n < 4:
            raise ValueError(f"The unbiased HSIC estimator needs n >= 4 examples. Received: n={n}")
        return float(np.sum(u_center(k) * u_center(l)) / (n * (n - 3)))
    h = np.eye(n) - 1.0 / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


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


def _centered_grams(
    acts: Sequence[tf.Tensor], dtype: tf.DType, check_finite: bool, gram_dtype: str | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """U-centred Gram matrices of a list of layers, stacked and flattened: ((L, n*n), n)."""
    n = tf.shape(acts[0])[0]
    grams = []
    for i, a in enumerate(acts):
        x = tf.reshape(a, [n, -1])
        # U-centring removes any a1^T + 1b^T term, so subtracting one example from
        # every example leaves U(K) unchanged and changes only the rounding: features
        # with a large common offset (post-ReLU) keep their precision, and a layer
        # that is constant over the batch gives K = 0, hence U(K) = 0, exactly.
        x = x - x[:1]
        if gram_dtype is not None:
            x = tf.cast(x, gram_dtype)
        # einsum runs this contraction about 2x faster than matmul(x, x, transpose_b=True)
        # on TF 2.21 CPUs (benchmarks/cka_throughput.py).
        k = tf.einsum("ip,jp->ij", x, x)
        if check_finite:
            k = tf.debugging.assert_all_finite(
                k, f"CKA: layer {i} has NaN or Inf activations (or its Gram matrix overflows)."
            )
        grams.append(_u_center(tf.cast(k, dtype), n))
    return tf.reshape(tf.stack(grams), [len(acts), -1]), n


def _u_center(k: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    nf = tf.cast(n, k.dtype)
    k = tf.linalg.set_diag(k, tf.zeros([n], k.dtype))
    means = tf.reduce_sum(k, axis=0) / (nf - 2)
    means -= tf.reduce_sum(means) / (2 * (nf - 1))
    k -= means[:, None] + means[None, :]
    return tf.linalg.set_diag(k, tf.zeros([n], k.dtype))


def _check_batch(acts, argname: str) -> None:
    if not isinstance(acts, (list, tuple)) or not acts:
        raise ValueError(f"`{argname}` must be a non-empty list of (n, ...) activation tensors. Received: {acts!r}")
    sizes = {a.shape[0] for a in acts if a.shape.rank and a.shape[0] is not None}
    if len(sizes) > 1:
        raise ValueError(f"All activations must have the same batch size n. Received batch sizes {sorted(sizes)}.")
    if sizes and 0 < min(sizes) < 4:
        raise ValueError(
            f"Minibatch CKA needs n >= 4 examples per batch (the unbiased HSIC estimator divides by n(n-3)). "
            f"Received: n={min(sizes)}"
        )


class CKA(keras.metrics.Metric):
    """Streaming minibatch linear CKA between every pair of layers.

    update_state(acts) accumulates, for a list of L layers' activations on one
    minibatch, the unbiased HSIC_1 of every pair of layers; result() is the
    L x L matrix CKA_ij = S_ij / sqrt(S_ii S_jj), with S the sums over
    minibatches (see the module docstring for the estimator).
    update_state(acts_a, acts_b) accumulates only the La x Lb cross-model block
    and the self terms of both models, and result() is La x Lb. To get every
    within-model and cross-model block of K models from one pass, concatenate
    their tap lists in one update_state(acts) and slice the joint matrix
    (`split_blocks`).

    Under tf.distribute the sums are summed across replicas (each replica's
    local batch is one minibatch). Gram matrices are computed in the
    activations' dtype; U-centring and the sums use `dtype`.

    Degenerate cases, defined rather than NaN:
    - a layer that is constant over every minibatch (zero variance) has CKA 0
      with every other layer, and 1 with itself;
    - an empty minibatch (n = 0, which tf.distribute hands a replica at the end of
      uneven data) adds nothing;
    - 0 < n < 4, batch sizes that differ between layers or lists, an empty list,
      and NaN or Inf activations raise errors (ValueError when shapes are static,
      tf.errors.InvalidArgumentError at run time otherwise).

    Args:
        num_layers: L (within-model), (La, Lb) (cross-model), or None to take the
            shape from the first update_state call.
        dtype: accumulator dtype, "float64" by default.
        check_finite: check every Gram matrix for NaN/Inf (cheap: n x n per layer).
        gram_dtype: None computes Gram matrices in the activations' dtype;
            "bfloat16" casts the (centred) activations first, which trades about
            1e-3 of CKA for speed on CPUs with bfloat16 units (the TF 2.21 CPU kernel
            also rounds the Gram to bfloat16; see benchmarks/cka_throughput.py).
        name: metric name.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(256, 32)).astype("float32")
        >>> cka = CKA()
        >>> cka.update_state([x, x ** 2, 2 * x])
        >>> np.round(cka.result().numpy(), 3)[0]  # x vs x**2: unrelated; x vs 2x: the same
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
        if gram_dtype not in (None, "float32", "float64", "bfloat16", "float16"):
            raise ValueError(
                f"`gram_dtype` must be None, 'float32', 'float64', 'bfloat16' or 'float16'. Received: {gram_dtype!r}"
            )
        self.check_finite = check_finite
        self.gram_dtype = gram_dtype
        self.num_layers = None
        if num_layers is not None:
            self._build(num_layers)

    def _build(self, num_layers) -> None:
        cross = isinstance(num_layers, (tuple, list))
        shape = tuple(int(v) for v in num_layers) if cross else (int(num_layers), int(num_layers))
        if min(shape) < 1:
            raise ValueError(f"`num_layers` must be positive. Received: num_layers={num_layers!r}")
        self.num_layers = shape if cross else shape[0]
        self.hsic_xy = self.add_variable(shape, "zeros", dtype=self.dtype, name="hsic_xy")
        self.hsic_xx = self.add_variable(shape[:1], "zeros", dtype=self.dtype, name="hsic_xx")
        self.hsic_yy = self.add_variable(shape[1:], "zeros", dtype=self.dtype, name="hsic_yy")
        self.batches = self.add_variable((), "zeros", dtype=self.dtype, name="batches")

    @property
    def cross(self) -> bool:
        return isinstance(self.num_layers, tuple)

    def update_state(self, acts_a, acts_b=None, sample_weight=None):
        """Accumulates one minibatch.

        Args:
            acts_a: list of L tensors (n, ...), one per layer, all on the same n examples.
            acts_b: optional list of Lb tensors (n, ...) of a second model on the same examples.
            sample_weight: not supported (must be None).
        """
        if sample_weight is not None:
            raise ValueError("CKA does not support sample_weight.")
        acts_a = [tf.convert_to_tensor(a) for a in _as_list(acts_a, "acts_a")]
        _check_batch(acts_a, "acts_a")
        if acts_b is not None:
            acts_b = [tf.convert_to_tensor(b) for b in _as_list(acts_b, "acts_b")]
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

        ga, n = _centered_grams(acts_a, self.dtype, self.check_finite, self.gram_dtype)
        checks = [
            tf.debugging.Assert(
                tf.logical_or(n >= 4, tf.equal(n, 0)), ["Minibatch CKA needs n >= 4 examples per batch; n =", n]
            ),
        ]
        if acts_b is not None:
            gb, n_b = _centered_grams(acts_b, self.dtype, self.check_finite, self.gram_dtype)
            checks.append(tf.debugging.assert_equal(n, n_b, message="acts_a and acts_b have different batch sizes."))
        with tf.control_dependencies(checks):
            nf = tf.cast(n, self.dtype)
            nonempty = tf.cast(n > 0, self.dtype)
            scale = nonempty / tf.maximum(nf * (nf - 3), 1.0)
            if acts_b is None:
                xy = tf.matmul(ga, ga, transpose_b=True) * scale
                self.hsic_xy.assign_add(xy)
                diag = tf.linalg.diag_part(xy)
                self.hsic_xx.assign_add(diag)
                self.hsic_yy.assign_add(diag)
            else:
                self.hsic_xy.assign_add(tf.matmul(ga, gb, transpose_b=True) * scale)
                self.hsic_xx.assign_add(tf.reduce_sum(tf.square(ga), axis=1) * scale)
                self.hsic_yy.assign_add(tf.reduce_sum(tf.square(gb), axis=1) * scale)
            self.batches.assign_add(nonempty)

    def result(self):
        """The CKA matrix: (L, L) within-model, (La, Lb) cross-model."""
        if self.num_layers is None:
            raise ValueError("CKA.result() needs at least one update_state() call first.")
        denom = tf.sqrt(self.hsic_xx[:, None] * self.hsic_yy[None, :])
        cka = tf.math.divide_no_nan(tf.convert_to_tensor(self.hsic_xy), denom)
        if not self.cross:
            cka = tf.linalg.set_diag(cka, tf.ones([self.num_layers], cka.dtype))
        return cka

    def reset_state(self):
        for v in self.variables:
            v.assign(tf.zeros_like(v))

    def get_config(self):
        return {
            "num_layers": self.num_layers,
            "dtype": self.dtype,
            "check_finite": self.check_finite,
            "gram_dtype": self.gram_dtype,
            "name": self.name,
        }


def _as_list(acts, argname):
    if isinstance(acts, (list, tuple)):
        return list(acts)
    raise ValueError(f"`{argname}` must be a list of activation tensors, one per layer. Received: {type(acts).__name__}")


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
