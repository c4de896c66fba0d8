"""Helpers shared by the benchmarks: timing, FLOP counts and the machine's matmul rate."""

from __future__ import annotations

import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def machine() -> str:
    """One line naming the machine, its kind (AVX-512 or AVX2 only) and its vector flags, for the results tables."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu_flags()
    kind = "AVX-512" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else "no AVX2"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    limited = f", oneDNN limited to {isa}" if isa else ""
    present = " ".join(f for f in VECTOR_FLAGS if f in flags)
    return (
        f"{cpu} ({kind}{limited}; flags: {present}), {os.cpu_count()} cores, {platform.system()}, "
        f"TF {tf.__version__}, Keras {keras.__version__}"
    )


def _finished(out):
    """`out` with every tensor in it read back, so that a timing includes the work that made it."""
    return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)


def rate(fn, *args, items: int, repeats: int = 5, warmup: int = 1) -> float:
    """Items per second of fn(*args), best of `repeats` after `warmup` calls."""
    for _ in range(warmup):
        fn(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _finished(fn(*args))
        best = min(best, time.perf_counter() - start)
    return items / best


def interleaved(fns, *args, rounds: int) -> list[list[float]]:
    """Seconds of each fn(*args) in each round: every fn once per round, in turn, after one warm-up call each.

    On a shared machine whose speed drifts, a ratio of two fns timed within one round
    compares like with like; best-of-N rates (`rate`) taken one after the other need not.
    """
    for fn in fns:
        _finished(fn(*args))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            _finished(fn(*args))
            spent.append(time.perf_counter() - start)
    return times


def matmul_flops_per_second(size: int = 2048) -> float:
    """float32 FLOP/s of a large square matmul: the machine's practical arithmetic peak."""
    a = tf.random.normal([size, size])
    mm = tf.function(lambda a: tf.matmul(a, a))
    return rate(mm, a, items=2 * size**3, repeats=5, warmup=2)


def forward_flops(model: keras.Model) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image through the model's convs and dense layers."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2.0 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += 2.0 * cin * cout
    return total


def gram_flops(feature_sizes, n: int) -> float:
    """FLOPs per image of the Gram matrices X X^T of layers with p features, batch n."""
    return float(sum(2.0 * n * p for p in feature_sizes))


def feature_sizes(model: keras.Model, names) -> list[int]:
    return [int(np.prod(model.get_layer(n).output.shape[1:])) for n in names]
