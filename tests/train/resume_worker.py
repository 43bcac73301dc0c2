"""A short training run that checkpoints, can be SIGKILLed after a checkpoint, and resumes.

Usage: python resume_worker.py WORKDIR TOTAL_STEPS EVERY_STEPS [KILL_AFTER_STEP]
Each completed step appends `{"step": s, "loss": l}` to WORKDIR/losses.jsonl; a finished run
writes its final parameters to WORKDIR/params.npz. The test runs the same `train` in-process
for the uninterrupted reference.
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from alignax import checkpoint as ckpt  # noqa: E402
from alignax import sharding  # noqa: E402
from alignax.train import (  # noqa: E402
    abstract_train_state,
    init_train_state,
    make_train_step,
)
from tests.train import tiny_lm  # noqa: E402

MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def train(workdir: str, *, total_steps: int, every_steps: int,
          kill_after: int | None = None) -> tuple[dict[int, float], dict[str, np.ndarray]]:
    """Trains to `total_steps`, resuming from WORKDIR/checkpoints if there is a checkpoint."""
    config = {"mesh": MESH, "seed": 0, "steps": total_steps}
    mesh = sharding.make_mesh(MESH)
    tx = tiny_lm.make_tx()
    manager = ckpt.checkpoint_manager(os.path.join(workdir, "checkpoints"),
                                      every_steps=every_steps, keep=2)
    target, shardings = abstract_train_state(tiny_lm.init_params(), tx, mesh=mesh)
    restored = ckpt.restore_checkpoint(manager, target=target)
    if restored is None:
        state, _ = init_train_state(tiny_lm.init_params(), tx, mesh=mesh, seed=0)
        position = 0
    else:
        assert restored.config == config, restored.config
        state, position = restored.state, restored.data_state["position"]
    # rng-dependent loss and 2 micro-batches: resuming must restore the rng exactly.
    step = make_train_step(tiny_lm.make_objective(tiny_lm.graphdef(), noise=0.1), tx,
                           mesh=mesh, state_shardings=shardings, num_microbatches=2)
    losses = {}
    with ckpt.preemption_guard() as guard, open(os.path.join(workdir, "losses.jsonl"),
                                                "a") as log:
        while int(state.step) < total_steps:
            state, metrics = step(state, tiny_lm.make_batch(position))
            position += 1
            s = int(state.step)
            losses[s] = float(metrics["loss"])
            log.write(json.dumps({"step": s, "loss": losses[s]}) + "\n")
            log.flush()
            ckpt.save_checkpoint(manager, step=s, state=state,
                                 data_state={"position": position}, config=config)
            if s == kill_after:
                manager.wait_until_finished()  # the checkpoint at `s` is finalised
                os.kill(os.getpid(), signal.SIGKILL)
            if guard.should_stop(s):
                ckpt.save_checkpoint(manager, step=s, state=state,
                                     data_state={"position": position}, config=config,
                                     force=True)
                break
    manager.wait_until_finished()
    manager.close()
    params = tiny_lm.flat_params(state.params)
    np.savez(os.path.join(workdir, "params.npz"), **params)
    return losses, params


if __name__ == "__main__":
    kill = int(sys.argv[4]) if len(sys.argv) > 4 else None
    train(sys.argv[1], total_steps=int(sys.argv[2]), every_steps=int(sys.argv[3]),
          kill_after=kill)
