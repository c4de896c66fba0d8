"""How `tfwd.metrics.CKA` computes the Gram matrices X X^T of a minibatch's layers (private).

The metric's mathematics is in `tfwd.metrics`; this module only makes its Gram matrices fast:
- `gram`: one product, under TensorFlow with the faster of einsum and matmul on this CPU
  (`gram_formulation`), and from row halves for wide layers (3/4 of the FLOPs);
- `channel_grams`: a layer that another layer rescales per channel (a BatchNormalization in
  inference mode of its input) gets its Gram from that layer's per-channel Grams, at no
  product of its own; the hints say which (`channel_affine`, see `tfwd.metrics.CKA.update_state`),
  given by hand or carried by the activations of `tfwd.models.activation_model` (`tag_channel_affine`);
- `gram_plan`: which of these each layer gets;
- `native_bfloat16`: whether this CPU multiplies bfloat16 natively.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
from keras import ops


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX-BF16 in /proc/cpuinfo).

    False when ONEDNN_MAX_CPU_ISA limits oneDNN below those instructions (e.g. AVX2):
    its bfloat16 matmul then has no kernel and aborts the process.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and isa != "ALL" and not any(word in isa for word in ("BF16", "AMX", "FP16", "AVX10")):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


# Features from which a Gram matrix is built from its blocks (see `gram`).
SYMMETRIC_MIN_FEATURES = 2048


def gram(x):
    """X X^T of (n, p) features.

    Under TensorFlow with the faster of einsum and matmul(transpose_b) on this CPU
    (`gram_formulation`), and for p >= SYMMETRIC_MIN_FEATURES from row halves
    (`_from_halves`: 3/4 of the FLOPs; benchmarks/cka_throughput.py). On small p the
    extra ops cost more than they save.
    """
    if keras.backend.backend() != "tensorflow":
        return _matmul_t(x, x)
    import tensorflow as tf  # TensorFlow backend only: this module is backend-neutral

    product = _matmul_t if gram_formulation() == "matmul" else (lambda a, b: tf.einsum("ip,jp->ij", a, b))
    if not _uses_row_halves(x.shape[-1]):
        return product(x, x)
    half = tf.shape(x)[0] // 2
    return _from_halves(x[:half], x[half:], product)


def _matmul_t(a, b):
    """A B^T over the last two axes."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # TensorFlow backend only: this module is backend-neutral

        return tf.matmul(a, b, transpose_b=True)
    return ops.matmul(a, ops.swapaxes(b, -1, -2))


def _from_halves(a, b, product):
    """The symmetric product of X = [A; B] with itself, from `product` (linear in each factor,
    product(b, a) = product(a, b)^T over the last two axes) of its row halves A and B:
    [[A A^T, A B^T], [B A^T, B B^T]] with B A^T = (A B^T)^T, so three products of half the
    rows do the work of four (3/4 of the FLOPs)."""
    ab = product(a, b)
    top = ops.concatenate([product(a, a), ab], axis=-1)
    bottom = ops.concatenate([ops.swapaxes(ab, -1, -2), product(b, b)], axis=-1)
    return ops.concatenate([top, bottom], axis=-2)


def _uses_row_halves(features) -> bool:
    """Whether a Gram matrix of `features` (None: not known when traced) is built from row halves
    (under TensorFlow only: on other backends the extra ops were not measured to pay)."""
    return features is not None and features >= SYMMETRIC_MIN_FEATURES and keras.backend.backend() == "tensorflow"


_FORMULATION: list[str] = []


def gram_formulation() -> str:
    """ "einsum" or "matmul": whichever computes a 256 x 16384 float32 Gram faster here, timed once per process.

    TensorFlow's oneDNN build runs einsum("ip,jp->ij") and matmul(x, x, transpose_b=True) on
    different kernels, and which is faster depends on the CPU's instruction set
    (benchmarks/cka_throughput.py prints the choice; docs/performance.md).
    """
    if not _FORMULATION:
        import tensorflow as tf  # TensorFlow backend only: this module is backend-neutral

        with tf.init_scope():  # time eagerly even when first called while tracing a tf.function
            _FORMULATION.append(_time_formulations())
    return _FORMULATION[0]


