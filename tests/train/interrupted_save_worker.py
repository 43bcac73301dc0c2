"""Finalises a checkpoint at step 1, starts an async save at step 2 and SIGKILLs itself mid-write.

Usage: python interrupted_save_worker.py CHECKPOINT_DIR
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax.numpy as jnp  # noqa: E402

from alignax import checkpoint as ckpt  # noqa: E402


def main(directory: str) -> None:
    manager = ckpt.checkpoint_manager(directory, every_steps=1, keep=3)
    ckpt.save_checkpoint(manager, step=1, state={"w": jnp.ones((4,))})
    manager.wait_until_finished()
    # 128 MiB: the background write takes far longer than the kill below.
    ckpt.save_checkpoint(manager, step=2, state={"w": jnp.ones((8192, 4096))})
    deadline = time.time() + 30
    while not any(n.startswith("2.") for n in os.listdir(directory)):
        if time.time() > deadline:
            sys.exit("no tmp directory for step 2 appeared")
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
