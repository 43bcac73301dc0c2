"""Matmul precision: float32 compute means float32 matmuls, on every backend.

On GPUs with TensorFloat-32 (A100, H100) XLA may run a float32 matmul at the backend's
"default" precision, i.e. TF32: inputs rounded to 10 mantissa bits. Two programs that compute
the same log-probability in different ways (the sampler's cached decode and the trainer's full
forward) then disagree by far more than float32 rounding: the GRPO smoke run on an H100 logged
`sampler/logp_gap` in the units, where CPU runs show <= 7e-6. alignax therefore asks for
`Precision.HIGHEST` whenever the compute dtype is float32, and leaves bfloat16 / float16
compute at the backend default (their matmuls run natively; HIGHEST would change nothing
there but could not be relied on to be free). On CPU, float32 matmuls are exact either way.

    >>> import jax, jax.numpy as jnp
    >>> matmul_precision(jnp.float32) == jax.lax.Precision.HIGHEST
    True
    >>> matmul_precision(jnp.bfloat16) is None
    True
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp


def matmul_precision(dtype) -> jax.lax.Precision | None:
    """`Precision.HIGHEST` for float32 compute, None (the backend default) otherwise."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def precision_scope(dtype):
    """A context in which every matmul traced gets `matmul_precision(dtype)`: wraps a whole
    forward (attention projections, attention itself, MLP, adapters)."""
    if matmul_precision(dtype) is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision("highest")
