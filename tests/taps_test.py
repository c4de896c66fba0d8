"""tfwd.models taps: every kind complete, ordered, and equal to the layers' outputs."""

import numpy as np
import pytest

from tfwd import models


@pytest.fixture(scope="module")
def resnet14():
    return models.cifar_resnet(14)


def test_all_is_every_layer_but_the_input_in_order(resnet14):
    names = models.tap_names(resnet14, "all")
    assert names == [layer.name for layer in resnet14.layers[1:]]
    assert len(names) == 21 * 2 + 7


def test_blocks(resnet14):
    expected = ["stem_relu"] + [f"stage{s}_block{b}_out" for s in (1, 2, 3) for b in (1, 2)] + ["logits"]
    assert models.tap_names(resnet14, "blocks") == expected


def test_residual_pairs_pre_and_post_add(resnet14):
    expected = [f"stage{s}_block{b}_{p}" for s in (1, 2, 3) for b in (1, 2) for p in ("bn2", "add")]
    assert models.tap_names(resnet14, "residual") == expected


def test_residual_taps_need_residual_connections():
    with pytest.raises(ValueError, match="residual connections"):
        models.tap_names(models.cifar_resnet(8, residual=False), "residual")


@pytest.mark.parametrize("taps", ["bogus", ["stem_conv", "nope"], []], ids=["kind", "name", "empty"])
def test_bad_taps(resnet14, taps):
    with pytest.raises(ValueError, match="taps"):
        models.tap_names(resnet14, taps)


def test_activation_model_outputs_match_layers(resnet14):
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    acts = models.activation_model(resnet14, "all")(x, training=False)
    assert len(acts) == len(models.tap_names(resnet14, "all"))
    np.testing.assert_allclose(acts[-1].numpy(), resnet14(x, training=False).numpy(), rtol=1e-6)
    explicit = models.activation_model(resnet14, ["stage3_block2_out", "stem_conv"])(x, training=False)
    names = models.tap_names(resnet14, "all")
    np.testing.assert_array_equal(explicit[0].numpy(), acts[names.index("stage3_block2_out")].numpy())
    np.testing.assert_array_equal(explicit[1].numpy(), acts[0].numpy())


def test_stages_and_boundaries(resnet14):
    names = models.tap_names(resnet14, "blocks")
    assert [models.stage_of(n) for n in names] == [0, 1, 1, 2, 2, 3, 3, -1]
    assert models.stage_boundaries(names) == [1, 3, 5, 7]


def test_pattern_taps_match_by_search_in_depth_order(resnet14):
    assert models.tap_names(resnet14, "re:^stage3_block\\d_(add|out)$") == [
        "stage3_block1_add",
        "stage3_block1_out",
        "stage3_block2_add",
        "stage3_block2_out",
    ]
    with pytest.raises(ValueError, match=r"pattern 'nothing_like_this' matches none of the 49 layers"):
        models.tap_names(resnet14, "re:nothing_like_this")
    with pytest.raises(ValueError, match=r"pattern '\(' is not a regular expression"):
        models.tap_names(resnet14, "re:(")


def test_unknown_tap_names_the_nearest_layer(resnet14):
    with pytest.raises(ValueError) as info:
        models.tap_names(resnet14, ["stem_conv", "stage2_blok1_out"])
    assert "a layer that model 'resnet14-w1' does not have: 'stage2_blok1_out' (nearest: 'stage2_block1_out')" in str(
        info.value
    )
    assert str(info.value).endswith("Received: taps=['stem_conv', 'stage2_blok1_out']")


def test_parse_taps():
    assert models.parse_taps("blocks") == "blocks"
    assert models.parse_taps("re:conv[12],x") == "re:conv[12],x"  # a pattern keeps its commas
    assert models.parse_taps(" stem_conv,logits ") == ["stem_conv", "logits"]
    with pytest.raises(ValueError, match="Received: taps=','"):
        models.parse_taps(",")


