"""ImageNet ResNets: the post-activation bottleneck ResNet-50 family, depth and width per stage.

The paper's ImageNet models (Section 5; reference code `alt_resnet.py`) deepen or
widen stage 3 of ResNet-50:

    imagenet_resnet()                            ResNet-50, blocks (3, 4, 6, 3)
    imagenet_resnet(blocks=(3, 4, 17, 3))        ResNet-83 (stage 3 deepened, 1 + 3 * 27 + 1 layers)
    imagenet_resnet(widths=(1, 1, 2.8, 1))       ResNet-50 (2.8x), stage 3 widened

Bottleneck block (v1 post-activation, stride on the 3x3 as in the reference
code): conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1(4x)-BN, add shortcut,
ReLU. The first block of every stage has a projection shortcut (1x1 conv + BN).
The last BN of each residual branch starts with gamma = 0 (reference code;
Goyal et al. 2017). Stem: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool.
Head: global average pool, dense initialised N(0, 0.01).

Layers follow the CIFAR models' names, so taps, CKA, probes and block deletion
work unchanged: stem_conv, stem_bn, stem_relu, stem_pool,
stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,relu2,conv3,bn3,[shortcut,shortcut_bn],add,out},
pool, logits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import keras

from tfwd.models import layers

# Reference code (alt_resnet.py): BN momentum 0.99 (Keras default), epsilon 1e-5.
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-5
BASE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths of stages 1-4; outputs are 4x


def imagenet_depth(blocks: Sequence[int]) -> int:
    """Layers with weights along the deepest path: stem conv + 3 per bottleneck + the dense layer."""
    return 2 + 3 * sum(blocks)


def imagenet_model_name(blocks: Sequence[int], widths: Sequence[float]) -> str:
    """E.g. "resnet50", "resnet83", "resnet50-w1-1-2.8-1"."""
    name = f"resnet{imagenet_depth(blocks)}"
    if any(w != 1 for w in widths):
        name += "-w" + "-".join(f"{w:g}" for w in widths)
    return name


def check_stages(blocks: Sequence[int], widths: Sequence[float]) -> tuple[int, ...]:
    """Validates blocks and widths; returns the bottleneck widths of the 4 stages."""
    if len(blocks) != 4 or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in blocks):
        raise ValueError(f"`blocks` must be 4 positive integers, e.g. (3, 4, 6, 3). Received: blocks={tuple(blocks)!r}")
    if len(widths) != 4 or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in widths):
        raise ValueError(
            f"`widths` must be 4 positive multipliers, e.g. (1, 1, 2.8, 1). Received: widths={tuple(widths)!r}"
        )
    return tuple(max(1, int(round(c * w))) for c, w in zip(BASE_WIDTHS, widths))


_conv = functools.partial(layers.conv, use_bias=False)
_bn = functools.partial(layers.batch_norm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def _bottleneck(x, width, strides, prefix, weight_decay, sync):
    y = _conv(width, 1, 1, f"{prefix}_conv1", weight_decay)(x)
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(_bn(f"{prefix}_bn1", sync)(y))
    y = _conv(width, 3, strides, f"{prefix}_conv2", weight_decay)(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu2")(_bn(f"{prefix}_bn2", sync)(y))
    y = _conv(4 * width, 1, 1, f"{prefix}_conv3", weight_decay)(y)
    y = _bn(f"{prefix}_bn3", sync, zero_gamma=True)(y)
    shortcut = x
    if strides != 1 or x.shape[-1] != 4 * width:
        shortcut = _conv(4 * width, 1, strides, f"{prefix}_shortcut", weight_decay)(x)
        shortcut = _bn(f"{prefix}_shortcut_bn", sync)(shortcut)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def imagenet_resnet(
    blocks: Sequence[int] = (3, 4, 6, 3),
    widths: Sequence[float] = (1, 1, 1, 1),
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weight_decay: float = 0.0,
    name: str | None = None,
    synchronized_bn: bool = False,
) -> keras.Model:
    """Builds a bottleneck ResNet with `blocks[s]` blocks and width multiplier `widths[s]` in stage s+1.

    Args:
        blocks: bottleneck blocks in stages 1-4; (3, 4, 6, 3) is ResNet-50.
        widths: width multipliers of stages 1-4 (bottleneck widths 64, 128, 256,
            512 times the multiplier, outputs 4x that); the stem is not scaled.
        num_classes: size of the logits layer.
        input_shape: (height, width, 3) of the input images, pixels in [0, 1].
        weight_decay: L2 coefficient on conv and dense kernels (loss += wd * sum w^2).
        name: model name; defaults to `imagenet_model_name(blocks, widths)`.
        synchronized_bn: BN statistics over the global batch under tf.distribute.

    Returns:
        An uncompiled keras.Model from (batch, *input_shape) images to (batch, num_classes) logits.

    Raises:
        ValueError: for blocks or widths that are not 4 positive numbers.

    Example:
        >>> round(imagenet_resnet().count_params() / 1e6, 1)
        25.6
    """
    stage_widths = check_stages(blocks, widths)
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv(64, 7, 2, "stem_conv", weight_decay)(inputs)
    x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn", synchronized_bn)(x))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (n, width) in enumerate(zip(blocks, stage_widths), start=1):
        for block in range(1, n + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _bottleneck(x, width, strides, f"stage{stage}_block{block}", weight_decay, synchronized_bn)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.dense_head(
        num_classes, weight_decay, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)
    )(x)
    return keras.Model(inputs, outputs, name=name or imagenet_model_name(blocks, widths))
