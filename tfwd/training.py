"""Training one model into a resumable run directory."""

from __future__ import annotations

import contextlib
import glob
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

from tfwd import atomic, callbacks, distribute, faults, models, run_settings, runlock, runs
from tfwd.checkpoints import LATEST, Checkpoints
from tfwd.data import Data, DataConfig
from tfwd.errors import TrainingDivergedError, first_few

# The paper's recipe of each architecture (tfwd.run_settings.ARCH_RECIPES has their sources).
RECIPES = {arch: runs.TrainConfig(**run_settings.defaults("train", arch)) for arch in run_settings.ARCHS}
LR_RECIPES = run_settings.LR_RECIPES  # re-exported: the `recipe` setting's values
CKA_IMAGES = 512  # test images of the CKA heatmaps measured during training (`cka_every`)


def _describe(names, as_flags: bool = True) -> str:
    """`names` as bin/train flags ("--depth, --width") or as keyword names ("`depth`, `width`")."""
    return ", ".join(f"--{n}" if as_flags else f"`{n}`" for n in names)


def config_from_flags(flags: dict[str, Any], as_flags: bool = True) -> runs.RunConfig:
    """The RunConfig of bin/train given these flags (name -> value; absent flags take their defaults).

    Defaults (`tfwd.run_settings.defaults`): --arch=cifar_resnet --depth=56 --width=1
    --residual --seed=0, the dataset defaults of tfwd.data.DataConfig, and the arch's
    recipe (RECIPES) for epochs, batch size and weight decay. `recipe` (a key of
    LR_RECIPES) sets the learning rate, warmup and decay together; the settings
    given one by one override it. bin/train and tfwd.sweeps both build configs
    here, so a sweep names the runs bin/train makes. The names are those of
    tfwd.run_settings.SETTINGS.

    Args:
        flags: setting name -> value.
        as_flags: True, errors name settings as bin/train's flags (`--depth`); False
            (library callers), as keyword names (`depth`) and values (arch='cifar_resnet').

    Raises:
        ValueError: for settings of the other architecture (depth with
            imagenet_resnet, blocks with cifar_resnet) or invalid values.
    """
    arch = flags.get("arch", run_settings.BY_NAME["arch"].default)
    if arch not in models.ARCHITECTURES:
        raise ValueError(f"`arch` must be one of {tuple(models.ARCHITECTURES)}. Received: arch={arch!r}")
    wrong = [k for k in run_settings.names("model") if k in flags and run_settings.BY_NAME[k].arch not in (None, arch)]
    if wrong:
        other = run_settings.BY_NAME[wrong[0]].arch
        wrong = [k for k in wrong if run_settings.BY_NAME[k].arch == other]
        only = f"--arch={other}" if as_flags else f"arch={other!r}"
        raise ValueError(
            f"{_describe(wrong, as_flags=as_flags)}: only for {only}; with {arch} use "
            f"{' and '.join(_describe([k], as_flags=as_flags) for k in run_settings.names('model', arch)[:2])}."
        )
    given = {k: flags[k] for k in run_settings.names("model", arch) if k in flags}
    try:
        fields = models.ARCHITECTURES[arch].fields({**run_settings.defaults("model", arch), **given})
        model = runs.ModelConfig(arch=arch, **fields)
    except (TypeError, ValueError):
        blocks, widths = _describe(["blocks"], as_flags=as_flags), _describe(["widths"], as_flags=as_flags)
        raise ValueError(
            f"{blocks} must be integers and {widths} numbers. Received: {flags.get('blocks')}, {flags.get('widths')}"
        ) from None
    model.validate()
    recipe = flags.get("recipe") or run_settings.BY_NAME["recipe"].default
    if recipe not in LR_RECIPES:
        raise ValueError(f"`recipe` must be one of {tuple(LR_RECIPES)}. Received: recipe={recipe!r}")
    chosen = {k: flags[k] for k in run_settings.names("train") if flags.get(k) is not None}
    train = runs.TrainConfig(**{**run_settings.defaults("train", arch, recipe), **chosen})
    train.validate()
    data = DataConfig(**{k: flags[k] for k in run_settings.names("data") if k in flags})
    return runs.RunConfig(model, data, train)


