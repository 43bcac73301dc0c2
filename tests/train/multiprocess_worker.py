"""One of two processes (4 CPU devices each) running one sharded train step with jax.distributed.

Usage: python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz
Process 0 writes the loss and the updated parameters (gathered from both processes) to OUT.npz.
"""

import os
import sys

# 4 devices per process; the suite's other XLA flags (tests/conftest.py) stay, so this process
# compiles exactly as the single-process reference it is compared with.
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split()
     if "xla_force_host_platform_device_count" not in f]
    + ["--xla_force_host_platform_device_count=4"])
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from alignax import distributed, sharding  # noqa: E402
from alignax.train import init_train_state, make_train_step  # noqa: E402
from tests.train import tiny_lm  # noqa: E402


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
    assert distributed.initialize_distributed(coordinator_address=f"127.0.0.1:{port}",
                                     num_processes=num_processes, process_id=process_id)
    assert jax.process_count() == num_processes and jax.device_count() == 8
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    tx = tiny_lm.make_tx()
    state, shardings = init_train_state(tiny_lm.init_params(), tx, mesh=mesh, seed=0)
    global_batch = tiny_lm.make_batch(0)
    rows = distributed.process_batch_slice(8, mesh=mesh)
    local = {k: v[rows] for k, v in global_batch.items()}
    batch = distributed.host_local_to_global(local, mesh=mesh)
    step = make_train_step(tiny_lm.make_objective(tiny_lm.graphdef()), tx, mesh=mesh,
                           state_shardings=shardings)
    state, metrics = step(state, batch)
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if process_id == 0:
        np.savez(out, loss=np.asarray(metrics["loss"]), rows=np.array([rows.start, rows.stop]),
                 **tiny_lm.flat_params(params))
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
