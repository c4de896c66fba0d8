"""Input pipelines: TFDS sources, the paper's augmentation, balanced nested subsets.

Sources (all through TensorFlow Datasets):

- "cifar10", "cifar100": held in memory (uint8), 32x32 pixels.
- "imagenet2012": TFDS's manual-download builder, streamed, 224x224 pixels with
  the standard Inception-style preprocessing.
- "image_folder": any `root/{train,test}/{label}/*.jpg` tree, through
  `tfds.folder_dataset.ImageFolder`; `data_dir` is the root. Images are
  resized to `image_size` (default 32) and preprocessed the CIFAR way up to 64
  pixels, the ImageNet way above.

Splits, as the rest of tfwd names them:

- "train": the training subset (after subsampling, without the validation examples).
- "validation": examples held out of the training split; use them to choose anything.
- "test": the dataset's test split (ImageNet: its validation split). Nothing is
  ever selected on it.

Subsets are class-balanced and nested: for a data seed, each class's examples are
put in one seeded random order; a training subset of N examples takes the first
N / C of every class and the validation examples come from the end of each
class's order, so a 1/16 subset lies inside the 1/4 subset and neither ever
meets the validation set.

Pixels are float32 in [0, 1] with no mean/std normalization (as the reference code).

Where the data comes from (`DataConfig.download`): a prepared TFDS folder is always
used first (`data_dir`, else TFDS's default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).
When CIFAR-10 or CIFAR-100 is prepared nowhere and no `data_dir` is given, TFDS fetches
and prepares it into its default folder, as `tfds.load` would (download="auto", the
default; one log line says so first, then TFDS shows its progress). ImageNet needs
TFDS's manual download and is only prepared when asked (download=True); nothing is
fetched with download=False. Offline, a failed download is one DataNotFoundError line (a
missing Python module is named as such: it is not a network problem).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from tfwd.errors import DataNotFoundError

SPLITS = ("train", "validation", "test")
# Decoded in-memory splits, shared by every Data of this process (decoding
# CIFAR-10's training split takes seconds; analyses open several runs).
_ARRAYS: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}


@dataclasses.dataclass(frozen=True)
class _Source:
    tfds_name: str | None
    test_split: str
    image_size: int
    in_memory: bool
    style: str  # preprocessing: "cifar", "imagenet", or "auto" (imagenet above 64 pixels)


_SOURCES = {
    "cifar10": _Source("cifar10", "test", 32, True, "cifar"),
    "cifar100": _Source("cifar100", "test", 32, True, "cifar"),
    "imagenet2012": _Source("imagenet2012", "validation", 224, False, "imagenet"),
    "image_folder": _Source(None, "test", 32, False, "auto"),
}
DATASETS = tuple(_SOURCES)
DOWNLOADS = ("auto", True, False)
# Fetched without being asked (small, public, as tfds.load does). Never ImageNet: its
# archives must be downloaded by hand (TFDS's manual download) and preparing takes hours.
AUTO_DOWNLOAD = ("cifar10", "cifar100")


# Pass p of seed s shuffles with seed s * SEED_STRIDE + p: distinct for every (s, p) with p < SEED_STRIDE
# (a prime, so no two seeds share a pass's order by accident).
SEED_STRIDE = 1_000_003


def shuffle_seed(seed: int, index: int) -> int:
    """The shuffle seed of pass (or epoch) `index` under `seed`: seed * SEED_STRIDE + index.

    Example:
        >>> shuffle_seed(0, 3), shuffle_seed(2, 0)
        (3, 2000006)
    """
    return seed * SEED_STRIDE + index


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything that fixes which examples a run sees.

    Attributes:
        dataset: one of DATASETS.
        data_dir: TFDS data directory (image_folder: the folder's root). None uses
            TFDS's default (the TFDS_DATA_DIR environment variable, else
            ~/tensorflow_datasets).
        train_examples: size of the class-balanced training subset; None for all.
        validation_examples: class-balanced examples held out of the training split.
        data_seed: seed of the subset selection (not of the data order).
        image_size: side of the square input images; None for the dataset's default.
        download: what to do when the dataset is not prepared. "auto" (default):
            fetch CIFAR-10/100 with TFDS into TFDS's default folder when no
            `data_dir` is given, else stop with DataNotFoundError; True: let TFDS
            download and prepare any dataset into `data_dir` (ImageNet: from the
            manually downloaded archives); False: never download. Runs written
            before "auto" existed hold False or True, read unchanged.
    """

    dataset: str = "cifar10"
    data_dir: str | None = None
    train_examples: int | None = None
    validation_examples: int = 0
    data_seed: int = 0
    image_size: int | None = None
    download: bool | str = "auto"

    def __post_init__(self):
        if not (isinstance(self.download, bool) or self.download == "auto"):
            raise ValueError(f"`download` must be one of {DOWNLOADS}. Received: download={self.download!r}")
        if self.dataset not in _SOURCES:
            raise ValueError(f"`dataset` must be one of {DATASETS}. Received: dataset={self.dataset!r}")
        if self.dataset == "image_folder" and not self.data_dir:
            raise ValueError("dataset='image_folder' needs `data_dir`, the folder holding train/ and test/.")
        if self.train_examples is not None and self.train_examples < 1:
            raise ValueError(f"`train_examples` must be positive or None (all). Received: {self.train_examples!r}")
        if self.validation_examples < 0:
            raise ValueError(f"`validation_examples` must be >= 0. Received: {self.validation_examples!r}")

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or _SOURCES[self.dataset].image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def _not_found(dataset: str, where: str, detail: str = "", failed: bool = False) -> DataNotFoundError:
    if dataset == "imagenet2012":
        how = "or put the ILSVRC2012 tars in <data_dir>/downloads/manual and pass --download (TFDS manual download)"
    elif failed:
        how = "or rerun with network access to let TFDS fetch it"
    else:
        how = "or pass --download to let TFDS fetch it"
    return DataNotFoundError(
        f"Dataset {dataset!r} is not prepared in {where}{detail}. Point --data_dir (or TFDS_DATA_DIR) at a "
        f"TFDS data directory that holds it, {how}."
    )