def make_optimizer(config: runs.TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with momentum and a cosine learning-rate decay (see TrainConfig.decay_every).

    decay_every="step": the learning rate rises linearly for `warmup_epochs`, then
    decays to 0 along a cosine, every step. The warmup is not in the reference code,
    but without it lr 0.1 does not train deep v1 ResNets here: ResNet-38 (1x) on 1/16
    of CIFAR-10 stayed at chance (loss 3.6 after 15 epochs); with 2 warmup epochs it
    trains (40% after 7). He et al. (2016) warm ResNet-110 up at lr 0.01 for the same
    reason; Goyal et al. (2017) ramp linearly.

    decay_every="epoch": lr * (1 + cos(pi * e / epochs)) / 2 for the whole of epoch e
    (from 0), the reference code's CosineDecay(lr, epochs) in a per-epoch
    LearningRateScheduler; warmup_epochs must be 0.
    """
    if config.decay_every == "epoch":
        if config.warmup_epochs:
            raise ValueError(
                f"`warmup_epochs` must be 0 with decay_every='epoch' (the reference code has no warmup). "
                f"Received: warmup_epochs={config.warmup_epochs}"
            )
        return keras.optimizers.SGD(
            EpochCosine(config.learning_rate, config.epochs, steps_per_epoch), momentum=config.momentum
        )
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(config.warmup_epochs * steps_per_epoch, total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else config.learning_rate,
        decay_steps=total - warmup,
        alpha=0.0,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.SGD(schedule, momentum=config.momentum)


class EpochCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr * (1 + cos(pi * e / epochs)) / 2 during epoch e = floor(step / steps_per_epoch)."""

    def __init__(self, learning_rate: float, epochs: int, steps_per_epoch: int):
        self.learning_rate, self.epochs, self.steps_per_epoch = learning_rate, epochs, steps_per_epoch

    def __call__(self, step):
        epoch = keras.ops.floor(keras.ops.cast(step, "float32") / self.steps_per_epoch)
        epoch = keras.ops.minimum(epoch, self.epochs)
        return self.learning_rate * 0.5 * (1.0 + keras.ops.cos(np.pi * epoch / self.epochs))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch}


class _Loop:
    """One compiled training step per batch under any tf.distribute strategy.

    Keras 3's Model.fit fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585), so tfwd runs its own step: the per-example loss is
    averaged over the global batch (tf.nn.compute_average_loss) and the optimizer
    all-reduces the gradients, so k replicas take the step one device would.
    """

    def __init__(self, model, optimizer, strategy, global_batch):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        with strategy.scope():
            self.loss = keras.metrics.Mean(name="loss")
            self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                per_example = self.loss_fn(labels, logits)
                regularization = tf.add_n(model.losses) if model.losses else tf.zeros([])
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                loss += tf.nn.scale_regularization_loss(regularization)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            # Reported like Keras: cross-entropy plus the L2 penalty.
            self.loss.update_state(per_example + regularization)
            self.accuracy.update_state(labels, logits)

        @tf.function(autograph=False)
        def train_step(iterator):
            images, labels = next(iterator)
            strategy.run(replica_step, args=(images, labels))

        @tf.function(reduce_retracing=True, autograph=False)
        def eval_step(images, labels):
            logits = model(images, training=False)
            self.loss.update_state(self.loss_fn(labels, logits) + (tf.add_n(model.losses) if model.losses else 0.0))
            self.accuracy.update_state(labels, logits)

        self.train_step, self.eval_step = train_step, eval_step

    def _results(self, prefix=""):
        out = {prefix + "loss": float(self.loss.result()), prefix + "accuracy": float(self.accuracy.result())}
        self.loss.reset_state()
        self.accuracy.reset_state()
        return out

    def train_epoch(self, iterator, steps: int, progbar: keras.utils.Progbar | None) -> dict[str, float]:
        for step in range(steps):
            self.train_step(iterator)
            if progbar is not None:
                progbar.update(
                    step + 1, [("loss", float(self.loss.result())), ("accuracy", float(self.accuracy.result()))]
                )
        return self._results()

    def evaluate(self, dataset: tf.data.Dataset, prefix: str = "val_") -> dict[str, float]:
        """Loss and accuracy on a dataset, computed by this process alone (no collectives)."""
        for images, labels in dataset:
            self.eval_step(images, labels)
        return self._results(prefix)


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


