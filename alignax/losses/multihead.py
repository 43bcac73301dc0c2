"""MAH-DPO: multi-action-head DPO (MAHALO, arXiv 2510.01167).

One shared trunk, H untied LM heads, one per objective. Each preference pair carries the index k
of the objective it was labelled for and trains head k only (the trunk gets gradient from every
head). The batch loss is the mean over the heads present in the batch of each head's mean DPO
loss, as in the reference code (`pearls-lab/multiobj-align` @ 5060d1a,
`mah_dpo/mahdpo_trainers.py::preference_loss`, `get_batch_metrics`). At inference the user
weights the heads (`models.heads.mix_heads`).

References:
  MAHALO / MAH-DPO (arXiv 2510.01167); DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float
from alignax.losses.preference import dpo_loss


def _summed_ipo(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta,
                label_smoothing):
    # The reference code's IPO uses summed (not length-averaged) log-probs.
    del label_smoothing
    delta = (chosen_logps - rejected_logps) - jax.lax.stop_gradient(
        ref_chosen_logps - ref_rejected_logps)
    return jnp.square(delta - 1.0 / (2.0 * beta))


MAH_DPO_LOSSES = {"sigmoid": dpo_loss, "ipo": _summed_ipo}
"""Per-head pair losses of the reference code: (c)DPO with label smoothing, and summed IPO."""


def head_routes(heads, num_heads: int) -> jax.Array:
    """Routing as a one-hot `[..., B, H]` float array.

    Args:
      heads: `[..., B]` integer head index per pair, or `[..., B, H]` one-hot (returned as float).
      num_heads: H.
    Returns: `[..., B, H]`.
    """
    heads = jnp.asarray(heads)
    if jnp.issubdtype(heads.dtype, jnp.integer):
        return jax.nn.one_hot(heads, num_heads, dtype=jnp.float32)
    return as_float(heads)


def _per_head(x, like):
    """`[..., B]` (head-independent, e.g. the reference) -> `[..., B, 1]`; `[..., B, H]` as is."""
    x = as_float(x)
    return x[..., None] if x.ndim == like.ndim - 1 else x


def mah_dpo_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                    beta: float = 0.1):
    """Implicit rewards of every head, beta sg[log pi_k(y|x) - log pi_ref(y|x)].

    Args:
      chosen_logps, rejected_logps: `[..., B, H]` summed log-probs under each policy head.
      ref_chosen_logps, ref_rejected_logps: `[..., B]` (reference heads are identical) or
        `[..., B, H]`.
    Returns: (chosen `[..., B, H]`, rejected `[..., B, H]`), under stop-gradient.
    """
    chosen_logps, rejected_logps = as_float(chosen_logps, rejected_logps)
    r_w = beta * (chosen_logps - _per_head(ref_chosen_logps, chosen_logps))
    r_l = beta * (rejected_logps - _per_head(ref_rejected_logps, rejected_logps))
    return jax.lax.stop_gradient(r_w), jax.lax.stop_gradient(r_l)


def mah_dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, heads, *,
                 beta: float = 0.1, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
                 reference_free: bool = False):
    """MAH-DPO batch loss: mean over present heads of each head's mean pair loss.

    L = 1/|H_present| sum_k 1/|B_k| sum_{i in B_k} L_k(i), with L_k the DPO loss of pair i on
    head k's log-probs (`-log sigma(beta Delta)`, cDPO label smoothing, or summed IPO). Heads with
    no pair in the batch are left out (equal alpha_k over the heads present). Pairs only reach
    their own head: the other heads' log-probs get zero gradient.

    Args:
      chosen_logps: `[..., B, H]` summed log pi_k(y_w|x) under every head k (or `[..., B, 1]`
        already routed, with one-hot `heads`).
      rejected_logps: `[..., B, H]` summed log pi_k(y_l|x).
      ref_chosen_logps, ref_rejected_logps: `[..., B]` or `[..., B, H]` reference log-probs.
      heads: `[..., B]` int head index per pair, or `[..., B, H]` one-hot routing.
      beta: DPO beta (reference recipes 0.1). label_smoothing: cDPO eps (default 0).
      loss_type: "sigmoid" or "ipo" (`MAH_DPO_LOSSES`).
      reference_free: drop the reference log-ratio (reference code's `reference_free`).
    Returns:
      (loss scalar, metrics), metrics per head as `[H]` arrays (0 where a head has no pair):
      `loss/heads`, `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
      `rewards/margins`, `logps/chosen`, `logps/rejected`, `examples` (pairs per head).
    """
    chosen_logps, rejected_logps = as_float(chosen_logps, rejected_logps)
    ref_w = _per_head(ref_chosen_logps, chosen_logps)
    ref_l = _per_head(ref_rejected_logps, rejected_logps)
    if reference_free:
        ref_w, ref_l = jnp.zeros_like(ref_w), jnp.zeros_like(ref_l)
    heads = jnp.asarray(heads)
    num_heads = heads.shape[-1] if heads.ndim == chosen_logps.ndim else chosen_logps.shape[-1]
    routes = head_routes(heads, num_heads).astype(chosen_logps.dtype)
    per_pair = MAH_DPO_LOSSES[loss_type](chosen_logps, rejected_logps, ref_w, ref_l, beta=beta,
                                         label_smoothing=label_smoothing)
    per_pair = jnp.broadcast_to(per_pair, routes.shape)
    batch_axes = tuple(range(routes.ndim - 1))
    counts = jnp.sum(routes, axis=batch_axes)

    def head_mean(x):
        x = jnp.broadcast_to(x, routes.shape)
        return jnp.sum(x * routes, axis=batch_axes) / jnp.maximum(counts, 1.0)

    head_losses = head_mean(per_pair)
    present = (counts > 0).astype(head_losses.dtype)
    loss = jnp.sum(head_losses * present) / jnp.maximum(jnp.sum(present), 1.0)

    r_w, r_l = mah_dpo_rewards(chosen_logps, rejected_logps, ref_w, ref_l, beta=beta)
    sg = jax.lax.stop_gradient
    metrics = {
        "loss/heads": sg(head_losses),
        "rewards/chosen": head_mean(r_w),
        "rewards/rejected": head_mean(r_l),
        "rewards/accuracies": head_mean((r_w > r_l).astype(r_w.dtype)),
        "rewards/margins": head_mean(r_w - r_l),
        "logps/chosen": sg(head_mean(chosen_logps)),
        "logps/rejected": sg(head_mean(rejected_logps)),
        "examples": counts,
    }
    return loss, metrics
