"""tfwd.data: balanced nested subsets, augmentation, reproducible order, sources and errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfwd import data as tfwd_data
from tfwd.data import Data, DataConfig, DataNotFoundError, balanced_subset

LABELS = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]


class TestBalancedSubset:
    def test_balanced(self):
        train, held = balanced_subset(LABELS, 10, 250, holdout=50, seed=3)
        assert len(train) == 250 and len(held) == 50
        counts = np.bincount(LABELS[train], minlength=10)
        assert counts.max() - counts.min() <= 1 and counts.sum() == 250
        assert np.all(np.bincount(LABELS[held], minlength=10) == 5)

    def test_nested_and_held_out_fixed(self):
        small, held_small = balanced_subset(LABELS, 10, 60, holdout=100, seed=1)
        large, held_large = balanced_subset(LABELS, 10, 240, holdout=100, seed=1)
        everything, held_all = balanced_subset(LABELS, 10, None, holdout=100, seed=1)
        assert set(small) <= set(large) <= set(everything)
        np.testing.assert_array_equal(held_small, held_large)
        np.testing.assert_array_equal(held_small, held_all)
        assert not set(everything) & set(held_all)
        assert len(everything) == 900

    def test_deterministic_per_seed(self):
        a = balanced_subset(LABELS, 10, 100, seed=7)[0]
        np.testing.assert_array_equal(a, balanced_subset(LABELS, 10, 100, seed=7)[0])
        assert not np.array_equal(a, balanced_subset(LABELS, 10, 100, seed=8)[0])

    def test_too_many(self):
        with pytest.raises(ValueError, match="too few"):
            balanced_subset(LABELS, 10, 990, holdout=20)

    @pytest.mark.parametrize(
        "examples,holdout,warnings",
        [
            (5, 0, ["train_examples=5 is fewer than the 10 classes: classes 5-9 get no example. Use at least 10."]),
            (
                10,
                3,
                ["validation_examples=3 is fewer than the 10 classes: classes 3-9 get no example. Use at least 10."],
            ),
            (10, 0, []),
            (None, 0, []),
        ],
        ids=["train-5", "validation-3", "one-per-class", "all"],
    )
    def test_fewer_examples_than_classes_warns(self, caplog, examples, holdout, warnings):
        with caplog.at_level("WARNING", logger="absl"):
            train, _ = balanced_subset(LABELS, 10, examples, holdout=holdout)
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == warnings
        assert len(set(LABELS[train])) == min(10, examples or 10)


class TestAugment:
    def test_crop_is_a_window_of_the_reflect_padded_image_maybe_flipped(self):
        image = tf.random.stateless_uniform([32, 32, 3], seed=[0, 0])
        padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT").numpy()
        windows = {(i, j, f) for i in range(9) for j in range(9) for f in (0, 1)}
        seen = set()
        for s in range(200):
            out = tfwd_data.cifar_augment(image, tf.constant([1, s], tf.int64)).numpy()
            match = [
                (i, j, f)
                for (i, j, f) in windows
                if np.array_equal(
                    out, (padded[i : i + 32, j : j + 32] if not f else padded[i : i + 32, j : j + 32][:, ::-1])
                )
            ]
            assert match, "augmented image is not a (flipped) crop of the padded image"
            seen.update(match)
        assert {f for *_, f in seen} == {0, 1}
        assert len({(i, j) for i, j, _ in seen}) > 40  # offsets spread over the 9 x 9 windows

    def test_same_seed_same_output(self):
        image = tf.random.stateless_uniform([32, 32, 3], seed=[0, 1])
        a = tfwd_data.cifar_augment(image, tf.constant([5, 6], tf.int64))
        np.testing.assert_array_equal(a, tfwd_data.cifar_augment(image, tf.constant([5, 6], tf.int64)))


@pytest.fixture(scope="module")
def cifar(tfds_dir):
    return Data(DataConfig(data_dir=tfds_dir, train_examples=300, validation_examples=100, data_seed=0))


class TestCifar:
    def test_splits(self, cifar):
        assert cifar.num_classes == 10 and cifar.class_names[0] == "airplane"
        assert cifar.num_examples("train") == 300 and cifar.num_examples("validation") == 100
        assert cifar.num_examples("test") == 10_000
        assert np.all(np.bincount(cifar.labels("train")) == 30)
        assert np.all(np.bincount(cifar.labels("validation")) == 10)

    def test_eval_pixels_and_order(self, cifar, tfds_dir):
        batches = list(cifar.eval_dataset("test", 1000, examples=2000))
        images = np.concatenate([x for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        assert images.dtype == np.float32 and images.shape == (2000, 32, 32, 3)
        assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
        raw = tfds.load("cifar10", split="test[:2000]", data_dir=tfds_dir, batch_size=-1, shuffle_files=False)
        np.testing.assert_array_equal(labels, raw["label"].numpy())
        np.testing.assert_allclose(images, raw["image"].numpy() / 255.0, atol=1e-7)

    def test_eval_shuffle_is_seeded(self, cifar):
        def labels(seed):
            return np.concatenate([y for _, y in cifar.eval_dataset("validation", 32, shuffle_seed=seed)])

        a = labels(1)
        np.testing.assert_array_equal(a, labels(1))
        assert not np.array_equal(a, labels(2))
        np.testing.assert_array_equal(np.sort(a), np.sort(cifar.labels("validation")))

    def test_train_epochs_are_reproducible_and_resumable(self, cifar):
        steps = cifar.steps_per_epoch(64)
        assert steps == 4
        full = [y.numpy() for _, y in cifar.train_dataset(64, seed=3, start_epoch=0, epochs=3)]
        assert len(full) == 3 * steps
        again = [y.numpy() for _, y in cifar.train_dataset(64, seed=3, start_epoch=0, epochs=3)]
        resumed = list(cifar.train_dataset(64, seed=3, start_epoch=2, epochs=3))
        for a, b in zip(full, again):
            np.testing.assert_array_equal(a, b)
        for a, (_, b) in zip(full[2 * steps :], resumed):
            np.testing.assert_array_equal(a, b)
        other = [y.numpy() for _, y in cifar.train_dataset(64, seed=4, start_epoch=0, epochs=1)]
        assert not all(np.array_equal(a, b) for a, b in zip(full, other))
        # consecutive epochs see different orders
        assert not all(np.array_equal(a, b) for a, b in zip(full[:steps], full[steps : 2 * steps]))
        x = resumed[0][0].numpy()
        assert x.shape == (64, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1

    @pytest.mark.parametrize(
        "shards,replicas", [(1, 2), (2, 1), (2, 2)], ids=["1pipeline-2replicas", "2workers", "2workers-2replicas"]
    )
    def test_sharded_replica_batches_together_are_the_global_batch(self, cifar, shards, replicas):
        """What tf.distribute gets: each step's replica batches, across pipelines, make up the one-device batch."""
        per_replica = 64 // (shards * replicas)
        whole = [x.numpy() for x, _ in cifar.train_dataset(64, seed=2, epochs=2)]
        pipelines = [
            [
                x.numpy()
                for x, _ in cifar.train_dataset(64, seed=2, epochs=2, shard=(shards, i), replica_batch_size=per_replica)
            ]
            for i in range(shards)
        ]
        for step, batch in enumerate(whole):
            parts = [p[step * replicas + r] for p in pipelines for r in range(replicas)]
            got = np.concatenate(parts)
            assert got.shape == batch.shape
            # same examples with the same augmentation, in some order
            assert sorted(row.tobytes() for row in got) == sorted(row.tobytes() for row in batch)

    def test_epoch_is_a_permutation_of_the_subset(self, cifar):
        labels = np.concatenate([y for _, y in cifar.train_dataset(100, seed=0, epochs=1)])
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(cifar.labels("train")))

    def test_batch_larger_than_subset(self, cifar):
        with pytest.raises(ValueError, match="batch_size"):
            cifar.steps_per_epoch(1000)


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"`dataset` must be one of .*Received: dataset='mnist'"):
        DataConfig(dataset="mnist")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        Data(DataConfig(dataset="cifar100", data_dir=str(tmp_path)))
    message = str(info.value)
    assert "cifar100" in message and "--data_dir" in message and "TFDS_DATA_DIR" in message and "--download" in message
    assert "\n" not in message


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for label in ("cats", "dogs"):
            os.makedirs(tmp_path / split / label)
            for i in range(n):
                png = tf.io.encode_png(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8))
                tf.io.write_file(str(tmp_path / split / label / f"{i}.png"), png)
    d = Data(DataConfig(dataset="image_folder", data_dir=str(tmp_path), train_examples=8, validation_examples=2))
    assert d.class_names == ["cats", "dogs"] and d.num_examples("train") == 8 and d.num_examples("test") == 6
    x, y = next(iter(d.train_dataset(4, seed=0)))
    assert x.shape == (4, 32, 32, 3) and 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1
    labels = np.concatenate([y for _, y in d.eval_dataset("test", 4)])
    np.testing.assert_array_equal(labels, d.labels("test"))
    assert sorted(np.bincount(labels)) == [3, 3]
    # A streamed source resumes like an in-memory one: epoch e depends only on (seed, e).
    full = [x.numpy() for x, _ in d.train_dataset(4, seed=1, start_epoch=0, epochs=3)]
    resumed = [x.numpy() for x, _ in d.train_dataset(4, seed=1, start_epoch=2, epochs=3)]
    assert len(full) == 6 and len(resumed) == 2
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full[0], full[2])
    assert d.train_dataset(4, seed=1, start_epoch=0, epochs=120).element_spec[0].shape == (4, 32, 32, 3)


