"""alignax.sharding: meshes, the rules table, sharded init, batches, two processes."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from alignax import distributed, sharding
from tests.train import tiny_lm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_make_mesh_resolves_minus_one_and_uses_auto_axes():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}  # 8 devices / 2
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}).devices.size == 1


@pytest.mark.parametrize("axes, message", [
    ({"data": 4, "fsdp": 4}, r"mesh data=4 x fsdp=4 x tensor=1 needs 16 devices but only 8"),
    ({"data": -1, "fsdp": 3}, r"8 devices are not divisible by the fixed axes' product 3"),
    ({"data": 2, "model": 4}, r"unknown mesh axes \['model'\]"),
    ({"data": -1, "fsdp": -1}, r"at most one -1"),
])
def test_make_mesh_errors_name_the_numbers(axes, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(axes)


def test_rules_table_maps_logical_names_to_mesh_axes():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    spec = lambda names, shape: sharding.logical_to_spec(names, mesh=mesh, shape=shape)
    assert spec(("embed", "mlp"), (8, 16)) == P("fsdp", "tensor")
    assert spec(("layers", "embed", "heads", "head_dim"), (2, 8, 4, 16)) == \
        P(None, "fsdp", "tensor")  # trailing replicated dimensions are dropped
    assert spec(("vocab", "embed"), (16, 8)) == P("tensor", "fsdp")
    # Activations: batch takes data and fsdp, so embed (-> fsdp) is left replicated.
    assert spec(("batch", "seq", "embed"), (8, 4, 8)) == P(("data", "fsdp"))
    assert spec(("batch", "seq", "vocab"), (8, 4, 16)) == P(("data", "fsdp"), None, "tensor")
    assert sharding.logical_to_spec(None, mesh=mesh) == P()


def test_indivisible_dimension_is_replicated_not_an_error():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    spec = lambda names, shape: sharding.logical_to_spec(names, mesh=mesh, shape=shape)
    assert spec(("vocab", "embed"), (15, 8)) == P(None, "fsdp")  # 15 % 2 != 0
    assert spec(("embed", "heads"), (6, 6)) == P(None, "tensor")  # 6 % 4 != 0, 6 % 2 == 0
    # batch over (data=2, fsdp=4): 4 rows keep the prefix `data` (4 % 2 == 0, 4 % 8 != 0).
    mesh2 = sharding.make_mesh({"data": 2, "fsdp": 4})
    assert sharding.logical_to_spec(("batch",), mesh=mesh2, shape=(4,)) == P("data")


def test_size_one_axes_and_custom_rules():
    mesh = sharding.make_mesh({"data": 8})
    assert sharding.logical_to_spec(("embed", "mlp"), mesh=mesh, shape=(8, 16)) == P()
    rules = dict(sharding.DEFAULT_RULES, embed="data")
    assert sharding.logical_to_spec(("embed", "mlp"), mesh=mesh, shape=(8, 16), rules=rules) == \
        P("data")
    with sharding.axis_rules(rules):
        assert sharding.logical_to_spec(("embed",), mesh=mesh, shape=(8,)) == P("data")
    with pytest.raises(KeyError, match="unknown logical axis 'embd'"):
        sharding.logical_to_spec(("embd",), mesh=mesh)
    with pytest.raises(ValueError, match=r"2 entries but the array has shape \(8,\)"):
        sharding.logical_to_spec(("embed", "mlp"), mesh=mesh, shape=(8,))


def test_constrain_is_a_noop_without_mesh_and_shards_under_one():
    x = jnp.ones((8, 4, 8))
    assert sharding.constrain(x, ("batch", "seq", "embed")) is x
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    f = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", "seq", "mlp")))
    with jax.set_mesh(mesh):
        y = f(x)
    assert y.sharding.spec == P(("data", "fsdp"), None, "tensor")
    np.testing.assert_array_equal(y, 2 * x)


def test_names_from_nnx_metadata_or_a_plain_tree_give_the_same_shardings():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    with sharding.no_eager_sharding():
        abstract = jax.eval_shape(tiny_lm.init_params())
    names = {"embedding": ("vocab", "embed"), "w_up": ("layers", "embed", "mlp"),
             "b_up": ("layers", "mlp"), "w_down": ("layers", "mlp", "embed"),
             "unembed": ("embed", "vocab"), "scale": None}
    from_meta = sharding.tree_shardings(abstract, mesh=mesh)
    from_dict = sharding.tree_shardings(abstract, mesh=mesh, names=names)
    # The models' `logical_axes` style: PartitionSpecs of logical names in an nnx.State.
    from_specs = sharding.tree_shardings(abstract, mesh=mesh, names=jax.tree.map(
        lambda v: P(*(v.get_metadata().get("out_sharding") or ())), abstract,
        is_leaf=lambda v: isinstance(v, nnx.Variable)))
    assert jax.tree.leaves(from_meta) == jax.tree.leaves(from_dict) == jax.tree.leaves(from_specs)
    assert from_meta["w_down"].get_value().spec == P(None, "tensor", "fsdp")
    with pytest.raises(ValueError, match="no logical names for 1 leaves"):
        sharding.tree_shardings(abstract, mesh=mesh, names={k: v for k, v in names.items()
                                                      if k != "scale"})


def test_init_sharded_creates_each_shard_on_its_device():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

    class Dense(nnx.Module):
        def __init__(self, rngs):
            self.kernel = nnx.Param(jax.random.normal(rngs.params(), (8, 16)),
                                    out_sharding=("embed", "mlp"))

    params = sharding.init_sharded(lambda: nnx.split(Dense(nnx.Rngs(0)))[1], mesh=mesh)
    kernel = params["kernel"][...]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert {s.data.shape for s in kernel.addressable_shards} == {(4, 8)}
    # Partitionable threefry: the values do not depend on the layout.
    with nnx.use_eager_sharding(False):
        expected = Dense(nnx.Rngs(0)).kernel[...]
    np.testing.assert_array_equal(kernel, expected)


def test_batch_sharding_slices_and_global_arrays_on_one_process():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.data_parallel_size(mesh) == 4
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert distributed.process_batch_slice(8, mesh=mesh) == slice(0, 8)
    batch = tiny_lm.make_batch(0)
    global_batch = distributed.host_local_to_global(batch, mesh=mesh)
    assert global_batch["inputs"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(global_batch["inputs"], batch["inputs"])
    with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the data-parallel "
                                         r"size 4 \(mesh axes data=2 x fsdp=2\)"):
        sharding.check_batch_size(6, mesh=mesh)


def test_initialize_distributed_is_a_noop_on_one_process(monkeypatch):
    for key in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                "OMPI_MCA_orte_hnp_uri", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.initialize_distributed() is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """2 processes x 4 CPU devices (gloo collectives) = the single-process step."""
    port, out = _free_port(), tmp_path / "mp.npz"
    worker = os.path.join(ROOT, "tests", "train", "multiprocess_worker.py")
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0].decode()[-3000:])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    from tests.train.test_step import _one_step
    reference = _one_step((1, 1, 1))
    got = np.load(out)
    assert list(got["rows"]) == [0, 4]  # process 0 loads the first half of the global batch
    assert abs(float(got["loss"]) - reference["loss"]) <= 1e-5
    for key, value in reference["params"].items():
        np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=0)


def test_decode_rules_drop_data_parallel_axes_from_weights_only():
    rules = sharding.decode_rules()
    assert rules["batch"] == sharding.DEFAULT_RULES["batch"]
    assert rules["embed"] is None and rules["mlp"] == "tensor" and rules["vocab"] == "tensor"
    custom = sharding.decode_rules({"batch": "data", "embed": ("data", "tensor"), "mlp": None})
    assert custom == {"batch": "data", "embed": "tensor", "mlp": None}
    # A sequence axis (context parallelism) splits weights like fsdp, never while decoding.
    assert sharding.DEFAULT_RULES["embed"] == ("fsdp", "sequence")
    mesh = jax.sharding.AbstractMesh((1, 2, 1, 4), ("data", "fsdp", "tensor", "sequence"))
    assert sharding.logical_to_spec(("embed", "mlp"), mesh=mesh, shape=(8, 16)) == P(
        ("fsdp", "sequence"))
    assert sharding.logical_to_spec(("embed", "mlp"), mesh=mesh, shape=(8, 16),
                                    rules=rules) == P()


def test_sampler_params_are_cast_and_gathered_off_fsdp():
    from alignax.algorithms.online import rollout
    from alignax.models import init_model, tiny_config

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, params = nnx.split(init_model(tiny_config(hidden_size=32, intermediate_size=64,
                                                 num_heads=2, num_kv_heads=2), seed=0))
    sharded = jax.device_put(params, sharding.tree_shardings(params, mesh=mesh))
    specs = [s.spec for s in jax.tree.leaves(sharding.tree_shardings(params, mesh=mesh))]
    assert any("fsdp" in str(s) for s in specs)  # the training layout does use fsdp
    out = rollout.sampler_params_fn(params, mesh=mesh, dtype=jnp.bfloat16)(sharded)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
        assert "fsdp" not in str(x.sharding.spec) and x.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y).astype(jnp.bfloat16))
    assert any("tensor" in str(x.sharding.spec) for x in jax.tree.leaves(out))