# What training writes into a run directory, besides its lock and temporaries (and the
# analyses' output folders, which hold tfwd.runs.OUTPUT_MARKER).
_RUN_ENTRIES = (*runs.RUN_FILES, runs.CHECKPOINTS, runs.TENSORBOARD, callbacks.HISTORY)
# Inside the run's own folders, what training (and TensorFlow for it) writes.
_FOLDER_ENTRIES = {
    runs.CHECKPOINTS: ("ckpt-*", LATEST, runlock.LATEST_TEMPORARIES),
    runs.TENSORBOARD: ("events.out.tfevents.*",),
}


def _written_by_tfwd(run_dir: str, name: str) -> bool:
    """Whether the entry `name` of a run directory is one tfwd writes there (the lock and temporaries aside):
    a run file or folder, or an analysis' output folder that holds nothing its marker does not list."""
    if name in _RUN_ENTRIES:
        return True
    path = os.path.join(run_dir, name)
    return os.path.isfile(os.path.join(path, runs.OUTPUT_MARKER)) and not atomic.unlisted_entries(path)


def _check_made_by_tfwd(run_dir: str) -> None:
    """Raises runs.RunError unless the existing folder `run_dir` is one tfwd training made.

    That is, it holds a config.json tfwd reads (a run, of any settings), or nothing but what
    tfwd writes into a run directory: a training killed before its config.json leaves only its
    lock and temporary files, and a run of an older version has a config.json this one may not
    read. tfwd never trains into, nor empties with --overwrite, a folder it did not make.
    """
    try:
        runs.read_config(run_dir)
        return
    except runs.RunError:
        pass
    strays = sorted(
        name
        for name in os.listdir(run_dir)
        if name != runs.LOCK and not runlock.is_temporary(name) and not _written_by_tfwd(run_dir, name)
    )
    if strays:
        raise runs.RunError(
            f"{run_dir} is not a tfwd run: it has no {runs.CONFIG} that tfwd can read and holds {first_few(strays)}. "
            "tfwd trains only into a new folder or a run it made; move that folder or choose another --out_dir."
        )


def _clear_run_dir(run_dir: str) -> None:
    """Empties a run directory for --overwrite of what tfwd wrote there.

    The run's files, checkpoints and TensorBoard logs go (inside checkpoints/ and tensorboard/,
    only the files training writes there), and so do the outputs of analyses of the old model
    (folders holding tfwd.runs.OUTPUT_MARKER and nothing it does not list) and the temporary
    folders of analyses killed while writing (tfwd.atomic.stale_temporaries); the lock this
    process holds and anything else (a user's notes) stay. results.json goes first and
    config.json last, so a process killed halfway leaves a directory that is neither
    "finished" nor without settings: rerunning resumes it (or --overwrite clears it again).
    """
    for path in atomic.stale_temporaries(run_dir):  # outputs a killed analysis was writing
        _remove(path)
        logging.info("Removed %s, left by a killed analysis.", path)
    order = {runs.RESULTS: 0, runs.CONFIG: 2}
    names = [name for name in os.listdir(run_dir) if name != runs.LOCK]
    ours = [name for name in names if _written_by_tfwd(run_dir, name)]
    kept = [name for name in names if name not in ours and not runlock.is_temporary(name)]
    for name in sorted(ours, key=lambda n: order.get(n, 1)):
        path = os.path.join(run_dir, name)
        if name in _FOLDER_ENTRIES and os.path.isdir(path) and not os.path.islink(path):
            inside = [
                e for pattern in _FOLDER_ENTRIES[name] for e in glob.glob(os.path.join(glob.escape(path), pattern))
            ]
            for entry in inside:
                _remove(entry)
            left = os.listdir(path)
            kept += [os.path.join(name, entry) for entry in left]
            if not left:
                os.rmdir(path)
        else:
            _remove(path)
    if kept:
        logging.info("Kept %s in %s: tfwd did not write them.", ", ".join(sorted(kept)), run_dir)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _create_run_dir(run_dir: str, config: runs.RunConfig, overwrite: bool) -> None:
    """Prepares the locked run directory: cleared (overwrite), orphaned temporaries removed, config written."""
    try:
        if overwrite:
            _clear_run_dir(run_dir)
        for path in runlock.remove_stale_temporaries(run_dir):
            logging.info("Removed %s, left by a killed training.", path)
        if not os.path.exists(os.path.join(run_dir, runs.CONFIG)):
            runs.write_json(os.path.join(run_dir, runs.CONFIG), config.to_dict())
    except OSError as e:
        raise runs.RunError(
            f"Cannot write the run directory {run_dir}: {e.strerror or e}. Choose a writable --out_dir."
        ) from e


