"""The engine: train state, the jitted step, optimizers, and the one training loop.

It names no algorithm: `alignax.algorithms` hands `runner.run` a plan (parameters, loss
function, data, hooks); `state`, `step` and `optim` are the pieces a notebook uses directly.
"""

from alignax.train.optim import (
    DECAYS,
    make_optimizer,
    make_schedule,
    optimizer_from_config,
    schedule_from_config,
)
from alignax.train.state import (
    TrainState,
    abstract_train_state,
    cast_floating,
    init_train_state,
    shard_params,
    train_state_shardings,
)
from alignax.train.step import make_train_step

__all__ = [
    "DECAYS",
    "TrainState",
    "abstract_train_state",
    "cast_floating",
    "init_train_state",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "optimizer_from_config",
    "schedule_from_config",
    "shard_params",
    "train_state_shardings",
]
