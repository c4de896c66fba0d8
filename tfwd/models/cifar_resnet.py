"""CIFAR ResNets of any depth and width (He et al. 2016, v1, basic blocks).

The architecture follows Nguyen, Raghu & Kornblith (ICLR 2021) and its reference
code: depth = 6n + 2, three stages of n basic blocks with 16w, 32w and 64w
channels (the stem scaled too), a stride-2 first block in stages 2 and 3 with a
1x1 stride-2 projection shortcut, then global average pooling and a dense layer.

Every layer has a fixed name so analyses can select it:

    stem_conv, stem_bn, stem_relu
    stage{s}_block{b}_conv1, _bn1, _relu1, _conv2, _bn2, [_shortcut], _add, _out
    pool, logits

Stages and blocks count from 1. `_shortcut` exists only on the projection blocks
(first block of stages 2 and 3) and `_add` only when `residual=True`.
"""

from __future__ import annotations

import functools

import keras

from tfwd.models import layers

# Keras' default BN momentum (0.99) needs thousands of steps before the moving
# statistics settle; 0.9 matches the PyTorch CIFAR ResNets (momentum 0.1 there)
# and gives usable inference-mode statistics on the short CPU runs tfwd makes.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5  # PyTorch's default, as in those same implementations.


def blocks_per_stage(depth: int) -> int:
    """Number of basic blocks per stage, n = (depth - 2) / 6.

    Raises:
        ValueError: if depth is not of the form 6n + 2 with n >= 1, naming the
            nearest valid depths.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            "`depth` must be 6n+2 with n >= 1 (8, 14, 20, 26, 32, 38, 44, 56, 110, ...); "
            f"nearest valid depths: {_nearest_depths(depth)}. Received: depth={depth!r}"
        )
    return (depth - 2) // 6


def _nearest_depths(depth) -> str:
    try:
        d = int(depth)
    except (TypeError, ValueError):
        return "8"
    if d < 8:
        return "8"
    below = 8 + 6 * ((d - 8) // 6)
    return f"{below}, {below + 6}"


def stage_channels(width: float) -> tuple[int, int, int]:
    """Channels of stages 1-3 for a width multiplier: round(16w), round(32w), round(64w)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"`width` must be a positive number (1, 2, 0.5, ...). Received: width={width!r}")
    channels = tuple(int(round(c * width)) for c in (16, 32, 64))
    if min(channels) < 1:
        raise ValueError(
            f"`width` is too small: stage 1 would have round(16 * {width}) = 0 channels; "
            f"use width >= {1 / 32:.4f}. Received: width={width!r}"
        )
    return channels


# The reference code's conv: he_normal, 'same' padding, a bias, and L2 on the kernel only.
_conv = functools.partial(layers.conv, use_bias=True)
_bn = functools.partial(layers.batch_norm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def _basic_block(x, filters, strides, prefix, residual, weight_decay, sync_bn):
    """conv3x3-BN-ReLU, conv3x3-BN, (+ shortcut), ReLU."""
    y = _conv(filters, 3, strides, f"{prefix}_conv1", weight_decay)(x)
    y = _bn(f"{prefix}_bn1", sync_bn)(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv(filters, 3, 1, f"{prefix}_conv2", weight_decay)(y)
    y = _bn(f"{prefix}_bn2", sync_bn)(y)
    if residual:
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            # Option B of He et al.: a 1x1 strided projection, no BN (as the
            # reference code).
            shortcut = _conv(filters, 1, strides, f"{prefix}_shortcut", weight_decay)(x)
        y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def cifar_resnet(
    depth: int,
    width: float = 1,
    num_classes: int = 10,
    residual: bool = True,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    weight_decay: float = 0.0,
    name: str | None = None,
    synchronized_bn: bool = False,
) -> keras.Model:
    """Builds a CIFAR ResNet v1 (He et al. 2016) with the functional API.

    Args:
        depth: 6n + 2 (8, 14, 20, 26, 32, 38, 44, 56, 62, 110, 164, ...).
        width: positive width multiplier; floats allowed. Stem and stage 1 get
            round(16w) channels, stage 2 round(32w), stage 3 round(64w).
        num_classes: size of the logits layer.
        residual: False removes every shortcut, giving a plain network.
        input_shape: (height, width, channels) of the input images, pixels in [0, 1].
        weight_decay: L2 coefficient on conv and dense kernels (loss += wd * sum w^2,
            as Keras' L2 regularizer and the reference code). 0 adds no regularizer.
        name: model name; defaults to "resnet{depth}-w{width}[-nores]".
        synchronized_bn: BN statistics over the global batch under tf.distribute
            (so that training on k replicas matches one device); no effect on one device.

    Returns:
        An uncompiled keras.Model mapping (batch, *input_shape) images to
        (batch, num_classes) logits.

    Raises:
        ValueError: for a depth that is not 6n + 2 or a non-positive width.

    Example:
        >>> model = cifar_resnet(depth=20)
        >>> round(model.count_params() / 1e6, 2)
        0.27
    """
    n = blocks_per_stage(depth)
    channels = stage_channels(width)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer. Received: num_classes={num_classes!r}")
    name = name or model_name(depth, width, residual)

    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv(channels[0], 3, 1, "stem_conv", weight_decay)(inputs)
    x = _bn("stem_bn", synchronized_bn)(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate(channels, start=1):
        for block in range(1, n + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, f"stage{stage}_block{block}", residual, weight_decay, synchronized_bn)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.dense_head(num_classes, weight_decay, kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name=name)


def model_name(depth: int, width: float, residual: bool = True) -> str:
    """The short name used in titles and run directories, e.g. "resnet20-w1" or "resnet38-w0.5-nores"."""
    return f"resnet{depth}-w{width:g}" + ("" if residual else "-nores")