def train(
    config: runs.RunConfig,
    out_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    overwrite: bool = False,
    verbose: int | None = None,
    tensorboard: bool = True,
    validation_every: int = 1,
    checkpoint_seconds: float = 60.0,
    cka_every: int = 0,
) -> str:
    """Trains a model as `config` says into `out_dir/config.name`, resuming if it can.

    One process at a time trains a run: the writer (in multi-worker training, the
    chief) holds the run's `tfwd.runlock.RunLock` from before it writes anything
    until it returns, so a second training of the same run, or an `overwrite` of a
    run another process trains, is refused.

    Args:
        config: model, data and training settings.
        out_dir: parent folder of run directories.
        strategy: a tf.distribute strategy; None for the default one.
        overwrite: empty an existing run directory of that name first.
        verbose: progress output: 0 silent, 1 a Keras progress bar per epoch and a
            log line, 2 one log line per epoch; None picks 1 on a terminal, else 2.
        tensorboard: write TensorBoard logs.
        validation_every: evaluate on the validation split every this many epochs
            (and after the last); it does not change the model, so it is not a setting
            of the run.
        checkpoint_seconds: save a checkpoint once this many seconds have passed
            since the last one (or since training began), and after the last epoch;
            0 saves after every epoch. Saving a ResNet-38 takes about 0.25 s, a third
            of a one-step epoch. A kill loses at most this much training plus the
            epoch under way. Multi-worker training saves after every epoch (the
            workers must save together).
        cka_every: every this many epochs (0: never), the within-model CKA heatmap of
            the first CKA_IMAGES test images goes to TensorBoard and to the run's
            cka_history.npz (`tfwd.callbacks.CKAMonitor`); it does not change training.

    Returns:
        The run directory. A finished run is left as it is.

    Raises:
        runs.RunError: if the run directory holds another run, or another process
            trains it (naming that process).
        TrainingDivergedError: if the loss becomes non-finite.
        tfwd.data.DataNotFoundError: if the dataset is not on disk.
    """
    config.model.validate()
    config.train.validate()
    if isinstance(cka_every, bool) or not isinstance(cka_every, int) or not 0 <= cka_every <= config.train.epochs:
        raise ValueError(
            f"`cka_every` must be 0 (off) or an epoch count up to --epochs={config.train.epochs}. "
            f"Received: cka_every={cka_every!r}"
        )
    strategy = strategy or tf.distribute.get_strategy()
    is_chief = distribute.is_chief(strategy)
    run_dir = os.path.join(out_dir, config.name)
    with contextlib.ExitStack() as held:
        locked = is_chief and os.path.isdir(run_dir)
        if locked:  # an existing run: a second writer is refused before it loads any data
            _check_made_by_tfwd(run_dir)  # before the lock: not even a .lock goes into a user's folder
            try:
                held.enter_context(runlock.RunLock(run_dir))
            except runlock.RunBusyError as e:
                # Analyses read it: they change nothing, so a finished run of these settings is still finished.
                if e.readers and run_state(run_dir, config, overwrite) == "finished":
                    logging.info("Run %s is already finished; pass --overwrite to train it again.", run_dir)
                    return run_dir
                raise
        if is_chief and _finished(run_dir, config, overwrite):
            return run_dir
        data = Data(config.data)  # fails on a missing dataset before a new run directory is made
        replicas = strategy.num_replicas_in_sync
        if config.train.batch_size % replicas:
            raise ValueError(
                f"`batch_size`={config.train.batch_size} must be divisible by the {replicas} replicas of the strategy."
            )
        data.steps_per_epoch(config.train.batch_size)  # raises for a batch larger than the data
        if not is_chief:
            return _train(config, data, run_dir, strategy, False, verbose, tensorboard, validation_every, 0.0, 0)
        if not locked:
            held.enter_context(runlock.RunLock(run_dir))  # makes the directory
            if _finished(run_dir, config, overwrite):  # another process made the run meanwhile
                return run_dir
        _create_run_dir(run_dir, config, overwrite)
        return _train(
            config, data, run_dir, strategy, True, verbose, tensorboard, validation_every, checkpoint_seconds, cka_every
        )


