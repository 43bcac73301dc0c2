"""Named aggregation modes over per-token values `[..., T]` with a mask `[..., T]` (1 = keep).

Losses return per-token (or per-sequence) values; the caller picks the reduction by name here.
One table maps the names other frameworks use:

| alignax                    | TRL loss_type / mode | verl `loss_agg_mode`        | Tunix          |
|----------------------------|----------------------|-----------------------------|----------------|
| `token_mean`               | bnpo (and SFT NLL)   | token-mean                  | token-mean     |
| `token_sum_norm(n)`        | dapo (global count)  | token-mean (global batch)   | -              |
| `seq_mean_token_mean`      | grpo                 | seq-mean-token-mean         | sequence-mean  |
| `seq_mean_token_sum`       | -                    | seq-mean-token-sum          | -              |
| `seq_mean_token_sum_norm`  | dr_grpo (L_max)      | seq-mean-token-sum-norm     | -              |

The sequence-level modes take the mean over every leading axis (the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float


def token_mean(values, mask) -> jax.Array:
    """sum(m v) / sum(m) over all tokens of the batch (BNPO; SFT token-mean NLL).

    Args: values `[..., T]`, mask `[..., T]`. Returns: scalar (0 when the mask is empty).
    """
    values, mask = as_float(values, mask)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def token_sum_norm(values, mask, num_tokens) -> jax.Array:
    """sum(m v) / num_tokens, with a normaliser fixed outside (DAPO's global active-token count).

    Args: values `[..., T]`, mask `[..., T]`, num_tokens scalar. Returns: scalar.
    """
    values, mask = as_float(values, mask)
    return jnp.sum(values * mask) / jnp.maximum(as_float(num_tokens), 1.0)


def seq_mean_token_mean(values, mask) -> jax.Array:
    """Mean over sequences of each sequence's token mean (GRPO; length-biased).

    Args: values `[..., T]`, mask `[..., T]`. Returns: scalar.
    """
    values, mask = as_float(values, mask)
    per_seq = jnp.sum(values * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
    return jnp.mean(per_seq)


def seq_mean_token_sum(values, mask) -> jax.Array:
    """Mean over sequences of each sequence's token sum. Args as `token_mean`. Returns: scalar."""
    values, mask = as_float(values, mask)
    return jnp.mean(jnp.sum(values * mask, -1))


def seq_mean_token_sum_norm(values, mask, *, max_length: int) -> jax.Array:
    """sum(m v) / (num_sequences x max_length) (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783).

    Args: values `[..., T]`, mask `[..., T]`, max_length the constant L_max. Returns: scalar.
    """
    values, mask = as_float(values, mask)
    num_seqs = values.size // values.shape[-1] if values.ndim else 1
    return jnp.sum(values * mask) / (num_seqs * max_length)


def masked_sum(values, mask, axis=-1) -> jax.Array:
    """sum(m v) along `axis` (summed sequence log-probs from token log-probs)."""
    values, mask = as_float(values, mask)
    return jnp.sum(values * mask, axis=axis)


def masked_mean(values, mask, axis=-1) -> jax.Array:
    """sum(m v) / max(sum(m), 1) along `axis` (mean sequence log-probs)."""
    values, mask = as_float(values, mask)
    return jnp.sum(values * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


REDUCTIONS = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
}
