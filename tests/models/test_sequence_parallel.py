"""A `sequence` mesh axis (context parallelism): hidden states split along the sequence,
all-gather attention. Same logits and gradients as one device; activations really split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import sharding
from alignax.algorithms.dpo import dpo_loss_fn
from alignax.models import init_model, tiny_config


def _model():
    return init_model(tiny_config("llama", num_layers=2), seed=0)


def _inputs(rows=4, width=64):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, (rows, width)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, width - 14:] = 0  # right padding
    mask[2, :5] = 0  # left padding
    return ids, mask


def _on_mesh(axes, fn, state, *args):
    mesh = sharding.make_mesh(axes)
    with jax.set_mesh(mesh):
        state = jax.device_put(state, sharding.tree_shardings(state, mesh=mesh))
        args = jax.device_put(args, sharding.batch_sharding(mesh))
        return jax.jit(fn)(state, *args)


@pytest.mark.parametrize("axes", [{"data": 2, "sequence": 4},
                                  {"fsdp": 2, "tensor": 2, "sequence": 2}])
def test_forward_equals_one_device(axes):
    graphdef, state = nnx.split(_model())
    ids, mask = _inputs()
    segments = np.repeat(np.arange(4, dtype=np.int32), 16)[None].repeat(4, 0)

    def fn(st, ids, mask, segments):
        model = nnx.merge(graphdef, st)
        # causal (no mask: the flash-friendly path), padded, and packed rows
        return model(ids), model(ids, mask), model(ids, segment_ids=segments)

    want = jax.jit(fn)(state, ids, mask, segments)
    got = _on_mesh(axes, fn, state, ids, mask, segments)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=2e-6)


def _dpo_grad(graphdef):
    loss_fn = dpo_loss_fn(graphdef, loss_types="sigmoid", beta=0.1, chunk_size=16)

    def fn(params, batch):
        grad = jax.grad(lambda p: loss_fn(p, batch, None, ref_params=params)[0])
        return loss_fn(params, batch, None, ref_params=params)[0], grad(params)

    return fn


def test_dpo_loss_and_gradients_equal_one_device():
    graphdef, params = nnx.split(_model())
    ids, mask = _inputs(rows=8, width=64)
    completion = np.zeros_like(mask)
    completion[:, 32:] = mask[:, 32:]
    batch = {"input_ids": ids.reshape(4, 2, 64), "attention_mask": mask.reshape(4, 2, 64),
             "completion_mask": completion.reshape(4, 2, 64)}
    fn = _dpo_grad(graphdef)
    loss, grads = jax.jit(fn)(params, batch)
    mesh = sharding.make_mesh({"data": 2, "sequence": 4})
    with jax.set_mesh(mesh):
        p = jax.device_put(params, sharding.tree_shardings(params, mesh=mesh))
        b = jax.device_put(batch, sharding.batch_sharding(mesh))
        loss_sp, grads_sp = jax.jit(fn)(p, b)
    assert float(loss_sp) == pytest.approx(float(loss), rel=1e-6)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads_sp, grads)
    assert max(jax.tree.leaves(diff)) < 1e-6


def test_activations_split_along_the_sequence():
    """The step's temporaries shrink with the sequence axis (a test of the layout, not of the
    numbers): 2 rows x 256 tokens, data=2 against data=2 x sequence=4."""
    graphdef, params = nnx.split(init_model(tiny_config("llama", num_layers=2,
                                                        max_position_embeddings=512)))
    ids = np.ones((2, 2, 256), np.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "completion_mask": ids}
    fn = _dpo_grad(graphdef)

    def temp(axes):
        mesh = sharding.make_mesh(axes)
        with jax.set_mesh(mesh):
            p = jax.device_put(params, sharding.tree_shardings(params, mesh=mesh))
            b = jax.device_put(batch, sharding.batch_sharding(mesh))
            return jax.jit(fn).lower(p, b).compile().memory_analysis().temp_size_in_bytes

    assert temp({"data": 2, "sequence": 4}) < 0.5 * temp({"data": 2})
