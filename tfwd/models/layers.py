"""Layers shared by tfwd's model builders.

`conv`, `batch_norm` and `dense_head` make the layers both ResNet families use (as
Keras' `applications/resnet.py` builds its stacks from one set of layer calls); each
builder passes what its architecture sets: the conv bias, the BN momentum and epsilon,
a zero-initialised last BN of a residual branch, the head's initializer.

`BatchNormalization` is Keras' layer, computed with TensorFlow's fused kernel
where it applies. Keras 3 builds batch normalization from separate moments,
subtract, multiply and add ops (forward and backward); on the small feature maps
of CIFAR ResNets that elementwise traffic costs as much as the convolutions. The
fused kernel (`FusedBatchNormV3`) does the same arithmetic in one pass, so training
is faster (benchmarks/training_throughput.py; docs/performance.md). Variables, config, saved files
and the arithmetic (batch statistics in training, moving statistics in
inference, the moving statistics updated with the biased batch variance,
`momentum` and `epsilon` as Keras defines them) are Keras' own; tests check the
outputs, gradients and moving statistics against `keras.layers.BatchNormalization`.
Saved files name Keras' own class, so plain Keras loads them under any backend
(without the fused kernel); tfwd swaps the kernel back in when it loads a model
(`fuse`, `tfwd.models.load_model`). Any case the kernel does not cover (other backends, masks, renorm, synchronized
BN, inputs that are not 4-D float32 with channels last, no centre or scale)
runs Keras' code unchanged.
"""

from __future__ import annotations

import keras


# Registered so that files saved before they named Keras' class ("tfwd>BatchNormalization") still load.
@keras.saving.register_keras_serializable(package="tfwd")
class BatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization with TensorFlow's fused kernel (see the module docstring).

    Takes exactly the arguments of keras.layers.BatchNormalization.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype("float32")
        >>> ours, theirs = BatchNormalization(), keras.layers.BatchNormalization()
        >>> bool(np.allclose(ours(x, training=True), theirs(x, training=True), atol=1e-5))
        True
    """

    @property
    def __class__(self):
        # What Keras serializes (obj.__class__): model files name keras.layers.BatchNormalization, which
        # any Keras loads. type(layer) stays this class, as unittest.mock's spec objects do.
        return keras.layers.BatchNormalization

    def _fused(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype == "float32"
            and self.moving_mean.dtype == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # TensorFlow backend only: this module is backend-neutral

        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the unbiased (n - 1) batch variance; Keras updates the
            # moving variance with the biased one, as it normalizes.
            n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), inputs.dtype)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return outputs
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma,
            self.beta,
            mean=self.moving_mean,
            variance=self.moving_variance,
            epsilon=self.epsilon,
            is_training=False,
        )
        return outputs


def fuse(model: keras.Model) -> keras.Model:
    """Gives every keras.layers.BatchNormalization of `model` (nested models too) the fused kernel, in place.

    The layers keep their variables and config; only their class becomes tfwd's, whose arithmetic
    is Keras' own (module docstring). Subclasses of Keras' layer are left alone. Returns `model`.

    Example:
        >>> inputs = keras.Input((4, 4, 3))
        >>> model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
        >>> type(fuse(model).get_layer("bn")).__module__
        'tfwd.models.layers'
    """
    for layer in _layers(model):
        if type(layer) is keras.layers.BatchNormalization:
            object.__setattr__(layer, "__class__", BatchNormalization)  # same layout: the subclass adds no state
    return model


def _layers(model: keras.Model):
    """Every layer of `model`, depth first, inside nested models too."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def _l2(weight_decay: float):
    """Keras' L2 regularizer (loss += wd * sum w^2) on a kernel, or none for a weight decay of 0."""
    return keras.regularizers.L2(weight_decay) if weight_decay else None


def conv(filters, kernel_size, strides, name, weight_decay, use_bias=True) -> keras.layers.Conv2D:
    """A 'same'-padded convolution, he_normal initialised, with L2 on the kernel only (both reference codes)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        kernel_regularizer=_l2(weight_decay),
        name=name,
    )


def batch_norm(name, synchronized=False, *, momentum, epsilon, zero_gamma=False) -> BatchNormalization:
    """tfwd's BatchNormalization; `zero_gamma` starts gamma at 0 (the last BN of a residual branch)."""
    return BatchNormalization(
        momentum=momentum,
        epsilon=epsilon,
        gamma_initializer="zeros" if zero_gamma else "ones",
        synchronized=synchronized,
        name=name,
    )


def dense_head(num_classes, weight_decay, kernel_initializer) -> keras.layers.Dense:
    """The "logits" layer: a dense layer with L2 on its kernel."""
    return keras.layers.Dense(
        num_classes, kernel_initializer=kernel_initializer, kernel_regularizer=_l2(weight_decay), name="logits"
    )
