"""tfwd.cka and bin/cka: joint passes over many models, files written, errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfwd import cka, metrics, models


def _dataset(seed, n=96, batch=32):
    x = tf.random.stateless_uniform([n, 32, 32, 3], seed=[seed, 0])
    return tf.data.Dataset.from_tensor_slices((x, tf.zeros([n], tf.int32))).batch(batch)


def test_joint_pass_equals_models_computed_separately():
    import keras

    keras.utils.set_random_seed(0)
    a, b = models.cifar_resnet(8, 0.25), models.cifar_resnet(8, 0.5, residual=False)
    calls = []

    def for_pass(p):
        calls.append(p)
        return _dataset(p)

    result = cka.cka_matrices([a, b], for_pass, passes=2, taps="blocks")
    assert calls == [0, 1]
    assert result["batches"] == 6 and result["examples"] == 96
    assert result["names"][0] == models.tap_names(a, "blocks")
    # The reference: the metric fed each model's taps (and both, for the cross block) on the same batches.
    within_a, within_b, cross = metrics.CKA(), metrics.CKA(), metrics.CKA()
    acts_a, acts_b = models.activation_model(a, "blocks"), models.activation_model(b, "blocks")
    for p in (0, 1):
        for x, _ in _dataset(p):
            ya, yb = acts_a(x, training=False), acts_b(x, training=False)
            within_a.update_state(ya)
            within_b.update_state(yb)
            cross.update_state(ya, yb)
    np.testing.assert_allclose(result["blocks"][(0, 0)], within_a.result().numpy(), atol=1e-6)
    np.testing.assert_allclose(result["blocks"][(1, 1)], within_b.result().numpy(), atol=1e-6)
    np.testing.assert_allclose(result["blocks"][(0, 1)], cross.result().numpy(), atol=1e-6)


def _trained_like_resnet():
    """A ResNet-8 (0.5x) with trained-like BN statistics, so that each BN rescales its channels unevenly."""
    import keras

    keras.utils.set_random_seed(1)
    model = models.cifar_resnet(8, 0.5)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(-2, 2, c))
            layer.beta.assign(rng.normal(size=c))
            layer.moving_mean.assign(rng.normal(size=c))
            layer.moving_variance.assign(rng.uniform(0.1, 4, c))
    return model


def _float64_cka(acts, batch_size):
    """Pairs-weighted minibatch CKA of (N, ...) activations in float64, from the NumPy references."""
    acts = [np.asarray(a, np.float64) for a in acts]
    sums = np.zeros((len(acts), len(acts)))
    for lo in range(0, len(acts[0]), batch_size):
        u = [metrics.u_center(metrics.gram(a[lo : lo + batch_size])) for a in acts]
        sums += np.array([[np.sum(k * l) for l in u] for k in u])
    return sums / np.sqrt(np.outer(np.diag(sums), np.diag(sums)))


def test_bn_taps_share_their_convs_grams_and_match_float64():
    model = _trained_like_resnet()
    names = models.tap_names(model)
    hinted = cka.joint_channel_affine([model], [names])
    assert [names[j] for j in sorted(hinted)] == [n for n in names if "bn" in n]
    assert all(names[i] == names[j].replace("_bn", "_conv") for j, (i, _) in hinted.items())
    result = cka.cka_matrices([model], _dataset, passes=1)["blocks"][(0, 0)]
    x = np.concatenate([b.numpy() for b, _ in _dataset(0)])
    acts = [a.numpy() for a in models.activation_model(model)(x, training=False)]
    np.testing.assert_allclose(result, _float64_cka(acts, 32), atol=1e-6)


def test_the_readme_call_equals_explicit_hints_and_float64():
    # CKA().update_state(activation_model(model)(x, training=False)) as the README shows it.
    model = _trained_like_resnet()
    acts, names = models.activation_model(model, "all"), models.tap_names(model, "all")
    x = np.random.default_rng(1).random((64, 32, 32, 3), dtype="float32")
    batches = [acts(x[lo : lo + 32], training=False) for lo in (0, 32)]
    plain, explicit = metrics.CKA(), metrics.CKA()
    for batch in batches:
        plain.update_state(batch)
        explicit.update_state(batch, channel_affine=cka.joint_channel_affine([model], [names]))
    np.testing.assert_allclose(plain.result().numpy(), explicit.result().numpy(), atol=1e-12)
    whole = [np.concatenate([batch[i].numpy() for batch in batches]) for i in range(len(names))]
    np.testing.assert_allclose(plain.result().numpy(), _float64_cka(whole, 32), atol=1e-6)


def test_the_readme_call_computes_no_gram_product_for_bn_taps(monkeypatch):
    from tfwd import _grams

    model = _trained_like_resnet()
    acts, names = models.activation_model(model, "all"), models.tap_names(model, "all")
    x = np.random.default_rng(2).random((8, 32, 32, 3), dtype="float32")
    out = acts(x, training=False)
    plan = _grams.gram_plan(out)
    wide = [j for j, a in enumerate(out) if len(a.shape) == 4 and a.shape[1] * a.shape[2] >= 256]
    assert [j for j, kind in enumerate(plan) if kind == "derived"] == [j for j in wide if "_bn" in names[j]]
    assert "derived" not in _grams.gram_plan(acts(x, training=True))  # BN then uses the batch's statistics
    calls = {"gram": 0, "channel_grams": 0}

    def counting(name, fn):
        def counted(*args):
            calls[name] += 1
            return fn(*args)

        return counted

    for name in calls:
        monkeypatch.setattr(_grams, name, counting(name, getattr(_grams, name)))
    metrics.CKA().update_state(out)
    products = sum(kind in ("full", "halves") for kind in plan)
    assert calls == {"gram": products, "channel_grams": plan.count("derived")} and products < len(out) - 8
    metrics.CKA().update_state(out, channel_affine={})
    assert calls["gram"] == products + len(out)


def test_save_and_load_round_trip(tmp_path):
    result = {
        "names": [["a", "b"], ["c"]],
        "blocks": {(0, 0): np.eye(2), (0, 1): np.ones((2, 1)) / 2, (1, 1): np.eye(1)},
        "examples": 10,
        "batches": 2,
    }
    cka.save(str(tmp_path / cka.FILE), result, ["m0", "m1"], {"taps": "all"})
    loaded = cka.load(str(tmp_path))
    assert loaded.models == ["m0", "m1"] and loaded.names == result["names"]
    assert loaded.settings == {"taps": "all", "examples": 10, "batches": 2}
    for key, value in result["blocks"].items():
        np.testing.assert_array_equal(loaded.blocks[key], value)


def test_analyze_writes_everything(tiny_runs, tmp_path):
    out = cka.analyze(tiny_runs, out_dir=str(tmp_path / "out"), taps="blocks", examples=64, batch_size=32, passes=2)
    names = [os.path.basename(r) for r in tiny_runs]
    assert sorted(os.listdir(out)) == sorted(
        [
            ".tfwd_output",
            "cka.npz",
            "grid.png",
            f"within_{names[0]}.png",
            f"within_{names[1]}.png",
            f"cross_{names[0]}__{names[1]}.png",
        ]
    )
    loaded = cka.load(out)
    assert loaded.models == names and loaded.settings["passes"] == 2 and loaded.settings["examples"] == 64
    within = loaded.blocks[(0, 0)]
    assert within.shape == (5, 5) and np.all(np.diag(within) == 1.0)
    assert np.all(within <= 1 + 1e-9) and np.all(within > -0.2)
    # The two seeds are different models: their cross-model matrix has no exact ones.
    assert loaded.blocks[(0, 1)].max() < 0.9999


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(batch_size=3), "batch_size"), (dict(examples=2), "examples")],
    ids=["batch", "examples"],
)
def test_analyze_errors(tiny_runs, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cka.analyze(tiny_runs[:1], out_dir=str(tmp_path / "x"), **kwargs)
    assert not os.path.exists(tmp_path / "x")


def test_default_out_dir(tmp_path):
    assert cka.default_out_dir(["/r/a"], "all", "test") == "/r/a/cka_all_test"
    assert cka.default_out_dir(["/r/a", "/r/b/"], "blocks", "test") == "/r/cka_blocks_test_a__b"
    many = cka.default_out_dir([f"/r/{'x' * 50}{i}" for i in range(4)], "all", "test")
    assert many.startswith("/r/cka_all_test_4runs-") and len(os.path.basename(many)) < 40


def test_bin_cka_smoke(tiny_runs, tmp_path, root, bin_env):
    # 66 examples in batches of 32: a last batch of 2 has no pairs; it adds nothing and is reported
    # once, instead of failing at the end of the pass.
    cmd = [
        sys.executable,
        str(root / "bin" / "cka"),
        f"--runs={tiny_runs[0]}",
        "--examples=66",
        "--batch_size=32",
        "--passes=1",
        f"--out_dir={tmp_path / 'o'}",
    ]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"CKA heatmaps: {tmp_path / 'o'}" in result.stdout and "CKA pass 1/1" in result.stderr
    assert result.stderr.count("1 minibatch(es) of 3 or fewer examples had no pairs and added nothing") == 1
    loaded = cka.load(str(tmp_path / "o"))
    assert loaded.settings["batches"] == 2
    assert len(loaded.names[0]) == 21 * 1 + 7  # taps="all" of ResNet-8
    with open(tmp_path / "o" / f"within_{os.path.basename(tiny_runs[0])}.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --- models tfwd did not train ---------------------------------------------------------------


def _joint_reference(model_list, images, taps):
    """Unbiased CKA (float64 HSIC_1) between every pair of tapped layers on one minibatch."""
    acts = []
    for model in model_list:
        size = models.image_input(model)[:2]
        x = images if tuple(images.shape[1:3]) == size else tf.image.resize(images, size).numpy()
        acts += [a.numpy() for a in models.activation_model(model, taps)(x, training=False)]
    return np.array([[metrics.linear_cka(a, b, unbiased=True) for b in acts] for a in acts])


def _small_sequential(size=16, channels=3, name="small"):
    import keras

    layers = [
        keras.layers.Conv2D(4, 3, name="c1"),
        keras.layers.ReLU(name="r1"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
    ]
    return keras.Sequential(
        [keras.Input((size, size, channels)), *layers, keras.layers.Dense(10, name="logits")], name=name
    )


@pytest.fixture(scope="module")
def two_models():
    import keras

    keras.utils.set_random_seed(0)
    return models.cifar_resnet(8, 0.25), _small_sequential()


def test_compare_models_matches_float64_reference(two_models):
    x = np.random.default_rng(0).random((32, 32, 32, 3), dtype="float32")
    result = cka.compare_models(list(two_models), x, batch_size=32)  # one minibatch: the full-batch estimator
    sizes = [len(n) for n in result["names"]]
    assert sizes == [28, 4] and result["names"][1] == ["c1", "r1", "gap", "logits"]
    reference = metrics.split_blocks(_joint_reference(two_models, x, "all"), sizes)
    for key in [(0, 0), (0, 1), (1, 1)]:
        np.testing.assert_allclose(result["blocks"][key], reference[key], atol=2e-5)


def test_compare_models_takes_any_image_input(two_models):
    x = np.random.default_rng(1).random((32, 32, 32, 3), dtype="float32")
    model = two_models[1]  # a small model: five traces of it
    expected = cka.compare_models(model, x, batch_size=32)["blocks"]
    labels = np.zeros(32, np.int32)
    inputs = {
        "batched (images, labels)": tf.data.Dataset.from_tensor_slices((x, labels)).batch(32),
        "unbatched dicts": tf.data.Dataset.from_tensor_slices({"image": x, "label": labels}),
        "unbatched images": tf.data.Dataset.from_tensor_slices(x),
    }
    for what, images in inputs.items():
        got = cka.compare_models([model], images, batch_size=32)["blocks"]
        np.testing.assert_allclose(got[0, 0], expected[0, 0], atol=1e-5, err_msg=what)
    two_passes = cka.compare_models(model, x, batch_size=16, passes=2)
    assert list(two_passes["blocks"]) == [(0, 0)] and two_passes["examples"] == 32 and two_passes["batches"] == 4


def test_compare_models_errors(two_models):
    import keras

    inputs = keras.Input((20,))
    vector = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="vector")
    x = np.random.default_rng(0).random((8, 32, 32, 3), dtype="float32")
    with pytest.raises(ValueError, match=r"^Model 'vector' takes inputs of shape \(None, 20\): CKA on images needs"):
        cka.compare_models(vector, x)
    with pytest.raises(ValueError, match="^Model 'gray' takes 1-channel images, but the images have 3 channels."):
        cka.compare_models(_small_sequential(channels=1, name="gray"), x)
    with pytest.raises(ValueError, match="batch_size"):
        cka.compare_models(two_models[1], x, batch_size=3)


def test_analyze_models_equals_analyze_on_the_same_models(tiny_runs, tmp_path):
    settings = dict(taps="blocks", examples=64, batch_size=32, passes=2, seed=3)
    by_runs = cka.load(cka.analyze(tiny_runs, out_dir=str(tmp_path / "runs"), **settings))
    paths = [os.path.join(r, "model.keras") for r in tiny_runs]
    out = cka.analyze_models(paths, out_dir=str(tmp_path / "models"), **settings)
    by_models = cka.load(out)
    labels = [f"{os.path.basename(r)}_model" for r in tiny_runs]  # both files are model.keras
    assert by_models.models == labels and by_models.names == by_runs.names
    for key, matrix in by_runs.blocks.items():
        np.testing.assert_allclose(by_models.blocks[key], matrix, atol=1e-12)
    assert by_models.settings["dataset"] == "cifar10" and by_models.settings["pixels"] == "unit"
    assert by_models.settings["examples"] == 64 and by_models.settings["input_shapes"] == [[32, 32, 3]] * 2
    assert sorted(os.listdir(out)) == sorted(
        [
            ".tfwd_output",
            "cka.npz",
            "grid.png",
            f"within_{labels[0]}.png",
            f"within_{labels[1]}.png",
            f"cross_{labels[0]}__{labels[1]}.png",
        ]
    )


def test_raw_pixels_are_the_unit_pixels_times_255(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    unit = _small_sequential(size=32, name="unit")
    raw = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255, name="scale"), *unit.layers])
    unit.save(tmp_path / "unit.keras")
    raw.save(tmp_path / "raw.keras")
    settings = dict(taps="re:^(c1|r1|gap)$", examples=32, batch_size=16, passes=1)
    a = cka.analyze_models([str(tmp_path / "unit.keras")], out_dir=str(tmp_path / "a"), pixels="unit", **settings)
    b = cka.analyze_models([str(tmp_path / "raw.keras")], out_dir=str(tmp_path / "b"), pixels="raw", **settings)
    matrix_a, matrix_b = (cka.load(o).blocks[0, 0] for o in (a, b))
    assert matrix_a.shape == (3, 3) and matrix_a[0, 2] < 0.999
    np.testing.assert_allclose(matrix_b, matrix_a, atol=1e-5)


def test_analyze_models_on_an_image_folder(tmp_path):
    from tfwd.data import Data, DataConfig

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 4)):
        for label in ("cats", "dogs"):
            os.makedirs(tmp_path / "images" / split / label)
            for i in range(n):
                png = tf.io.encode_png(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8))
                tf.io.write_file(str(tmp_path / "images" / split / label / f"{i}.png"), png)
    model = _small_sequential(size=24)
    model.save(tmp_path / "small.keras")
    out = cka.analyze_models(
        [str(tmp_path / "small.keras")],
        dataset="image_folder",
        data_dir=str(tmp_path / "images"),
        batch_size=8,
        passes=1,
        taps="re:^(c1|r1|gap)$",
    )
    assert out == str(tmp_path / "small_cka_custom_test")
    loaded = cka.load(out)
    assert loaded.settings["examples"] == 8 and loaded.settings["dataset"] == "image_folder"
    # The reference: the folder's 8 test images read at the model's 24 pixels, one minibatch.
    images = next(
        iter(Data(DataConfig("image_folder", str(tmp_path / "images"), image_size=24)).eval_dataset("test", 8))
    )
    reference = _joint_reference([model], images[0].numpy(), "re:^(c1|r1|gap)$")
    np.testing.assert_allclose(loaded.blocks[0, 0], reference, atol=2e-5)


def test_default_models_out_dir():
    assert cka.default_models_out_dir(["/m/a.keras"], "all", "test") == "/m/a_cka_all_test"
    assert cka.default_models_out_dir(["/m/a.keras", "/n/b.h5"], "re:add$", "train") == "/m/a__b_cka_custom_train"
    same_stem = cka.default_models_out_dir(["/r/s0/model.keras", "/r/s1/model.keras"], ["x"], "test")
    assert same_stem == "/r/s0/s0_model__s1_model_cka_custom_test"
    assert cka.default_out_dir(["/r/a"], "re:_out$", "test") == "/r/a/cka_custom_test"  # no pattern in a folder name


def test_bin_cka_models_on_keras_applications(tmp_path, root, bin_env, tfds_dir):
    import keras

    from tfwd.data import Data, DataConfig

    keras.utils.set_random_seed(0)
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(48, 48, 3), alpha=0.35, classes=10)
    mobilenet.save(tmp_path / "mobilenet.keras")
    _small_sequential().save(tmp_path / "small.keras")
    taps = r"re:^(Conv1_relu|block_\d+_add|out_relu|r1|gap)$"
    cmd = [
        sys.executable,
        str(root / "bin" / "cka"),
        f"--models={tmp_path / 'mobilenet.keras'},{tmp_path / 'small.keras'}",
        f"--taps={taps}",
        "--examples=32",
        "--batch_size=32",
        "--passes=1",
    ]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "mobilenet__small_cka_custom_test"  # the default: beside the first model
    assert f"CKA heatmaps: {out}" in result.stdout
    assert sorted(os.listdir(out)) == sorted(
        [
            ".tfwd_output",
            "cka.npz",
            "grid.png",
            "within_mobilenet.png",
            "within_small.png",
            "cross_mobilenet__small.png",
        ]
    )
    loaded = cka.load(str(out))
    assert loaded.names[1] == ["r1", "gap"] and loaded.names[0][0] == "Conv1_relu" and len(loaded.names[0]) == 12
    assert loaded.settings["input_shapes"] == [[48, 48, 3], [16, 16, 3]] and loaded.settings["taps"] == taps
    # The reference: the first 32 test images (one minibatch), resized to each model, float64 HSIC_1.
    images = next(iter(Data(DataConfig(data_dir=tfds_dir)).eval_dataset("test", 32, 32)))[0].numpy()
    small = keras.models.load_model(tmp_path / "small.keras")
    reference = metrics.split_blocks(_joint_reference([mobilenet, small], images, taps), [12, 2])
    for key, matrix in reference.items():
        np.testing.assert_allclose(loaded.blocks[key], matrix, atol=2e-5)