def _finished(run_dir: str, config: runs.RunConfig, overwrite: bool) -> bool:
    if run_state(run_dir, config, overwrite) != "finished":
        return False
    logging.info("Run %s is already finished; pass --overwrite to train it again.", run_dir)
    return True


def _train(
    config, data, run_dir, strategy, is_chief, verbose, tensorboard, validation_every, checkpoint_seconds, cka_every
):
    """The training loop of `train`, on a prepared (and, for the chief, locked) run directory."""
    train_config = config.train
    steps = data.steps_per_epoch(train_config.batch_size)
    keras.utils.set_random_seed(train_config.seed)
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        # Several replicas normalize with global-batch statistics, as one device would.
        model = config.model.build(
            data.num_classes, data.image_size, train_config.weight_decay, synchronized_bn=replicas > 1
        )
        optimizer = make_optimizer(train_config, steps)
        optimizer.build(model.trainable_variables)
    loop = _Loop(model, optimizer, strategy, train_config.batch_size)
    # Bookkeeping lives outside the strategy: a string cannot be mirrored across workers.
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    history_var = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, history=history_var)
    ckpt_dir = os.path.join(run_dir, runs.CHECKPOINTS) if is_chief else distribute.worker_dir(run_dir, strategy)
    checkpoints = Checkpoints(checkpoint, ckpt_dir)
    if checkpoints.restore():
        logging.info("Resuming %s from epoch %d.", run_dir, int(epoch_var.numpy()))
    start = int(epoch_var.numpy())
    history: list[dict[str, Any]] = json.loads(history_var.numpy().decode())[:start]

    if start < train_config.epochs:
        logging.info(
            "Training %s: %d examples, %d steps/epoch, epochs %d-%d.",
            config.name,
            data.num_examples("train"),
            steps,
            start + 1,
            train_config.epochs,
        )
        per_replica = train_config.batch_size // replicas

        def pipeline(context):
            # Input pipeline i takes examples i, i+k, ... of each epoch's order, so the
            # replicas' batches together are exactly the one-device global batch.
            shard = (context.num_input_pipelines, context.input_pipeline_id)
            return data.train_dataset(
                train_config.batch_size,
                train_config.seed,
                start,
                train_config.epochs,
                shard,
                replica_batch_size=per_replica,
            )

        iterator = iter(strategy.distribute_datasets_from_function(pipeline))
        validation = data.eval_dataset("validation", 500) if data.num_examples("validation") else None
        writer = (
            tf.summary.create_file_writer(os.path.join(run_dir, runs.TENSORBOARD)) if tensorboard and is_chief else None
        )
        verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            checkpoint_seconds = 0.0  # every worker saves in the same epochs
        monitor = _cka_monitor(model, data, run_dir, start, cka_every, tensorboard) if cka_every and is_chief else None
        saved = time.time()
        for epoch in range(start, train_config.epochs):
            began = time.time()
            progbar = keras.utils.Progbar(steps) if verbose == 1 else None
            row = {"epoch": epoch + 1, **loop.train_epoch(iterator, steps, progbar)}
            if validation is not None and ((epoch + 1) % validation_every == 0 or epoch + 1 == train_config.epochs):
                row.update(loop.evaluate(validation))
            row["learning_rate"] = float(optimizer.learning_rate.numpy())
            row["seconds"] = round(time.time() - began, 2)
            save = epoch + 1 == train_config.epochs or time.time() - saved >= checkpoint_seconds
            _end_epoch(row, history, epoch_var, history_var, checkpoints if save else None, run_dir, is_chief)
            saved = time.time() if save else saved
            if monitor is not None:
                monitor.on_epoch_end(epoch)
            if verbose:
                logging.info("Epoch %d/%d: %s", epoch + 1, train_config.epochs, _format(row))
            if writer is not None:
                with writer.as_default(step=epoch + 1):
                    for key, value in row.items():
                        if key != "epoch":
                            tf.summary.scalar(key, value)
                writer.flush()
    if is_chief:
        _finish(model, data, run_dir, history, distributed=replicas > 1)
    else:
        distribute.remove_worker_dir(ckpt_dir)
    return run_dir


