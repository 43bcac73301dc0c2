"""What a jitted step asks the accelerator to do, counted from its jaxpr: matrix-multiply FLOPs
with every loop's trip count applied.

XLA's own `compiled.cost_analysis()["flops"]` counts a while loop's body once: alignax scans
its layers (and the chunked LM head), so on a 1-, 2- and 4-layer model the SFT step of
`tests/train/test_step_costs.py` reports 9.75, 9.77 and 9.80 GFLOP. The count here walks the
traced program instead: `dot_general` FLOPs (2 x batch x M x N x K), `scan` bodies times their
length, `cond` at its most expensive branch, every nested jaxpr (jit, remat, custom
derivatives, shard_map) included. Rematerialised forwards appear in the backward pass of the
traced program, so a remat policy's recompute is counted, and a frozen model that is
differentiated by mistake doubles its share.

Example (a [4, 8] x [8, 16] matmul: 2 x 4 x 8 x 16 FLOPs, three times in a scan):

    >>> import jax, jax.numpy as jnp
    >>> def f(x, w):
    ...     return jax.lax.scan(lambda c, _: (c, c @ w), x, None, length=3)[1]
    >>> matmul_flops(f, jnp.ones((4, 8)), jnp.ones((8, 16)))
    3072

Only `dot_general` counts: attention kernels that are their own primitive (cuDNN flash
attention on GPU) and elementwise work are not in the number.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> int:
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    out = eqn.outvars[0].aval.shape
    contract = math.prod(lhs[d] for d in lhs_contract)
    del rhs, lhs_batch  # the output's size already holds the batch, M and N
    return 2 * math.prod(out) * contract


def _jaxprs(value: Any):
    """Jaxprs inside an equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _jaxprs(v)


def jaxpr_matmul_flops(jaxpr) -> int:
    """`dot_general` FLOPs of a (closed) jaxpr, loops unrolled by their trip counts."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            inner = jaxpr_matmul_flops(eqn.params["body_jaxpr"])
            if inner:
                raise ValueError("a while loop with matmuls has no static trip count; "
                                 "count it with lax.scan or fori_loop over static bounds")
        else:
            for value in eqn.params.values():
                for sub in _jaxprs(value):
                    total += jaxpr_matmul_flops(sub)
    return total


def matmul_flops(fn, *args, **kwargs) -> int:
    """`dot_general` FLOPs of one call of `fn(*args, **kwargs)` (traced, not run)."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn, **kwargs)(*args))
