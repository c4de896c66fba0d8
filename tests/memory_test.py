"""Memory under test: resident memory stays flat over CKA passes (docs/performance.md, "Memory")."""

import gc
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwd import cka, models

# Growth allowed from the start of pass 2 to the end of pass 10 (pass 1 traces the step and
# fills TensorFlow's allocator pools). Measured on 2 CPU cores: 9 MiB. A planted leak that
# only keeps each minibatch's input images (6 MiB a pass, far less than its activations)
# grew it by 63 MiB and failed.
BOUND_MIB = 40


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_ten_cka_passes_hold_resident_memory_flat():
    keras.utils.set_random_seed(0)
    model = models.cifar_resnet(8, 0.5)
    x = tf.random.stateless_uniform([512, 32, 32, 3], seed=[3, 4])
    rss = []

    def for_pass(p):
        gc.collect()
        rss.append(_rss())
        return tf.data.Dataset.from_tensor_slices((x, tf.zeros([512]))).shuffle(512, seed=p).batch(128)

    result = cka.cka_matrices([model], for_pass, passes=10, taps="all")
    gc.collect()
    rss.append(_rss())
    assert result["batches"] == 40 and np.isfinite(result["blocks"][(0, 0)]).all()
    growth = (max(rss[1:]) - rss[1]) / 2**20
    steps = [round((b - a) / 2**20, 1) for a, b in zip(rss[1:], rss[2:])]
    assert growth < BOUND_MIB, f"resident memory grew {growth:.1f} MiB over passes 2-10 (per pass: {steps} MiB)"
