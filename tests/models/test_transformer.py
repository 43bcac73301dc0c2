"""The NNX transformer: logical axes, dtypes, remat, scan over layers, masks and packing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import models
from alignax.models.attention import make_mask, positions_from_segments
from alignax.models.layers import LOGICAL_AXES


def _model(name="llama", seed=0, **kw):
    return models.init_model(models.tiny_config(name, **kw), seed)


def _ids(b=2, s=10, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (b, s)))


def test_logical_axes_name_every_parameter():
    model = _model("qwen3")  # has every kind of parameter but o_bias
    axes = models.logical_axes(model)
    params = nnx.state(model, nnx.Param)
    flat_axes = jax.tree.leaves(axes)
    flat_params = jax.tree.leaves(params)
    assert len(flat_axes) == len(flat_params)
    for spec, p in zip(flat_axes, flat_params):
        assert len(spec) == p.ndim
        assert set(spec) <= set(LOGICAL_AXES)
    assert tuple(axes["layers"]["attn"]["q_proj"]) == ("layers", "embed", "heads", "head_dim")
    assert tuple(axes["layers"]["attn"]["k_proj"]) == ("layers", "embed", "kv_heads",
                                                       "head_dim")
    assert tuple(axes["layers"]["mlp"]["down"]) == ("layers", "mlp", "embed")
    assert tuple(axes["embed"]) == ("vocab", "embed")
    # Abstract state (no arrays allocated) gives the same names: what a sharding module needs.
    abstract = nnx.eval_shape(lambda: _model("qwen3"))
    assert jax.tree.leaves(models.logical_axes(abstract)) == flat_axes


def test_stacked_layers_are_scanned():
    """The traced program has the same size for 2 and 8 layers: depth lives in a scan."""
    def n_eqns(layers):
        model = _model(num_layers=layers)
        graphdef, state = nnx.split(model)
        fn = lambda st, ids: nnx.merge(graphdef, st)(ids)
        return len(jax.make_jaxpr(fn)(state, _ids()).jaxpr.eqns)

    assert n_eqns(2) == n_eqns(8)
    assert _model(num_layers=3).layers.mlp.up[...].shape[0] == 3


def test_remat_policies_give_same_values_and_grads():
    ids = _ids()
    outs = []
    for remat in ("none", "full", "save_dots"):
        model = _model(remat=remat)
        graphdef, state = nnx.split(model)

        @jax.jit
        def loss_and_grad(state, ids, graphdef=graphdef):
            def loss(st):
                return jnp.mean(nnx.merge(graphdef, st)(ids) ** 2)
            return jax.value_and_grad(loss)(state)

        outs.append(loss_and_grad(state, ids))
    for other in outs[1:]:
        # Recomputation replays the same float32 ops: equal up to reassociation.
        for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(other)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_param_and_compute_dtypes():
    ids = _ids()
    f32 = _model()
    ref = np.asarray(models.forward(f32, ids))
    for dtype, param_dtype in (("bfloat16", "float32"), ("bfloat16", "bfloat16")):
        model = _model(dtype=dtype, param_dtype=param_dtype)
        assert all(p.dtype == jnp.dtype(param_dtype)
                   for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        hidden, _ = nnx.eval_shape(lambda m: m.hidden_states(ids), model)
        assert hidden.dtype == jnp.bfloat16
        logits = np.asarray(models.forward(model, ids))
        assert logits.dtype == np.float32
        # Same initial weights (f32 noise cast to the param dtype); bf16 keeps ~3 digits.
        assert np.max(np.abs(logits - ref)) < 0.05 * np.max(np.abs(ref)) + 1e-3


def test_left_padding_equals_unpadded():
    """Positions count real tokens, so a left-padded row computes the unpadded prompt."""
    model = _model("mistral", sliding_window=3)
    ids = _ids(1, 8)
    full = np.asarray(models.forward(model, ids))
    padded = jnp.concatenate([jnp.full((1, 3), 256), ids], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 8), jnp.int32)], axis=1)
    out = np.asarray(models.forward(model, padded, mask))
    np.testing.assert_allclose(out[:, 3:], full, atol=1e-5)


def test_packed_segments_equal_separate_forwards():
    model = _model("qwen2")
    a, b = _ids(1, 6, seed=1), _ids(1, 4, seed=2)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.asarray([[1] * 6 + [2] * 4])
    np.testing.assert_array_equal(positions_from_segments(segments),
                                  [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
    out = np.asarray(models.forward(model, packed, None, None, segments))
    np.testing.assert_allclose(out[:, :6], np.asarray(models.forward(model, a)), atol=1e-5)
    np.testing.assert_allclose(out[:, 6:], np.asarray(models.forward(model, b)), atol=1e-5)


def test_make_mask_causal_padding_window():
    mask = make_mask(jnp.arange(4), jnp.asarray([[1, 1, 1, 0]]), window=2)[0, 0]
    expected = [[1, 0, 0, 0],
                [1, 1, 0, 0],
                [0, 1, 1, 0],  # window 2: slot 0 is too far back
                [0, 0, 1, 0]]  # slot 3 is padding
    np.testing.assert_array_equal(np.asarray(mask, int), expected)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple"):
        models.tiny_config("llama", num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="remat"):
        models.tiny_config("llama", remat="sometimes")
    with pytest.raises(ValueError, match="rope_type"):
        models.tiny_config("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    cfg = models.tiny_config("llama3")
    assert hash(cfg) == hash(models.tiny_config("llama3"))  # static jit metadata


def test_grad_through_model_is_finite():
    model = _model("qwen3", remat="full")

    @nnx.jit
    def step(model, ids):
        def loss(model):
            hidden, _ = model.hidden_states(ids)
            logps = models.token_logps(hidden[:, :-1], model.lm_head_weight(), ids[:, 1:],
                                       chunk_size=4)
            return -jnp.mean(logps)
        return nnx.grad(loss)(model)

    grads = step(model, _ids())
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["layers"]["attn"]["q_norm"]["scale"][...]).max()) > 0


def test_import_does_not_pull_torch():
    import subprocess
    import sys

    code = ("import sys, alignax.models; "
            "bad = [m for m in ('torch', 'transformers', 'safetensors', 'tokenizers', 'jinja2') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": ""}, cwd=_repo_root())
    assert res.returncode == 0, res.stdout + res.stderr


def _repo_root():
    import pathlib

    return str(pathlib.Path(__file__).resolve().parents[2])


@pytest.mark.gpu
def test_cudnn_attention_matches_xla():
    """On a GPU, bf16 "auto" attention (cuDNN flash) equals the XLA path."""
    ids = _ids(2, 64)
    mask = jnp.ones((2, 64), jnp.int32).at[1, 40:].set(0)
    outs = {}
    for impl in ("auto", "xla"):
        model = _model(dtype="bfloat16", head_dim=64, num_heads=4, hidden_size=256,
                       attention_impl=impl)
        outs[impl] = (np.asarray(models.forward(model, ids)),
                      np.asarray(models.forward(model, ids, mask)))
    for a, b in zip(outs["auto"], outs["xla"]):
        np.testing.assert_allclose(a[:, :40], b[:, :40], atol=5e-2)  # bf16 kernels differ
