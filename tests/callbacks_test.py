"""tfwd.callbacks.CKAMonitor: the heatmaps it records, TensorBoard, its history, and that it never changes training."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwd import callbacks, metrics, models

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(64, 32, 32, 3)).astype("float32")
LABELS = RNG.integers(0, 10, size=64)


def _fit(monitor=None, epochs=2):
    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(depth=8, width=0.25)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    model.fit(IMAGES, LABELS, batch_size=16, epochs=epochs, verbose=0, callbacks=[monitor] if monitor else [])
    return model


def test_records_the_models_heatmap_every_n_epochs(tmp_path):
    history = str(tmp_path / callbacks.HISTORY)
    monitor = callbacks.CKAMonitor(
        IMAGES[:40], every=2, log_dir=str(tmp_path / "tb"), history_path=history, batch_size=16
    )
    model = _fit(monitor, epochs=4)
    saved = np.load(history)
    assert saved["epochs"].tolist() == [2, 4]
    assert saved["names"].tolist() == models.tap_names(model, "all")
    # The last matrix is the final model's heatmap, streamed in the same minibatches.
    acts = models.activation_model(model, "all")
    cka = metrics.CKA()
    for start in range(0, 40, 16):
        cka.update_state(acts(IMAGES[:40][start : start + 16], training=False))
    np.testing.assert_allclose(saved["matrices"][-1], cka.result(), atol=1e-6)
    assert saved["matrices"].shape == (2, len(saved["names"]), len(saved["names"]))
    tags, steps = set(), set()
    for name in os.listdir(tmp_path / "tb"):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / name)):
            for value in event.summary.value:
                tags.add(value.tag)
                steps.add(event.step)
    assert tags == {"cka/block_fraction", "cka/block_contrast", "cka/heatmap"}
    assert steps == {2, 4}
    assert sorted(os.listdir(tmp_path)) == ["cka_history.npz", "tb"]  # no temporary file left


def test_never_changes_training():
    monitor = callbacks.CKAMonitor(IMAGES[:32], every=1, batch_size=16)
    for a, b in zip(_fit().weights, _fit(monitor).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(monitor.matrices) == 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(every=0), r"`every` must be an integer >= 1 \(epochs between measurements\). Received: every=0"),
        (dict(every=-3), r"`every` must be an integer >= 1 \(epochs between measurements\). Received: every=-3"),
        (dict(images=np.zeros((8, 32, 32))), r"Received: images of shape \(8, 32, 32\)"),
        (dict(images=np.zeros((2, 32, 32, 3))), r"at least 4 images .* Received: images of shape \(2, 32, 32, 3\)"),
    ],
    ids=["every-zero", "every-negative", "images-3d", "too-few-images"],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"images": IMAGES, **kwargs}
    with pytest.raises(ValueError, match=message):
        callbacks.CKAMonitor(**kwargs)


def test_images_the_model_does_not_take_and_unknown_layers():
    model = models.cifar_resnet(depth=8, width=0.25)
    with pytest.raises(
        ValueError,
        match=r"must have the shape the model takes, \(n, 32, 32, 3\). Received: images of shape \(8, 28, 28, 3\)",
    ):
        callbacks.CKAMonitor(np.zeros((8, 28, 28, 3))).set_model(model)
    with pytest.raises(ValueError, match="'stem_reluu' \\(nearest: 'stem_relu'\\)"):
        callbacks.CKAMonitor(IMAGES, taps=["stem_reluu", "logits"]).set_model(model)


# --- bin/train --cka_every (tfwd.training.train) ------------------------------------------------


def test_training_with_cka_every_reaches_the_same_weights(tiny_runs, tmp_path, tfds_dir):
    from tfwd import runs, training
    from tfwd.data import DataConfig

    config = runs.Run(tiny_runs[0]).config  # seed 0, 1 epoch; trained without the monitor
    assert config.data == DataConfig(data_dir=tfds_dir, train_examples=256)
    run_dir = training.train(config, str(tmp_path), verbose=0, cka_every=1)
    for a, b in zip(runs.Run(tiny_runs[0]).model().weights, runs.Run(run_dir).model().weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with np.load(os.path.join(run_dir, callbacks.HISTORY)) as history:
        assert history["epochs"].tolist() == [1]
        assert history["names"].tolist() == models.tap_names(runs.Run(run_dir).model(), "all")
        assert history["matrices"].shape == (1, 28, 28)


@pytest.mark.parametrize("cka_every", [-1, 2, True], ids=["negative", "beyond-epochs", "bool"])
def test_bad_cka_every_is_refused_before_anything_is_written(tmp_path, cka_every):
    from tfwd import runs, training
    from tfwd.data import DataConfig

    config = runs.RunConfig(runs.ModelConfig(8, 0.25), DataConfig(), runs.TrainConfig(epochs=1))
    message = (
        r"`cka_every` must be 0 \(off\) or an epoch count up to --epochs=1. "
        f"Received: cka_every={cka_every!r}"
    )
    with pytest.raises(ValueError, match=message):
        training.train(config, str(tmp_path / "out"), cka_every=cka_every)
    assert not (tmp_path / "out").exists()
