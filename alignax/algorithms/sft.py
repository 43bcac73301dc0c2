"""Supervised fine-tuning: token-mean NLL over completion tokens (TRL `SFTTrainer`).

    alignax train --config experiments/configs/sft.py

Rows are prompt + completion (`prompt`/`completion`, chat `messages`, or the built-in task);
the prompt tokens are masked out of the loss.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.algorithms.base import Algorithm, lm_plan, lm_skeleton, save_lm
from alignax.models import completion_logps
from alignax.train.context import Context
from alignax.train.runner import Plan


def sft_loss_fn(graphdef, *, chunk_size: int = 128):
    """`loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)`: token-mean NLL.

    Batch: `input_ids`, `attention_mask`, `completion_mask` `[B, S]`. Metrics: `num_tokens`.
    """

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        tok, mask = completion_logps(nnx.merge(graphdef, params), batch["input_ids"],
                                     batch["attention_mask"], batch["completion_mask"],
                                     chunk_size=chunk_size)
        loss = losses.reduce.token_mean(losses.nll_loss(tok, mask), mask)
        return loss, {"num_tokens": jnp.sum(mask)}

    return loss_fn


def setup(ctx: Context) -> Plan:
    return lm_plan(ctx, kind="sft",
                   loss_fn_for=lambda graphdef: sft_loss_fn(graphdef, chunk_size=ctx.chunk))


SFT = Algorithm("sft", data="sft", variants={"nll": {}}, setup=setup, skeleton=lm_skeleton,
                save=save_lm)
