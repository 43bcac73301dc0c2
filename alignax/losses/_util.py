"""Small numerics helpers shared by the losses (not part of the public API)."""

import jax.numpy as jnp


def as_float(*xs):
    """Casts arrays to a common float dtype of at least float32.

    bf16 inputs are computed in float32; float64 inputs stay float64 (when x64 is on). Returns a
    tuple, or the array itself for a single argument.
    """
    arrays = [jnp.asarray(x) for x in xs]
    dtype = jnp.result_type(jnp.float32, *[a.dtype for a in arrays])
    out = tuple(a.astype(dtype) for a in arrays)
    return out[0] if len(out) == 1 else out


def require(value, name: str, loss: str):
    """Raises a clear error when a loss needs an optional argument that was not given."""
    if value is None:
        raise ValueError(f"loss {loss!r} needs `{name}` (completion-token counts per sequence)")
    return value
