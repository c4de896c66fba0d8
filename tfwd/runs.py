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
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
from absl import logging

from tfwd import layer_names, models
from tfwd.atomic import (  # noqa: F401 - re-exported: tfwd.runs has always offered them
    OUTPUT_MARKER,
    RUN_CONFIG,
    atomic_dir,
    atomic_path,
    atomic_write,
    check_output_dir,
    write_csv,
    write_json,
    write_npz,
)
from tfwd.data import Data, DataConfig
from tfwd.errors import RunError
from tfwd.run_settings import ARCHS, DECAY_EVERY

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


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a run.

    Attributes:
        depth: CIFAR ResNet depth, 6n + 2 (for "imagenet_resnet": derived from blocks).
        width: CIFAR width multiplier.
        residual: False for the plain network without shortcuts (CIFAR only).
        arch: "cifar_resnet" (tfwd.models.cifar_resnet) or "imagenet_resnet"
            (tfwd.models.imagenet_resnet).
        blocks: bottleneck blocks per stage (imagenet_resnet), e.g. (3, 4, 6, 3).
        widths: width multiplier per stage (imagenet_resnet), e.g. (1, 1, 2.8, 1).
    """

    depth: int = 56
    width: float = 1.0
    residual: bool = True
    arch: str = "cifar_resnet"
    blocks: tuple[int, ...] | None = None
    widths: tuple[float, ...] | None = None

    def __post_init__(self):
        # JSON gives lists; keep tuples so configs compare and hash alike.
        for field in ("blocks", "widths"):
            if isinstance(getattr(self, field), list):
                object.__setattr__(self, field, tuple(getattr(self, field)))

    @classmethod
    def imagenet(cls, blocks=(3, 4, 6, 3), widths=(1, 1, 1, 1)) -> ModelConfig:
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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings (defaults: the paper's CIFAR recipe, see bin/train).

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

    epochs: int = 300
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    deterministic: bool = False
    warmup_epochs: int = 2
    decay_every: str = "step"

    def validate(self) -> None:
        if self.decay_every not in DECAY_EVERY:
            raise ValueError(f"`decay_every` must be one of {DECAY_EVERY}. Received: decay_every={self.decay_every!r}")
        for field in ("epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"`{field}` must be a positive integer. Received: {field}={getattr(self, field)!r}")
        for field in ("learning_rate", "weight_decay", "momentum", "warmup_epochs"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"`{field}` must be >= 0. Received: {field}={getattr(self, field)!r}")


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


class Run:
    """A finished run directory, opened for analysis.

    Args:
        path: the run directory.

    Raises:
        RunError: if the directory, its config or its model is missing or unreadable.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise RunError(f"Run directory {path} does not exist.")
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
        return loaded


def read_config(path: str) -> RunConfig:
    """The RunConfig of a run directory."""
    file = os.path.join(path, CONFIG)
    try:
        with open(file) as f:
            return RunConfig.from_dict(json.load(f))
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


def open_analysis(run_dir: str, kind: str, out_dir: str | None, **name_parts) -> tuple[Run, str]:
    """Opens a finished run for an analysis of `kind` and reserves its output folder.

    Args:
        run_dir: the run directory.
        kind: the analysis ("pc", "probes", ...): the folder's marker and default name.
        out_dir: the output folder; None: `analysis_dir(run_dir, **name_parts, kind=kind)`.
        **name_parts: `taps` and `split` of the default folder's name.

    Returns:
        The opened Run and the output folder, which `check_output_dir` found free, so a
        wrong folder fails before anything is computed.
    """
    run = Run(run_dir)
    out_dir = out_dir or analysis_dir(run.path, **name_parts, kind=kind)
    check_output_dir(out_dir, kind)
    return run, out_dir


@contextlib.contextmanager
def writing_output(out_dir: str, kind: str, what: str) -> Iterator[str]:
    """Yields a temporary folder that replaces `out_dir` as a whole (`atomic_dir`), then logs "<what> written to".

    Example (`what` names the result): with writing_output(out, "pc", f"First-PC analyses of {run.name}") as tmp: ...
    """
    with atomic_dir(out_dir, kind) as tmp:
        yield tmp
    logging.info("%s written to %s.", what, out_dir)
