"""Supervised fine-tuning: token-mean NLL over completion tokens (TRL `SFTTrainer`).

    alignax train --config experiments/configs/sft.py

Rows are prompt + completion (`prompt`/`completion`, chat `messages`, or the built-in task);
the prompt tokens are masked out of the loss. With `data.packing=True` the same rows come
packed several to a batch row (`alignax.data.packing`); the loss is the same token mean.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.algorithms.base import PACKING, Algorithm, lm_plan, lm_skeleton, packing_plan, save_lm
from alignax.models import completion_logps
from alignax.models.logprobs import packed_completion_logps
from alignax.train.context import Context
from alignax.train.runner import Plan


def sft_loss_fn(graphdef, *, chunk_size: int = 128):
    """`loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)`: token-mean NLL.

    Batch: `input_ids`, `attention_mask`, `completion_mask` `[B, S]`, or a packed batch
    (`data.PackedBatchIterator`, `[R, W]` with `segment_ids`): the same token mean over the
    same examples' completion tokens. Metrics: `num_tokens`.
    """

    def loss_fn(params, batch, rng, *, ref_params=None):
        del ref_params
        model = nnx.merge(graphdef, params)
        if "segment_ids" in batch:
            tok, mask = packed_completion_logps(model, batch, chunk_size=chunk_size,
                                                dropout_rng=rng)
        else:
            tok, mask = completion_logps(model, batch["input_ids"], batch["attention_mask"],
                                         batch["completion_mask"], chunk_size=chunk_size,
                                         dropout_rng=rng)
        loss = losses.reduce.token_mean(losses.nll_loss(tok, mask), mask)
        return loss, {"num_tokens": jnp.sum(mask)}

    return loss_fn


def setup(ctx: Context) -> Plan:
    return lm_plan(ctx, kind="sft",
                   loss_fn_for=lambda graphdef: sft_loss_fn(graphdef, chunk_size=ctx.chunk),
                   **packing_plan(ctx))


SFT = Algorithm("sft", data="sft", variants={"nll": {}}, setup=setup, skeleton=lm_skeleton,
                save=save_lm, claims=(*PACKING, "lora.dropout"))
