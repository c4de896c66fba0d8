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
    # Each measurement's block and scalars are those of the detector on its matrix.
    for k, matrix in enumerate(saved["matrices"]):
        block = callbacks.find_block(matrix, saved["names"].tolist())
        assert (saved["block_start"][k], saved["block_end"][k]) == (block.start, block.end)
        assert saved["block_fraction"][k] == (block.fraction if block.found else 0.0)
        np.testing.assert_equal(saved["block_contrast"][k], block.contrast if block.found else block.peak_contrast)
        assert np.isnan(saved["pc_fraction_inside"][k]) != block.found
        assert 0 < saved["pc_fraction_outside"][k] <= 1
    logged = {}
    for name in os.listdir(tmp_path / "tb"):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / name)):
            for value in event.summary.value:
                logged[(value.tag, event.step)] = value
    # Every finite scalar of the history is in TensorBoard at its epoch, a NaN one is left out, the heatmap always.
    expected = {("cka/heatmap", e) for e in (2, 4)}
    for k, epoch in enumerate([2, 4]):
        expected |= {(f"cka/{s}", epoch) for s in callbacks.SCALARS if np.isfinite(saved[s][k])}
    assert set(logged) == expected
    for k, epoch in enumerate([2, 4]):
        value = tf.make_ndarray(logged[("cka/pc_fraction_outside", epoch)].tensor)
        np.testing.assert_allclose(value, saved["pc_fraction_outside"][k], rtol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["cka_history.npz", "tb"]  # no temporary file left


def _first_pc_fraction(features: list[np.ndarray]) -> float:
    """sigma_1^2 / sum sigma_i^2 of the centred, concatenated, flattened features, by a float64 SVD."""
    x = np.concatenate([f.reshape(len(f), -1).astype(np.float64) for f in features], axis=1)
    sigma = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    return float(sigma[0] ** 2 / np.sum(sigma**2))


def test_first_pc_fractions_of_the_residual_stream_inside_and_outside_the_block():
    from tfwd import blocks

    model = models.cifar_resnet(depth=8, width=0.25)
    monitor = callbacks.CKAMonitor(IMAGES[:40], batch_size=16)  # 3 batches: the Gram matrices come in tiles
    monitor.set_model(model)
    names = monitor.names
    stream = ["stem_relu", "stage1_block1_out", "stage2_block1_out", "stage3_block1_out"]
    block = blocks.BlockStructure(True, start=names.index("stage2_block1_conv1"), end=names.index("stage3_block1_out"))
    acts = dict(zip(names, models.activation_model(model, "all")(IMAGES[:40], training=False)))
    inside, outside = monitor.first_pc_fractions(block)
    np.testing.assert_allclose(inside, _first_pc_fraction([acts[n].numpy() for n in stream[2:]]), rtol=1e-4)
    np.testing.assert_allclose(outside, _first_pc_fraction([acts[n].numpy() for n in stream[:2]]), rtol=1e-4)
    inside, outside = monitor.first_pc_fractions(blocks.BlockStructure(False))
    assert np.isnan(inside)
    np.testing.assert_allclose(outside, _first_pc_fraction([acts[n].numpy() for n in stream]), rtol=1e-4)


def test_history_resumes_and_reads_files_from_before_the_scalars(tmp_path):
    history = str(tmp_path / callbacks.HISTORY)
    monitor = callbacks.CKAMonitor(IMAGES[:32], every=1, history_path=history, batch_size=16)
    _fit(monitor, epochs=3)
    written = callbacks.load_history(history)
    resumed = callbacks.CKAMonitor(IMAGES[:32], every=1, history_path=history, batch_size=16)
    resumed.set_model(monitor.model)
    resumed.resume(2)  # a run resumed after epoch 2 measures epoch 3 again
    kept = resumed.history()
    assert kept["epochs"].tolist() == [1, 2]
    assert kept["names"].tolist() == written["names"]
    for key, value in kept.items():
        if key != "names":
            np.testing.assert_array_equal(value, written[key][:2], err_msg=key)
    # A history of only epochs, matrices and names: the block from the detector, no first-PC fractions.
    old = str(tmp_path / "old.npz")
    np.savez(old, **{key: np.asarray(written[key]) for key in ("epochs", "matrices", "names")})
    read = callbacks.load_history(old)
    for key in ("block_start", "block_end", "block_fraction", "block_contrast"):
        np.testing.assert_array_equal(read[key], written[key], err_msg=key)
    assert np.isnan(read["pc_fraction_inside"]).all() and np.isnan(read["pc_fraction_outside"]).all()


def test_load_history_refuses_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", probs=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks epochs, matrices, names\.$"):
        callbacks.load_history(str(tmp_path / "other.npz"))
    message = r"`path` must be a CKA history \(cka_history.npz\). Received: path='.*nope.npz'"
    with pytest.raises(ValueError, match=message):
        callbacks.load_history(str(tmp_path / "nope.npz"))


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
