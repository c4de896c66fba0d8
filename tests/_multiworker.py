"""One worker of tests/distribute_test.py's two-process MultiWorkerMirroredStrategy cluster.

    python tests/_multiworker.py INDEX PORT0,PORT1 OUT_DIR TFDS_DIR

Trains the shared tiny config with MultiWorkerMirroredStrategy, waits for the chief
to finish the run directory, then runs tfwd.cka.analyze with the same strategy;
the chief writes OUT_DIR/cka.
"""

import json
import os
import sys
import time

index, ports, out_dir, tfds_dir = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distribute_test import CKA_SETTINGS, CONFIG  # noqa: E402

from tfwd import cka, distribute, runs, training  # noqa: E402

strategy = distribute.make_strategy("multi_worker")
config = CONFIG(tfds_dir)
run_dir = training.train(config, out_dir, strategy=strategy, verbose=0, tensorboard=False)
while not os.path.exists(os.path.join(run_dir, runs.RESULTS)):
    time.sleep(0.2)
cka.analyze([run_dir], out_dir=os.path.join(out_dir, "cka"), strategy=strategy, **CKA_SETTINGS)
print("worker", index, "done", strategy.num_replicas_in_sync, flush=True)
