"""bin/train's training loop against a plain keras Model.fit of the same model on the same data.

    python benchmarks/training_throughput.py [--examples=4096] [--depth=20] [--width=1]

tfwd's loop (tfwd.training: tf.data pipeline with per-example seeded augmentation,
distributed input, one compiled step per batch) against Model.fit on the same
images held in memory as one NumPy array, without augmentation, same model,
optimizer and batch size. Both in one process; images/s of the best of a few
epochs after a warm-up epoch. The target: tfwd / fit >= 0.95 (the input pipeline
is not the bottleneck). A diagnostic row runs the same loop with the augmentation replaced
by the identity, to show what the per-example augmentation costs.
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

import tfwd.data  # noqa: E402
from tfwd import runs, training  # noqa: E402
from tfwd.data import Data, DataConfig  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each (after one warm-up epoch)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tc = runs.TrainConfig(epochs=args.epochs + 1, batch_size=128)
    data = Data(DataConfig(train_examples=args.examples))
    steps = data.steps_per_epoch(tc.batch_size)
    images = np.concatenate([x for x, _ in data.eval_dataset("train", 512)])
    labels = data.labels("train")
    model_config = runs.ModelConfig(args.depth, args.width)

    def tfwd_loop_unaugmented():
        # Diagnostic: the same loop with the augmentation replaced by the identity, to see what the
        # per-example augmentation in tf.data costs on this machine (bin/train always augments).
        augment = tfwd.data.cifar_augment
        tfwd.data.cifar_augment = lambda image, seed: image
        try:
            return tfwd_loop()
        finally:
            tfwd.data.cifar_augment = augment

    def tfwd_loop():
        keras.utils.set_random_seed(0)
        strategy = tf.distribute.get_strategy()
        model = model_config.build(data.num_classes, data.image_size, tc.weight_decay)
        optimizer = training.make_optimizer(tc, steps)
        optimizer.build(model.trainable_variables)
        loop = training._Loop(model, optimizer, strategy, tc.batch_size)
        iterator = iter(
            strategy.distribute_datasets_from_function(lambda ctx: data.train_dataset(tc.batch_size, 0, 0, tc.epochs))
        )
        times = []
        for _ in range(tc.epochs):
            start = time.perf_counter()
            loop.train_epoch(iterator, steps, None)
            times.append(time.perf_counter() - start)
        return times

    def keras_fit():
        keras.utils.set_random_seed(0)
        model = model_config.build(data.num_classes, data.image_size, tc.weight_decay)
        model.compile(
            training.make_optimizer(tc, steps),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        times = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.start)

        n = steps * tc.batch_size
        model.fit(
            images[:n],
            labels[:n],
            batch_size=tc.batch_size,
            epochs=tc.epochs,
            shuffle=True,
            verbose=0,
            callbacks=[Timer()],
        )
        return times

    results = {}
    for name, fn in (
        ("Model.fit, in-memory arrays", keras_fit),
        ("tfwd loop (bin/train)", tfwd_loop),
        ("tfwd loop without augmentation (diagnostic)", tfwd_loop_unaugmented),
        ("Model.fit, in-memory arrays (again)", keras_fit),
    ):
        times = fn()[1:]  # the first epoch traces and warms up
        results[name] = steps * tc.batch_size / min(times)
        print(f"  {name}: {results[name]:.0f} images/s", flush=True)
    fit = max(v for k, v in results.items() if k.startswith("Model.fit"))
    ours = results["tfwd loop (bin/train)"]
    print(f"\nResNet-{args.depth} ({args.width:g}x), batch 128, {steps * tc.batch_size} CIFAR-10 images per epoch")
    print("| loop | images/s | ratio to Model.fit |")
    print("| --- | --- | --- |")
    print(f"| Model.fit (best of two runs) | {fit:.0f} | 1.00 |")
    print(f"| tfwd (bin/train) | {ours:.0f} | {ours / fit:.2f} |")
    plain = results["tfwd loop without augmentation (diagnostic)"]
    print(f"| tfwd without augmentation (diagnostic) | {plain:.0f} | {plain / fit:.2f} |")


if __name__ == "__main__":
    main()