def _cka_monitor(model, data, run_dir, start, cka_every, tensorboard) -> callbacks.CKAMonitor:
    """The CKAMonitor of a run, holding the measurements of its epochs up to `start` (a resumed run)."""
    images = np.concatenate([x.numpy() for x, _ in data.eval_dataset("test", 256, examples=CKA_IMAGES)])
    log_dir = os.path.join(run_dir, runs.TENSORBOARD) if tensorboard else None
    path = os.path.join(run_dir, callbacks.HISTORY)
    monitor = callbacks.CKAMonitor(images, every=cka_every, log_dir=log_dir, history_path=path)
    monitor.set_model(model)
    monitor.resume(start)
    return monitor


def _end_epoch(row, history, epoch_var, history_var, checkpoints, run_dir, is_chief) -> None:
    """Checks the loss, records the epoch and, unless `checkpoints` is None, saves the checkpoint
    (kill-safe, see tfwd.checkpoints)."""
    epoch = row["epoch"]
    if faults.poisoned("diverge", epoch):
        row["loss"] = float("nan")
    if not np.isfinite(row["loss"]):
        last = int(epoch_var.numpy())
        kept = (
            f"The last good checkpoint (epoch {last}) is kept in {run_dir}"
            if last
            else f"No checkpoint was written yet in {run_dir}"
        )
        raise TrainingDivergedError(
            f"The training loss is {row['loss']} at epoch {epoch}: training diverged. {kept}; lower "
            "--learning_rate and rerun with --overwrite."
        )
    history.append(row)
    if checkpoints is not None:
        faults.crash_point("before_checkpoint", epoch)
        epoch_var.assign(epoch)
        history_var.assign(json.dumps(history))
        checkpoints.save(epoch)
    if is_chief:
        runs.write_csv(os.path.join(run_dir, runs.HISTORY), history)
    if checkpoints is not None:
        faults.crash_point("after_checkpoint", epoch)


def _format(row: dict[str, Any]) -> str:
    return " - ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch")


def _finish(model: keras.Model, data: Data, run_dir: str, history: list[dict[str, Any]], distributed: bool) -> None:
    """Writes model.keras, test_predictions.npz and, last, results.json."""
    path = os.path.join(run_dir, runs.MODEL)
    with runs.atomic_path(path) as tmp:
        model.save(tmp)
    faults.crash_point("before_results", len(history))
    if distributed:
        # Predict with a local copy: the distributed model would shard the test
        # set across workers, and only this process writes the predictions.
        model = models.saved.load_keras(path)
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
