"""tfwd.models.cifar_resnet: architecture, names, parameter counts, errors."""

import numpy as np
import pytest

from tfwd import models


def _names(model):
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize(
    "depth,params_m",
    [("20", 0.27), ("32", 0.46), ("44", 0.66), ("56", 0.85), ("110", 1.7)],
    ids=lambda v: f"resnet{v}" if isinstance(v, str) else f"{v}M",
)
def test_parameter_counts_match_he_et_al(depth, params_m):
    # He et al. (2016), Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M. Ours adds the two
    # 1x1 projection convs (option B) and conv biases (the reference code's), ~2%.
    count = models.cifar_resnet(int(depth)).count_params() / 1e6
    assert count == pytest.approx(params_m, rel=0.03)


@pytest.mark.parametrize("depth", [8, 20, 56])
def test_layer_names_and_counts(depth):
    n = (depth - 2) // 6
    names = _names(models.cifar_resnet(depth))
    # input + stem (3) + 7 layers per block + 2 projection shortcuts + pool + logits
    assert len(names) == 1 + 3 + 7 * 3 * n + 2 + 2
    assert len(set(names)) == len(names)
    assert names[:4] == ["images", "stem_conv", "stem_bn", "stem_relu"]
    assert names[-2:] == ["pool", "logits"]
    for s in (1, 2, 3):
        for b in range(1, n + 1):
            for part in ("conv1", "bn1", "relu1", "conv2", "bn2", "add", "out"):
                assert f"stage{s}_block{b}_{part}" in names
    assert [x for x in names if x.endswith("_shortcut")] == ["stage2_block1_shortcut", "stage3_block1_shortcut"]


def test_plain_network_has_no_adds_or_shortcuts():
    names = _names(models.cifar_resnet(20, residual=False))
    assert not [x for x in names if x.endswith("_add") or x.endswith("_shortcut")]
    assert len(names) == 1 + 3 + 6 * 9 + 2
    assert models.cifar_resnet(20, residual=False).name == "resnet20-w1-nores"


@pytest.mark.parametrize(
    "width,channels", [(1, (16, 32, 64)), (2, (32, 64, 128)), (1.5, (24, 48, 96)), (0.25, (4, 8, 16))]
)
def test_channels_scale_with_width(width, channels):
    model = models.cifar_resnet(8, width=width)
    assert model.get_layer("stem_conv").filters == channels[0]
    for s, c in enumerate(channels, start=1):
        assert model.get_layer(f"stage{s}_block1_conv2").filters == c
    assert models.stage_channels(width) == channels


def test_shapes_and_strides():
    model = models.cifar_resnet(8, num_classes=7)
    acts = models.activation_model(model, "blocks")
    shapes = [tuple(t.shape[1:]) for t in acts.outputs]
    assert shapes == [(32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64), (7,)]


def test_block_computes_relu_of_branch_plus_projection():
    """stage2_block1_out == relu(bn2 + shortcut(stage1 output)), the He et al. v1 block."""
    model = models.cifar_resnet(8)
    taps = ["stage1_block1_out", "stage2_block1_bn2", "stage2_block1_out"]
    x_in, branch, out = [
        a.numpy() for a in models.activation_model(model, taps)(np.random.rand(2, 32, 32, 3), training=False)
    ]
    shortcut = model.get_layer("stage2_block1_shortcut")(x_in).numpy()
    np.testing.assert_allclose(out, np.maximum(branch + shortcut, 0), atol=1e-5)


def test_width_float_is_rounded_into_names():
    assert models.model_name(38, 0.5) == "resnet38-w0.5"
    assert models.model_name(62, 1.0) == "resnet62-w1"


@pytest.mark.parametrize(
    "depth,fragment",
    [
        (9, "nearest valid depths: 8, 14"),
        (21, "20, 26"),
        (2, "nearest valid depths: 8"),
        (20.0, "Received: depth=20.0"),
    ],
    ids=["9", "21", "2", "float"],
)
def test_invalid_depth_names_nearest_valid(depth, fragment):
    with pytest.raises(ValueError, match="6n\\+2") as info:
        models.cifar_resnet(depth)
    assert fragment in str(info.value)


@pytest.mark.parametrize("width", [0, -1, 0.01, "2", None], ids=["zero", "negative", "tiny", "string", "none"])
def test_invalid_width(width):
    with pytest.raises(ValueError, match="width"):
        models.cifar_resnet(8, width=width)


def test_same_seed_same_initial_weights():
    import keras

    def weights(seed):
        keras.utils.set_random_seed(seed)
        return [w.numpy() for w in models.cifar_resnet(8).weights]

    a, b, c = weights(1), weights(1), weights(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
