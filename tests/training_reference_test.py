"""tfwd.training's step checked against references built another way.

Every finding rests on the trained models, so the training step is checked against a
float64 NumPy SGD written out by hand (conv, BN, ReLU, pooling, dense, cross-entropy,
their gradients, L2, momentum and BN's moving statistics), on one device and on two
MirroredStrategy replicas, and one epoch of `tfwd.training.train` against Keras'
`Model.fit` on the same batches.
"""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwd import models, runs, training
from tfwd.data import Data, DataConfig

resnet = importlib.import_module("tfwd.models.cifar_resnet")  # the module (tfwd.models.cifar_resnet is the builder)

# The paper's recipe, written out here rather than read from tfwd.
MOMENTUM, BN_MOMENTUM, BN_EPSILON, WEIGHT_DECAY = 0.9, 0.9, 1e-5, 1e-4
LEARNING_RATE, BATCH, STEPS, CLASSES = 0.1, 8, 3, 3


def tiny_model(weight_decay=WEIGHT_DECAY, synchronized=False):
    """conv3x3 (+bias) - BN - ReLU - global average pool - dense, from cifar_resnet's own layer factories."""
    inputs = keras.Input((5, 5, 2))
    x = resnet._conv(4, 3, 1, "conv", weight_decay)(inputs)
    x = resnet._bn("bn", synchronized)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    outputs = keras.layers.Dense(CLASSES, kernel_initializer="he_normal", kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs)


def batches(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(STEPS * BATCH, 5, 5, 2)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=STEPS * BATCH).astype(np.int32)
    return [(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]) for i in range(STEPS)]


