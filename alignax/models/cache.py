"""Preallocated key/value cache for incremental decoding.

The cache holds every layer's keys and values in slots `[0, S_max)`. A call that appends T
tokens writes them at slots `[index, index + T)`; `valid` remembers which slots hold real
tokens (left padding of a prompt stays invalid forever), and `next_position` is each row's next
RoPE position, so left-padded rows count positions from their first real token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from alignax.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Decoding state (a pytree: jit it, donate it).

    Attributes:
      k: `[L, B, S_max, K, D]` cached keys (after RoPE).
      v: `[L, B, S_max, K, D]` cached values.
      valid: `[B, S_max]` bool, slot holds a real token.
      index: `[]` int32, next free slot (shared by the batch).
      next_position: `[B]` int32, RoPE position of each row's next token.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array
    next_position: jax.Array

    @property
    def max_length(self) -> int:
        return self.k.shape[2]


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> KVCache:
    """An empty cache for `batch_size` rows of up to `max_length` tokens (prompt + generated).

    Args:
      config: the model's config.
      batch_size: B.
      max_length: S_max.
      dtype: cache dtype; defaults to the model's compute dtype.
    """
    dtype = jnp.dtype(dtype or config.compute_dtype)
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch_size, max_length), bool),
        index=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch_size,), jnp.int32),
    )
