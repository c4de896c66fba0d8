"""What `bin/train --cka_every=10` (tfwd.callbacks.CKAMonitor) adds to a training, as a ratio.

    python benchmarks/cka_monitor_cost.py [--depth=38] [--train_examples=3125] [--images=512] [--every=10]
    python benchmarks/cka_monitor_cost.py --quick   # a few timed steps, one round: about two minutes

Trains ResNet-38 (1x) on 3,125 CIFAR-10 images with bin/train's loop (batch 128) and, in the
same process and in turn, times one training epoch and one measurement of the monitor on 512
test images (its heatmap, the residual stream's first-PC Gram matrices, TensorBoard and the
history file), each after a warm-up call that traces. The monitor's cost per training epoch
is its time / `every`; the ratio to the epoch's time is what it adds. The target: < 10%.
--quick times a few steps and scales them to the epoch (steps cost the same).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import machine  # noqa: E402

from tfwd import callbacks, runs, training  # noqa: E402
from tfwd.data import Data, DataConfig  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=38)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--train_examples", type=int, default=3125)
    parser.add_argument("--images", type=int, default=512, help="test images the monitor measures")
    parser.add_argument("--every", type=int, default=10, help="epochs between measurements")
    parser.add_argument("--rounds", type=int, default=2, help="timed (epoch, measurement) pairs")
    parser.add_argument("--steps", type=int, default=None, help="steps timed per epoch (default: the whole epoch)")
    parser.add_argument("--quick", action="store_true", help="--steps=4 --rounds=1")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 4, 1
    print(f"machine: {machine()}", flush=True)
    tc = runs.TrainConfig(epochs=1000, batch_size=128)  # epochs only bound the input pipeline
    data = Data(DataConfig(train_examples=args.train_examples))
    steps = data.steps_per_epoch(tc.batch_size)
    timed_steps = min(args.steps or steps, steps)
    images = np.concatenate([x.numpy() for x, _ in data.eval_dataset("test", 256, examples=args.images)])

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = runs.ModelConfig(args.depth, args.width).build(data.num_classes, data.image_size, tc.weight_decay)
    optimizer = training.make_optimizer(tc, steps)
    optimizer.build(model.trainable_variables)
    loop = training._Loop(model, optimizer, strategy, tc.batch_size)
    iterator = iter(
        strategy.distribute_datasets_from_function(lambda ctx: data.train_dataset(tc.batch_size, 0, 0, tc.epochs))
    )

    with tempfile.TemporaryDirectory() as scratch:
        monitor = callbacks.CKAMonitor(
            images,
            every=1,
            log_dir=os.path.join(scratch, "tensorboard"),
            history_path=os.path.join(scratch, callbacks.HISTORY),
        )
        monitor.set_model(model)

        def epoch() -> float:
            start = time.perf_counter()
            loop.train_epoch(iterator, timed_steps, None)
            return (time.perf_counter() - start) * steps / timed_steps

        start = time.perf_counter()
        loop.train_epoch(iterator, timed_steps, None)
        print(f"warm-up: {timed_steps} training steps {time.perf_counter() - start:.1f} s (traces)", flush=True)

        def measurement() -> float:
            start = time.perf_counter()
            monitor.on_epoch_end(len(monitor.epochs))
            return time.perf_counter() - start

        print(f"warm-up: measurement {measurement():.1f} s (traces)", flush=True)
        epochs, measurements = [], []
        for r in range(args.rounds):
            epochs.append(epoch())
            measurements.append(measurement())
            print(f"  round {r + 1}: epoch {epochs[-1]:.1f} s, measurement {measurements[-1]:.1f} s", flush=True)
        # Where a measurement's time goes (one more of each part, after the timed rounds).
        start = time.perf_counter()
        block = callbacks.find_block(monitor.measure(), monitor.names)
        heatmap = time.perf_counter() - start
        start = time.perf_counter()
        monitor.first_pc_fractions(block)
        first_pc = time.perf_counter() - start

    epoch_s, measure_s = float(np.median(epochs)), float(np.median(measurements))
    ratio = measure_s / (args.every * epoch_s)
    scaled = f", {timed_steps} of its {steps} steps timed and scaled" if timed_steps < steps else ""
    print(
        f"\nResNet-{args.depth} ({args.width:g}x), {steps * tc.batch_size} training images per epoch (batch 128"
        f"{scaled}); monitor on {args.images} test images, {len(monitor.names)} layers, every {args.every} epochs"
    )
    print("| training epoch (s) | measurement (s) | heatmap (s) | first-PC Grams (s) | added to training |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {epoch_s:.1f} | {measure_s:.1f} | {heatmap:.1f} | {first_pc:.1f} | {100 * ratio:.1f}% |")


if __name__ == "__main__":
    main()
