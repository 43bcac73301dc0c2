"""Chunked token log-probabilities, entropies and log sum p^2 from hidden states.

The float32 logits `[B, T, V]` never exist: a `jax.lax.scan` walks the sequence in chunks of
`chunk_size` tokens, each chunk's logits `[B, C, V]` are built, reduced to per-token numbers
and dropped; the scan body is checkpointed so the backward pass rebuilds one chunk at a time
as well. Peak temporary memory is O(B * C * V) instead of O(B * T * V).

Convention: `hidden[..., t, :]` is the state that predicts `targets[..., t]` (the caller
shifts by one). `lm_head_weight` is `[E, V]` (`Transformer.lm_head_weight()`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunk_stats(h, w, y, inv_temp, want):
    """Per-token statistics of one chunk: h `[B, C, E]`, y `[B, C]` -> dict of `[B, C]`."""
    logits = jnp.einsum("bce,ev->bcv", h, w, preferred_element_type=jnp.float32) * inv_temp
    lse = jax.nn.logsumexp(logits, axis=-1)
    out = {}
    if "logps" in want:
        out["logps"] = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - lse
    if "entropy" in want:
        # H = lse - sum_v p_v z_v, with p from the same logits (no separate log-softmax tensor).
        p = jnp.exp(logits - lse[..., None])
        out["entropy"] = lse - jnp.sum(p * logits, axis=-1)
    if "log_sum_sq_probs" in want:
        # log sum_v p_v^2 = logsumexp(2 z) - 2 lse, stable for peaked distributions.
        out["log_sum_sq_probs"] = jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * lse
    return out


def _token_stats(hidden, w, targets, inv_temp, want: tuple[str, ...], chunk_size: int):
    *lead, t, e = hidden.shape
    h = hidden.reshape(-1, t, e)
    b = h.shape[0]
    y = (jnp.zeros((b, t), jnp.int32) if targets is None
         else jnp.clip(targets.reshape(b, t), 0, w.shape[-1] - 1).astype(jnp.int32))
    w = w.astype(h.dtype)
    c = max(1, min(chunk_size, t))
    n = -(-t // c)
    pad = n * c - t
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        y = jnp.pad(y, ((0, 0), (0, pad)))
    hs = h.reshape(b, n, c, e).swapaxes(0, 1)  # [n, B, C, E]
    ys = y.reshape(b, n, c).swapaxes(0, 1)

    # Checkpointed body: the backward pass recomputes each chunk's logits instead of storing
    # them, which is what keeps [B, T, V] out of the gradient as well.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def body(carry, xs):
        return carry, _chunk_stats(xs[0], w, xs[1], inv_temp, want)

    _, outs = jax.lax.scan(body, None, (hs, ys))
    return {k: v.swapaxes(0, 1).reshape(b, n * c)[:, :t].reshape(*lead, t)
            for k, v in outs.items()}


def _masked(x, mask):
    return x if mask is None else x * mask.astype(x.dtype)


_STATIC = ("chunk_size",)


@functools.partial(jax.jit, static_argnames=_STATIC)
def token_logps(hidden, lm_head_weight, targets, mask=None, *, chunk_size: int = 128,
                temperature: float = 1.0) -> jax.Array:
    """log pi(y_t | x, y_<t) per token, in chunks (no `[B, T, V]` float32 logits).

    Args:
      hidden: `[..., T, E]` final hidden states; position t predicts `targets[..., t]`.
      lm_head_weight: `[E, V]` output projection.
      targets: `[..., T]` int token ids.
      mask: `[..., T]` 1 = count this token; None = all.
      chunk_size: tokens per chunk C (temporary memory ~ B * C * V floats).
      temperature: logits are divided by it (sampling-consistent log-probs).
    Returns:
      `[..., T]` float32 log-probs, 0 where `mask` is 0.
    """
    out = _token_stats(hidden, lm_head_weight, targets, 1.0 / temperature, ("logps",),
                       chunk_size)
    return _masked(out["logps"], mask)


@functools.partial(jax.jit, static_argnames=_STATIC + ("average",))
def sequence_logps(hidden, lm_head_weight, targets, mask, *, average: bool = False,
                   chunk_size: int = 128, temperature: float = 1.0) -> jax.Array:
    """Summed (or, with `average=True`, length-normalised) log pi(y | x) per sequence.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; targets, mask: `[..., T]`.
      average: divide by the number of masked-in tokens (SimPO / IPO length normalisation).
    Returns:
      `[...]` float32 sequence log-probs.
    """
    logps = token_logps(hidden, lm_head_weight, targets, mask, chunk_size=chunk_size,
                        temperature=temperature)
    total = jnp.sum(logps, axis=-1)
    if average:
        total = total / jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1), 1.0)
    return total


@functools.partial(jax.jit, static_argnames=_STATIC)
def token_entropy(hidden, lm_head_weight, mask=None, *, chunk_size: int = 128,
                  temperature: float = 1.0) -> jax.Array:
    """Entropy -sum_v p_v log p_v of the next-token distribution, in chunks.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; mask: `[..., T]` or None.
    Returns:
      `[..., T]` float32 entropies (nats), 0 where `mask` is 0.
    """
    out = _token_stats(hidden, lm_head_weight, None, 1.0 / temperature, ("entropy",),
                       chunk_size)
    return _masked(out["entropy"], mask)


@functools.partial(jax.jit, static_argnames=_STATIC)
def log_sum_sq_probs(hidden, lm_head_weight, mask=None, *, chunk_size: int = 128,
                     temperature: float = 1.0) -> jax.Array:
    """log sum_v p_v^2 per token (the normaliser of WPO weights, Zhou et al. 2024), in chunks.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; mask: `[..., T]` or None.
    Returns:
      `[..., T]` float32, 0 where `mask` is 0.
    """
    out = _token_stats(hidden, lm_head_weight, None, 1.0 / temperature,
                       ("log_sum_sq_probs",), chunk_size)
    return _masked(out["log_sum_sq_probs"], mask)


@functools.partial(jax.jit, static_argnames=_STATIC + ("entropy", "sum_sq"))
def token_stats(hidden, lm_head_weight, targets, mask=None, *, entropy: bool = True,
                sum_sq: bool = False, chunk_size: int = 128,
                temperature: float = 1.0) -> dict[str, jax.Array]:
    """Log-probs and, from the same chunked logits, entropy and log sum p^2 in one pass.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; targets, mask: `[..., T]`.
      entropy / sum_sq: also return "entropy" / "log_sum_sq_probs".
    Returns:
      dict with "logps" (and the requested extras), each `[..., T]`, 0 where `mask` is 0.
    """
    want = ("logps",) + (("entropy",) if entropy else ()) + (
        ("log_sum_sq_probs",) if sum_sq else ())
    out = _token_stats(hidden, lm_head_weight, targets, 1.0 / temperature, want, chunk_size)
    return {k: _masked(v, mask) for k, v in out.items()}
