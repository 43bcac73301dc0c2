"""Reference-free preference optimisation: SimPO, CPO (TRL `CPOTrainer` loss types) and ORPO.

    alignax train --config experiments/configs/simpo.py
    alignax train --config experiments/configs/orpo.py
    alignax train --config experiments/configs/simpo.py --config.algorithm=cpo \
        --config.loss={'name':'hinge','beta':0.1}

No reference model: the losses of `losses/reference_free.py` on the policy's summed (or
length-averaged) log-probs of chosen and rejected, from one `[2B, S]` forward, plus
`nll_weight` x the chosen NLL (TRL's `cpo_alpha`; ORPO's NLL term, weight 1).

| algorithm | `loss.name` | pair term | log-probs shown as rewards |
|---|---|---|---|
| `simpo` | `simpo` | SimPO margin with gamma (AlphaPO with alpha != 0) | averaged |
| `cpo` | `sigmoid`, `hinge`, `ipo`, `simpo` | TRL's CPO types | summed (ipo, simpo: averaged) |
| `orpo` | `orpo` | odds ratio, beta = the paper's lambda | averaged |

With `data.packing=True` the same pairs come packed (`alignax.data.packing`: chosen and
rejected are two adjacent segments of one row); the per-pair sums come from a segment sum, the
NLL is the same token mean over the chosen tokens.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.algorithms.base import (
    PACKING,
    Algorithm,
    lm_plan,
    lm_skeleton,
    loss_kwargs,
    packing_plan,
    save_lm,
)
from alignax.losses import reduce
from alignax.models import pair_logps
from alignax.models.logprobs import example_sums, packed_completion_logps
from alignax.train.context import Context
from alignax.train.runner import Plan

# Per-pair terms `(summed chosen, summed rejected, chosen lengths, rejected lengths, **kw)`.
PAIR_TERMS = {
    ("simpo", "simpo"): lambda w, r, lw, lr, beta, gamma, label_smoothing, alpha:
        losses.simpo_loss(w, r, lw, lr, beta=beta, gamma=gamma,
                          label_smoothing=label_smoothing, alpha=alpha),
    ("cpo", "sigmoid"): lambda w, r, lw, lr, beta, label_smoothing, alpha:
        losses.cpo_loss(w, r, beta=beta, label_smoothing=label_smoothing, alpha=alpha),
    ("cpo", "hinge"): lambda w, r, lw, lr, beta, alpha:
        losses.cpo_hinge_loss(w, r, beta=beta, alpha=alpha),
    ("cpo", "ipo"): lambda w, r, lw, lr, beta, alpha:
        losses.cpo_ipo_loss(w, r, lw, lr, beta=beta, alpha=alpha),
    ("cpo", "simpo"): lambda w, r, lw, lr, beta, gamma, label_smoothing, alpha:
        losses.simpo_loss(w, r, lw, lr, beta=beta, gamma=gamma,
                          label_smoothing=label_smoothing, alpha=alpha),
    ("orpo", "orpo"): lambda w, r, lw, lr, beta: losses.orpo_loss(w, r, lw, lr, beta=beta),
}
AVERAGED = {("simpo", "simpo"), ("cpo", "ipo"), ("cpo", "simpo"), ("orpo", "orpo")}

# The `loss` keywords (and defaults) of each algorithm's variants: SimPO's paper values, TRL's
# CPOConfig (beta 0.1, cpo_alpha 1, simpo_gamma 0.5) and ORPOConfig (beta 0.1).
VARIANTS = {
    "simpo": {"simpo": dict(beta=2.0, gamma=0.5, label_smoothing=0.0, alpha=0.0,
                            nll_weight=0.0)},
    "cpo": {"sigmoid": dict(beta=0.1, label_smoothing=0.0, alpha=0.0, nll_weight=1.0),
            "hinge": dict(beta=0.1, alpha=0.0, nll_weight=1.0),
            "ipo": dict(beta=0.1, alpha=0.0, nll_weight=1.0),
            "simpo": dict(beta=0.1, gamma=0.5, label_smoothing=0.0, alpha=0.0,
                          nll_weight=1.0)},
    "orpo": {"orpo": dict(beta=0.1, nll_weight=1.0)},
}


def reference_free_loss_fn(graphdef, *, algorithm: str, name: str, nll_weight: float,
                           chunk_size: int = 128, **hyper):
    """`loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)` of
    `algorithm`'s variant `name` (see the module table); `hyper` are its pair term's
    keywords. Batch: `[B, 2, S]` pairs or a packed batch of the same pairs. Metrics: TRL's
    pair names and `nll_loss`."""
    term = PAIR_TERMS[(algorithm, name)]
    averaged = (algorithm, name) in AVERAGED
    beta, alpha = hyper["beta"], hyper.get("alpha", 0.0)

    def loss_fn(params, batch, rng, *, ref_params=None):
        del ref_params
        model = nnx.merge(graphdef, params)
        if "segment_ids" in batch:
            tok, mask = packed_completion_logps(model, batch, chunk_size=chunk_size,
                                                dropout_rng=rng)
            sums = example_sums(tok, batch, per_example=2)
            lengths = example_sums(mask, batch, per_example=2)
            chosen = mask * (batch["segment_ids"][:, 1:] % 2 == 1)  # odd segments: chosen
            pair = term(sums[:, 0], sums[:, 1], lengths[:, 0], lengths[:, 1], **hyper)
            nll = reduce.token_mean(losses.nll_loss(tok, chosen), chosen)
        else:
            tok, mask = pair_logps(model, batch, chunk_size=chunk_size, dropout_rng=rng)
            sums, lengths = reduce.masked_sum(tok, mask), jnp.sum(mask, axis=-1)
            pair = term(sums[:, 0], sums[:, 1], lengths[:, 0], lengths[:, 1], **hyper)
            nll = reduce.token_mean(losses.nll_loss(tok[:, 0], mask[:, 0]), mask[:, 0])
        shown = sums / jnp.maximum(lengths, 1.0) if averaged else sums
        r_w, r_l = losses.cpo_rewards(shown[:, 0], shown[:, 1], beta=beta, alpha=alpha)
        metrics = losses.pair_metrics(r_w, r_l, sums[:, 0], sums[:, 1])
        metrics["nll_loss"] = nll
        return jnp.mean(pair) + nll_weight * nll, metrics

    return loss_fn


def _setup(algorithm: str):
    def setup(ctx: Context) -> Plan:
        kw = loss_kwargs(ctx.cfg)
        return lm_plan(ctx, kind="pairs", loss_fn_for=lambda graphdef: reference_free_loss_fn(
            graphdef, algorithm=algorithm, name=ctx.cfg.loss.name, chunk_size=ctx.chunk, **kw),
            **packing_plan(ctx))

    return setup


SIMPO, CPO, ORPO = (Algorithm(name, data="pairs", variants=VARIANTS[name], setup=_setup(name),
                              skeleton=lm_skeleton, save=save_lm,
                              claims=(*PACKING, "lora.dropout"))
                    for name in ("simpo", "cpo", "orpo"))
