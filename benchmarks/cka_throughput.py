"""CKA throughput against bare inference and the arithmetic floor; many models in one pass.

    python benchmarks/cka_throughput.py [--quick]

Table 1, per model (taps="all", n=256), in images/s (the best of `--rounds` rounds, each of
which times every column once, in turn; the reference / tfwd ratio of each round is printed
too, since on a shared machine a ratio within a round is steadier than one of two best-ofs):
- inference: the model's forward pass alone;
- reference algorithm: the paper's reference code's MinibatchCKA as written
  (matmul(x, x^T), float32 U-centring and accumulation), re-implemented here;
- tfwd, every Gram: inference + tfwd.metrics.CKA with one Gram matrix per layer
  (update_state(acts, channel_affine={}));
- tfwd CKA: the README's call, CKA().update_state(acts(x, training=False)) with
  acts = tfwd.models.activation_model(model, "all"), as bin/cka runs it: each BN tap's
  Gram comes from its input conv's per-channel Grams (the activation model's outputs
  carry the pairs), and the largest change that makes to any CKA value ("change");
- floor: (forward FLOPs + Gram FLOPs of every layer + pair-product FLOPs) / the FLOP
  rate of a large float32 matmul measured in the same run (an algorithm that skips
  Grams, as the BN reuse does, can beat it: floor / tfwd below 1);
- tfwd with bfloat16 Grams (CKA(gram_dtype="bfloat16")), and the largest change it
  makes to any CKA value of the matrix (random inputs, untrained model); on a CPU
  without native bfloat16 the metric falls back to float32 (and says so).

Run it once more with ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 machine to see what TF's
kernels do without AVX-512 (the clock and caches stay those of the machine).

Table 2: all within- and cross-model CKA matrices of K models, one pass with
stacked taps against the K(K-1)/2 pairs done one at a time.

All numbers come from one process on one machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import (  # noqa: E402
    feature_sizes,
    forward_flops,
    gram_flops,
    interleaved,
    machine,
    matmul_flops_per_second,
    rate,
)

from tfwd import _grams, metrics, models  # noqa: E402

N = 256


class ReferenceMinibatchCKA:
    """The reference code's algorithm (efficient_CKA.MinibatchCKA): float32, matmul(x, x^T), no 1/(n(n-3))."""

    def __init__(self, num_layers):
        self.acc = tf.Variable(tf.zeros([num_layers, num_layers]))

    def update_state(self, acts):
        grams = []
        for a in acts:
            x = tf.reshape(a, [tf.shape(a)[0], -1])
            n = tf.cast(tf.shape(x)[0], tf.float32)
            k = tf.linalg.set_diag(tf.matmul(x, x, transpose_b=True), tf.zeros([tf.shape(x)[0]]))
            means = tf.reduce_sum(k, 0) / (n - 2)
            means -= tf.reduce_sum(means) / (2 * (n - 1))
            k = tf.linalg.set_diag(k - means[:, None] - means[None, :], tf.zeros([tf.shape(x)[0]]))
            grams.append(tf.reshape(k, [-1]))
        g = tf.stack(grams)
        self.acc.assign_add(tf.matmul(g, g, transpose_b=True))


def step_fn(model_list, taps, metric_cls, every_gram=False):
    """One minibatch's forward pass and metric update, as the README shows it; every_gram: no Gram derived."""
    tapped = [models.activation_model(m, taps) for m in model_list]
    names = [models.tap_names(m, taps) for m in model_list]
    metric = metric_cls(sum(map(len, names)))

    @tf.function
    def step(x):
        acts = []
        for t in tapped:
            acts += t(x, training=False)
        if every_gram:
            metric.update_state(acts, channel_affine={})
        else:
            metric.update_state(acts)

    step.metric = metric
    return step


def pair_step_fn(a, b, taps):
    ta, tb = models.activation_model(a, taps), models.activation_model(b, taps)
    metric = metrics.CKA((len(ta.outputs), len(tb.outputs)))

    @tf.function
    def step(x):
        metric.update_state(ta(x, training=False), tb(x, training=False))

    return step