def _time_formulations() -> str:
    import tensorflow as tf  # TensorFlow backend only: this module is backend-neutral

    x = tf.random.stateless_normal([256, 16384], seed=[0, 0])
    kinds = {
        "einsum": tf.function(lambda a: tf.einsum("ip,jp->ij", a, a), autograph=False),
        "matmul": tf.function(lambda a: tf.matmul(a, a, transpose_b=True), autograph=False),
    }
    best = {}
    for kind, fn in kinds.items():
        fn(x).numpy()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(x).numpy()
            times.append(time.perf_counter() - start)
        best[kind] = min(times)
    return min(best, key=best.get)


# Positions (product of the non-batch, non-channel dimensions) from which a layer that
# another layer rescales per channel gets its Gram matrix from per-channel Grams (see
# `layer_grams`): on fewer the (C, n, n) products are too thin to pay off.
CHANNEL_GRAM_MIN_POSITIONS = 256


def channel_grams(x, weights):
    """sum_c w_kc X_c X_c^T for each row w_k of `weights` (m, C), with X_c (n, positions) the
    channel c of (n, ..., C) activations: (m, n, n) in `weights`' dtype.

    One batched product gives every channel's Gram (the FLOPs of one Gram of x), and the weighted
    sums are taken before anything of size (C, n, n) is put together. From row halves when x has
    SYMMETRIC_MIN_FEATURES features or more (`_from_halves`: 3/4 of the FLOPs); the rows are split
    before each half is moved channel-first, so that no slice is copied.
    """
    c = x.shape[-1]

    def channel_first(rows):  # (r, ..., C) -> (C, r, positions)
        return ops.transpose(ops.reshape(rows, (ops.shape(rows)[0], -1, c)), (2, 0, 1))

    def product(a, b):
        return ops.tensordot(weights, ops.cast(_matmul_t(a, b), weights.dtype), axes=1)

    if not _uses_row_halves(int(np.prod(x.shape[1:]))):
        per_channel = channel_first(x)
        return product(per_channel, per_channel)
    half = ops.shape(x)[0] // 2
    return _from_halves(channel_first(x[:half]), channel_first(x[half:]), product)


# The attribute by which a tensor of `tfwd.models.activation_model` names the tensor it is a
# per-channel rescaling of, and the scale (`tag_channel_affine`).
_CHANNEL_AFFINE_TAG = "_tfwd_channel_affine"


def tag_channel_affine(derived, source, scale) -> None:
    """Notes on the tensor `derived` that it is `source` times `scale` per channel (last axis) plus a constant.

    A hint for `CKA.update_state`, read back by `tagged_channel_affine` when both tensors are in
    one list of activations. Tensors that take no attributes (JAX arrays) are left as they are:
    their Grams are then all computed.
    """
    try:
        setattr(derived, _CHANNEL_AFFINE_TAG, (source, scale))
    except AttributeError:
        pass


def tagged_channel_affine(acts) -> dict[int, tuple[int, object]]:
    """`channel_affine` ({j: (i, scale)}) from the tags of `tag_channel_affine` on a list of activations.

    A tag counts where its source is in the list before the tagged tensor and is not itself
    derived: any list of taps, of one model or several concatenated, keeps the hints that apply.
    """
    index = {id(a): i for i, a in enumerate(acts)}
    hints = {}
    for j, a in enumerate(acts):
        source, scale = getattr(a, _CHANNEL_AFFINE_TAG, (None, None))
        i = index.get(id(source)) if source is not None else None
        if i is not None and i < j and i not in hints:
            hints[j] = (i, scale)
    return hints


