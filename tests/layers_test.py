"""tfwd.models.layers.BatchNormalization against Keras' own BatchNormalization."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwd.models import layers


def _pair(shape, **kwargs):
    """Our layer and Keras' with the same (random) weights and statistics."""
    rng = np.random.default_rng(0)
    ours, theirs = layers.BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    ours.build(shape)
    theirs.build(shape)
    for a, b in zip(ours.weights, theirs.weights):
        value = rng.uniform(0.5, 2.0, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, theirs


@pytest.mark.parametrize("momentum, epsilon", [(0.9, 1e-5), (0.99, 1e-3)])
def test_training_step_matches_keras(momentum, epsilon):
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, size=(16, 5, 5, 7)).astype("float32"))
    ours, theirs = _pair(x.shape, momentum=momentum, epsilon=epsilon)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_theirs = ours(x, training=True), theirs(x, training=True)
        loss_ours, loss_theirs = tf.reduce_sum(y_ours**3), tf.reduce_sum(y_theirs**3)
    np.testing.assert_allclose(y_ours, y_theirs, atol=1e-5)
    # The moving variance takes the biased batch variance (the fused kernel returns the unbiased one).
    np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-6)
    for a, b in zip(
        tape.gradient(loss_ours, [x, ours.gamma, ours.beta]), tape.gradient(loss_theirs, [x, theirs.gamma, theirs.beta])
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_inference_and_frozen_layers_use_moving_statistics():
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 3, 3, 5)).astype("float32"))
    ours, theirs = _pair(x.shape)
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False), atol=1e-5)
    ours.trainable = theirs.trainable = False
    before = ours.moving_mean.numpy().copy()
    np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), atol=1e-5)
    np.testing.assert_array_equal(ours.moving_mean, before)


def test_cases_the_kernel_does_not_cover_run_keras_code():
    x = tf.constant(np.random.default_rng(3).normal(size=(6, 4)).astype("float32"))  # 2-D
    ours, theirs = _pair(x.shape)
    assert not ours._fused(x, None)
    np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), atol=1e-6)
    no_scale = layers.BatchNormalization(scale=False)
    no_scale.build((2, 3, 3, 4))
    assert not no_scale._fused(tf.zeros((2, 3, 3, 4)), None)


def test_saved_model_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, layers.BatchNormalization(name="bn")(inputs))
    model.get_layer("bn").moving_mean.assign([1.0, 2.0, 3.0])
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    # The file names Keras' own class (plain Keras loads it); `fuse` swaps tfwd's kernel back in.
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("bn")) is keras.layers.BatchNormalization
    assert loaded.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    fused = layers.fuse(loaded)
    assert fused is loaded and type(loaded.get_layer("bn")) is layers.BatchNormalization
    np.testing.assert_array_equal(loaded(x), model(x))


def test_fuse_reaches_nested_models_and_leaves_subclasses_alone():
    class Custom(keras.layers.BatchNormalization):
        pass

    inputs = keras.Input((4, 4, 3))
    inner = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.BatchNormalization(name="inner_bn")], name="inner")
    outer = keras.Model(inputs, Custom(name="custom")(inner(inputs)))
    layers.fuse(outer)
    assert type(outer.get_layer("inner").get_layer("inner_bn")) is layers.BatchNormalization
    assert type(outer.get_layer("custom")) is Custom