def test_imagenet_pipeline_on_mock_data():
    with tfds.testing.mock_data(num_examples=20):
        d = Data(DataConfig(dataset="imagenet2012", data_dir="/nonexistent", download=True, image_size=96))
        assert d.num_classes == 1000
        x, _ = next(iter(d.train_dataset(2, seed=0)))
        assert x.shape == (2, 96, 96, 3)
        x, y = next(iter(d.eval_dataset("test", 5)))
        assert x.shape == (5, 96, 96, 3) and float(tf.reduce_max(x)) <= 1.0


def test_imagenet_eval_preprocess_resizes_shorter_side_and_centre_crops():
    image = tf.cast(tf.reshape(tf.range(300 * 400 * 3) % 256, [300, 400, 3]), tf.uint8)
    out = tfwd_data.imagenet_eval_preprocess(image, 224)
    assert out.shape == (224, 224, 3)
    resized = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [256, 341])
    np.testing.assert_allclose(out, resized[16:240, 58:282], atol=1e-6)


# --- where the data comes from: prepared, fetched, or a one-line error -----------------------


class FakeDownload:
    """Stands in for TFDS's download_and_prepare (no network in tests): records the folder, or fails."""

    def __init__(self, error=None):
        self.folders, self.error = [], error

    def __call__(self, builder, *args, **kwargs):
        self.folders.append(str(builder.data_dir_root))
        if self.error:
            raise self.error


