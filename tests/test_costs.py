"""`alignax.costs.matmul_flops`: dot FLOPs from the traced program, loops unrolled."""

import jax
import jax.numpy as jnp
import pytest

from alignax.costs import matmul_flops


def test_scan_cond_and_nested_jit_are_counted():
    x, w = jnp.ones((4, 8)), jnp.ones((8, 16))
    one = 2 * 4 * 8 * 16
    assert matmul_flops(lambda x, w: x @ w, x, w) == one
    scan = lambda x, w: jax.lax.scan(lambda c, _: (c, c @ w), x, None, length=3)[1]
    assert matmul_flops(scan, x, w) == 3 * one
    assert matmul_flops(jax.jit(scan), x, w) == 3 * one
    # cond: its dearest branch.
    cond = lambda p, x, w: jax.lax.cond(p, lambda: (x @ w) @ w.T, lambda: x)
    assert matmul_flops(cond, True, x, w) == one + 2 * 4 * 16 * 8
    # Batched: the batch dimension multiplies.
    assert matmul_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
                        jnp.ones((5, 4, 8)), jnp.ones((5, 8, 16))) == 5 * one


def test_gradients_and_remat_recompute_are_counted():
    w = jnp.ones((8, 8))
    f = lambda w, x: jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w))
    one = 2 * 4 * 8 * 8
    x = jnp.ones((4, 8))
    assert matmul_flops(f, w, x) == 2 * one
    # Backward: two products per forward matmul (one skipped: x needs no gradient).
    assert matmul_flops(jax.grad(f), w, x) == 2 * one + 3 * one
    # Full remat recomputes the forward: both matmuls (tanh's derivative needs each output).
    assert matmul_flops(jax.grad(jax.checkpoint(f)), w, x) == 2 * one + 3 * one + 2 * one
    # Saving the dots: nothing to recompute.
    saved = jax.checkpoint(f, policy=jax.checkpoint_policies.dots_saveable)
    assert matmul_flops(jax.grad(saved), w, x) == 2 * one + 3 * one


def test_a_while_loop_with_matmuls_is_refused():
    w = jnp.ones((4, 4))
    loop = lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 10, lambda c: c @ w, x)
    with pytest.raises(ValueError, match="while loop"):
        matmul_flops(loop, jnp.ones((4, 4)))
