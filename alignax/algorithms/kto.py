"""KTO on unpaired desirable / undesirable rows (Ethayarajh et al. 2024; TRL 1.16 `KTOTrainer`).

    alignax train --config experiments/configs/kto.py

`loss.name`: `kto` (with TRL's mismatched-completion KL reference point z0: row i's prompt
with row i-1's completion, cycled within the batch) or `apo_zero_unpaired` (no reference
point). The reference is a frozen copy of the starting policy in the train state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.algorithms.base import Algorithm, lm_plan, lm_skeleton, loss_kwargs, save_lm
from alignax.config import ConfigError
from alignax.losses import reduce
from alignax.models import completion_logps
from alignax.train.context import Context
from alignax.train.runner import Plan

_WEIGHTS = dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)
VARIANTS = {"kto": _WEIGHTS, "apo_zero_unpaired": _WEIGHTS}


def kto_loss_fn(graphdef, *, name: str = "kto", beta: float = 0.1,
                desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                chunk_size: int = 128):
    """`loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)` of KTO variant
    `name` ("kto" or "apo_zero_unpaired").

    Batch: the sft arrays `[B, S]`, `label` `[B]` (True = desirable) and the mismatched
    `kl_*` rows `[B, S]` (`data.collate`). Metrics: `kl` (z0), `rewards/chosen`,
    `rewards/rejected`, `rewards/margins` (means over desirable / undesirable rows).
    """

    def seq_logps(model, prefix, batch, rng=None):
        tok, mask = completion_logps(model, batch[prefix + "input_ids"],
                                     batch[prefix + "attention_mask"],
                                     batch[prefix + "completion_mask"], chunk_size=chunk_size,
                                     dropout_rng=rng)
        return reduce.masked_sum(tok, mask)

    weights = dict(beta=beta, desirable_weight=desirable_weight,
                   undesirable_weight=undesirable_weight)

    def loss_fn(params, batch, rng, *, ref_params=None):
        if ref_params is None:
            raise ValueError("KTO needs the reference: ref_params (a frozen copy in the state)")
        model = nnx.merge(graphdef, params)
        ref_model = nnx.merge(graphdef, jax.lax.stop_gradient(ref_params))
        kl_rng = None if rng is None else jax.random.fold_in(rng, 1)
        logps, ref = seq_logps(model, "", batch, rng), seq_logps(ref_model, "", batch)
        if name == "kto":
            z0 = losses.kto_kl_estimate(seq_logps(model, "kl_", batch, kl_rng),
                                        seq_logps(ref_model, "kl_", batch))
            per = losses.kto_loss(logps, ref, batch["label"], z0, **weights)
        else:
            z0 = jnp.zeros((), jnp.float32)
            per = losses.apo_zero_unpaired_loss(logps, ref, batch["label"], **weights)
        label = batch["label"].astype(jnp.float32)
        rewards = jax.lax.stop_gradient(beta * (logps - ref))
        n_good, n_bad = jnp.maximum(label.sum(), 1.0), jnp.maximum((1 - label).sum(), 1.0)
        metrics = {"kl": z0, "rewards/chosen": jnp.sum(rewards * label) / n_good,
                   "rewards/rejected": jnp.sum(rewards * (1 - label)) / n_bad}
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return jnp.mean(per), metrics

    return loss_fn


def setup(ctx: Context) -> Plan:
    if ctx.cfg.reference.precompute:
        raise ConfigError("config field 'reference.precompute': KTO keeps its reference in the "
                          "train state (the KL rows change with every batch); set it to False")
    kw = loss_kwargs(ctx.cfg)
    return lm_plan(ctx, kind="unpaired", reference="copy",
                   loss_fn_for=lambda graphdef: kto_loss_fn(
                       graphdef, name=ctx.cfg.loss.name, chunk_size=ctx.chunk, **kw))


KTO = Algorithm("kto", data="unpaired", variants=VARIANTS, setup=setup, reference="policy",
                sections=("reference",), skeleton=lm_skeleton, save=save_lm,
                claims=("lora.dropout",))
