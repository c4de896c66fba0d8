"""What the block-deletion schedule costs: one gated model against a model built per deletion.

    python benchmarks/deletion_cost.py [--depth=38] [--width=1] [--examples=1000]

tfwd.prune_blocks.stagewise_deletion evaluates every deletion of the paper's Figure 5
schedule with one traced function of a gated model (tfwd.prune_blocks.gated_model),
whose gates change between deletions. The alternative, which it replaced, builds each
pruned model with delete_blocks and traces it anew. Both are timed on the same random
ResNet and random images (batches of 500), alternating, twice each, in one process;
the accuracies of every deletion must agree. Compare the ratio, not the absolutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import machine  # noqa: E402

from tfwd import models, prune_blocks  # noqa: E402


def per_model(model, dataset):
    """The schedule as it ran before the gates: a pruned model, and a trace, per deletion."""
    steps, _ = prune_blocks.deletion_schedule(model)
    prune_blocks.accuracy(model, dataset)
    return [prune_blocks.accuracy(prune_blocks.delete_blocks(model, d), dataset)[0] for _, d in steps]


def gated(model, dataset):
    return [s["accuracy"] for s in prune_blocks.stagewise_deletion(model, dataset)["steps"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=38)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(args.depth, args.width)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.examples, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, args.examples).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(500)
    steps = len(prune_blocks.deletion_schedule(model)[0])
    times = {"per_model": [], "gated": []}
    results = {}
    for _ in range(2):
        for name, fn in (("per_model", per_model), ("gated", gated)):
            start = time.perf_counter()
            results[name] = fn(model, dataset)
            times[name].append(time.perf_counter() - start)
            print(f"  {name}: {times[name][-1]:.1f} s", flush=True)
    assert results["per_model"] == results["gated"], results
    best = {k: min(v) for k, v in times.items()}
    model_name = f"ResNet-{args.depth} ({args.width:g}x)"
    print(f"\n{model_name}, {steps} deletions + the full model, {args.examples} images (s, best of 2)")
    print("| a model per deletion | one gated model | ratio |")
    print("| --- | --- | --- |")
    print(f"| {best['per_model']:.1f} | {best['gated']:.1f} | {best['per_model'] / best['gated']:.2f} |")


if __name__ == "__main__":
    main()