def _image(n=4, size=32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype("float32")


def test_keras_applications_model():
    import keras

    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    names = models.tap_names(model, "all")
    assert len(names) == 155 and names[0] == "Conv1" and names[-1] == "predictions"
    x = _image()
    acts = models.activation_model(model, "re:^block_1_").predict(x, verbose=0)
    expected = keras.Model(model.input, model.get_layer("block_1_project").output).predict(x, verbose=0)
    assert models.tap_names(model, "re:^block_1_")[-2:] == ["block_1_project", "block_1_project_BN"]
    np.testing.assert_array_equal(acts[-2], expected)
    np.testing.assert_allclose(models.activation_model(model, ["predictions"])(x), model(x), rtol=1e-6)


def test_sequential_and_nested_models_loaded_from_files(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    inner = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="inner_conv")(inputs), name="base")
    head = keras.layers.Dense(3, name="head")
    model = keras.Sequential([keras.Input((8, 8, 3)), inner, keras.layers.Flatten(name="flat"), head], name="seq")
    model.save(tmp_path / "seq.keras")
    loaded = keras.models.load_model(tmp_path / "seq.keras")
    assert models.tap_names(loaded, "all") == ["base", "flat", "head"]
    x = _image(size=8)
    base, flat, head = models.activation_model(loaded, "all")(x)
    np.testing.assert_allclose(base, loaded.get_layer("base")(x), rtol=1e-6)
    np.testing.assert_allclose(flat, np.reshape(base, (4, -1)), rtol=1e-6)
    np.testing.assert_allclose(head, loaded(x), rtol=1e-6)
    with pytest.raises(ValueError, match=r"'inner_conv' \(inside the nested model 'base': tap 'base' or that model"):
        models.tap_names(loaded, ["inner_conv"])


def test_subclassed_model_is_refused_in_one_line():
    import keras

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="mine")
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"^Model 'mine' \(Subclassed\) has no graph of layers to tap") as info:
        models.activation_model(model)
    assert "\n" not in str(info.value)


def test_channel_affine_taps_pair_each_tapped_bn_with_its_tapped_input(resnet14):
    import keras

    names = models.tap_names(resnet14)
    pairs = models.channel_affine_taps(resnet14, names)
    assert {names[j]: names[i] for j, (i, _) in pairs.items()} == {
        n: n.replace("_bn", "_conv") for n in names if "_bn" in n
    }
    # An untapped input leaves its BN on its own.
    only_bn = models.tap_names(resnet14, "re:_bn")
    assert models.channel_affine_taps(resnet14, only_bn) == {}
    # Any functional model: a Conv2D -> BatchNormalization pair of a Sequential.
    seq = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c"), keras.layers.BatchNormalization(name="b")]
    )
    assert list(models.channel_affine_taps(seq, ["c", "b"])) == [1]
    bn = seq.get_layer("b")
    bn.moving_variance.assign(np.full(4, 3.0))
    bn.gamma.assign(np.arange(4.0))
    np.testing.assert_allclose(models.channel_scale(bn), np.arange(4.0) / np.sqrt(3.0 + bn.epsilon), rtol=1e-6)


def test_activation_model_outputs_name_their_bn_taps_inputs_in_inference_mode(resnet14):
    from tfwd import _grams

    names = models.tap_names(resnet14, "all")
    pairs = models.channel_affine_taps(resnet14, names)
    acts = models.activation_model(resnet14, "all")
    assert list(acts.channel_affine) == [(j, i, bn.name) for j, (i, bn) in sorted(pairs.items())]
    x = _image()
    for training in (False, None):
        hints = _grams.tagged_channel_affine(acts(x, training=training))
        assert {j: i for j, (i, _) in hints.items()} == {j: i for j, (i, _) in pairs.items()}
        for j, (_, scale) in hints.items():
            np.testing.assert_array_equal(scale, models.channel_scale(pairs[j][1]))
    assert _grams.tagged_channel_affine(acts(x, training=True)) == {}  # BN uses the batch's statistics
    # Concatenated with another model's taps, each pair keeps its place; a list in another order keeps none.
    other = models.activation_model(models.cifar_resnet(8), "all")(x, training=False)
    joint = _grams.tagged_channel_affine(other + acts(x, training=False))
    assert {j - len(other): i - len(other) for j, (i, _) in joint.items() if j >= len(other)} == {
        j: i for j, (i, _) in pairs.items()
    }
    assert _grams.tagged_channel_affine(acts(x, training=False)[::-1]) == {}