def channel_derived(acts, channel_affine=None) -> dict[int, tuple[int, object]]:
    """The hints of `channel_affine` ({j: (i, scale)}; None: `tagged_channel_affine(acts)`) that pay off,
    after checking them all."""
    if channel_affine is None:
        channel_affine = tagged_channel_affine(acts)
    derived = {}
    for j, (i, scale) in channel_affine.items():
        if not 0 <= i < j < len(acts) or i in channel_affine:
            raise ValueError(
                f"`channel_affine` derives layer {j} from layer {i}: both must index the {len(acts)} layers, "
                "the source must come first and must not itself be derived."
            )
        x = acts[i]
        if tuple(x.shape[1:]) != tuple(acts[j].shape[1:]) or tuple(ops.shape(scale)) != (x.shape[-1],):
            raise ValueError(
                f"`channel_affine`: layer {j} {tuple(acts[j].shape)} is not a per-channel rescaling of layer {i} "
                f"{tuple(x.shape)} by a scale of shape {tuple(ops.shape(scale))}."
            )
        positions = int(np.prod([d or 0 for d in x.shape[1:-1]])) if len(x.shape) > 2 else 1
        if positions >= CHANNEL_GRAM_MIN_POSITIONS:
            derived[j] = (i, scale)
    return derived


def gram_plan(acts, channel_affine=None) -> list[str]:
    """How `layer_grams` gets each layer's Gram matrix: "derived" (from another layer's
    per-channel Grams, no product of its own), "channel" (per-channel Grams, which a derived layer
    reuses), "full" (one product), and "channel halves" or "halves" when from row halves (3/4 of
    the FLOPs). `channel_affine` as `layer_grams`."""
    derived = channel_derived(acts, channel_affine)
    sources = {i for i, _ in derived.values()}
    plan = []
    for i, a in enumerate(acts):
        if i in derived:
            plan.append("derived")
            continue
        halves = _uses_row_halves(int(np.prod(a.shape[1:])))
        if i in sources:
            plan.append("channel halves" if halves else "channel")
        else:
            plan.append("halves" if halves else "full")
    return plan


def layer_grams(acts, gram_dtype=None, check_finite=True, channel_affine=None):
    """Gram matrices of a list of layers, each shifted by its first example: (L, n, n), float32 for 16-bit Grams.

    `channel_affine` ({j: (i, s)}, see `CKA.update_state`; None: the hints the activations
    carry, `tagged_channel_affine`) says that layer j is layer i times s per channel (the
    last axis) plus a constant, as a BatchNormalization in inference mode is of its input.
    U-centring removes the constant, so K_j = sum_c s_c^2 G_c and K_i = sum_c G_c with
    G_c = X_c X_c^T the Grams of layer i's channels: one batched product of the FLOPs of
    K_i gives both Grams (`channel_grams`), and layer j's activations are not read (for
    layers of CHANNEL_GRAM_MIN_POSITIONS or more positions; smaller ones are computed as usual).
    """
    n = ops.shape(acts[0])[0]
    derived_from = {}  # source layer -> [(derived layer, scale)]
    for j, (i, scale) in sorted(channel_derived(acts, channel_affine).items()):
        derived_from.setdefault(i, []).append((j, scale))
    computed = {}  # derived layer -> its Gram, made with its source's
    grams = []
    for i, a in enumerate(acts):
        if i in computed:
            k = computed.pop(i)
        else:
            # U-centring removes any a1^T + 1b^T term, so subtracting one example from
            # every example leaves U(K) unchanged and changes only the rounding: features
            # with a large common offset (post-ReLU) keep their precision, and a layer
            # that is constant over the batch gives K = 0, hence U(K) = 0, exactly.
            x = a - a[:1]
            if gram_dtype is not None:
                x = ops.cast(x, gram_dtype)
            if i in derived_from:
                dtype = "float32" if x.dtype in ("bfloat16", "float16") else x.dtype
                squares = [ops.square(ops.cast(scale, dtype)) for _, scale in derived_from[i]]
                sums = channel_grams(x, ops.stack([ops.ones_like(squares[0]), *squares]))  # source, then derived
                k = sums[0]
                computed.update((j, sums[m]) for m, (j, _) in enumerate(derived_from[i], start=1))
            else:
                k = gram(ops.reshape(x, (n, -1)))
        if check_finite and keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # TensorFlow backend only: this module is backend-neutral

            k = tf.debugging.assert_all_finite(
                k, f"CKA: layer {i} has NaN or Inf activations (or its Gram matrix overflows)."
            )
        if k.dtype in ("bfloat16", "float16"):
            k = ops.cast(k, "float32")
        grams.append(k)
    return ops.stack(grams)
