"""Run directories: the contract between training and every analysis.

A run directory is named `{dataset}-resnet{depth}-w{width}[-nores][-n{train_examples}]-s{seed}`
and holds

    config.json            every setting needed to rebuild the model and its data
    checkpoints/           the resumable checkpoint (model, optimizer, epoch, history)
    history.csv            one row per finished epoch
    tensorboard/           TensorBoard logs
    model.keras            the final model
    test_predictions.npz   probs (float32, [N, C]) and labels (int32, [N]) on the test split
    results.json           final accuracies; written last, so its presence means "finished"
    .lock                  bin/train holds an flock on it while it trains (tfwd.runlock)

Every file is written atomically (tfwd.atomic: a temporary file in the same folder,
then a rename): a killed process never leaves a half-written file behind. One process at
a time writes a run directory: training holds `tfwd.runlock.RunLock`, and clears the
temporary files a killed writer of the run left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
from absl import logging

from tfwd import atomic, layer_names, models, run_settings
from tfwd.atomic import (  # noqa: F401 - re-exported: tfwd.runs has always offered them
    OUTPUT_MARKER,
    RUN_CONFIG,
    atomic_path,
    atomic_write,
    check_folder_path,
    check_output_dir,
    json_text,
    write_csv,
    write_json,
    write_npz,
)
from tfwd.data import Data, DataConfig
from tfwd.errors import RunError
from tfwd.run_settings import ARCHS

CONFIG = RUN_CONFIG
MODEL = "model.keras"
PREDICTIONS = "test_predictions.npz"
RESULTS = "results.json"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
# The files training writes with `atomic_path`: a temporary copy of one of them in a run
# directory that training has locked was left by a killed writer.
RUN_FILES = (CONFIG, HISTORY, MODEL, PREDICTIONS, RESULTS)


@run_settings.config_class("model")
class ModelConfig:
    """Architecture of a run (defaults: tfwd.run_settings, bin/train's).

    Attributes:
        depth: CIFAR ResNet depth, 6n + 2 (for "imagenet_resnet": derived from blocks).
        width: CIFAR width multiplier.
        residual: False for the plain network without shortcuts (CIFAR only).
        arch: "cifar_resnet" (tfwd.models.cifar_resnet) or "imagenet_resnet"
            (tfwd.models.imagenet_resnet).
        blocks: bottleneck blocks per stage (imagenet_resnet), e.g. (3, 4, 6, 3).
        widths: width multiplier per stage (imagenet_resnet), e.g. (1, 1, 2.8, 1).
    """

    depth: int
    width: float
    residual: bool
    arch: str
    blocks: tuple[int, ...] | None
    widths: tuple[float, ...] | None

    def __post_init__(self):
        # JSON gives lists; keep tuples so configs compare and hash alike.
        for field in ("blocks", "widths"):
            if isinstance(getattr(self, field), list):
                object.__setattr__(self, field, tuple(getattr(self, field)))

    @classmethod
    def imagenet(
        cls, blocks=run_settings.BY_NAME["blocks"].default, widths=run_settings.BY_NAME["widths"].default
    ) -> ModelConfig:
        """The ImageNet ResNet with these blocks and widths per stage (depth derived)."""
        return cls(
            depth=models.imagenet_depth(blocks), arch="imagenet_resnet", blocks=tuple(blocks), widths=tuple(widths)
        )

    @property
    def architecture(self) -> models.Architecture:
        """The family's entry in tfwd.models.ARCHITECTURES.

        Raises:
            ValueError: for an arch outside it (a config that was never validated).
        """
        if self.arch not in models.ARCHITECTURES:
            raise ValueError(f"`arch` must be one of {ARCHS}. Received: arch={self.arch!r}")
        return models.ARCHITECTURES[self.arch]

    @property
    def name(self) -> str:
        return self.architecture.name(self)

    def build(
        self, num_classes: int, image_size: int, weight_decay: float = 0.0, synchronized_bn: bool = False
    ) -> keras.Model:
        """The untrained keras.Model (see tfwd.models.cifar_resnet / imagenet_resnet)."""
        return self.architecture.build(self, num_classes, (image_size, image_size, 3), weight_decay, synchronized_bn)

    def validate(self) -> None:
        self.architecture.validate(self)


@run_settings.config_class("train")
class TrainConfig:
    """Optimization settings (defaults: the paper's CIFAR recipe, tfwd.run_settings, see bin/train).

    Attributes:
        epochs: passes over the training subset.
        batch_size: global batch size.
        learning_rate: peak learning rate of the cosine schedule (decayed per step to 0).
        momentum: SGD momentum.
        weight_decay: L2 coefficient on conv and dense kernels (loss += wd * sum w^2).
        seed: fixes the initial weights, the data order and the augmentation.
        deterministic: enable TensorFlow op determinism (bit-reproducible, slower).
        warmup_epochs: epochs of linear warmup from 0 to the learning rate before the
            cosine decay (capped at half the run).
        decay_every: "step" (the cosine decays every SGD step, to 0 at the end) or
            "epoch" (lr * (1 + cos(pi * e / epochs)) / 2 during epoch e = 0, 1, ...,
            as the reference code's per-epoch LearningRateScheduler).
    """

    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    weight_decay: float
    seed: int
    deterministic: bool
    warmup_epochs: int
    decay_every: str

    def validate(self) -> None:
        """Raises ValueError for a value outside its setting's choices or below its bound (tfwd.run_settings)."""
        for name in run_settings.names("train"):
            kind, value = run_settings.BY_NAME[name].kind, getattr(self, name)
            if isinstance(kind, tuple) and value not in kind:
                raise ValueError(f"`{name}` must be one of {kind}. Received: {name}={value!r}")
        for name in run_settings.names("train"):
            problem = run_settings.bound_problem(name, getattr(self, name))
            if problem:
                raise ValueError(f"{problem}. Received: {name}={getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: model, data and training."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    @property
    def name(self) -> str:
        """The run directory's name."""
        subset = f"-n{self.data.train_examples}" if self.data.train_examples else ""
        return f"{self.data.dataset}-{self.model.name}{subset}-s{self.train.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": dataclasses.asdict(self.model),
            "data": self.data.to_dict(),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(ModelConfig(**d["model"]), DataConfig.from_dict(d["data"]), TrainConfig(**d["train"]))

    def differences(self, other: RunConfig) -> list[str]:
        """Settings that differ from `other`, ignoring where the data lives."""
        a, b = self.to_dict(), other.to_dict()
        for d in (a, b):
            d["data"].pop("data_dir")
            d["data"].pop("download")
        return [
            f"{section}.{key}: {a[section][key]!r} != {b[section].get(key)!r}"
            for section in a
            for key in a[section]
            if a[section][key] != b[section].get(key)
        ]


# --- reading runs -----------------------------------------------------------------------------


# The last model loaded inside each active `sharing_models` block (innermost last).
_SHARED: list[dict[tuple, keras.Model]] = []


@contextlib.contextmanager
def sharing_models() -> Iterator[None]:
    """Within this block, Runs of the same model file share one loaded model: the last one loaded.

    Several analyses of one run (a report) each open it anew, and loading a ResNet-38
    takes 2-3 s. The model is keyed on the file's path, size and modification time, so a
    retrained run is loaded again; it is released when the block ends. Outside such a
    block every Run loads its own model. The analyses only read it (inference mode,
    layers shared or copied), so sharing it changes no result.
    """
    _SHARED.append({})
    try:
        yield
    finally:
        _SHARED.pop()


# --- what an analysis measured ------------------------------------------------------------------

# The files whose content is what an analysis of a run measures: its settings, model and results.
MEASURED_FILES = (CONFIG, MODEL, RESULTS, PREDICTIONS)
# (path, inode, size, mtime) -> sha256 of a file: a run's model is hashed once per process, not per analysis.
_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str) -> str | None:
    """The sha256 (hex) of a file, None if it is missing; computed once per process for each version of it."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    path = os.path.abspath(path)
    key = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def fingerprint(run_dir: str) -> dict[str, Any]:
    """What identifies the trained run in `run_dir`: sha256 of its config, model, results and predictions.

    Returns:
        {"run": absolute path, "files": {file name: sha256 hex or None if missing}, "digest": sha256 hex of
        them all}. A run retrained (or resumed to more epochs) gets another digest.
    """
    path = os.path.abspath(run_dir)
    files = {name: file_sha256(os.path.join(path, name)) for name in MEASURED_FILES}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"run": path, "files": files, "digest": digest}


# Active `reading_runs` scopes, innermost last: run path -> (its ReadLock or None, its fingerprint when opened).
_READING: list[dict[str, tuple[Any, dict[str, Any]]]] = []


@contextlib.contextmanager
def reading_runs() -> Iterator[None]:
    """Within this block (an analysis), every Run opened is locked for reading and fingerprinted.

    A finished run opened inside holds `tfwd.runlock.ReadLock` until the outermost such block
    ends, so `bin/train --overwrite` of it is refused (naming this process) while the analysis
    reads it, and the fingerprint taken when it was opened is recorded in the outputs
    (`measured`). Outputs written through `atomic_dir` inside the block are discarded, with one
    line, if a run changed meanwhile (`check_unchanged`). Usable as a decorator.
    """
    scope: dict[str, tuple[Any, dict[str, Any]]] = {}
    _READING.append(scope)
    try:
        yield
    finally:
        _READING.pop()
        for lock, _ in scope.values():
            if lock is not None:
                lock.__exit__(None, None, None)


def _opened(path: str) -> None:
    """Locks (in the outermost `reading_runs` block) and fingerprints (in every one) the finished run `path`."""
    if not _READING or path in _READING[-1] or not os.path.exists(os.path.join(path, RESULTS)):
        return  # an unfinished run is not locked: the analysis refuses it anyway, or skips it
    from tfwd import runlock

    lock = None
    if not any(path in scope for scope in _READING):
        lock = runlock.ReadLock(path).__enter__()
    entry = fingerprint(path)
    for i, scope in enumerate(_READING):
        if path not in scope:
            scope[path] = (lock if i == 0 else None, entry)


def measured() -> list[dict[str, Any]]:
    """The fingerprints (`fingerprint`) of the runs opened in the innermost `reading_runs` block, as opened."""
    return [entry[1] for entry in _READING[-1].values()] if _READING else []


def check_unchanged() -> None:
    """Raises RunError if a run opened in the innermost `reading_runs` block changed since it was opened."""
    for recorded in measured():
        now = fingerprint(recorded["run"])
        if now["digest"] != recorded["digest"]:
            changed = [name for name in MEASURED_FILES if now["files"][name] != recorded["files"][name]]
            raise RunError(
                f"Run {recorded['run']} changed while this analysis read it ({', '.join(changed)}; retrained?): "
                "its output was discarded. Rerun the analysis on the run as it is now."
            )


def recorded_measurements(output_dir: str) -> list[dict[str, Any]]:
    """The run fingerprints an analysis output folder recorded (`measured`): the "measured" entry of its JSON
    files (at the top or in "settings") and of the settings of its .npz files. [] for outputs without one."""
    found: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(output_dir))
    except OSError:
        return found
    for name in names:
        path = os.path.join(output_dir, name)
        try:
            if name.endswith(".json"):
                with open(path) as f:
                    recorded = json.load(f)
            elif name.endswith(".npz"):
                with np.load(path) as f:
                    recorded = json.loads(str(f["settings"])) if "settings" in f.files else {}
            else:
                continue
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            continue
        if isinstance(recorded, dict):
            settings = recorded.get("settings")
            entries = recorded.get("measured", settings.get("measured") if isinstance(settings, dict) else None)
            found += [e for e in entries or [] if isinstance(e, dict) and e not in found]
    return found


def check_measured(output_dir: str) -> None:
    """Raises RunError if an analysis output folder measured a run that has changed since (retrained).

    Outputs that recorded nothing (other versions, files saved by hand) and runs that are no
    longer where they were (an output moved elsewhere) are not checked.
    """
    for entry in recorded_measurements(output_dir):
        run = entry.get("run")
        if not isinstance(run, str) or not os.path.exists(os.path.join(run, CONFIG)):
            continue
        if fingerprint(run)["digest"] != entry.get("digest"):
            raise RunError(
                f"{output_dir} measured an earlier model of {run}: the run was retrained since. Rerun the analysis "
                "(or delete that output)."
            )


@contextlib.contextmanager
def atomic_dir(path: str, kind: str) -> Iterator[str]:
    """`tfwd.atomic.atomic_dir` that discards the output, with one line, if a run the enclosing `reading_runs`
    block opened changed before the output is swapped in (`check_unchanged`)."""
    with atomic.atomic_dir(path, kind, before_swap=check_unchanged) as tmp:
        yield tmp


class Run:
    """A finished run directory, opened for analysis.

    Inside a `reading_runs` block (every analysis), opening a run locks it for reading and
    records its fingerprint.

    Args:
        path: the run directory.

    Raises:
        RunError: if the directory, its config or its model is missing or unreadable, or the run is
            being trained.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise RunError(f"Run directory {path} does not exist.")
        _opened(self.path)
        self.config = read_config(self.path)
        self._model: keras.Model | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip("/"))

    @property
    def finished(self) -> bool:
        return os.path.exists(os.path.join(self.path, RESULTS))

    def model(self) -> keras.Model:
        """The final trained model (model.keras), loaded once (see `sharing_models` to share it between Runs)."""
        if self._model is None:
            path = os.path.join(self.path, MODEL)
            if not os.path.exists(path):
                raise RunError(
                    f"Run {self.path} has no {MODEL}: it has not finished training (rerun bin/train to resume)."
                )
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime_ns)
            shared = _SHARED[-1] if _SHARED else {}
            if key in shared:
                model = shared[key]
            else:
                try:
                    model = models.saved.load_keras(path)
                except Exception as e:  # noqa: BLE001 - a corrupt zip or config raises many types
                    raise RunError(f"Cannot load {path} ({type(e).__name__}: {e}); retrain with --overwrite.") from e
                shared.clear()
                shared[key] = model
            if model.name != self.config.model.name:
                raise RunError(
                    f"{path} holds model {model.name!r} but {CONFIG} describes {self.config.model.name!r}: the run "
                    "directory mixes two runs; retrain it with --overwrite."
                )
            self._model = model
        return self._model

    def data(self, data_dir: str | None = None) -> Data:
        """The run's dataset and subset; `data_dir` overrides the one recorded at training time."""
        cfg = self.config.data
        if data_dir is not None:
            cfg = dataclasses.replace(cfg, data_dir=data_dir)
        elif cfg.data_dir and not os.path.isdir(cfg.data_dir):
            cfg = dataclasses.replace(cfg, data_dir=None)
        return Data(cfg)

    def results(self) -> dict[str, Any]:
        """results.json (final accuracies, training seconds) of a finished run."""
        path = os.path.join(self.path, RESULTS)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise RunError(f"Cannot read {path} ({e}); the run has not finished or the file is corrupt.") from e

    def predictions(self) -> dict[str, np.ndarray]:
        """test_predictions.npz as a dict with "probs" and "labels".

        Raises:
            RunError: if the file is missing, truncated, empty or lacks either array.
        """
        path = os.path.join(self.path, PREDICTIONS)
        try:
            with np.load(path) as f:
                loaded = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            # A truncated file is a BadZipFile, an empty one an EOFError.
            raise RunError(
                f"Cannot read {path} ({type(e).__name__}: {e}); the run has not finished or the file is corrupt: "
                "retrain it with --overwrite."
            ) from e
        missing = sorted({"probs", "labels"} - set(loaded))
        if missing:
            raise RunError(f"{path} has no {' or '.join(missing)} array; retrain the run with --overwrite.")
        problem = predictions_problem(loaded["probs"], loaded["labels"])
        if problem:
            raise RunError(f"Run {self.path}: {PREDICTIONS} {problem}; retrain the run with --overwrite.")
        if loaded["labels"].ndim == 1 and len(loaded["labels"]):
            loaded["labels"] = loaded["labels"].astype(np.int32)  # whole numbers, checked above
        return loaded


# How far a row of predicted probabilities may sum from 1 (float32 softmax rows are within 1e-6).
PROBABILITY_SUM_TOLERANCE = 1e-3


def predictions_problem(probs: np.ndarray, labels: np.ndarray) -> str | None:
    """What is wrong with test predictions (None if nothing), as the end of a sentence naming the file.

    Probabilities (N, C) must be finite, non-negative and sum to 1 per row (within
    PROBABILITY_SUM_TOLERANCE); labels (N,) whole numbers in [0, C). Arrays of other shapes are
    left to the caller's shape check.

    Example:
        >>> predictions_problem(np.array([[0.5, 0.5], [np.nan, 1.0]]), np.array([0, 1]))
        'holds 1 non-finite probability (first in row 1); probabilities must be finite'
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        return None
    if not (np.issubdtype(probs.dtype, np.floating) or np.issubdtype(probs.dtype, np.integer)):
        return f"holds probabilities of type {probs.dtype}; they must be numbers"
    rows = lambda mask: np.flatnonzero(mask.any(axis=1))  # noqa: E731
    bad = ~np.isfinite(probs)
    if bad.any():
        return (
            f"holds {int(bad.sum())} non-finite probabilit{'y' if bad.sum() == 1 else 'ies'} (first in row "
            f"{rows(bad)[0]}); probabilities must be finite"
        )
    bad = probs < 0
    if bad.any():
        first = rows(bad)[0]
        return (
            f"holds {int(bad.sum())} negative probabilit{'y' if bad.sum() == 1 else 'ies'} (first in row {first}: "
            f"{float(probs[first].min()):.4g}); probabilities must be >= 0"
        )
    sums = probs.astype(np.float64).sum(axis=1)
    bad = np.abs(sums - 1) > PROBABILITY_SUM_TOLERANCE
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        return (
            f"has {int(bad.sum())} rows of probabilities that do not sum to 1 within {PROBABILITY_SUM_TOLERANCE} "
            f"(first: row {first} sums to {sums[first]:.6g})"
        )
    classes = probs.shape[1]
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        return f"holds labels of type {labels.dtype}; they must be integers in [0, {classes})"
    bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 0) | (labels >= classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        return (
            f"holds {int(bad.sum())} label{'' if bad.sum() == 1 else 's'} outside the integers in [0, {classes}) "
            f"(first: row {first} holds {labels[first].item()!r})"
        )
    return None


def read_config(path: str) -> RunConfig:
    """The RunConfig of a run directory."""
    file = os.path.join(path, CONFIG)
    try:
        with open(file) as f:
            d = json.load(f)
        problem = run_settings.config_problem(d)
        if problem:
            raise RunError(f"{file}: {problem}; correct it, or retrain the run with --overwrite.")
        return RunConfig.from_dict(d)
    except FileNotFoundError:
        raise RunError(f"{path} is not a tfwd run directory: it has no {CONFIG}.") from None
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{file} is corrupt or from an incompatible version ({type(e).__name__}: {e}).") from e


def run_label(name: str) -> str:
    """A run's name without its dataset prefix, for titles: "cifar10-resnet20-w1-s0" -> "resnet20-w1-s0"."""
    return name.split("-", 1)[-1]


# --- the skeleton of an analysis of one run -----------------------------------------------------


def taps_tag(taps: str | Sequence[str]) -> str:
    """The taps part of an output folder's name: a tap kind, else "custom" (no pattern or layer list in a name)."""
    return taps if isinstance(taps, str) and taps in layer_names.TAP_KINDS else "custom"


def analysis_dir(run_dir: str, taps: str | Sequence[str] | None = None, split: str | None = None, *, kind: str) -> str:
    """RUN_DIR/{kind}[_{taps}][_{split}]: where an analysis of one run writes by default.

    Example:
        >>> analysis_dir("/r/a", "all", "test", kind="pc")
        '/r/a/pc_all_test'
        >>> analysis_dir("/r/a", ["stage1_block1_add"], kind="probes")
        '/r/a/probes_custom'
    """
    parts = [kind] + ([taps_tag(taps)] if taps is not None else []) + ([split] if split is not None else [])
    return os.path.join(run_dir, "_".join(parts))


class Output:
    """The output folder of one analysis: the one writer every tfwd analysis writes through.

    Creating it reserves the folder: `check_output_dir` must find it free for `kind` (it does
    not exist, is empty, or holds an earlier output of `kind` and nothing else), so a wrong
    `out_dir` fails before anything is computed. `writing` then yields a temporary folder that
    replaces the output as a whole (`atomic_dir`): a killed process leaves the earlier output as
    it was (its temporary folder is removed by a later writer once the process is gone), the
    new folder carries the marker listing its files, and the output is discarded with one line
    if a run the enclosing `reading_runs` block opened changed meanwhile (`check_unchanged`).
    Analyses call it inside `reading_runs`, which keeps the runs they read locked until the
    output is swapped in.

    Example:
        >>> import tempfile
        >>> output = Output("pc", os.path.join(tempfile.mkdtemp(), "pc_all_test"))
        >>> with output.writing("First-PC analyses") as tmp:
        ...     write_json(os.path.join(tmp, "pc.json"), {"examples": 4})
        >>> sorted(os.listdir(output.path))
        ['.tfwd_output', 'pc.json']

    Args:
        kind: the analysis (its module's KIND): the folder's marker.
        path: the output folder.

    Raises:
        tfwd.errors.RunError: if `path` holds anything but an earlier output of `kind`.
    """

    def __init__(self, kind: str, path: str):
        check_output_dir(path, kind)
        self.kind, self.path = kind, path

    @classmethod
    def for_run(cls, kind: str, run_dir: str, out_dir: str | None = None, **name_parts) -> tuple[Run, Output]:
        """Opens a finished run for an analysis of `kind` and reserves its output folder.

        Args:
            kind: the analysis.
            run_dir: the run directory.
            out_dir: the output folder; None: `analysis_dir(run_dir, **name_parts, kind=kind)`.
            **name_parts: `taps` and `split` of the default folder's name.
        """
        run = Run(run_dir)
        return run, cls(kind, out_dir or analysis_dir(run.path, **name_parts, kind=kind))

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[str]:
        """Yields a temporary folder that replaces the output as a whole, then logs "<what> written to <path>"."""
        with atomic_dir(self.path, self.kind) as tmp:
            yield tmp
        logging.info("%s written to %s.", what, self.path)
