"""Building blocks: parameters with logical axis names, RMSNorm, SwiGLU MLP.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds its logical axis names
(`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, `layers`); `logical_axes(model)`
in `transformer.py` reads them back. Eager sharding is off: the sharding module maps the names
to mesh axes with one rules table and initialises the state sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alignax.models.config import ModelConfig
from alignax.models.lora import lora_project

LOGICAL_AXES = ("embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers")


def param(value: jax.Array, names: tuple[str | None, ...], **metadata) -> nnx.Param:
    """An `nnx.Param` tagged with logical axis `names` (one per dimension)."""
    if len(names) != value.ndim:
        raise ValueError(f"{len(names)} axis names {names} for a {value.ndim}-d parameter")
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False, **metadata)


def normal_param(rngs: nnx.Rngs, shape, names, config: ModelConfig, std: float = 0.02):
    """N(0, std^2) weights (the HF `initializer_range`), stored in `config.param_dtype`.

    `init_std` metadata lets `init_model` redo the draw on the host without tracing.
    """
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return param(value.astype(config.weight_dtype), names, init_std=std)


def const_param(shape, names, config: ModelConfig, value: float):
    return param(jnp.full(shape, value, config.weight_dtype), names, init_value=value)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis, as HF: normalise in float32, cast, then scale.

    Args:
      x: `[..., E]` activations.
      scale: `[E]` learned scale.
    Returns: `[..., E]` in x's dtype.
    """
    x32 = x.astype(jnp.float32)
    # rsqrt of the mean square in float32: bf16 loses the small-variance rows otherwise.
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale (Zhang & Sennrich 2019)."""

    def __init__(self, size: int, config: ModelConfig, names=("embed",)):
        self.eps = config.rms_norm_eps
        self.scale = const_param((size,), names, config, 1.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(x @ gate) * (x @ up)) (Shazeer 2020)."""

    # LoRA-adaptable weights: name -> (input dims, output dims) of the per-layer weight.
    LORA_TARGETS = {"gate": (1, 1), "up": (1, 1), "down": (1, 1)}

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        e, f = config.hidden_size, config.intermediate_size
        self.dtype = config.compute_dtype
        self.gate = normal_param(rngs, (e, f), ("embed", "mlp"), config)
        self.up = normal_param(rngs, (e, f), ("embed", "mlp"), config)
        self.down = normal_param(rngs, (f, e), ("mlp", "embed"), config)

    def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
        """`[B, S, E]` -> `[B, S, E]` in the compute dtype.

        `dropout_rng`: key of the LoRA adapters' input dropout (see `lora.py`), or None.
        """
        dt = self.dtype
        gate = lora_project(self, "gate", x, x @ self.gate[...].astype(dt), dropout_rng)
        up = lora_project(self, "up", x, x @ self.up[...].astype(dt), dropout_rng)
        act = jax.nn.silu(gate) * up
        return lora_project(self, "down", act, act @ self.down[...].astype(dt), dropout_rng)