@pytest.fixture
def tfds_default(tmp_path, monkeypatch):
    """TFDS's default data folder, pointed at `folder` (an empty temporary one unless changed)."""
    from tensorflow_datasets.core import constants

    def point_at(folder):
        monkeypatch.setattr(constants, "DATA_DIR", str(folder))
        return str(folder)

    point_at(tmp_path / "default_tfds")
    return point_at


@pytest.fixture
def fake_download(monkeypatch):
    def install(error=None):
        fake = FakeDownload(error)
        monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lambda builder, *a, **k: fake(builder))
        return fake

    return install


def test_a_prepared_dataset_is_used_and_never_downloaded(tfds_dir, tfds_default, fake_download):
    fake = fake_download(AssertionError("must not download"))
    assert Data(DataConfig(data_dir=tfds_dir)).num_examples("test") == 10000
    tfds_default(tfds_dir)  # prepared in TFDS's default folder: found there with data_dir=None
    assert tfwd_data.prepare(DataConfig()) == tfds_dir
    assert fake.folders == []


def test_missing_cifar_is_fetched_into_tfds_default_folder(tfds_default, fake_download, caplog):
    fake = fake_download()
    default = str(tfds.builder("cifar10").data_dir_root)
    assert tfwd_data.prepare(DataConfig("cifar10")) == default
    assert fake.folders == [default]
    notices = [r.getMessage() for r in caplog.records if "not prepared" in r.getMessage()]
    assert notices == [
        f"Dataset 'cifar10' is not prepared in {default}: downloading and preparing it there with TFDS (once)."
    ]
    Data(DataConfig("cifar100"))  # Data fetches as well
    assert fake.folders == [default, default]


