"""tf.distribute strategies from one `--strategy` name, and chief/worker file handling."""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "default", tpu: str | None = None) -> tf.distribute.Strategy:
    """Returns the tf.distribute strategy called `name`.

    Args:
        name: "default" (one device), "mirrored" (all local devices),
            "multi_worker" (MultiWorkerMirroredStrategy; the cluster comes from the
            TF_CONFIG environment variable), or "tpu".
        tpu: TPU name or address for TPUClusterResolver ("" or None: the local TPU).

    Raises:
        ValueError: for an unknown name, or `tpu` given without name="tpu".
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    if tpu and name != "tpu":
        raise ValueError(f"`tpu`={tpu!r} is only used with strategy='tpu'. Received: strategy={name!r}")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes results (always, outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_dir(run_dir: str, strategy: tf.distribute.Strategy) -> str:
    """A private scratch folder for a non-chief worker's copy of collective saves."""
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"tfwd-{os.path.basename(run_dir)}-{resolver.task_type}{resolver.task_id}-")


def remove_worker_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
