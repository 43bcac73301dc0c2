"""Heads on top of the final hidden states: value (PPO critic), reward, multi-action LM heads.

The heads take `Transformer.hidden_states(...)` output, so one trunk forward serves the LM,
the critic and the reward score. Shapes: B batch, S sequence, E hidden, V vocab, H heads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.config import ModelConfig
from alignax.models.layers import const_param, normal_param, param
from alignax.models.logprobs import token_logps
from alignax.models.precision import matmul_precision


class ValueHead(nnx.Module):
    """Scalar value per token, V(s_t) = h_t . w + b (the PPO critic head)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, std: float = 0.02):
        self.weight = normal_param(rngs, (config.hidden_size,), ("embed",), config, std)
        self.bias = const_param((), (), config, 0.0)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """`[B, S, E]` hidden -> `[B, S]` float32 values."""
        w = self.weight[...].astype(hidden.dtype)
        out = jnp.einsum("bse,e->bs", hidden, w, preferred_element_type=jnp.float32,
                         precision=matmul_precision(hidden.dtype))
        return out + self.bias[...].astype(jnp.float32)


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index `[B]` of each row's last real token (works for left and right padding)."""
    s = attention_mask.shape[-1]
    idx = jnp.arange(s, dtype=jnp.int32)
    return jnp.max(jnp.where(attention_mask.astype(bool), idx, -1), axis=-1).clip(0)


class RewardHead(nnx.Module):
    """Bradley-Terry reward model head: the linear score of the last real token."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, std: float = 0.02):
        self.value = ValueHead(config, rngs=rngs, std=std)

    def __call__(self, hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """`[B, S, E]` hidden, `[B, S]` mask -> `[B]` float32 rewards."""
        idx = last_token_index(attention_mask)
        last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)  # [B, 1, E]
        return self.value(last)[:, 0]


def mix_heads(head_weights: jax.Array, weights: jax.Array) -> jax.Array:
    """`[E, V]` float32 head `sum_k w_k W_k`, `w` normalised to sum 1 (MAH-DPO mixing).

    The reference `generate_ensemble(head_weights)` mixes the heads' **raw logits** (not their
    probabilities); logits are linear in the head weights, so the mixture is one head and
    decoding costs one head, whatever H. Elementwise products and a sum, not a matmul: a
    one-hot `w` gives `W_k` bit for bit on every backend (a TPU/GPU matmul at default
    precision would round `W_k` to bfloat16).

    Args:
      head_weights: `[H, E, V]`. weights: `[H]` non-negative mixing weights.
    """
    w = jnp.asarray(weights, jnp.float32)
    w = w / jnp.sum(w)
    return jnp.sum(w[:, None, None] * head_weights.astype(jnp.float32), axis=0)


def check_head_weights(weights, num_heads: int, *, field: str = "head weights") -> np.ndarray:
    """Host-side check of user mixing weights: `[H]` (or `[K, H]`), >= 0, each sums > 0.

    Raises:
      ValueError naming `field` otherwise.
    Returns:
      the weights as float32, normalised to sum 1 per vector.
    """
    w = np.asarray(weights, np.float32)
    if w.ndim not in (1, 2) or w.shape[-1] != num_heads:
        raise ValueError(f"{field}: expected {num_heads} weights (one per head), got shape "
                         f"{tuple(w.shape)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w.sum(-1) <= 0):
        raise ValueError(f"{field}: weights must be finite, >= 0 and not all 0, got "
                         f"{w.tolist()}")
    return w / w.sum(-1, keepdims=True)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _noisy_copies(base, key, noise_std, num_heads, dtype):
    base = base.astype(jnp.float32)
    noise = noise_std * jax.random.normal(key, (num_heads, *base.shape), jnp.float32)
    return (base[None] + noise).astype(dtype)


class MultiLMHead(nnx.Module):
    """H action LM heads `[H, E, V]` sharing one trunk (MAH-DPO).

    Each head starts as the base LM head plus N(0, noise_std^2) noise so the heads can
    specialise; the reference model keeps the unperturbed base head.
    """

    def __init__(self, base_weight: jax.Array, num_heads: int, *, rngs: nnx.Rngs,
                 noise_std: float = 1e-3, param_dtype=None):
        dtype = jnp.dtype(param_dtype or base_weight.dtype)
        weight = _noisy_copies(base_weight, rngs.params(), noise_std, num_heads, dtype)
        self.weight = param(weight, (None, "embed", "vocab"))

    @property
    def num_heads(self) -> int:
        return self.weight.get_value().shape[0]

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """`[B, S, E]` hidden -> `[H, B, S, V]` float32 logits (small shapes only)."""
        w = self.weight[...].astype(hidden.dtype)
        return jnp.einsum("bse,hev->hbsv", hidden, w, preferred_element_type=jnp.float32,
                          precision=matmul_precision(hidden.dtype))


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def multi_head_token_logps(hidden, head_weights, targets, mask=None, *, chunk_size: int = 128,
                           temperature: float = 1.0) -> jax.Array:
    """Chunked per-token log-probs under each of H heads.

    Args:
      hidden: `[B, T, E]` shared trunk states; head_weights: `[H, E, V]`.
      targets, mask: `[B, T]`.
    Returns:
      `[H, B, T]` float32 log-probs (0 where masked), as the MAH-DPO losses take them.
    """
    fn = lambda w: token_logps(hidden, w, targets, mask, chunk_size=chunk_size,
                               temperature=temperature)
    return jax.lax.map(fn, head_weights)
