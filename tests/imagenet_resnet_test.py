"""tfwd.models.imagenet_resnet: ResNet-50's parameters, the paper's deep and wide variants, taps, a mock-data run."""

import os

import pytest
import tensorflow_datasets as tfds

from tfwd import models, runs, training
from tfwd.data import DataConfig


def test_resnet50_parameter_count():
    # He et al. (2016): ResNet-50 has 25.6M parameters (ours counts BN statistics too, as Keras does).
    assert models.imagenet_resnet().count_params() / 1e6 == pytest.approx(25.6, abs=0.05)


@pytest.mark.parametrize(
    "blocks,widths,depth,name",
    [
        ((3, 4, 6, 3), (1, 1, 1, 1), 50, "resnet50"),
        ((3, 4, 17, 3), (1, 1, 1, 1), 83, "resnet83"),
        ((3, 4, 6, 3), (1, 1, 2.8, 1), 50, "resnet50-w1-1-2.8-1"),
    ],
    ids=["resnet50", "resnet83-deep", "resnet50-2.8x-wide"],
)
def test_paper_variants_are_one_line_configs(blocks, widths, depth, name):
    config = runs.ModelConfig.imagenet(blocks, widths)
    assert config.depth == depth and config.name == name
    model = config.build(num_classes=1000, image_size=64)
    names = [layer.name for layer in model.layers]
    assert sum(n.endswith("_add") for n in names) == sum(blocks)
    assert f"stage3_block{blocks[2]}_out" in names and f"stage3_block{blocks[2] + 1}_out" not in names
    assert model.get_layer("stage3_block2_conv2").filters == round(256 * widths[2])
    assert model.get_layer("stage3_block2_conv3").filters == 4 * round(256 * widths[2])
    assert model.get_layer("stage2_block2_conv3").filters == 512


def test_taps_follow_the_cifar_naming():
    model = models.imagenet_resnet(blocks=(1, 2, 1, 1), widths=(0.25,) * 4, num_classes=10, input_shape=(64, 64, 3))
    assert models.tap_names(model, "blocks") == ["stem_pool"] + [
        f"stage{s}_block{b}_out" for s, n in zip((1, 2, 3, 4), (1, 2, 1, 1)) for b in range(1, n + 1)
    ] + ["logits"]
    assert models.tap_names(model, "residual")[:2] == ["stage1_block1_bn3", "stage1_block1_add"]
    shapes = [tuple(t.shape[1:]) for t in models.activation_model(model, "blocks").outputs]
    assert shapes[0] == (16, 16, 64) and shapes[-2] == (2, 2, 512) and shapes[-1] == (10,)
    # The residual branch's last BN starts at zero: each block starts as (projected) identity.
    assert float(abs(model.get_layer("stage2_block2_bn3").gamma.numpy()).max()) == 0.0


@pytest.mark.parametrize(
    "blocks,widths", [((3, 4, 6), (1, 1, 1, 1)), ((3, 4, 6, 3), (1, 0, 1, 1))], ids=["blocks", "widths"]
)
def test_invalid_stages(blocks, widths):
    with pytest.raises(ValueError, match="blocks|widths"):
        models.imagenet_resnet(blocks, widths)


def test_trains_on_mock_imagenet(tmp_path):
    config = runs.RunConfig(
        runs.ModelConfig.imagenet((1, 1, 1, 1), (0.25,) * 4),
        DataConfig("imagenet2012", data_dir=str(tmp_path / "tfds"), download=True, image_size=64),
        runs.TrainConfig(epochs=1, batch_size=4),
    )
    with tfds.testing.mock_data(num_examples=16):
        run_dir = training.train(config, str(tmp_path), verbose=0, tensorboard=False)
    assert os.path.basename(run_dir) == "imagenet2012-resnet14-w0.25-0.25-0.25-0.25-s0"
    run = runs.Run(run_dir)
    assert run.finished and run.config == config
    assert run.predictions()["probs"].shape == (16, 1000)
    assert run.model().get_layer("stage4_block1_conv3").filters == 512