def throughput_table(configs, peak, repeats):
    x = tf.random.uniform([N, 32, 32, 3])
    rows, rounds = [], []
    for depth, width in configs:
        keras.utils.set_random_seed(0)
        model = models.cifar_resnet(depth, width)
        names = models.tap_names(model, "all")
        infer = tf.function(lambda x, model=model: model(x, training=False))
        reference = step_fn([model], "all", ReferenceMinibatchCKA)
        every_gram = step_fn([model], "all", lambda L: metrics.CKA(num_layers=L), every_gram=True)
        exact = step_fn([model], "all", lambda L: metrics.CKA(num_layers=L))
        fast = step_fn([model], "all", lambda L: metrics.CKA(num_layers=L, gram_dtype="bfloat16"))
        times = interleaved([infer, reference, every_gram, exact, fast], x, rounds=repeats)
        r_inf, r_ref, r_every, r_cka, r_bf16 = (N / min(t) for t in times)
        ratios = np.asarray(times[1]) / np.asarray(times[3])  # reference / tfwd, round by round
        every_ratios = np.asarray(times[1]) / np.asarray(times[2])
        delta = float(np.abs(exact.metric.result().numpy() - fast.metric.result().numpy()).max())
        reuse = float(np.abs(exact.metric.result().numpy() - every_gram.metric.result().numpy()).max())
        flops = forward_flops(model) + gram_flops(feature_sizes(model, names), N) + 2.0 * len(names) ** 2 * N
        floor = peak / flops
        rows.append(
            (f"ResNet-{depth} ({width:g}x)", len(names), r_inf, r_ref, r_every, r_cka, reuse, floor, r_bf16, delta)
        )
        rounds.append((rows[-1][0], ratios, every_ratios, floor * np.asarray(times[3]) / N))  # and floor / tfwd
        print(f"  measured {rows[-1][0]}", flush=True)
    print("\nCKA throughput, taps='all', n=256 (images/s)")
    print(
        "| model | layers | inference | reference algorithm | tfwd, every Gram | tfwd CKA | change | floor "
        "| floor / tfwd | tfwd / reference | tfwd, bfloat16 Grams | max abs CKA change |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, layers, r_inf, r_ref, r_every, r_cka, reuse, floor, r_bf16, delta in rows:
        print(
            f"| {name} | {layers} | {r_inf:.0f} | {r_ref:.0f} | {r_every:.0f} | {r_cka:.0f} | {reuse:.0e} | "
            f"{floor:.0f} | {floor / r_cka:.2f} | {r_cka / r_ref:.2f} | {r_bf16:.0f} | {delta:.1e} |"
        )
    print(f"\nRatios in each of {repeats} rounds (every column timed once per round, in turn)")
    for name, ratios, every_ratios, floors in rounds:
        print(f"  {name}, tfwd / reference: {' '.join(f'{r:.2f}' for r in ratios)}; median {np.median(ratios):.2f}")
        print(
            f"  {name}, tfwd every Gram / reference: {' '.join(f'{r:.2f}' for r in every_ratios)}; "
            f"median {np.median(every_ratios):.2f}"
        )
        print(f"  {name}, floor / tfwd: {' '.join(f'{r:.2f}' for r in floors)}; median {np.median(floors):.2f}")


def many_models_table(ks, depth, repeats):
    x = tf.random.uniform([N, 32, 32, 3])
    print(f"\nAll CKA matrices of K ResNet-{depth} (1x) models, taps='all', one minibatch of n=256 (seconds)")
    print("| K | one pass, stacked taps | pairs one at a time | pairs / one pass | one pass / K |")
    print("| --- | --- | --- | --- | --- |")
    for k in ks:
        keras.utils.set_random_seed(k)
        model_list = [models.cifar_resnet(depth) for _ in range(k)]
        joint_step = step_fn(model_list, "all", lambda L: metrics.CKA(num_layers=L))
        joint = 1.0 / rate(joint_step, x, items=1, repeats=repeats)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        steps = [pair_step_fn(model_list[i], model_list[j], "all") for i, j in pairs]
        one_at_a_time = sum(1.0 / rate(s, x, items=1, repeats=repeats) for s in steps)
        print(
            f"| {k} | {joint:.2f} | {one_at_a_time:.2f} | {one_at_a_time / joint:.2f} | {joint / k:.3f} |", flush=True
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ResNet-20 (1x) and K = 2, 4 only")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds of table 1 (each column once per round)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    peak = matmul_flops_per_second()
    print(f"float32 2048^3 matmul: {peak / 1e9:.0f} GFLOP/s")
    print(f"Gram formulation chosen by tfwd._grams.gram_formulation(): {_grams.gram_formulation()}")
    print(f"native bfloat16 (AVX512_BF16 or AMX): {_grams.native_bfloat16()}")
    configs = [(20, 1)] if args.quick else [(20, 1), (20, 4), (56, 1)]
    throughput_table(configs, peak, repeats=args.rounds)
    many_models_table([2, 4] if args.quick else [2, 4, 8], 14, repeats=2)


if __name__ == "__main__":
    main()
