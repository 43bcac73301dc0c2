"""TRL's pair metrics, from implicit rewards and log-probs: the one place they are computed.

`pair_metrics` takes per-pair rewards (DPO's beta (log pi - log pi_ref), SimPO's averaged
log-probs, a routed MAH-DPO head's, ...) and log-probs; `preference_metrics` is DPO's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float


def pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, *,
                 weights=None) -> dict[str, jax.Array]:
    """TRL's pair metrics from per-pair implicit rewards and log-probs (all under sg).

    Args:
      chosen_rewards, rejected_rewards: `[...]` r_w, r_l (e.g. beta (log pi - log pi_ref)).
      chosen_logps, rejected_logps: `[...]` summed log-probs.
      weights: `[...]` optional pair weights (e.g. 0 for a pair routed nowhere); None = 1.
    Returns:
      weighted means `rewards/chosen`, `rewards/rejected`, `rewards/accuracies` (fraction with
      r_w > r_l), `rewards/margins`, `logps/chosen`, `logps/rejected`.

    Examples:
      >>> m = pair_metrics(jnp.array([0.2, 0.1]), jnp.array([0.0, 0.3]),
      ...                  jnp.array([-1.0, -2.0]), jnp.array([-3.0, -1.0]))
      >>> round(float(m["rewards/accuracies"]), 3), round(float(m["rewards/margins"]), 3)
      (0.5, 0.0)
    """
    r_w, r_l, l_w, l_r = jax.lax.stop_gradient(
        as_float(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps))
    if weights is None:
        mean = jnp.mean
    else:
        w = jax.lax.stop_gradient(as_float(weights))
        mean = lambda x: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
    return {
        "rewards/chosen": mean(r_w),
        "rewards/rejected": mean(r_l),
        "rewards/accuracies": mean((r_w > r_l).astype(r_w.dtype)),
        "rewards/margins": mean(r_w - r_l),
        "logps/chosen": mean(l_w),
        "logps/rejected": mean(l_r),
    }


def preference_metrics(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                       beta: float = 0.1) -> dict[str, jax.Array]:
    """TRL's DPO pair metrics, averaged over every pair: implicit rewards beta sg[rho]
    (`pair_metrics` of r = beta (log pi - log pi_ref))."""
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = as_float(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return pair_metrics(beta * (chosen_logps - ref_chosen_logps),
                        beta * (rejected_logps - ref_rejected_logps), chosen_logps,
                        rejected_logps)
