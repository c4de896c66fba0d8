"""Where a CKA step's time goes, and how fast tfwd can be against the reference algorithm.

    python benchmarks/cka_breakdown.py [--depth 20] [--rounds 9]

For a CIFAR ResNet (1x, taps="all", n=256), times in turn, once per round:
- forward: the forward pass with every tap computed (each reduced to a number in the graph);
- tfwd Grams: forward + the Gram matrices tfwd computes (per-channel Grams where a BN tap is
  derived from its conv, row halves wherever a layer has 2,048 features or more), with no shift,
  scaling, centring or pair products;
- tfwd step: tfwd's CKA step as the README shows it and bin/cka runs it (BN taps' Grams derived);
- reference: the reference code's algorithm (benchmarks/cka_throughput.py).

Then prints the share of the reference's Gram FLOPs that tfwd computes (g) and the bound it puts on
tfwd / reference when Grams run at the same rate: (F + R) / (F + g R), with F the forward pass and
R the reference's time beyond it (medians). Run it with ONEDNN_MAX_CPU_ISA=AVX2 as well.
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
from cka_throughput import N, ReferenceMinibatchCKA, step_fn  # noqa: E402
from common import interleaved, machine  # noqa: E402

from tfwd import _grams, metrics, models  # noqa: E402


def gram_plan(model, tapped, names):
    """({layer: kind} for the Grams tfwd computes, derived layers left out;
    the features of every layer), from tfwd._grams.gram_plan."""
    acts = tapped(tf.zeros([4, *tapped.inputs[0].shape[1:]]), training=False)  # BN taps name their inputs
    kinds = _grams.gram_plan(acts)
    features = [int(np.prod(a.shape[1:])) for a in acts]
    return {i: kind for i, kind in enumerate(kinds) if kind != "derived"}, features


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(args.depth, 1)
    names = models.tap_names(model, "all")
    tapped = models.activation_model(model, "all")
    plan, features = gram_plan(model, tapped, names)
    reference_flops = sum(2.0 * N * N * p for p in features)
    tfwd_flops = sum(2.0 * N * N * features[i] * (0.75 if kind.endswith("halves") else 1.0) for i, kind in plan.items())
    share = tfwd_flops / reference_flops
    print(
        f"ResNet-{args.depth} (1x): {len(names)} layers, {len(names) - len(plan)} Grams derived; Gram FLOPs per "
        f"step: tfwd {tfwd_flops / 1e9:.1f} G, reference {reference_flops / 1e9:.1f} G (share g = {share:.3f})"
    )

    @tf.function(autograph=False)
    def forward(x):
        return [tf.reduce_sum(a) for a in tapped(x, training=False)]

    @tf.function(autograph=False)
    def grams(x):
        acts = tapped(x, training=False)
        out = []
        for i, kind in plan.items():
            if kind.startswith("channel"):
                k = _grams.channel_grams(acts[i], tf.ones([2, acts[i].shape[-1]]))  # the conv's and the BN's
            else:
                k = _grams.gram(tf.reshape(acts[i], (N, -1)))
            out.append(tf.reduce_sum(k))
        return out

    step = step_fn([model], "all", lambda L: metrics.CKA(num_layers=L))
    reference = step_fn([model], "all", ReferenceMinibatchCKA)
    x = tf.random.uniform([N, 32, 32, 3])
    labels = ["forward", "tfwd Grams", "tfwd step", "reference"]
    times = interleaved([forward, grams, step, reference], x, rounds=args.rounds)
    print(f"\nSeconds per step of n={N}, {args.rounds} rounds (each column once per round, in turn)")
    print("| | median | min | max |")
    print("| --- | --- | --- | --- |")
    for label, t in zip(labels, times):
        print(f"| {label} | {np.median(t):.3f} | {min(t):.3f} | {max(t):.3f} |")
    forward_s, reference_s = float(np.median(times[0])), float(np.median(times[3]))
    ratios = np.asarray(times[3]) / np.asarray(times[2])
    print(f"\ntfwd / reference: median of rounds {np.median(ratios):.2f} ({ratios.min():.2f}-{ratios.max():.2f})")
    bound = reference_s / (forward_s + share * (reference_s - forward_s))  # F + R = the reference's whole step
    print(f"bound at equal Gram rates, (F + R) / (F + g R): {bound:.2f}")


if __name__ == "__main__":
    main()
