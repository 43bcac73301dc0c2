"""Jitted incremental decoding with a preallocated KV cache.

Prompts are left-padded (`attention_mask` 0 on the left) so every row's last prompt token sits
in the same slot; positions count real tokens only, so a left-padded row is computed exactly as
the same prompt without padding. Typical use:

    cache = init_cache(model.config, batch_size=B, max_length=P + N)
    logits, cache = prefill(model, prompt_ids, prompt_mask, cache)      # [B, V]
    for _ in range(N):
        tokens = pick(logits)                                           # [B]
        logits, cache = decode_step(model, tokens, cache)

The matching full forward is `model(ids, mask)` on the concatenated sequence (its default
positions also count real tokens only).
"""

from __future__ import annotations

import jax
from flax import nnx

from alignax.models.cache import KVCache, init_cache
from alignax.models.transformer import Transformer

__all__ = ["KVCache", "init_cache", "extend", "prefill", "decode_step"]


@nnx.jit(donate_argnames="cache")
def extend(model: Transformer, input_ids, attention_mask, cache: KVCache):
    """Appends T tokens to the cache and returns the logits at every appended slot.

    Args:
      model: the model.
      input_ids: `[B, T]` tokens.
      attention_mask: `[B, T]` 1 = real token (left padding of a prompt is 0), or None.
      cache: the cache (donated), with at least T free slots.
    Returns:
      (`[B, T, V]` float32 logits, updated cache).
    """
    hidden, cache = model.hidden_states(input_ids, attention_mask, cache=cache)
    return model.logits(hidden), cache


@nnx.jit(donate_argnames="cache")
def prefill(model: Transformer, input_ids, attention_mask, cache: KVCache):
    """Writes a left-padded prompt into the cache.

    Args:
      input_ids: `[B, P]` prompts, left-padded.
      attention_mask: `[B, P]` 1 = real token.
      cache: an empty cache (donated).
    Returns:
      (`[B, V]` float32 logits of the next token, updated cache).
    """
    hidden, cache = model.hidden_states(input_ids, attention_mask, cache=cache)
    return model.logits(hidden[:, -1:])[:, 0], cache


@nnx.jit(donate_argnames="cache")
def decode_step(model: Transformer, tokens: jax.Array, cache: KVCache):
    """Feeds one token per row.

    Args:
      tokens: `[B]` the tokens just chosen.
      cache: the cache (donated).
    Returns:
      (`[B, V]` float32 logits of the following token, updated cache).
    """
    hidden, cache = model.hidden_states(tokens[:, None], None, cache=cache)
    return model.logits(hidden)[:, 0], cache
