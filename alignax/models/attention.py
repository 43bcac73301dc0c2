"""Rotary embeddings, attention masks and grouped-query attention.

Attention runs through `jax.nn.dot_product_attention`: XLA on CPU/TPU, cuDNN flash attention
on GPU when the dtype and shapes allow (`attention_impl="auto"`). A plain causal forward passes
`is_causal=True` and no mask (the flash-friendly case); padding, packed segments, sliding
windows and KV-cache steps pass an explicit boolean mask `[B, 1, T, S]`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.config import ModelConfig
from alignax.models.layers import RMSNorm, const_param, normal_param
from alignax.models.lora import lora_project
from alignax.sharding import constrain, mesh_axis_size

# ---------------------------------------------------------------------------------- RoPE


def rope_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
    """Inverse RoPE frequencies `[D/2]` (float32) and the cos/sin scale, as HF computes them.

    Supports rope_type "default", "linear", "llama3" (Llama 3.1) and "yarn" (Peng et al. 2023).
    """
    dim, base = config.head_dim, config.rope_theta
    scaling = config.rope_scaling_dict
    kind = scaling.get("rope_type", "default")
    # HF builds the exponent in float32 from int64 aranges; mirror it to match bit for bit.
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    pos_freqs = np.power(np.float32(base), exponent, dtype=np.float32)
    inv_freq = (np.float32(1.0) / pos_freqs).astype(np.float32)
    if kind == "default":
        return inv_freq, 1.0
    factor = float(scaling["factor"]) if scaling.get("factor") is not None else None
    if kind == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32), 1.0
    old_len = scaling["original_max_position_embeddings"]
    if kind == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn
    if factor is None:
        factor = config.max_position_embeddings / old_len
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        get = lambda s, m=1.0: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
        attention_factor = (get(factor, mscale) / get(factor, mscale_all)
                            if mscale and mscale_all else get(factor))
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    corr = lambda rot: (dim * math.log(old_len / (rot * 2 * math.pi))) / (2 * math.log(base))
    lo, hi = corr(beta_fast), corr(beta_slow)
    if scaling.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1)
    extrapolation = (1 - ramp).astype(np.float32)
    interpolation = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv = interpolation * (1 - extrapolation) + inv_freq * extrapolation
    return inv.astype(np.float32), float(attention_factor)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq, scale: float = 1.0) -> jax.Array:
    """Rotates `x` by its positions (HF "rotate_half" layout: pairs (i, i + D/2)).

    Args:
      x: `[B, T, N, D]` queries or keys.
      positions: `[B, T]` integer position ids.
      inv_freq: `[D/2]` inverse frequencies from `rope_frequencies`.
      scale: cos/sin multiplier (yarn attention factor; 1 otherwise).
    Returns: `[B, T, N, D]` in x's dtype (the rotation itself runs in float32).
    """
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D/2]
    cos = (jnp.cos(freqs) * scale)[:, :, None, :]
    sin = (jnp.sin(freqs) * scale)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# --------------------------------------------------------------------------------- masks


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position ids `[B, S]` that count only real tokens (left padding starts at 0).

    Equal to `arange(S)` on the real tokens of right-padded rows; padding gets 0.
    """
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Position ids `[B, S]` restarting at 0 at every segment boundary (packed rows)."""
    idx = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[..., :-1]],
        axis=-1)
    first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=segment_ids.ndim - 1)
    return idx - first


def make_mask(q_slots: jax.Array, kv_valid: jax.Array, *, q_segments=None, kv_segments=None,
              window: int | None = None) -> jax.Array:
    """Boolean attention mask `[B, 1, T, S]` (True = attend).

    Args:
      q_slots: `[T]` slot index of each query in the key sequence (causality: key slot <= it).
      kv_valid: `[B, S]` key slot holds a real token.
      q_segments / kv_segments: `[B, T]` / `[B, S]` packed-sequence ids; attend within a segment.
      window: sliding window W, a query sees keys with slot > q_slot - W; None = unlimited.
    """
    k_slots = jnp.arange(kv_valid.shape[-1], dtype=jnp.int32)
    allowed = k_slots[None, :] <= q_slots[:, None]  # [T, S]
    if window is not None:
        allowed &= k_slots[None, :] > q_slots[:, None] - window
    mask = allowed[None] & kv_valid[:, None, :].astype(bool)  # [B, T, S]
    if q_segments is not None:
        mask &= q_segments[:, :, None] == kv_segments[:, None, :]
    return mask[:, None]


def _attend(q, k, v, mask, *, impl: str):
    """`jax.nn.dot_product_attention` with the implementation picked per `impl`."""
    causal = mask is None
    if impl == "auto":
        if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
            try:  # cuDNN validates shapes/dtypes while tracing; fall back to XLA if refused.
                return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                                    implementation="cudnn")
            except (NotImplementedError, ValueError, RuntimeError):
                pass
        impl = "xla"
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                        implementation=impl)


class SharedPromptKV(NamedTuple):
    """One layer's decode cache with the prompt stored once per prompt, shared by its G rows.

    Rows are prompt-major (row r samples prompt r // G). With it, `Attention` takes `mask` =
    `(prompt_valid [B, P], valid [R, N])` and writes the step's key / value at `cache_index`
    of the generated part. Memory: B x P + R x N slots instead of R x (P + N).

    Attributes:
      prompt_k, prompt_v: `[B, P, K, D]` the prefilled prompt.
      k, v: `[R, N, K, D]` the generated tokens' keys and values.
    """

    prompt_k: jax.Array
    prompt_v: jax.Array
    k: jax.Array
    v: jax.Array


def _attend_shared(q, cache: SharedPromptKV, prompt_valid, valid):
    """Attention of one query per row over its prompt's shared keys and its own generated keys:
    the softmax runs over both parts at once (the prompt's keys are never repeated G times).
    Same computation as XLA's `dot_product_attention` on the concatenated keys: float32
    scores, scaled by 1 / sqrt(D), masked, softmax, probabilities in the values' dtype."""
    r, t, n, d = q.shape
    b, _, k, _ = cache.prompt_k.shape
    g, rep = r // b, n // k
    qg = q.reshape(b, g, t, k, rep, d)
    dt = cache.k.dtype
    w = valid.shape[-1]  # narrower than the cache in ragged decode: later slots are empty
    cache = cache._replace(k=cache.k[:, :w], v=cache.v[:, :w])
    scale = 1.0 / math.sqrt(d)
    s_prompt = jnp.einsum("bgtkrd,bpkd->bgkrtp", qg, cache.prompt_k.astype(q.dtype),
                          preferred_element_type=jnp.float32) * scale
    s_own = jnp.einsum("bgtkrd,bgskd->bgkrts", qg,
                       cache.k.astype(q.dtype).reshape(b, g, *cache.k.shape[1:]),
                       preferred_element_type=jnp.float32) * scale
    big_neg = jnp.finfo(jnp.float32).min
    s_prompt = jnp.where(prompt_valid[:, None, None, None, None, :], s_prompt, big_neg)
    s_own = jnp.where(valid.reshape(b, g, 1, 1, 1, -1), s_own, big_neg)
    probs = jax.nn.softmax(jnp.concatenate([s_prompt, s_own], axis=-1), axis=-1).astype(dt)
    p = cache.prompt_k.shape[1]
    out = (jnp.einsum("bgkrtp,bpkd->bgtkrd", probs[..., :p], cache.prompt_v.astype(dt))
           + jnp.einsum("bgkrts,bgskd->bgtkrd", probs[..., p:],
                        cache.v.reshape(b, g, *cache.v.shape[1:])))
    return out.reshape(r, t, n, d).astype(q.dtype)


# ----------------------------------------------------------------------------- attention


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE, optional q/k/v/o biases and q/k RMSNorm.

    Weights are kept per head: q `[E, N, D]`, k/v `[E, K, D]`, o `[N, D, E]`.
    """

    # LoRA-adaptable weights: name -> (input dims, output dims) of the per-layer weight.
    LORA_TARGETS = {"q_proj": (1, 2), "k_proj": (1, 2), "v_proj": (1, 2), "o_proj": (2, 1)}

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        e, n, k, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config
        self.q_proj = normal_param(rngs, (e, n, d), ("embed", "heads", "head_dim"), config)
        self.k_proj = normal_param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), config)
        self.v_proj = normal_param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), config)
        self.o_proj = normal_param(rngs, (n, d, e), ("heads", "head_dim", "embed"), config)
        if config.qkv_bias:
            self.q_bias = const_param((n, d), ("heads", "head_dim"), config, 0.0)
            self.k_bias = const_param((k, d), ("kv_heads", "head_dim"), config, 0.0)
            self.v_bias = const_param((k, d), ("kv_heads", "head_dim"), config, 0.0)
        if config.o_bias:
            self.o_bias = const_param((e,), ("embed",), config, 0.0)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config, names=("head_dim",))
            self.k_norm = RMSNorm(d, config, names=("head_dim",))

    def __call__(self, x, positions, mask, *, kv_cache=None, cache_index=None,
                 dropout_rng=None):
        """Attends `x` to itself (and to the cached keys, if any).

        Args:
          x: `[B, T, E]` normed hidden states in the compute dtype.
          positions: `[B, T]` RoPE position ids.
          mask: `[B, 1, T, S]` bool, or None for plain causal attention without a cache.
          kv_cache: None, `(k, v)` each `[B, S, K, D]` for this layer, or a `SharedPromptKV`
            (then `mask` is its `(prompt_valid, valid)` pair).
          cache_index: `[]` int32 slot where this call's T tokens are written, or `[B]` one
            slot per row (T = 1; an out-of-range slot writes nothing).
          dropout_rng: key of the LoRA adapters' input dropout (see `lora.py`), or None.
        Returns:
          `([B, T, E], new_kv_cache or None)`.
        """
        cfg, dt = self.config, self.config.compute_dtype
        rng = dropout_rng
        q = jnp.einsum("bte,end->btnd", x, self.q_proj[...].astype(dt))
        k = jnp.einsum("bte,ekd->btkd", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("bte,ekd->btkd", x, self.v_proj[...].astype(dt))
        q = lora_project(self, "q_proj", x, q, rng)
        k = lora_project(self, "k_proj", x, k, rng)
        v = lora_project(self, "v_proj", x, v, rng)
        if cfg.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq, scale = rope_frequencies(cfg)
        q = apply_rope(q, positions, inv_freq, scale)
        k = apply_rope(k, positions, inv_freq, scale)
        impl = cfg.attention_impl
        if kv_cache is None and mesh_axis_size("sequence") > 1:
            # Context parallelism: queries stay split along the sequence, keys and values are
            # gathered whole (all-gather attention; each device scores its queries against
            # every key, the causal mask cutting what it must not see).
            q = constrain(q, ("batch", "seq", "heads", "head_dim"))
            k = constrain(k, ("batch", None, "kv_heads", "head_dim"))
            v = constrain(v, ("batch", None, "kv_heads", "head_dim"))
        new_cache = None
        if isinstance(kv_cache, SharedPromptKV):
            start = (0, cache_index, 0, 0)
            new_cache = kv_cache._replace(
                k=jax.lax.dynamic_update_slice(kv_cache.k, k.astype(kv_cache.k.dtype), start),
                v=jax.lax.dynamic_update_slice(kv_cache.v, v.astype(kv_cache.v.dtype), start))
            out = _attend_shared(q, new_cache, *mask)
        elif kv_cache is not None:
            k_cache, v_cache = kv_cache
            if jnp.ndim(cache_index) == 1:  # a slot per row (continuous batching), T == 1
                rows = jnp.arange(k.shape[0])
                k_cache = k_cache.at[rows, cache_index].set(k[:, 0].astype(k_cache.dtype),
                                                            mode="drop")
                v_cache = v_cache.at[rows, cache_index].set(v[:, 0].astype(v_cache.dtype),
                                                            mode="drop")
            else:
                start = (0, cache_index, 0, 0)
                k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
                v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
            new_cache = (k_cache, v_cache)
            # A mask narrower than the cache (ragged decode): the slots past it are empty.
            width = k_cache.shape[1] if mask is None else min(mask.shape[-1], k_cache.shape[1])
            k, v = k_cache[:, :width].astype(dt), v_cache[:, :width].astype(dt)
            impl = "xla" if impl == "auto" else impl  # short query blocks: XLA is fine
        if not isinstance(kv_cache, SharedPromptKV):
            out = _attend(q, k, v, mask, impl=impl)  # [B, T, N, D]
        out = lora_project(self, "o_proj", out,
                           jnp.einsum("btnd,nde->bte", out, self.o_proj[...].astype(dt)), rng)
        if cfg.o_bias:
            out = out + self.o_bias[...].astype(dt)
        return out, new_cache