@pytest.mark.parametrize(
    "config,advice",
    [
        (dict(dataset="cifar10", data_dir="{tmp}"), "or pass --download to let TFDS fetch it."),
        (dict(dataset="cifar10", download=False), "or pass --download to let TFDS fetch it."),
        (dict(dataset="imagenet2012"), "pass --download (TFDS manual download)."),
    ],
    ids=["explicit-data-dir", "nodownload", "imagenet-needs-manual-download"],
)
def test_no_download_unless_allowed(tmp_path, tfds_default, fake_download, config, advice):
    fake = fake_download()
    config = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in config.items()}
    with pytest.raises(DataNotFoundError) as info:
        Data(DataConfig(**config))
    where = config.get("data_dir") or str(tfds.builder("cifar10").data_dir_root)
    assert str(info.value).startswith(f"Dataset {config['dataset']!r} is not prepared in {where}. Point --data_dir")
    assert str(info.value).endswith(advice)
    assert fake.folders == []


def test_offline_download_fails_in_one_line(tfds_default, fake_download):
    error = ConnectionError("HTTPSConnectionPool(host='www.cs.toronto.edu', port=443):\nMax retries exceeded")
    fake = fake_download(error)
    with pytest.raises(DataNotFoundError) as info:
        Data(DataConfig("cifar10"))
    default = str(tfds.builder("cifar10").data_dir_root)
    assert fake.folders == [default]
    assert str(info.value) == (
        f"Dataset 'cifar10' is not prepared in {default} and could not be downloaded (ConnectionError). Point "
        "--data_dir (or TFDS_DATA_DIR) at a TFDS data directory that holds it, or rerun with network access to let "
        "TFDS fetch it."
    )


def test_missing_module_is_named_not_blamed_on_the_network(tfds_default, fake_download):
    try:  # as TFDS's lazy imports raise it: the ModuleNotFoundError is the cause of another error
        try:
            import importlib_resources_not_installed  # noqa: F401
        except ModuleNotFoundError as e:
            raise ImportError("Error while importing importlib_resources_not_installed") from e
    except ImportError as e:
        error = e
    fake_download(error)
    with pytest.raises(DataNotFoundError) as info:
        Data(DataConfig("cifar10"))
    default = str(tfds.builder("cifar10").data_dir_root)
    assert str(info.value) == (
        f"Dataset 'cifar10' is not prepared in {default} and TFDS cannot download it: its download code needs the "
        "Python module 'importlib_resources_not_installed', which is not installed. Install it (pip install "
        "importlib_resources_not_installed) or reinstall tfwd with its dependencies."
    )


# Python's sockets fail as on a machine without network (installed as sitecustomize in a subprocess);
# urllib3 retries at once, not after TFDS's backoff (~200 s over its 10 retries).
NO_NETWORK = """
import socket

import urllib3.util.retry

def _unreachable(*args, **kwargs):
    raise OSError(101, "Network is unreachable")

def _no_dns(*args, **kwargs):
    raise socket.gaierror(-3, "Temporary failure in name resolution")

socket.socket.connect = socket.socket.connect_ex = _unreachable
socket.getaddrinfo = _no_dns
urllib3.util.retry.Retry.get_backoff_time = lambda self: 0.0
"""


def test_real_download_offline_blames_the_network(tmp_path, root):
    # The real install and TFDS's real download path (nothing faked in-process), no prepared data.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_NETWORK)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{root}", TFDS_DATA_DIR=str(tmp_path / "tfds"))
    code = (
        "from tfwd import data, errors\n"
        "try:\n    data.prepare(data.DataConfig('cifar10'))\n"
        "except errors.DataNotFoundError as e:\n    print(e)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    message = out.stdout.strip().splitlines()[-1]  # after TFDS's progress lines
    assert message.startswith(f"Dataset 'cifar10' is not prepared in {tmp_path / 'tfds'} and could not be downloaded (")
    assert message.endswith("or rerun with network access to let TFDS fetch it."), message
    assert "module" not in message.lower(), message


def test_download_setting_is_auto_by_default_and_old_configs_read_unchanged():
    assert DataConfig().download == "auto"
    assert DataConfig.from_dict({"dataset": "cifar10", "download": False}).download is False
    assert DataConfig.from_dict(DataConfig(download=True).to_dict()) == DataConfig(download=True)
    message = r"`download` must be one of \('auto', True, False\). Received: download='yes'"
    with pytest.raises(ValueError, match=message):
        DataConfig(download="yes")