def _may_download(config: DataConfig) -> bool:
    if config.download == "auto":
        return config.dataset in AUTO_DOWNLOAD and config.data_dir is None
    return bool(config.download)


def _tfds_builder(config: DataConfig):
    """The TFDS builder of `config`'s dataset, prepared first if it is missing and `config.download` allows."""
    builder = tfds.builder(_SOURCES[config.dataset].tfds_name, data_dir=config.data_dir)
    if builder.is_prepared():
        return builder
    where = str(builder.data_dir_root)
    if not _may_download(config):
        raise _not_found(config.dataset, where)
    logging.warning(
        "Dataset %r is not prepared in %s: downloading and preparing it there with TFDS (once).", config.dataset, where
    )
    try:
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
        missing = _missing_module(e)
        if missing is not None:  # the install lacks a package TFDS imports: no network fixes that
            raise DataNotFoundError(
                f"Dataset {config.dataset!r} is not prepared in {where} and TFDS cannot download it: its download "
                f"code needs the Python module {missing!r}, which is not installed. Install it (pip install {missing}) "
                "or reinstall tfwd with its dependencies."
            ) from e
        detail = f" and could not be downloaded ({type(e).__name__})"
        raise _not_found(config.dataset, where, detail, failed=True) from e
    return builder


def _missing_module(error: BaseException) -> str | None:
    """The top-level module whose import failed somewhere in `error`'s chain of causes, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ModuleNotFoundError) and error.name:
            return error.name.split(".")[0]
        error = error.__cause__ or error.__context__
    return None


def prepare(config: DataConfig) -> str:
    """Makes sure the dataset of `config` is on disk, fetching it as `config.download` allows.

    `Data` does this itself; call it first to fetch a dataset once before starting
    several processes that read it (tfwd.sweeps does).

    Returns:
        The TFDS data folder that holds the dataset (image_folder: its root).

    Raises:
        DataNotFoundError: when the dataset is missing and not fetched (not allowed,
            or the download failed).
    """
    if config.dataset == "image_folder":
        return config.data_dir
    return str(_tfds_builder(config).data_dir_root)


def balanced_subset(
    labels: np.ndarray, num_classes: int, examples: int | None, holdout: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced, nested training and held-out index sets.

    Args:
        labels: (N,) integer labels of the full training split.
        num_classes: C.
        examples: training subset size, None for everything not held out. When
            not divisible by C, the first `examples % C` classes get one more.
        holdout: held-out (validation) examples, taken from the end of each
            class's order, balanced the same way.
        seed: data seed fixing each class's order.

    Returns:
        (train_indices, holdout_indices), each sorted ascending, disjoint. Fewer
        examples than classes leave the last classes without any, with a warning.

    Raises:
        ValueError: when a class has too few examples for the request.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]

    def share(total, c):
        return total // num_classes + (1 if c < total % num_classes else 0)

    train, held = [], []
    for c, order in enumerate(per_class):
        h = share(holdout, c)
        available = len(order) - h
        t = available if examples is None else share(examples, c)
        if t > available or h > len(order):
            raise ValueError(
                f"Class {c} has {len(order)} examples: too few for {t} training and {h} held-out examples "
                f"(train_examples={examples}, validation_examples={holdout})."
            )
        train.append(order[:t])
        held.append(order[len(order) - h :])
    for what, total, parts in (("train_examples", examples, train), ("validation_examples", holdout, held)):
        empty = [c for c, part in enumerate(parts) if not len(part)]
        if total and empty:
            logging.warning(
                "%s=%d is fewer than the %d classes: classes %s get no example. Use at least %d.",
                what,
                total,
                num_classes,
                _ranges(empty),
                num_classes,
            )
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans = []
    for v in values:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def cifar_augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The paper's CIFAR augmentation: reflect-pad 4, random crop back, random horizontal flip.

    Args:
        image: (H, W, C) float image.
        seed: (2,) int stateless seed; the same seed gives the same crop and flip.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def imagenet_train_preprocess(image: tf.Tensor, seed: tf.Tensor, size: int = 224) -> tf.Tensor:
    """Inception-style random-resized crop (area 8-100%, aspect 3/4-4/3), resize, flip; [0, 1] floats."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop)
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [size, size])
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def imagenet_eval_preprocess(image: tf.Tensor, size: int = 224) -> tf.Tensor:
    """Resize the shorter side to size / 0.875 (256 for 224), then centre-crop size x size; [0, 1] floats."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / 0.875) / tf.reduce_min(shape)
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, tf.cast(tf.round(shape * scale), tf.int32))
    return tf.image.resize_with_crop_or_pad(image, size, size)


def _to_float(image):
    return tf.cast(image, tf.float32) / 255.0


class Data:
    """One dataset as a run sees it: its classes, splits and pipelines.

    Args:
        config: a DataConfig.

    Raises:
        DataNotFoundError: when the dataset is not on disk and not downloaded.
        ValueError: for a subset the dataset cannot provide.
    """

    def __init__(self, config: DataConfig):
        self.config = config
        self.source = _SOURCES[config.dataset]
        self.image_size = config.resolved_image_size
        style = self.source.style
        self._imagenet_style = style == "imagenet" or (style == "auto" and self.image_size > 64)
        self._builder = self._make_builder()
        info = self._builder.info
        self.class_names: list[str] = list(info.features["label"].names)
        self.num_classes = len(self.class_names)
        self._labels: dict[str, np.ndarray] = {}
        self._subsets: dict[str, np.ndarray] | None = None

    @property
    def _indices(self) -> dict[str, np.ndarray]:
        """Indices into the TFDS train split of the "train" and "validation" subsets."""
        if self._subsets is None:
            cfg = self.config
            train, held = balanced_subset(
                self._raw_labels("train"), self.num_classes, cfg.train_examples, cfg.validation_examples, cfg.data_seed
            )
            self._subsets = {"train": train, "validation": held}
        return self._subsets

    # --- sources --------------------------------------------------------------------------

    def _make_builder(self):
        cfg = self.config
        if cfg.dataset == "image_folder":
            if not os.path.isdir(os.path.join(cfg.data_dir, "train")):
                raise _not_found("image_folder", cfg.data_dir, " (no train/ subfolder)")
            return tfds.folder_dataset.ImageFolder(cfg.data_dir)
        return _tfds_builder(cfg)

    def _tfds_split(self, split: str) -> str:
        if split == "test":
            available = set(self._builder.info.splits.keys())
            if not available:  # split sizes unknown (e.g. under tfds.testing.mock_data)
                return self.source.test_split
            for name in (self.source.test_split, "test", "validation", "val"):
                if name in available:
                    return name
            where = self.config.data_dir or str(self._builder.data_dir_root)
            raise _not_found(self.config.dataset, where, " (no test split)")
        return "train"

    def _raw(self, split: str) -> tf.data.Dataset:
        """(uint8 image, int32 label) pairs of a TFDS split, in stored order."""
        ds = self._builder.as_dataset(split=self._tfds_split(split), shuffle_files=False)
        return ds.map(lambda e: (e["image"], tf.cast(e["label"], tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)

    def _raw_labels(self, split: str) -> np.ndarray:
        """Labels of the whole TFDS split ("train" or "test"), in stored order."""
        if self.source.in_memory:
            return self._load_arrays(split)[1]
        if split not in self._labels:
            ds = self._builder.as_dataset(
                split=self._tfds_split(split), shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
            )
            batches = ds.map(lambda e: tf.cast(e["label"], tf.int32)).batch(8192).as_numpy_iterator()
            self._labels[split] = np.concatenate(list(batches) or [np.zeros([0], np.int32)])
        return self._labels[split]

    def _load_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images (uint8) and labels of a whole in-memory TFDS split, decoded once per process."""
        key = (self.config.dataset, str(self._builder.data_dir), self._tfds_split(split))
        if key not in _ARRAYS:
            whole = self._builder.as_dataset(split=key[2], batch_size=-1, shuffle_files=False)
            _ARRAYS[key] = (whole["image"].numpy(), whole["label"].numpy().astype(np.int32))
        return _ARRAYS[key]

    # --- public ---------------------------------------------------------------------------

    def num_examples(self, split: str) -> int:
        """Number of examples in a split ("train", "validation" or "test")."""
        _check_split(split)
        return len(self._raw_labels("test")) if split == "test" else len(self._indices[split])

    def labels(self, split: str) -> np.ndarray:
        """(N,) int32 labels of a split, in the order `eval_dataset` yields them unshuffled."""
        _check_split(split)
        labels = self._raw_labels("test" if split == "test" else "train")
        return (labels if split == "test" else labels[self._indices[split]]).astype(np.int32)

    def _examples(self, split: str) -> tf.data.Dataset:
        """Unbatched (uint8 image, label) examples of a split, in a fixed order."""
        if self.source.in_memory:
            images, labels = self._load_arrays(split)
            if split != "test":
                idx = self._indices[split]
                images, labels = images[idx], labels[idx]
            return tf.data.Dataset.from_tensor_slices((images, labels))
        ds = self._raw(split)
        if split != "test":
            keep = np.zeros(len(self._raw_labels("train")), bool)
            keep[self._indices[split]] = True
            keep = tf.constant(keep)

            def kept(i, example):
                return keep[i]

            def drop_index(i, example):
                return example

            ds = ds.enumerate().filter(kept).map(drop_index)
        return ds

    def _eval_preprocess(self, image):
        if self._imagenet_style:
            return imagenet_eval_preprocess(image, self.image_size)
        image = _to_float(image)
        if not self.source.in_memory:
            image = tf.image.resize(image, [self.image_size, self.image_size])
        return image

    def eval_dataset(
        self,
        split: str = "test",
        batch_size: int = 256,
        examples: int | None = None,
        shuffle_seed: int | None = None,
    ) -> tf.data.Dataset:
        """Batches of (float32 images in [0, 1], int32 labels) with no augmentation.

        Args:
            split: "train", "validation" or "test".
            batch_size: examples per batch; the last batch may be smaller.
            examples: use only the first `examples` examples of the split (None: all).
            shuffle_seed: None keeps the split's order; an int shuffles the chosen
                examples with that seed (the same seed gives the same order).
        """
        _check_split(split)
        ds = self._examples(split)
        if examples is not None:
            ds = ds.take(examples)
        if shuffle_seed is not None:
            n = examples or self.num_examples(split)
            ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=False)
        ds = ds.map(lambda x, y: (self._eval_preprocess(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training steps per epoch: full batches only (the last partial batch is dropped)."""
        steps = self.num_examples("train") // batch_size
        if steps < 1:
            raise ValueError(
                f"`batch_size`={batch_size} is larger than the {self.num_examples('train')} training examples."
            )
        return steps

    def train_dataset(
        self,
        batch_size: int,
        seed: int,
        start_epoch: int = 0,
        epochs: int = 1,
        shard: tuple[int, int] = (1, 0),
        replica_batch_size: int | None = None,
    ) -> tf.data.Dataset:
        """Augmented, shuffled training batches for epochs [start_epoch, epochs).

        The order and augmentation of epoch e depend only on (seed, e): a run
        resumed at epoch e sees exactly the batches the uninterrupted run saw.
        Each epoch has `steps_per_epoch(batch_size)` full global batches.

        Args:
            batch_size: the global batch size.
            seed: fixes the order and the augmentation.
            start_epoch, epochs: the epochs to produce.
            shard: (k, i) keeps positions i, i+k, i+2k, ... of each epoch's order,
                for input pipeline i of k under tf.distribute.
            replica_batch_size: batch this pipeline's examples in batches of this
                size (one per replica); default `batch_size`. With k pipelines and
                r replicas, the replicas' batches of one step together are exactly
                the global batch one device would see.
        """
        steps = self.steps_per_epoch(batch_size)
        n = self.num_examples("train")
        examples = self._examples("train")
        size = self.image_size

        def augment(image, label, epoch, position):
            example_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * n + position])
            if self._imagenet_style:
                return imagenet_train_preprocess(image, example_seed, size), label
            image = _to_float(image)
            if not self.source.in_memory:
                image = tf.image.resize(image, [size, size])
            return cifar_augment(image, example_seed), label

        if self.source.in_memory:
            # Eager tensors: a captured NumPy array would be copied on every call.
            images, labels = (tf.constant(a[self._indices["train"]]) for a in self._load_arrays("train"))

        def shuffled(epoch):
            """The epoch's examples in an order fixed by (seed, epoch)."""
            if self.source.in_memory:
                epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
                order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=epoch_seed)
                return tf.data.Dataset.from_tensor_slices(order).map(
                    lambda i: (tf.gather(images, i), tf.gather(labels, i))
                )
            # A streamed source is shuffled through a buffer, whose seed must be a
            # Python int: one dataset per epoch, concatenated below.
            return examples.shuffle(min(n, 16384), seed=shuffle_seed(seed, epoch), reshuffle_each_iteration=False)

        num_shards, index = shard

        def one_epoch(epoch):
            ds = shuffled(epoch).take(steps * batch_size).enumerate()
            if num_shards > 1:
                ds = ds.filter(lambda pos, ex: pos % num_shards == index)
            return ds.map(lambda pos, ex: augment(ex[0], ex[1], epoch, pos), num_parallel_calls=tf.data.AUTOTUNE)

        if self.source.in_memory:
            ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
        else:
            ds = one_epoch(start_epoch)
            for epoch in range(start_epoch + 1, epochs):
                ds = ds.concatenate(one_epoch(epoch))
        return ds.batch(replica_batch_size or batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
