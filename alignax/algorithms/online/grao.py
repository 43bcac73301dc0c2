"""GRAO (Group Relative Alignment Optimization, arXiv 2508.07750): per prompt, G samples plus
the dataset's reference answer y; rewards R(o_i, y) and R(y, y) from the reward functions;
loss = exploration + beta imitation + lam alignment (`losses.grao_loss`, each term logged
under `loss/`). No reference model, no ratio: one update per rollout batch.

    alignax train --config experiments/configs/grao.py --config.model.path=runs/sft/hf

`pooled=True` normalises the advantages over the G samples and the answer together; False
over the samples only (the paper is ambiguous; see docs/algorithms.md).
"""

from __future__ import annotations

import jax.numpy as jnp

from alignax import losses
from alignax.algorithms.base import Algorithm, lm_skeleton, save_lm
from alignax.algorithms.online import trainer
from alignax.algorithms.online.rollout import flat

GRAO_LOSS = dict(beta=0.5, lam=0.6, pooled=True)  # the paper's beta 0.5, lambda 0.6


def grao_loss_fn(graphdefs, *, temperature: float, beta: float, lam: float, pooled: bool,
                 chunk_size: int = 128):
    """GRAO `loss_fn` (Eq. 3): the G samples and the reference answer of each prompt in one
    `[B * (G + 1), S]` forward, then `losses.grao_loss`, batch mean.

    Batch: the samples' `input_ids`, `attention_mask` `[B, G, S]`, `completion_mask`
    `[B, G, N]`, `rewards` `[B, G]`; the answer's `answer_ids`, `answer_attention` `[B, S]`,
    `answer_mask` `[B, N]`, `answer_reward` `[B]`; `is_weights` `[B, G, N]` (async
    rollouts) weight the samples' token log-probs.
    """

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        b, g, n = batch["completion_mask"].shape
        both = {k: jnp.concatenate([flat(batch[k]), batch[a]], axis=0) for k, a in (
            ("input_ids", "answer_ids"), ("attention_mask", "answer_attention"),
            ("completion_mask", "answer_mask"))}
        logps, mask = trainer.policy_logps(graphdefs, params,
                                           {k: v[:, None] for k, v in both.items()},
                                           temperature, chunk_size)
        loss, mets = losses.grao_loss(
            logps[:b * g].reshape(b, g, n), mask[:b * g].reshape(b, g, n), logps[b * g:],
            mask[b * g:], batch["rewards"], batch["answer_reward"], beta=beta, lam=lam,
            pooled=pooled, sample_weights=batch.get("is_weights"))
        return jnp.mean(loss), mets

    return loss_fn


def _loss_fn(graphdefs, cfg, *, chunk_size):
    loss = cfg.loss
    return grao_loss_fn(graphdefs, temperature=cfg.rollout.temperature, beta=loss.beta,
                        lam=loss.lam, pooled=loss.pooled, chunk_size=chunk_size)


GRAO_SPEC = trainer.Online(loss_fn=_loss_fn, advantages=None,
                           needs_reference=lambda loss: False, answers=True)
GRAO = Algorithm("grao", data="prompts", variants={"grao": GRAO_LOSS},
                 setup=trainer.setup_for(GRAO_SPEC), sections=trainer.SECTIONS,
                 skeleton=lm_skeleton, save=save_lm, export_key="policy")
