"""tf.distribute: two local worker processes (MultiWorkerMirroredStrategy on 127.0.0.1) match one process;
so does CKA on two logical devices under MirroredStrategy."""

import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfwd import distribute, runs, training
from tfwd.data import DataConfig


def CONFIG(tfds_dir):
    return runs.RunConfig(
        runs.ModelConfig(8, 0.25),
        DataConfig(data_dir=tfds_dir, train_examples=256),
        # One epoch at a small learning rate: the trajectories of one and two processes differ
        # only by float reassociation (synchronized BN sums E[x^2] across replicas), which a
        # long chaotic run at lr 0.1 would amplify beyond any fixed tolerance.
        runs.TrainConfig(epochs=1, batch_size=32, seed=4, learning_rate=0.01),
    )


CKA_SETTINGS = dict(taps="blocks", examples=200, batch_size=32, passes=2)


def _free_ports(k):
    sockets = [socket.socket() for _ in range(k)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow  # two worker processes train and compute CKA (1.5 min)
def test_two_workers_on_loopback_match_one_process(tmp_path, tfds_dir, root, bin_env):
    ports = ",".join(map(str, _free_ports(2)))
    worker = str(root / "tests" / "_multiworker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(i), ports, str(tmp_path / "mw"), tfds_dir],
            env=bin_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "done 2" in out
    # The same training and CKA in one process.
    single = training.train(CONFIG(tfds_dir), str(tmp_path / "one"), verbose=0, tensorboard=False)
    distributed = tmp_path / "mw" / os.path.basename(single)
    a = keras.models.load_model(os.path.join(single, "model.keras"))
    b = keras.models.load_model(distributed / "model.keras")
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=2e-3, atol=2e-4, err_msg=x.path)
    loss_one = float(open(os.path.join(single, "history.csv")).read().splitlines()[1].split(",")[1])
    loss_two = float(open(distributed / "history.csv").read().splitlines()[1].split(",")[1])
    assert loss_two == pytest.approx(loss_one, rel=1e-4)
    with (
        np.load(os.path.join(single, "test_predictions.npz")) as p1,
        np.load(distributed / "test_predictions.npz") as p2,
    ):
        np.testing.assert_array_equal(p1["labels"], p2["labels"])
        np.testing.assert_allclose(p1["probs"], p2["probs"], atol=1e-3)
    from tfwd import cka

    expected = cka.load(cka.analyze([distributed], out_dir=str(tmp_path / "one_cka"), **CKA_SETTINGS))
    got = cka.load(str(tmp_path / "mw" / "cka"))
    assert got.settings["batches"] == expected.settings["batches"] == 14
    np.testing.assert_allclose(got.blocks[(0, 0)], expected.blocks[(0, 0)], atol=1e-10)


def test_cka_on_two_mirrored_devices_equals_one_device():
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from tfwd import cka, models
        keras.utils.set_random_seed(0)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = models.cifar_resnet(8, 0.25)
        x = tf.random.stateless_uniform([100, 32, 32, 3], seed=[1, 2])
        batches = lambda p: tf.data.Dataset.from_tensor_slices((x, tf.zeros([100]))).shuffle(100, seed=p).batch(16)
        two = cka.cka_matrices([model], batches, passes=2, taps="blocks", strategy=strategy)
        one = cka.cka_matrices([model], batches, passes=2, taps="blocks")
        assert two["batches"] == one["batches"] == 14, (two["batches"], one["batches"])
        np.testing.assert_allclose(two["blocks"][(0, 0)], one["blocks"][(0, 0)], atol=1e-10)
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_make_strategy():
    assert distribute.make_strategy("default").num_replicas_in_sync == 1
    assert distribute.is_chief(distribute.make_strategy("default"))
    with pytest.raises(ValueError, match="strategy"):
        distribute.make_strategy("horovod")
