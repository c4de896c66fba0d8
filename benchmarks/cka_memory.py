"""Memory of CKA jobs: flat over long streams, independent of the dataset size; what fits in 16 GiB.

    python benchmarks/cka_memory.py [--quick]

1. Peak RSS of `bin/cka` (a trained ResNet-20, taps="all", n=256) on 2,000 and on
   10,000 test examples: streaming means nothing grows with the data.
2. One long job, 10 reshuffled passes over 10,000 examples, run twice (float64 and
   float32 accumulators): resident memory after every pass, and the largest
   difference between the two CKA matrices.
3. Peak RSS of one CKA step (n=256, taps="all") for models of growing size, each
   in a fresh process: the largest that fits in 16 GiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_gib(argv: list[str]) -> float:
    """Runs a command and returns its peak resident set size (GiB), from wait4."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 2**20


def make_run(out_dir: str) -> str:
    from tfwd import runs, training
    from tfwd.data import DataConfig

    config = runs.RunConfig(
        runs.ModelConfig(20, 1), DataConfig(train_examples=1024), runs.TrainConfig(epochs=2, batch_size=128)
    )
    return training.train(config, out_dir, verbose=0, tensorboard=False)


def dataset_size_table(run_dir: str, sizes) -> None:
    print("\nPeak RSS of bin/cka, ResNet-20 (1x), taps='all', n=256, 1 pass")
    print("| test examples | peak RSS (GiB) |")
    print("| --- | --- |")
    for n in sizes:
        out = tempfile.mkdtemp()
        rss = peak_rss_gib(
            [
                sys.executable,
                os.path.join(ROOT, "bin", "cka"),
                f"--runs={run_dir}",
                f"--examples={n}",
                "--passes=1",
                f"--out_dir={out}/o",
            ]
        )
        print(f"| {n} | {rss:.2f} |", flush=True)


def long_job(run_dir: str, examples: int, passes: int) -> None:
    import numpy as np

    from tfwd import cka, runs

    run = runs.Run(run_dir)
    data = run.data()
    results, memory = {}, {}
    for dtype in ("float64", "float32"):
        trace = []

        def for_pass(p, trace=trace):
            trace.append(rss_gib())
            return data.eval_dataset("test", 256, examples, shuffle_seed=p)

        results[dtype] = cka.cka_matrices([run.model()], for_pass, passes=passes, dtype=dtype)["blocks"][(0, 0)]
        trace.append(rss_gib())
        memory[dtype] = trace
    diff = float(np.abs(results["float64"] - results["float32"]).max())
    print(
        f"\n{passes} passes over {examples} examples, ResNet-20 (1x), taps='all' ({results['float64'].shape[0]} layers)"
    )
    print("| accumulator | RSS after pass 1 (GiB) | RSS after the last pass (GiB) | growth per pass (MiB) |")
    print("| --- | --- | --- | --- |")
    for dtype, trace in memory.items():
        growth = (trace[-1] - trace[1]) * 1024 / max(1, len(trace) - 2)
        print(f"| {dtype} | {trace[1]:.2f} | {trace[-1]:.2f} | {growth:.1f} |")
    print(f"max |CKA(float64) - CKA(float32)| = {diff:.2e}")


def model_size_table(configs) -> None:
    print("\nPeak RSS of one CKA step at n=256, taps='all' (fresh process each)")
    print("| model | layers | peak RSS (GiB) | fits in 16 GiB |")
    print("| --- | --- | --- | --- |")
    for depth, width in configs:
        script = textwrap.dedent(
            f"""
            import tensorflow as tf
            from tfwd import cka, models
            m = models.cifar_resnet({depth}, {width})
            x = tf.random.uniform([256, 32, 32, 3])
            cka.cka_matrices([m], lambda p: tf.data.Dataset.from_tensors((x, tf.zeros([256]))), passes=1)
            """
        )
        layers = 21 * ((depth - 2) // 6) + 7
        rss = peak_rss_gib([sys.executable, "-c", script])
        print(f"| ResNet-{depth} ({width:g}x) | {layers} | {rss:.2f} | {'yes' if rss < 16 else 'no'} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a check of the script")
    args = parser.parse_args()
    from common import machine

    print(f"machine: {machine()}")
    run_dir = make_run(tempfile.mkdtemp())
    dataset_size_table(run_dir, (500, 1000) if args.quick else (2000, 10000))
    long_job(run_dir, *((1000, 2) if args.quick else (10000, 10)))
    model_size_table(
        [(20, 1), (20, 2)]
        if args.quick
        else [(20, 1), (56, 1), (110, 1), (164, 1), (20, 4), (38, 4), (38, 8), (38, 10)]
    )


if __name__ == "__main__":
    main()
