"""Margin DPO, a new offline preference algorithm in one file: its loss and its registration.

-log sigma(beta Delta - margin), Delta = (log pi(y_w) - log pi(y_l)) - (the reference's): a
pair counts as solved only once the implicit reward margin exceeds `margin`. Importing this
module registers `algorithm="margin_dpo"`; a config that imports it (`margin_dpo_config.py`)
trains it with `alignax train`.
"""

import jax
from flax import nnx

from alignax import algorithms, losses
from alignax.algorithms.base import Algorithm, lm_plan, lm_skeleton, loss_kwargs, save_lm
from alignax.algorithms.dpo import reference_logps
from alignax.models import pair_logps


def margin_dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                    beta: float = 0.1, margin: float = 0.05) -> jax.Array:
    """`[...]` loss per pair from summed log-probs `[...]` (the maths: no model, no batch)."""
    ref = jax.lax.stop_gradient(ref_chosen_logps - ref_rejected_logps)
    return -jax.nn.log_sigmoid(beta * ((chosen_logps - rejected_logps) - ref) - margin)


def margin_dpo_loss_fn(graphdef, *, beta: float, margin: float, chunk_size: int = 128):
    """Where model meets loss: one `[2B, S]` forward, summed log-probs, the reference's."""

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng
        tok, mask = pair_logps(nnx.merge(graphdef, params), batch, chunk_size=chunk_size)
        logps = losses.reduce.masked_sum(tok, mask)  # [B, 2]
        ref = reference_logps(graphdef, ref_params, batch, chunk_size=chunk_size)
        args = (logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1])
        loss = margin_dpo_loss(*args, beta=beta, margin=margin).mean()
        return loss, losses.preference_metrics(*args, beta=beta)

    return loss_fn


def setup(ctx):
    """The engine's plan: pairs, a frozen copy of the start as the reference, this loss."""
    kw = loss_kwargs(ctx.cfg)
    return lm_plan(ctx, kind="pairs", reference="copy", loss_fn_for=lambda graphdef:
                   margin_dpo_loss_fn(graphdef, chunk_size=ctx.chunk, **kw))


MARGIN_DPO = algorithms.register(Algorithm(
    "margin_dpo", data="pairs", variants={"sigmoid": dict(beta=0.1, margin=0.05)},
    setup=setup, reference="policy", sections=("reference",), skeleton=lm_skeleton,
    save=save_lm), overwrite=True)
