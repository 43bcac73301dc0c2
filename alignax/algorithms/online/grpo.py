"""The GRPO family (TRL 1.16 loss types `grpo`, `bnpo`, `dr_grpo`, `dapo`) and RLOO.

    alignax train --config experiments/configs/grpo.py          # :dapo, :kl variants
    alignax train --config experiments/configs/rloo.py

| algorithm | advantages | reference |
|---|---|---|
| `grpo` | group z-score (`scale_rewards`: group / batch / none) | if `beta` > 0 (KL term) |
| `rloo` | leave-one-out on reward - `kl_coef` x sequence KL | if `kl_coef` > 0 |

Both train the clipped surrogate `losses.grpo_loss`, reduced by `loss.name`.

`loss.name` is TRL's `loss_type` for both: how per-token losses reduce to the batch loss
(`losses.grpo_aggregate`). `dapo`'s normaliser is the generation batch's completion-token
count over the updates of one epoch (and gradient-accumulation steps), so each minibatch step
is a token mean over its share of the batch (TRL 1.16).
"""

from __future__ import annotations

import jax.numpy as jnp

from alignax import losses
from alignax.algorithms.base import Algorithm, lm_skeleton, save_lm
from alignax.algorithms.online import trainer
from alignax.algorithms.online.rollout import flat, sequence_kl

# The clipped surrogate's keywords (TRL 1.16 GRPOConfig defaults).
CLIP = dict(epsilon=0.2, epsilon_high=None, importance_sampling_level="token", delta=None,
            use_bias_correction_kl=True)
GRPO_LOSS = dict(CLIP, beta=0.0, scale_rewards="group", normalize_advantages=False)
RLOO_LOSS = dict(CLIP, kl_coef=0.05, kl_estimator="k1", normalize_advantages=False)
ADVANTAGE_KEYS = ("scale_rewards", "normalize_advantages", "kl_coef", "kl_estimator")


def clipped_loss_fn(graphdefs, *, loss_type: str, temperature: float, epsilon: float,
                    epsilon_high: float | None, importance_sampling_level: str,
                    delta: float | None, use_bias_correction_kl: bool, beta: float = 0.0,
                    chunk_size: int = 128):
    """GRPO / DAPO / Dr. GRPO / RLOO `loss_fn`: `losses.grpo_loss` on sequence advantages,
    reduced by `losses.grpo_aggregate(loss_type)` (TRL 1.16 `GRPOTrainer._compute_loss`).

    Batch: `input_ids`, `attention_mask` `[B, G, S]`; `completion_mask`, `old_logps` (and
    `ref_logps` if beta) `[B, G, N]`; `advantages` `[B, G]`; `normalizer` `[B]` (dapo's
    token count, the same in every row); `is_weights` `[B, G, N]` (async rollouts) multiply
    each token's loss.
    """

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        logps, mask = trainer.policy_logps(graphdefs, params, batch, temperature, chunk_size)
        per_token, mets = losses.grpo_loss(
            logps, flat(batch["old_logps"]), flat(batch["advantages"]), mask,
            ref_logps=flat(batch["ref_logps"]) if beta else None, epsilon=epsilon,
            epsilon_high=epsilon_high, beta=beta,
            importance_sampling_level=importance_sampling_level,
            use_bias_correction_kl=use_bias_correction_kl, delta=delta)
        if "is_weights" in batch:  # async rollouts: truncated importance weights
            per_token = per_token * flat(batch["is_weights"])
        loss = losses.grpo_aggregate(per_token, mask, loss_type=loss_type,
                                     max_completion_length=mask.shape[-1],
                                     normalizer=batch["normalizer"][0])
        return loss, mets

    return loss_fn


def group_advantages(cfg, *, rloo: bool):
    """`(batch, fwd, mask) -> (arrays, metrics)`: sequence advantages `[B, G]` of the group
    (GRPO's z-score or RLOO's leave-one-out) and dapo's normaliser `[B]`."""
    loss = cfg.loss
    splits = cfg.rollout.num_minibatches * cfg.train.grad_accum

    def advantages(batch, fwd, mask):
        rewards = batch["rewards"]
        if rloo:
            if loss.kl_coef:
                rewards = rewards - loss.kl_coef * sequence_kl(
                    fwd["old_logps"], fwd["ref_logps"], mask, estimator=loss.kl_estimator)
            adv = losses.rloo_advantages(rewards)
        else:
            adv = losses.grpo_advantages(rewards, scale_rewards=loss.scale_rewards)
        if loss.normalize_advantages:
            adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)
        norm = jnp.maximum(jnp.sum(mask), 1.0) / splits
        return {"advantages": adv,
                "normalizer": jnp.full(rewards.shape[:1], norm, jnp.float32)}, {}

    return advantages


def _loss_fn(rloo: bool):
    def build(graphdefs, cfg, *, chunk_size):
        kw = {k: v for k, v in dict(cfg.loss).items() if k not in ADVANTAGE_KEYS + ("name",)}
        return clipped_loss_fn(graphdefs, loss_type=cfg.loss.name,
                               temperature=cfg.rollout.temperature, chunk_size=chunk_size, **kw)

    return build


GRPO_SPEC = trainer.Online(
    loss_fn=_loss_fn(False), advantages=lambda cfg: group_advantages(cfg, rloo=False),
    needs_reference=lambda loss: bool(loss.beta), keep_nan_rewards=True, min_generations=2)
RLOO_SPEC = trainer.Online(
    loss_fn=_loss_fn(True), advantages=lambda cfg: group_advantages(cfg, rloo=True),
    needs_reference=lambda loss: bool(loss.kl_coef), min_generations=2)

_TYPES = sorted(losses.GRPO_LOSS_TYPES)
GRPO = Algorithm("grpo", data="prompts", variants={t: GRPO_LOSS for t in _TYPES},
                 setup=trainer.setup_for(GRPO_SPEC), reference="optional",
                 sections=trainer.MULTITURN_SECTIONS, skeleton=lm_skeleton, save=save_lm,
                 export_key="policy")
RLOO = Algorithm("rloo", data="prompts", variants={t: RLOO_LOSS for t in _TYPES},
                 setup=trainer.setup_for(RLOO_SPEC), reference="optional",
                 sections=trainer.MULTITURN_SECTIONS, skeleton=lm_skeleton, save=save_lm,
                 export_key="policy")
