"""Token-level extras of the DPO family: WPO pair weights and LD-DPO length desensitisation.

References: WPO (Zhou et al. 2024, arXiv 2406.11827); LD-DPO (Liu et al. 2024, arXiv 2409.06411).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float


def wpo_weights(chosen_token_logps, chosen_log_sum_sq_probs, chosen_mask,
                rejected_token_logps, rejected_log_sum_sq_probs, rejected_mask) -> jax.Array:
    """WPO pair weights (Zhou et al. 2024, Eq. 2; TRL 1.16 `use_weighting`).

    w = exp(a_w) exp(a_l), a = mean over completion tokens of [log p_t - log sum_v p_v^2], under
    stop-gradient. Multiply each pair's loss by w.

    Args:
      chosen_token_logps: `[..., T]` log pi(y_t|.) of the chosen completion tokens.
      chosen_log_sum_sq_probs: `[..., T]` log sum_v pi(v|.)^2 at the same positions.
      chosen_mask: `[..., T]` 1 on completion tokens. The rejected arguments likewise.
    Returns: `[...]` weight per pair.
    """
    def mean_aligned(logps, log_sq, mask):
        logps, log_sq, mask = as_float(logps, log_sq, mask)
        aligned = jnp.sum((logps - log_sq) * mask, axis=-1)
        return aligned / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)

    a_w = mean_aligned(chosen_token_logps, chosen_log_sum_sq_probs, chosen_mask)
    a_l = mean_aligned(rejected_token_logps, rejected_log_sum_sq_probs, rejected_mask)
    return jax.lax.stop_gradient(jnp.exp(a_w + a_l))


def ld_sequence_logps(chosen_token_logps, chosen_mask, rejected_token_logps, rejected_mask, *,
                      ld_alpha: float) -> tuple[jax.Array, jax.Array]:
    """LD-DPO summed log-probs (Liu et al. 2024): the part past the shared length is down-weighted.

    With s = min(|y_w|, |y_l|) completion tokens, l = sum_{t <= s} + alpha sum_{t > s}, counting
    completion tokens in order. Apply the same to policy and reference (same masks).

    Args:
      chosen_token_logps: `[..., T]`; chosen_mask: `[..., T]` 1 on completion tokens.
      rejected_token_logps, rejected_mask: `[..., T']`.
      ld_alpha: weight of the tokens beyond the shared length (1 = plain sums).
    Returns: (chosen `[...]`, rejected `[...]`).
    """
    chosen_token_logps, chosen_mask = as_float(chosen_token_logps, chosen_mask)
    rejected_token_logps, rejected_mask = as_float(rejected_token_logps, rejected_mask)
    shared = jnp.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1))[..., None]

    def weighted(logps, mask):
        pos = jnp.cumsum(mask, axis=-1)  # 1-based index among completion tokens
        w = jnp.where(pos <= shared, 1.0, ld_alpha) * mask
        return jnp.sum(logps * w, axis=-1)

    return weighted(chosen_token_logps, chosen_mask), weighted(rejected_token_logps, rejected_mask)
