"""Sections shared by every experiment config: the library's defaults (`alignax.config`,
where every field is documented) plus what the experiments here change."""

import ml_collections

from alignax import config


def base(algorithm: str = "dpo", **loss) -> ml_collections.ConfigDict:
    """`algorithm`, its `loss` (`name` + keywords), and the required sections at defaults."""
    c = config.defaults()
    c.algorithm = algorithm
    c.loss = dict(loss or dict(name="sigmoid", beta=0.1))
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same code path in seconds on CPU."""
    c.data.num_train, c.data.num_eval = 64, 16
    c.train.steps, c.train.batch_size = 4, 8
    c.train.log_every, c.train.eval_every, c.train.eval_batches = 2, 4, 1
    c.train.eval_prompts = 8
    c.checkpoint.every_steps = 2
    return c


def online(algorithm: str, loss: dict, **rollout) -> ml_collections.ConfigDict:
    """`base()` with the online sections (`rollout`, `reward`) for PPO / GRPO / RLOO / GRAO.

    `train.batch_size` is the number of prompts per rollout batch.
    """
    c = base(algorithm, **loss)
    c.update(config.defaults("rollout", "reward"))
    c.rollout.update(rollout)
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 5
    c.train.steps, c.train.batch_size = 60, 32
    c.train.eval_every, c.train.log_every, c.train.eval_prompts = 20, 10, 256
    c.checkpoint.every_steps = 20
    return c


def online_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The online code path in seconds on CPU (8 prompts x 4 samples, 4 steps)."""
    smoke(c)
    c.rollout.num_generations = 4
    c.train.eval_prompts = 16
    return c
