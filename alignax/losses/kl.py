"""Per-token KL estimators against a reference policy, and entropy from logits in chunks.

With log r_t = log pi_ref(y_t) - log pi(y_t) for tokens y_t sampled from pi, Schulman's
estimators of KL(pi || pi_ref) are k1 = -log r, k2 = (log r)^2 / 2 and k3 = (r - 1) - log r
(unbiased, always >= 0, low variance). TRL's PPO uses k1 in the reward, GRPO uses k3 in the loss;
TRL 1.16 GRPO multiplies k3 by the importance ratio pi_theta / pi_old
(`use_bias_correction_kl=True`, the default), which changes the gradient even on-policy.

References:
  J. Schulman, "Approximating KL divergence" (2020, http://joschu.net/blog/kl-approx.html);
  GRPO (Shao et al. 2024, arXiv 2402.03300, Eq. 4); TRL 1.16.0 `GRPOTrainer._compute_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float


def _log_r(logps, ref_logps):
    logps, ref_logps = as_float(logps, ref_logps)
    # The reference is frozen: no gradient flows into it.
    return jax.lax.stop_gradient(ref_logps) - logps


def kl_k1(logps, ref_logps) -> jax.Array:
    """k1 = -log r = log pi - log pi_ref (Schulman 2020); unbiased, can be negative.

    Args:
      logps: `[..., T]` log pi(y_t|.) of the sampled tokens (policy or behaviour policy).
      ref_logps: `[..., T]` log pi_ref(y_t|.) of the same tokens.
    Returns: `[..., T]` per-token estimate.
    """
    return -_log_r(logps, ref_logps)


def kl_k2(logps, ref_logps) -> jax.Array:
    """k2 = (log r)^2 / 2 (Schulman 2020); biased, >= 0. Shapes as `kl_k1`."""
    return 0.5 * jnp.square(_log_r(logps, ref_logps))


def kl_k3(logps, ref_logps) -> jax.Array:
    """k3 = (exp(log r) - 1) - log r (Schulman 2020; GRPO Eq. 4); unbiased, >= 0.

    Shapes as `kl_k1`.
    """
    log_r = _log_r(logps, ref_logps)
    # expm1 keeps k3 accurate (no cancellation) when log r is small.
    return jnp.expm1(log_r) - log_r


def kl_k3_bias_corrected(logps, ref_logps, importance_weights) -> jax.Array:
    """TRL 1.16 GRPO `use_bias_correction_kl`: k3 x (pi_theta / pi_old).

    The importance weight corrects for tokens sampled from pi_old rather than pi_theta; its
    gradient flows (TRL does not detach it), so on-policy (weight 1 in value) the gradient still
    differs from plain k3.

    Args:
      logps: `[..., T]` log pi_theta. ref_logps: `[..., T]` log pi_ref.
      importance_weights: `[..., T]` (token level) or `[..., 1]` (sequence level, GSPO) ratio.
    Returns: `[..., T]`.
    """
    return kl_k3(logps, ref_logps) * as_float(importance_weights)


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
"""Name -> estimator `(logps, ref_logps) -> [..., T]` (TRL / OpenRLHF `kl_estimator`)."""


def _entropy_rows(logits):
    logits = as_float(logits)
    logz = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    logp = logits - logz
    # -inf logits (masked vocabulary) contribute 0 log 0 = 0; the inner `where` keeps the
    # backward pass free of 0 x inf.
    finite = jnp.isfinite(logp)
    safe = jnp.where(finite, logp, 0.0)
    return -jnp.sum(jnp.where(finite, jnp.exp(safe) * safe, 0.0), axis=-1)


def entropy_from_logits(logits, *, chunk_size: int = 128) -> jax.Array:
    """Shannon entropy (nats) of softmax(logits) per row, computed `chunk_size` rows at a time.

    Mirrors TRL's `entropy_from_logits`: the rows (every leading position) are flattened and
    processed in chunks with `jax.lax.map`, each chunk rematerialised in the backward pass, so
    only one float32 `[chunk_size, V]` softmax exists at a time.

    Args:
      logits: `[..., V]` (e.g. `[B, T, V]`), any float dtype (computed in >= float32).
      chunk_size: rows per chunk.
    Returns: `[...]` entropy per row.
    """
    logits = jnp.asarray(logits)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    rows = logits.reshape(-1, vocab)
    n = rows.shape[0]
    chunk = max(1, min(chunk_size, n))
    num_chunks = -(-n // chunk)
    # Pad to whole chunks with zero logits (uniform rows); the padded outputs are dropped.
    rows = jnp.pad(rows, ((0, num_chunks * chunk - n), (0, 0)))
    out = jax.lax.map(jax.checkpoint(_entropy_rows), rows.reshape(num_chunks, chunk, vocab))
    return out.reshape(-1)[:n].reshape(lead)
