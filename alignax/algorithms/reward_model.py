"""Reward model: a trunk + scalar head trained with Bradley-Terry on chosen vs rejected
(TRL `RewardTrainer`, with its optional reward centring).

    alignax train --config experiments/configs/reward_model.py

The export (`WORKDIR/hf`) is an HF trunk plus `reward_head/head.safetensors`
(`models.load_reward_model`); PPO scores rollouts with it (`reward.model_path`).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.algorithms.base import Algorithm, lm_plan
from alignax.models import RewardModel, save_reward_model
from alignax.train.context import Context, build_model
from alignax.train.runner import Plan


def reward_loss_fn(graphdef, *, center_rewards_coefficient: float | None = None):
    """`loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)` of a
    `models.RewardModel`: one `[2B, S]` forward scores chosen and rejected; an optional
    `batch["margin"]` `[B]` is subtracted from the score difference. Metrics: TRL's
    (`accuracy`, `margin`, `min_reward`, `mean_reward`, `max_reward`)."""

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        rm = nnx.merge(graphdef, params)
        b, two, s = batch["input_ids"].shape
        scores = rm(batch["input_ids"].reshape(b * two, s),
                    batch["attention_mask"].reshape(b * two, s)).reshape(b, two)
        per_pair = losses.bradley_terry_loss(
            scores[:, 0], scores[:, 1], margin=batch.get("margin"),
            center_rewards_coefficient=center_rewards_coefficient)
        return jnp.mean(per_pair), losses.reward_metrics(scores[:, 0], scores[:, 1])

    return loss_fn


def setup(ctx: Context) -> Plan:
    model = RewardModel(ctx.model(), rngs=nnx.Rngs(ctx.cfg.train.seed))
    coef = ctx.cfg.loss.center_rewards_coefficient
    return lm_plan(ctx, kind="pairs", model=model, save=save_reward_model, evaluate=None,
                   loss_fn_for=lambda graphdef: reward_loss_fn(
                       graphdef, center_rewards_coefficient=coef))


REWARD_MODEL = Algorithm(
    "reward_model", data="pairs",
    variants={"bradley_terry": dict(center_rewards_coefficient=None)}, setup=setup,
    skeleton=lambda cfg: RewardModel(build_model(cfg.model, seed=0, lora=cfg.lora),
                                     rngs=nnx.Rngs(0)),
    save=lambda module, out, cfg: save_reward_model(module, out))
