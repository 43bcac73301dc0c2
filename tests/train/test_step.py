"""make_train_step: the same numbers on every mesh, accumulation = one big batch, references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from alignax import sharding
from alignax.train import init_train_state, make_train_step
from tests.train import tiny_lm

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]


def _mesh(shape):
    return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape, strict=True)))


@functools.cache  # shared with tests/test_sharding.py's two-process comparison
def _one_step(mesh_shape, *, num_microbatches=1):
    """Loss, grads and updated params (host numpy) of one step from the same init and batch."""
    mesh = _mesh(mesh_shape)
    tx = tiny_lm.make_tx()
    state, shardings = init_train_state(tiny_lm.init_params(), tx, mesh=mesh, seed=0)
    objective = tiny_lm.make_objective(tiny_lm.graphdef())
    batch = tiny_lm.make_batch(0)
    grad_fn = jax.jit(jax.grad(lambda p, b: objective(p, b, jax.random.key(0))[0]),
                      in_shardings=(shardings.params, sharding.batch_sharding(mesh)))
    with jax.set_mesh(mesh):
        grads = tiny_lm.flat_params(grad_fn(state.params, batch))
    param_specs = jax.tree.map(lambda x: x.sharding.spec, state.params)
    step = make_train_step(objective, tx, mesh=mesh, state_shardings=shardings,
                           num_microbatches=num_microbatches)
    state, metrics = step(state, batch)
    return {"loss": float(metrics["loss"]), "grads": grads,
            "params": tiny_lm.flat_params(state.params), "specs": param_specs,
            "out_specs": jax.tree.map(lambda x: x.sharding.spec, state.params),
            "mu_specs": jax.tree.map(lambda x: x.sharding.spec, state.opt_state[1][0].mu)}


@pytest.fixture(scope="module")
def reference():
    return _one_step((1, 1, 1))


def _canonical(*axes):
    """`P(*axes)` without trailing Nones: the form `logical_to_spec` returns."""
    axes = list(axes)
    while axes and axes[-1] is None:
        axes.pop()
    return P(*axes)


def _expected_specs(shape):
    """What DEFAULT_RULES say: embed -> fsdp, mlp/vocab -> tensor, layers -> replicated."""
    data, fsdp, tensor = shape
    f = "fsdp" if fsdp > 1 else None
    t = "tensor" if tensor > 1 else None
    return {"embedding": _canonical(t, f), "w_up": _canonical(None, f, t),
            "b_up": _canonical(None, t), "w_down": _canonical(None, t, f),
            "unembed": _canonical(f, t), "scale": P()}


def _max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_one_step_is_the_same_on_every_mesh(mesh_shape, reference):
    out = _one_step(mesh_shape)
    # The same maths, only partitioned: float32 reductions reorder, nothing else changes.
    assert abs(out["loss"] - reference["loss"]) <= 1e-5
    assert _max_diff(out["grads"], reference["grads"]) <= 1e-5
    assert _max_diff(out["params"], reference["params"]) <= 1e-5
    expected = _expected_specs(mesh_shape)
    for specs in (out["specs"], out["out_specs"], out["mu_specs"]):
        assert {k: v.get_value() for k, v in specs.items()} == expected


def test_gradient_accumulation_equals_one_big_batch(reference):
    # Mean loss over equal micro-batches: the mean of micro-batch means is the big-batch mean.
    out = _one_step((2, 2, 2), num_microbatches=2)
    assert abs(out["loss"] - reference["loss"]) <= 1e-5
    assert _max_diff(out["params"], reference["params"]) <= 1e-5


def test_batch_not_divisible_by_data_parallel_size_names_the_numbers():
    mesh = _mesh((4, 2, 1))
    tx = optax.sgd(0.1)
    state, shardings = init_train_state(tiny_lm.init_params(), tx, mesh=mesh)
    step = make_train_step(tiny_lm.make_objective(tiny_lm.graphdef()), tx, mesh=mesh,
                           state_shardings=shardings)
    with pytest.raises(ValueError, match=r"batch size 6 .* data-parallel size 8 "
                                         r"\(mesh axes data=4 x fsdp=2\)"):
        step(state, tiny_lm.make_batch(0, batch_size=6))
    step4 = make_train_step(tiny_lm.make_objective(tiny_lm.graphdef()), tx, mesh=mesh,
                            state_shardings=shardings, num_microbatches=2)
    with pytest.raises(ValueError, match=r"micro-batch size 4 \(batch size 8 / 2\) .* 8"):
        step4(state, tiny_lm.make_batch(0, batch_size=8))


def test_frozen_reference_in_bf16_sharded_like_the_policy():
    mesh = _mesh((2, 2, 2))
    tx = tiny_lm.make_tx()
    state, shardings = init_train_state(tiny_lm.init_params(), tx, mesh=mesh,
                                        reference="copy", ref_dtype=jnp.bfloat16)
    ref_before = tiny_lm.flat_params(jax.tree.map(lambda x: x.astype(jnp.float32),
                                                  state.ref_params))
    for ref, policy in zip(jax.tree.leaves(state.ref_params), jax.tree.leaves(state.params),
                           strict=True):
        assert ref.dtype == jnp.bfloat16
        assert ref.sharding == policy.sharding
    step = make_train_step(tiny_lm.make_objective(tiny_lm.graphdef()), tx, mesh=mesh,
                           state_shardings=shardings)
    old = state
    state, m0 = step(state, tiny_lm.make_batch(0))
    assert all(x.is_deleted() for x in jax.tree.leaves(old))  # the whole state is donated
    state, m1 = step(state, tiny_lm.make_batch(1))
    ref_after = tiny_lm.flat_params(jax.tree.map(lambda x: x.astype(jnp.float32),
                                                 state.ref_params))
    assert _max_diff(ref_before, ref_after) == 0.0  # frozen: never updated
    # At step 0 the policy is the reference up to bf16 rounding: KL is tiny; then it grows.
    assert float(m0["kl/ref"]) < 1e-3 < float(m1["kl/ref"])
    assert int(state.step) == 2
