"""Decoder-only transformer (Llama / Qwen2 / Qwen3 / Mistral) in Flax NNX.

Layers are created stacked (one `nnx.vmap`ed init; every layer parameter has a leading `layers`
axis) and run with one `jax.lax.scan`, so compile time does not grow with depth. Each layer is
optionally rematerialised (`config.remat`). Parameters are stored in `config.param_dtype` and
cast to `config.dtype` where used.

Shapes: B batch, S sequence (T tokens appended to a KV cache), E hidden, V vocab, L layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from alignax.models import lora
from alignax.models.attention import (
    Attention,
    make_mask,
    positions_from_mask,
    positions_from_segments,
)
from alignax.models.cache import KVCache
from alignax.models.config import ModelConfig
from alignax.models.layers import MLP, RMSNorm, normal_param
from alignax.models.lora import LORA_OUT
from alignax.models.precision import matmul_precision, precision_scope
from alignax.sharding import constrain

# Hidden states stay split over the batch (every data-parallel axis, FSDP's included) between
# layers: left to itself, XLA's propagation may follow the FSDP-sharded weights instead and
# keep every row on every device (measured: 8x the activation memory of a 1 x 8 FSDP step).
_ACTIVATION = ("batch", "seq", "embed")

_REMAT = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    # Keep the weight matmuls' outputs; an adapted projection keeps its sum `x W + LoRA(x)`
    # (`lora.LORA_OUT`) instead of both matmul outputs.
    "save_dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(LORA_OUT)),
}


class DecoderLayer(nnx.Module):
    """Pre-norm block: h + attn(norm(h)), then h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(config.hidden_size, config)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, h, positions, mask, kv_cache=None, cache_index=None, *,
                 dropout_rng=None):
        """`[B, T, E]` -> (`[B, T, E]`, new per-layer kv cache or None).

        `dropout_rng`: this layer's LoRA-dropout key (split between attention and MLP), or None.
        float32 activations run every matmul at float32 precision (no TF32: precision.py).
        """
        attn_rng = mlp_rng = None
        if dropout_rng is not None:
            attn_rng, mlp_rng = jax.random.split(dropout_rng)
        with precision_scope(h.dtype):
            a, kv_cache = self.attn(self.input_norm(h), positions, mask, kv_cache=kv_cache,
                                    cache_index=cache_index, dropout_rng=attn_rng)
            h = h + a
            return h + self.mlp(self.post_attn_norm(h), mlp_rng), kv_cache


