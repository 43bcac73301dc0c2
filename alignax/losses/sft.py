"""Supervised fine-tuning negative log-likelihood.

Reference: the standard maximum-likelihood objective; TRL `SFTTrainer` averages it per token over
the batch (`alignax.losses.reduce.token_mean`).
"""

from __future__ import annotations

import jax

from alignax.losses._util import as_float


def nll_loss(token_logps, mask) -> jax.Array:
    """Per-token negative log-likelihood -m_t log pi(y_t|.).

    Args:
      token_logps: `[..., T]` log pi(y_t | x, y_<t) of the target tokens.
      mask: `[..., T]` 1 on tokens that count (completion tokens), 0 on prompt and padding.
    Returns: `[..., T]` per-token loss (0 where masked). Reduce with `reduce.token_mean`.
    """
    token_logps, mask = as_float(token_logps, mask)
    return -token_logps * mask
