"""PPO-RLHF (TRL `PPOTrainer`): reward model, value-head critic, per-token KL penalty against
the frozen start, GAE, several PPO epochs over minibatches of each rollout batch.

    alignax train --config experiments/configs/ppo.py --config.model.path=runs/sft/hf \
        --config.reward.model_path=runs/rm/hf

The critic starts from the reward model (trunk and head), as TRL's value model, or from a
copy of the policy's trunk without one. The score is the weighted reward (reward model and/or
functions); advantages are GAE over KL-penalised per-token rewards, whitened over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.algorithms.base import Algorithm, lm_skeleton, save_lm
from alignax.algorithms.online import trainer
from alignax.algorithms.online.rollout import flat

# TRL PPOConfig defaults: kl_coef 0.05 (k1), cliprange 0.2, cliprange_value 0.2, vf_coef 0.1,
# gamma 1, lam 0.95, whitened advantages.
PPO_LOSS = dict(kl_coef=0.05, kl_estimator="k1", epsilon=0.2, epsilon_value=0.2, vf_coef=0.1,
                dual_clip=None, gamma=1.0, lam=0.95, whiten=True)
ADVANTAGE_KEYS = ("kl_coef", "kl_estimator", "gamma", "lam", "whiten")


def ppo_loss_fn(graphdefs, *, temperature: float, epsilon: float, epsilon_value: float,
                vf_coef: float, dual_clip: float | None, chunk_size: int = 128):
    """PPO `loss_fn`: token-mean clipped surrogate + vf_coef x clipped value loss.
    Params `{"policy", "critic"}`.

    Batch: `input_ids`, `attention_mask` `[B, G, S]`; `completion_mask`, `old_logps`,
    `old_values`, `returns`, `advantages` `[B, G, N]`; `is_weights` `[B, G, N]` (async
    rollouts) multiply each token's policy loss.
    """
    sg = jax.lax.stop_gradient

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        logps, mask = trainer.policy_logps(graphdefs, params, batch, temperature, chunk_size)
        pg, pg_m = losses.ppo_policy_loss(logps, flat(batch["old_logps"]),
                                          flat(batch["advantages"]), mask, epsilon=epsilon,
                                          dual_clip=dual_clip)
        if "is_weights" in batch:  # async rollouts: truncated importance weights
            pg = pg * flat(batch["is_weights"])
        critic = nnx.merge(graphdefs["critic"], params["critic"])
        values = critic(flat(batch["input_ids"]), flat(batch["attention_mask"]), mask.shape[-1])
        vl, vl_m = losses.ppo_value_loss(values, flat(batch["old_values"]),
                                         flat(batch["returns"]), mask,
                                         epsilon_value=epsilon_value)
        pg_loss, v_loss = losses.reduce.token_mean(pg, mask), losses.reduce.token_mean(vl, mask)
        ratio = sg(jnp.exp(logps - flat(batch["old_logps"])))
        return pg_loss + vf_coef * v_loss, {
            "loss/policy_avg": sg(pg_loss), "loss/value_avg": sg(v_loss),
            "policy/clipfrac_avg": pg_m["policy/clipfrac"],
            "policy/approxkl_avg": pg_m["policy/approx_kl"],
            "val/clipfrac_avg": vl_m["value/clipfrac"],
            "val/ratio": losses.reduce.token_mean(ratio, mask)}

    return loss_fn


def ppo_advantages(cfg):
    """`(batch, fwd, mask) -> (arrays, metrics)`: TRL PPO advantages (KL-penalised per-token
    rewards, GAE, whitening) and returns, with TRL's `objective/*` and `val/mean` metrics."""
    loss = cfg.loss

    def advantages(batch, fwd, mask):
        scores = batch["rewards"]
        rewards = losses.kl_penalized_rewards(fwd["old_logps"], fwd["ref_logps"], scores, mask,
                                              kl_coef=loss.kl_coef,
                                              kl_estimator=loss.kl_estimator)
        adv, returns = losses.gae(rewards, fwd["values"], mask, gamma=loss.gamma, lam=loss.lam)
        if loss.whiten:
            adv = losses.masked_whiten(adv, mask)
        non_score = jnp.mean(jnp.sum(rewards, -1) - scores)
        return {"advantages": adv, "returns": returns, "old_values": fwd["values"]}, {
            "objective/scores": jnp.mean(scores), "objective/non_score_reward": non_score,
            "objective/rlhf_reward": jnp.mean(scores) + non_score,
            "val/mean": losses.reduce.token_mean(fwd["values"], mask)}

    return advantages


def _loss_fn(graphdefs, cfg, *, chunk_size):
    kw = {k: v for k, v in dict(cfg.loss).items() if k not in ADVANTAGE_KEYS + ("name",)}
    return ppo_loss_fn(graphdefs, temperature=cfg.rollout.temperature, chunk_size=chunk_size,
                       **kw)


PPO_SPEC = trainer.Online(loss_fn=_loss_fn, advantages=ppo_advantages,
                          needs_reference=lambda loss: True, critic=True)
PPO = Algorithm("ppo", data="prompts", variants={"ppo": PPO_LOSS},
                setup=trainer.setup_for(PPO_SPEC), reference="policy",
                sections=trainer.MULTITURN_SECTIONS, skeleton=lm_skeleton, save=save_lm,
                export_key="policy")
