"""Training one model into a resumable run directory."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfwd import distribute, faults, runs
from tfwd.checkpoints import Checkpoints
from tfwd.data import Data

# The paper's recipes (reference code): CIFAR (cifar_train.py, He et al. 2016) and
# ImageNet (large_scale_training/imagenet_train.py: batch 256, lr 0.1, 120 epochs,
# L2 5e-5), both SGD with momentum 0.9 and cosine decay.
RECIPES = {
    "cifar_resnet": runs.TrainConfig(epochs=300, batch_size=128, learning_rate=0.1, weight_decay=1e-4),
    "imagenet_resnet": runs.TrainConfig(epochs=120, batch_size=256, learning_rate=0.1, weight_decay=5e-5),
}


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def _compile(model: keras.Model, config: runs.TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch), alpha=0.0
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    optimizer.build(model.trainable_variables)
    return optimizer


class _Checkpointer(keras.callbacks.Callback):
    """Checks the loss, records the epoch's history, and saves a checkpoint after every epoch."""

    def __init__(self, checkpoints, epoch_var, history_var, history, run_dir, is_chief):
        super().__init__()
        self.checkpoints = checkpoints
        self.epoch_var, self.history_var, self.history = epoch_var, history_var, history
        self.run_dir, self.is_chief = run_dir, is_chief
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if not np.isfinite(logs.get("loss", 0.0)):
            raise TrainingDivergedError(
                f"The training loss is {logs.get('loss')} at epoch {epoch + 1}: training diverged. The last good "
                f"checkpoint (epoch {int(self.epoch_var.numpy())}) is kept in {self.run_dir}; lower "
                "--learning_rate and rerun with --overwrite."
            )
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        row["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
        row["seconds"] = round(time.time() - self._start, 2)
        self.history.append(row)
        faults.crash_point("before_checkpoint", epoch + 1)
        self.epoch_var.assign(epoch + 1)
        self.history_var.assign(json.dumps(self.history))
        self.checkpoints.save(epoch + 1)
        if self.is_chief:
            runs.write_csv(os.path.join(self.run_dir, runs.HISTORY), self.history)
        faults.crash_point("after_checkpoint", epoch + 1)


def run_state(run_dir: str, config: runs.RunConfig, overwrite: bool) -> str:
    """What training must do in `run_dir`: "new", "resume" or "finished" ("new" with overwrite).

    Raises:
        runs.RunError: if the directory holds a run with other settings (and not `overwrite`).
    """
    if overwrite or not os.path.exists(os.path.join(run_dir, runs.CONFIG)):
        return "new"
    diff = runs.read_config(run_dir).differences(config)
    if diff:
        raise runs.RunError(
            f"{run_dir} holds a run with other settings ({'; '.join(diff)}). Use --overwrite to replace it, "
            "or another --out_dir."
        )
    return "finished" if os.path.exists(os.path.join(run_dir, runs.RESULTS)) else "resume"


def _create_run_dir(run_dir: str, config: runs.RunConfig, overwrite: bool) -> None:
    try:
        if overwrite and os.path.exists(run_dir):
            shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        if not os.path.exists(os.path.join(run_dir, runs.CONFIG)):
            runs.write_json(os.path.join(run_dir, runs.CONFIG), config.to_dict())
    except OSError as e:
        raise runs.RunError(f"Cannot write the run directory {run_dir}: {e.strerror or e}. Choose a writable --out_dir.") from e


def train(
    config: runs.RunConfig,
    out_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    overwrite: bool = False,
    verbose: int | None = None,
    tensorboard: bool = True,
) -> str:
    """Trains a model as `config` says into `out_dir/config.name`, resuming if it can.

    Args:
        config: model, data and training settings.
        out_dir: parent folder of run directories.
        strategy: a tf.distribute strategy; None for the default one.
        overwrite: delete an existing run directory of that name first.
        verbose: Keras progress output: 0 silent, 1 progress bar, 2 one line per
            epoch; None picks 1 on a terminal, else 2.
        tensorboard: write TensorBoard logs.

    Returns:
        The run directory. A finished run is left as it is.

    Raises:
        runs.RunError: if the run directory holds another run.
        TrainingDivergedError: if the loss becomes non-finite.
        tfwd.data.DataNotFoundError: if the dataset is not on disk.
    """
    config.model.validate()
    config.train.validate()
    strategy = strategy or tf.distribute.get_strategy()
    is_chief = distribute.is_chief(strategy)
    run_dir = os.path.join(out_dir, config.name)
    if is_chief and run_state(run_dir, config, overwrite) == "finished":
        logging.info("Run %s is already finished; pass --overwrite to train it again.", run_dir)
        return run_dir

    tc = config.train
    data = Data(config.data)  # fails on a missing dataset before anything is written
    steps = data.steps_per_epoch(tc.batch_size)
    if is_chief:
        _create_run_dir(run_dir, config, overwrite)
    keras.utils.set_random_seed(tc.seed)
    if tc.deterministic:
        tf.config.experimental.enable_op_determinism()
    with strategy.scope():
        model = config.model.build(data.num_classes, data.image_size, tc.weight_decay)
        optimizer = _compile(model, tc, steps)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        history_var = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, history=history_var)
    ckpt_dir = os.path.join(run_dir, runs.CHECKPOINTS) if is_chief else distribute.worker_dir(run_dir, strategy)
    checkpoints = Checkpoints(checkpoint, ckpt_dir)
    if checkpoints.restore():
        logging.info("Resuming %s from epoch %d.", run_dir, int(epoch_var.numpy()))
    start = int(epoch_var.numpy())
    history: list[dict[str, Any]] = json.loads(history_var.numpy().decode())[:start]

    callbacks: list[keras.callbacks.Callback] = [
        _Checkpointer(checkpoints, epoch_var, history_var, history, run_dir, is_chief)
    ]
    if tensorboard and is_chief:
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False, profile_batch=0)
        )
    validation = data.eval_dataset("validation", 512) if data.num_examples("validation") else None
    if start < tc.epochs:
        logging.info(
            "Training %s: %d examples, %d steps/epoch, epochs %d-%d.",
            config.name, data.num_examples("train"), steps, start + 1, tc.epochs,
        )
        model.fit(
            data.train_dataset(tc.batch_size, tc.seed, start, tc.epochs),
            epochs=tc.epochs,
            initial_epoch=start,
            steps_per_epoch=steps,
            validation_data=validation,
            callbacks=callbacks,
            shuffle=False,  # the dataset is shuffled, reproducibly, per epoch
            verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose,
        )
    if is_chief:
        _finish(model, data, run_dir, history)
    else:
        distribute.remove_worker_dir(ckpt_dir)
    return run_dir


def _finish(model: keras.Model, data: Data, run_dir: str, history: list[dict[str, Any]]) -> None:
    """Writes model.keras, test_predictions.npz and, last, results.json."""
    with runs.atomic_path(os.path.join(run_dir, runs.MODEL)) as tmp:
        model.save(tmp)
    faults.crash_point("before_results", len(history))
    logits = model.predict(data.eval_dataset("test", 500), verbose=0)
    probs = tf.nn.softmax(logits).numpy().astype(np.float32)
    labels = data.labels("test")
    runs.write_npz(os.path.join(run_dir, runs.PREDICTIONS), probs=probs, labels=labels)
    results = {"test_accuracy": float(np.mean(probs.argmax(1) == labels)), "epochs": len(history)}
    if history:
        last = history[-1]
        results.update({k: last[k] for k in ("accuracy", "loss", "val_accuracy", "val_loss") if k in last})
        results["train_seconds"] = round(sum(r.get("seconds", 0.0) for r in history), 1)
    runs.write_json(os.path.join(run_dir, runs.RESULTS), results)
    logging.info("Finished %s: test accuracy %.4f.", run_dir, results["test_accuracy"])
