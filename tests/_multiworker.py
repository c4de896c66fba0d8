"""One worker of tests/distribute_test.py's two-process MultiWorkerMirroredStrategy cluster.

    python tests/_multiworker.py INDEX PORT0,PORT1 OUT_DIR TFDS_DIR

Trains the shared tiny config with MultiWorkerMirroredStrategy, waits for the chief
to finish the run directory, then computes CKA with the same strategy; the chief
writes cka.npz into OUT_DIR.
"""

import json
import os
import sys
import time

index, ports, out_dir, tfds_dir = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
)

import keras  # noqa: E402
keras.config.disable_traceback_filtering()
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distribute_test import CONFIG, cka_dataset  # noqa: E402

from tfwd import cka, distribute, runs, training  # noqa: E402

strategy = distribute.make_strategy("multi_worker")
config = CONFIG(tfds_dir)
run_dir = training.train(config, out_dir, strategy=strategy, verbose=0, tensorboard=False)
while not os.path.exists(os.path.join(run_dir, runs.RESULTS)):
    time.sleep(0.2)
with strategy.scope():
    model = keras.models.load_model(os.path.join(run_dir, runs.MODEL), compile=False)
result = cka.cka_matrices([model], lambda p: cka_dataset(tfds_dir), passes=1, taps="blocks", strategy=strategy)
if distribute.is_chief(strategy):
    np.savez(os.path.join(out_dir, "cka.npz"), cka=result["blocks"][(0, 0)], batches=result["batches"])
print("worker", index, "done", strategy.num_replicas_in_sync, flush=True)