def _patches(x):
    """(n, H, W, C) -> (n * H * W, 9 * C): the 3x3 'same' neighbourhoods in Keras' kernel order (kh, kw, c)."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)]
    return np.concatenate(cols, axis=-1).reshape(n * h * w, -1)


def reference_sgd(weights, data, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY):
    """Float64 SGD of `tiny_model` on `data`, as the paper's recipe defines it.

    Loss: cross-entropy averaged over the global batch + weight_decay * sum(w^2) over the
    conv and dense kernels. SGD with momentum (v = 0.9 v - lr g; w += v). BN normalizes
    with the batch's mean and biased variance (epsilon 1e-5) and updates its moving
    statistics as m = 0.9 m + 0.1 batch statistic.

    Returns:
        (the weights after each step in `tiny_model`'s order, the reported loss of each step).
    """
    k, b, gamma, beta, moving_mean, moving_var, w, c = (np.asarray(v, np.float64) for v in weights)
    velocity = {name: 0.0 for name in ("k", "b", "gamma", "beta", "w", "c")}
    losses = []
    for x, y in data:
        n, height, width, _ = x.shape
        patches = _patches(x.astype(np.float64))
        z = patches @ k.reshape(-1, k.shape[-1]) + b
        mean, var = z.mean(0), z.var(0)
        inv_std = 1.0 / np.sqrt(var + BN_EPSILON)
        xhat = (z - mean) * inv_std
        out = gamma * xhat + beta
        act = np.maximum(out, 0.0)
        pooled = act.reshape(n, height * width, -1).mean(1)
        logits = pooled @ w + c
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        cross_entropy = -np.log(probs[np.arange(n), y])
        losses.append(cross_entropy.mean() + weight_decay * (np.sum(k**2) + np.sum(w**2)))
        # Gradients of the mean cross-entropy plus the L2 penalty.
        dlogits = (probs - np.eye(probs.shape[1])[y]) / n
        grads = {"w": pooled.T @ dlogits + 2 * weight_decay * w, "c": dlogits.sum(0)}
        dact = np.repeat(dlogits @ w.T / (height * width), height * width, axis=0)
        dout = dact * (out > 0)
        grads["gamma"], grads["beta"] = (dout * xhat).sum(0), dout.sum(0)
        dxhat = dout * gamma
        dz = (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0)) * inv_std
        grads["k"] = (patches.T @ dz).reshape(k.shape) + 2 * weight_decay * k
        grads["b"] = dz.sum(0)
        moving_mean = BN_MOMENTUM * moving_mean + (1 - BN_MOMENTUM) * mean
        moving_var = BN_MOMENTUM * moving_var + (1 - BN_MOMENTUM) * var
        params = {"k": k, "b": b, "gamma": gamma, "beta": beta, "w": w, "c": c}
        for name, g in grads.items():
            velocity[name] = MOMENTUM * velocity[name] - lr * g
            params[name] = params[name] + velocity[name]
        k, b, gamma, beta, w, c = (params[name] for name in ("k", "b", "gamma", "beta", "w", "c"))
    return [k, b, gamma, beta, moving_mean, moving_var, w, c], losses


def loop_steps(strategy, data):
    """Runs tfwd.training._Loop for len(data) steps; returns (initial weights, final weights, reported loss)."""
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = tiny_model(synchronized=strategy.num_replicas_in_sync > 1)
        # tfwd's optimizer with its default momentum; the per-epoch cosine holds the rate at
        # LEARNING_RATE through epoch 0, which these steps never leave.
        recipe = runs.TrainConfig(epochs=1, learning_rate=LEARNING_RATE, warmup_epochs=0, decay_every="epoch")
        optimizer = training.make_optimizer(recipe, steps_per_epoch=STEPS)
        optimizer.build(model.trainable_variables)
    # Start from moving statistics and BN parameters away from their initial values.
    rng = np.random.default_rng(5)
    for v in model.get_layer("bn").weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32))
    initial = [v.numpy() for v in model.weights]
    loop = training._Loop(model, optimizer, strategy, global_batch=BATCH)
    x = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in data:
        loop.train_step(iterator)
    return initial, [v.numpy() for v in model.weights], float(loop.loss.result())


# Float32 against float64: |tfwd - reference| <= RTOL * |reference| + ATOL, elementwise. Float32
# rounding stays ~10x inside; an unbiased moving variance (factor 200/199) or a BN momentum of
# 0.99 would be ~5x and ~100x outside. ATOL covers the conv bias, whose gradient under BN is 0.
RTOL, ATOL = 1e-5, 1e-6


def check_loop_against_numpy(strategy) -> dict:
    """max |tfwd - reference| / (RTOL |reference| + ATOL) per variable and for the reported loss,
    after one and after three steps (passing: every value <= 1)."""
    data = batches()
    out = {}
    for steps in (1, STEPS):
        initial, got, loss = loop_steps(strategy, data[:steps])
        want, losses = reference_sgd(initial, data[:steps])
        for name, a, b in zip(("k", "b", "gamma", "beta", "moving_mean", "moving_var", "w", "c"), got, want):
            out[f"{name}@{steps}"] = float(np.max(np.abs(a - b) / (RTOL * np.abs(b) + ATOL)))
        out[f"loss@{steps}"] = float(abs(loss - np.mean(losses)) / (RTOL * np.mean(losses)))
    return out


def test_tiny_model_is_the_layout_the_reference_computes():
    model = tiny_model()
    assert [v.path.split("/")[-1] for v in model.weights] == [
        "kernel",
        "bias",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "kernel",
        "bias",
    ]
    bn = model.get_layer("bn")
    assert (bn.momentum, bn.epsilon) == (BN_MOMENTUM, BN_EPSILON)


@pytest.mark.parametrize(
    "weight_decay,lr",
    [(WEIGHT_DECAY, LEARNING_RATE), (0.05, LEARNING_RATE), (WEIGHT_DECAY, 0.0)],
    ids=["paper-l2", "strong-l2", "zero-lr-moves-only-bn-statistics"],
)
def test_reference_sgd_against_a_keras_gradient(weight_decay, lr):
    # The hand-written gradients are checked once against autodiff of the same float64 loss
    # (tf.GradientTape on NumPy-defined math), so the reference itself is trusted.
    data = batches(3)[:1]
    model = tiny_model(weight_decay)
    weights = [v.numpy().astype(np.float64) for v in model.weights]
    got, _ = reference_sgd(weights, data, lr=lr, weight_decay=weight_decay)
    x, y = data[0]
    t = [tf.Variable(v) for v in weights]
    with tf.GradientTape() as tape:
        z = tf.nn.conv2d(tf.constant(x, tf.float64), t[0], 1, "SAME") + t[1]
        mean, var = tf.nn.moments(z, [0, 1, 2])
        out = tf.nn.relu(t[2] * (z - mean) / tf.sqrt(var + BN_EPSILON) + t[3])
        logits = tf.reduce_mean(out, [1, 2]) @ t[6] + t[7]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(y, tf.int64), logits)
        loss = tf.reduce_mean(ce) + weight_decay * (tf.reduce_sum(t[0] ** 2) + tf.reduce_sum(t[6] ** 2))
    grads = tape.gradient(loss, [t[i] for i in (0, 1, 2, 3, 6, 7)])
    for i, g in zip((0, 1, 2, 3, 6, 7), grads):
        np.testing.assert_allclose(got[i], weights[i] - lr * g.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[4], 0.9 * weights[4] + 0.1 * mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(got[5], 0.9 * weights[5] + 0.1 * var.numpy(), rtol=1e-10)


def test_loop_step_matches_float64_numpy_sgd():
    diffs = check_loop_against_numpy(tf.distribute.get_strategy())
    assert max(diffs.values()) <= 1, diffs


def test_loop_on_two_mirrored_replicas_matches_float64_numpy_sgd():
    # Two replicas of 4 examples each take the step one device takes on the batch of 8:
    # the loss is averaged over the global batch, L2 is counted once, BN is synchronized.
    script = textwrap.dedent(
        """
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, sys.argv[1])
        import training_reference_test as ref
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        print("DIFFS", json.dumps(ref.check_loop_against_numpy(strategy)))
        """
    )
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-c", script, tests_dir], capture_output=True, text=True, timeout=300, cwd=tests_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = json.loads(result.stdout.split("DIFFS", 1)[1])
    assert max(diffs.values()) <= 1, diffs


def test_l2_is_on_conv_and_dense_kernels_only():
    # The reference code's L2: loss += wd * sum(w^2) over every conv and dense kernel (incl. the
    # projection shortcuts); biases and BN parameters are not decayed.
    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(8, 0.25, weight_decay=WEIGHT_DECAY)
    kernels = [v for v in model.trainable_weights if v.path.endswith("/kernel")]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(kernels) == len(convs) + 1 and any("shortcut" in v.path for v in kernels)
    want = WEIGHT_DECAY * sum(np.sum(v.numpy().astype(np.float64) ** 2) for v in kernels)
    assert float(tf.add_n(model.losses)) == pytest.approx(want, rel=1e-6)
    assert len(model.losses) == len(kernels)


def test_one_epoch_of_train_matches_model_fit(tmp_path, tfds_dir):
    config = runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=256),
        runs.TrainConfig(epochs=1, batch_size=32, seed=3),
    )
    run_dir = training.train(config, str(tmp_path), verbose=0, tensorboard=False)
    # Keras' own loop on the same batches, from the same initial weights and optimizer.
    tc, data = config.train, Data(config.data)
    steps = data.steps_per_epoch(tc.batch_size)
    keras.utils.set_random_seed(tc.seed)
    model = config.model.build(data.num_classes, data.image_size, tc.weight_decay)
    model.compile(
        optimizer=training.make_optimizer(tc, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    batches = data.train_dataset(tc.batch_size, tc.seed, 0, tc.epochs)
    fit = model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    # Same kernels in the same order: on one CPU the two agree to the last bit; the tolerance
    # only allows for thread scheduling. A step without L2 moves weights by ~1e-3 relative.
    trained = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    for got, want in zip(trained.weights, model.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6, err_msg=want.path)
    assert runs.Run(run_dir).results()["loss"] == pytest.approx(fit.history["loss"][0], rel=1e-5)
