"""What saving a checkpoint after every epoch costs bin/train, against --checkpoint_seconds=60.

    python benchmarks/checkpoint_cost.py [--depth=38] [--examples=128] [--epochs=40]

Trains the same run (ResNet-38 1x on 128 CIFAR-10 images: one SGD step per epoch, the
demo's cell) with a checkpoint after every epoch and with one every 60 seconds, twice
each, alternating, in one process. Reports the wall time per epoch after the first
(which traces), from the moment the first epoch ends to the last one's end, and the
time the epochs themselves took (history.csv's seconds): the difference is what
bin/train spends between epochs.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from common import machine  # noqa: E402

from tfwd import runs, training  # noqa: E402
from tfwd.data import DataConfig  # noqa: E402


class _EpochClock:
    """Records when each epoch's history row is written (training.runs.write_csv is called once per epoch)."""

    def __init__(self):
        self.times: list[float] = []
        self._write = runs.write_csv

    def __enter__(self):
        def write(*args, **kwargs):
            self._write(*args, **kwargs)
            self.times.append(time.perf_counter())

        training.runs.write_csv = write
        return self

    def __exit__(self, *exc):
        training.runs.write_csv = self._write


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=38)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    config = runs.RunConfig(
        runs.ModelConfig(args.depth, 1.0),
        DataConfig(train_examples=args.examples),
        runs.TrainConfig(epochs=args.epochs),
    )
    between, inside = {0.0: [], 60.0: []}, {0.0: [], 60.0: []}
    with tempfile.TemporaryDirectory() as scratch:
        for trial in range(2):
            for seconds in (0.0, 60.0):
                out = os.path.join(scratch, f"{trial}-{seconds:g}")
                with _EpochClock() as clock:
                    run_dir = training.train(config, out, verbose=0, tensorboard=False, checkpoint_seconds=seconds)
                ends = np.array(clock.times)
                with open(os.path.join(run_dir, runs.HISTORY)) as f:
                    epoch_seconds = [float(r["seconds"]) for r in csv.DictReader(f)][1:]
                between[seconds].append((ends[-1] - ends[0]) / (len(ends) - 1))
                inside[seconds].append(float(np.mean(epoch_seconds)))
                print(f"  checkpoint_seconds={seconds:g}: {between[seconds][-1] * 1000:.0f} ms per epoch", flush=True)
    print(f"\nResNet-{args.depth} (1x), {args.examples} images, {args.epochs} epochs, two runs each")
    print("| checkpoint_seconds | wall ms per epoch | in the epoch | between epochs |")
    print("| --- | --- | --- | --- |")
    for seconds in (0.0, 60.0):
        wall, epoch = np.median(between[seconds]), np.median(inside[seconds])
        print(f"| {seconds:g} | {wall * 1000:.0f} | {epoch * 1000:.0f} | {(wall - epoch) * 1000:.0f} |")
    ratio = np.median(between[0.0]) / np.median(between[60.0])
    print(f"\nevery epoch / every 60 s: {ratio:.2f}x the wall time per epoch")


if __name__ == "__main__":
    main()