class Transformer(nnx.Module):
    """Causal LM. `model(input_ids, attention_mask)` returns float32 logits `[B, S, V]`.

    For training, prefer `model.hidden_states(...)` + `logprobs.token_logps(hidden,
    model.lm_head_weight(), ...)`: the chunked log-probs never build `[B, S, V]`.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        v, e = config.vocab_size, config.hidden_size
        self.embed = normal_param(rngs, (v, e), ("vocab", "embed"), config)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return DecoderLayer(config, rngs=rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(e, config)
        if not config.tie_word_embeddings:
            self.lm_head = normal_param(rngs, (e, v), ("embed", "vocab"), config)

    # ---------------------------------------------------------------------------- heads
    def lm_head_weight(self) -> jax.Array:
        """`[E, V]` output projection (the transposed embedding when tied)."""
        if self.config.tie_word_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """`[B, S, E]` final hidden states -> float32 logits `[B, S, V]`."""
        w = self.lm_head_weight().astype(hidden.dtype)
        return jnp.einsum("bse,ev->bsv", hidden, w, preferred_element_type=jnp.float32,
                          precision=matmul_precision(hidden.dtype))

    def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None,
                 dropout_rng=None):
        """Full forward pass.

        Args:
          input_ids: `[B, S]` int token ids.
          attention_mask: `[B, S]` 1 = real token, 0 = padding (either side); None = all real.
          positions: `[B, S]` RoPE position ids; default counts real tokens (so equals
            `arange(S)` on right-padded rows) or restarts per segment when `segment_ids` given.
          segment_ids: `[B, S]` packed-sequence ids; tokens attend only within their segment.
          dropout_rng: a PRNG key for the dropout of LoRA adapters (`lora.py`); None (the
            default) = no dropout. Unused without adapters.
        Returns:
          `[B, S, V]` float32 logits.
        """
        hidden, _ = self.hidden_states(input_ids, attention_mask, positions=positions,
                                       segment_ids=segment_ids, dropout_rng=dropout_rng)
        return self.logits(hidden)

    # ---------------------------------------------------------------------------- trunk
    def hidden_states(self, input_ids, attention_mask=None, *, positions=None,
                      segment_ids=None, cache: KVCache | None = None, dropout_rng=None):
        """Final (normed) hidden states, optionally appending to a KV cache.

        Args:
          input_ids: `[B, T]` token ids.
          attention_mask: `[B, T]` 1 = real token; None = all real.
          positions: `[B, T]` RoPE positions; defaults as in `__call__`, or continue from
            `cache.next_position` when a cache is given.
          segment_ids: `[B, T]` packed-sequence ids (not with a cache).
          cache: None for a plain forward, else the cache the T tokens are appended to.
          dropout_rng: LoRA-dropout key (split per layer), or None = no dropout.
        Returns:
          (`[B, T, E]` hidden states in the compute dtype, updated cache or None).
        """
        cfg = self.config
        b, t = input_ids.shape
        h = jnp.take(self.embed[...], input_ids, axis=0).astype(cfg.compute_dtype)
        h = constrain(h, _ACTIVATION)
        window = cfg.sliding_window if cfg.uses_window else None
        if cache is None:
            q_slots = jnp.arange(t, dtype=jnp.int32)
            if positions is None:
                if segment_ids is not None:
                    positions = positions_from_segments(segment_ids)
                elif attention_mask is not None:
                    positions = positions_from_mask(attention_mask)
                else:
                    positions = jnp.broadcast_to(q_slots, (b, t))
            kv_valid = (jnp.ones((b, t), bool) if attention_mask is None
                        else attention_mask.astype(bool))
            mask = None
            if attention_mask is not None or segment_ids is not None or window is not None:
                mask = make_mask(q_slots, kv_valid, q_segments=segment_ids,
                                 kv_segments=segment_ids)
            kv, cache_index = None, None
        else:
            if segment_ids is not None:
                raise ValueError("segment_ids are not supported with a KV cache")
            real = (jnp.ones((b, t), jnp.int32) if attention_mask is None
                    else attention_mask.astype(jnp.int32))
            if positions is None:
                positions = cache.next_position[:, None] + jnp.maximum(
                    jnp.cumsum(real, axis=-1) - 1, 0)
            cache_index = cache.index
            kv_valid = jax.lax.dynamic_update_slice(cache.valid, real.astype(bool),
                                                    (0, cache_index))
            q_slots = cache_index + jnp.arange(t, dtype=jnp.int32)
            mask = make_mask(q_slots, kv_valid)
            kv = (cache.k, cache.v)
        window_mask = None
        if window is not None:
            segs = segment_ids if cache is None else None
            window_mask = make_mask(q_slots, kv_valid, q_segments=segs, kv_segments=segs,
                                    window=window)
            if cfg.sliding_layers is None:  # every layer slides (Mistral): one mask
                mask, window_mask = window_mask, None
        if dropout_rng is not None and not lora.uses_dropout(self):
            dropout_rng = None  # no adapter drops anything: the plain program
        h, kv = self._scan_layers(h, positions, mask, window_mask, kv, cache_index,
                                  dropout_rng)
        h = self.norm(h)
        if cache is not None:
            cache = KVCache(k=kv[0], v=kv[1], valid=kv_valid, index=cache.index + t,
                            next_position=cache.next_position + jnp.sum(real, axis=-1))
        return h, cache

    def _scan_layers(self, h, positions, mask, window_mask, kv, cache_index, dropout_rng=None):
        cfg = self.config
        graphdef, state = nnx.split(self.layers)
        sliding = jnp.asarray(cfg.sliding_layers or (True,) * cfg.num_layers)
        # One dropout key per layer, scanned like the weights (explicit state: remat replays
        # the same masks).
        keys = None if dropout_rng is None else jax.random.split(dropout_rng, cfg.num_layers)

        def body(h, xs):
            layer_state, layer_kv, slide, key = xs
            layer = nnx.merge(graphdef, layer_state)
            layer_mask = mask
            if window_mask is not None:
                layer_mask = jnp.where(slide, window_mask, mask)
            h, layer_kv = layer(h, positions, layer_mask, layer_kv, cache_index, dropout_rng=key)
            return constrain(h, _ACTIVATION), layer_kv

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT[cfg.remat], prevent_cse=False)
        return jax.lax.scan(body, h, (state, kv, sliding, keys))


def logical_axes(model_or_state) -> nnx.State:
    """Logical axis names of every parameter, as `PartitionSpec`s of logical names.

    Args:
      model_or_state: a `Transformer` (or any NNX module / `nnx.State` built here).
    Returns:
      An `nnx.State` shaped like `nnx.state(model, nnx.Param)` whose leaves are
      `PartitionSpec(*names)`, e.g. `P('layers', 'embed', 'mlp')`; a sharding rules table
      maps each name to mesh axes.
    """
    state = model_or_state
    if isinstance(model_or_state, nnx.Module):
        state = nnx.state(model_or_state, nnx.Param)

    def names(v):
        meta = v.get_metadata()
        axes = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
        return PartitionSpec(*(axes or (None,) * len(v.get_value().shape)))

    return jax.tree.map(names, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@nnx.jit
def forward(model: Transformer, input_ids, attention_mask=None, positions=None,
            segment_ids=None) -> jax.Array:
    """Jitted `model(input_ids, attention_mask, ...)`: float32 logits `[B, S, V]`."""
    return model(input_ids, attention_mask, positions=positions, segment_ids=segment_ids)



def init_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised `Transformer` for tests, demos and from-scratch runs.

    Same initialisers as `Transformer(config, rngs=...)` (N(0, 0.02^2) matrices, unit norms,
    zero biases) but drawn with numpy on the host: eager NNX construction dispatches, and on
    first use compiles, every initializer op one by one, which dominates small test suites.

    Args:
      config: the model config.
      seed: numpy seed.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(v):
        meta, shape = v.get_metadata(), v.get_value().shape
        if "init_std" in meta:
            value = meta["init_std"] * rng.standard_normal(shape, dtype=np.float32)
        else:
            value = np.full(shape, meta.get("init_value", 0.0), np.float32)
        return v.replace(jnp.asarray(value, config.weight_dtype))

    state = jax.tree.map(fill, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)
