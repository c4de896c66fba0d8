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
