"""LoRA adapters: fresh adapters change nothing, factored == merged, only adapters train,
KV-cache decoding and the sampler, HF export, errors, and the memory saved at ~1B scale."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from alignax import models, sampling, sharding
from alignax.models import lora

RANK, ALPHA = 4, 8.0
EOS, PAD = 258, 256


def _ids(b=2, s=10, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (b, s)))


def _randomize(model, seed=1, std=0.1):
    """The adapted model with A and B moved away from their init (B != 0): the adapters now
    change the outputs, as after some training."""
    graphdef, adapters, base = lora.split_lora(model)
    rs = np.random.RandomState(seed)  # host-side noise: no eager jax ops to compile
    adapters = jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + std * rs.standard_normal(x.shape), x.dtype),
        adapters)
    return nnx.merge(graphdef, adapters, base)


def _adapted(name, **kw):
    base = models.init_model(models.tiny_config(name, **kw), seed=0)
    fresh = lora.add_lora(nnx.clone(base), rank=RANK, alpha=ALPHA)
    return base, fresh, _randomize(fresh)


@pytest.fixture(scope="module")
def llama():
    """(base, fresh adapters, trained-like adapters) of the tiny Llama."""
    return _adapted("llama")


@pytest.fixture(scope="module")
def qwen3():
    return _adapted("qwen3")


def _logits(model, ids=None, mask=None):
    return np.asarray(models.forward(model, _ids() if ids is None else ids, mask))


# ------------------------------------------------------------------------ structure / numerics


def test_adapters_are_stacked_named_and_fresh_ones_change_nothing(llama):
    base, fresh, _ = llama
    cfg = base.config
    n_layers, e, n, d, f = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim,
                     cfg.intermediate_size)
    attn, mlp = fresh.layers.attn, fresh.layers.mlp
    assert attn.q_proj_lora.a[...].shape == (n_layers, e, RANK)
    assert attn.q_proj_lora.b[...].shape == (n_layers, RANK, n, d)
    assert attn.o_proj_lora.a[...].shape == (n_layers, n, d, RANK)
    assert mlp.down_lora.a[...].shape == (n_layers, f, RANK)
    assert mlp.down_lora.b[...].shape == (n_layers, RANK, e)
    assert attn.q_proj_lora.scale == ALPHA / RANK
    # A ~ U(+-1/sqrt(fan_in)) (PEFT's Kaiming-uniform), B = 0.
    a = np.asarray(attn.o_proj_lora.a[...])
    assert 0.5 / np.sqrt(n * d) < np.abs(a).max() <= 1 / np.sqrt(n * d)
    assert not np.any(np.asarray(mlp.up_lora.b[...]))
    axes = models.logical_axes(fresh)["layers"]
    assert tuple(axes["attn"]["q_proj_lora"]["a"]) == ("layers", "embed", None)
    assert tuple(axes["attn"]["q_proj_lora"]["b"]) == ("layers", None, "heads", "head_dim")
    assert tuple(axes["attn"]["o_proj_lora"]["a"]) == ("layers", "heads", "head_dim", None)
    assert tuple(axes["mlp"]["down_lora"]["b"]) == ("layers", None, "embed")
    # 7 targets x (A, B); base weights untouched.
    assert len(jax.tree.leaves(lora.lora_state(fresh))) == 14
    np.testing.assert_array_equal(_logits(fresh), _logits(base))


def test_fresh_adapters_change_nothing_qwen3(qwen3):
    base, fresh, _ = qwen3
    mask = jnp.ones((2, 10), jnp.int32).at[1, 7:].set(0)
    np.testing.assert_array_equal(_logits(fresh, mask=mask), _logits(base, mask=mask))


@pytest.mark.parametrize("fixture", ["llama", "qwen3"])
def test_merged_model_equals_adapters(fixture, request):
    base, _, adapted = request.getfixturevalue(fixture)
    merged = lora.merge_lora(adapted)
    assert not lora.has_lora(merged) and lora.has_lora(adapted)  # the input is unchanged
    assert nnx.graphdef(merged) == nnx.graphdef(base)  # a plain model
    out = _logits(adapted)
    assert np.abs(out - _logits(base)).max() > 1e-2  # the adapters matter ...
    np.testing.assert_allclose(_logits(merged), out, atol=1e-5)  # ... and merge exactly
    w = np.asarray(base.layers.attn.k_proj[...], np.float64)
    ad = adapted.layers.attn.k_proj_lora
    want = w + ad.scale * np.einsum("ler,lrkd->lekd", np.asarray(ad.a[...], np.float64),
                                    np.asarray(ad.b[...], np.float64))
    np.testing.assert_allclose(np.asarray(merged.layers.attn.k_proj[...]), want, atol=1e-6)


def test_target_subset_and_base_state_is_the_reference(llama):
    base, _, _ = llama
    model = lora.add_lora(nnx.clone(base), rank=2, alpha=4.0, targets=("v_proj", "down"))
    assert set(lora.lora_state(model)["layers"]["attn"]) == {"v_proj_lora"}
    assert set(lora.lora_state(model)["layers"]["mlp"]) == {"down_lora"}
    assert lora.has_lora(lora.add_lora(nnx.clone(base), rank=1, alpha=1.0, targets="up"))
    # The frozen part of the split is exactly the base model's state: store it once, use it
    # for the adapted policy and for the reference.
    graphdef, adapters, frozen = lora.split_lora(_randomize(model))
    reference = nnx.merge(nnx.graphdef(lora.remove_lora(model)), frozen)
    np.testing.assert_array_equal(_logits(reference), _logits(base))
    assert jax.tree.structure(frozen) == jax.tree.structure(nnx.state(base))
    adapted = nnx.merge(graphdef, adapters, frozen)
    np.testing.assert_allclose(_logits(adapted), _logits(lora.merge_lora(adapted)), atol=1e-5)


def test_bf16_weights_merge_with_one_rounding():
    base = models.init_model(models.tiny_config("llama", dtype="bfloat16",
                                                param_dtype="bfloat16"))
    adapted = _randomize(lora.add_lora(nnx.clone(base), rank=RANK, alpha=ALPHA))
    assert adapted.layers.mlp.gate_lora.a[...].dtype == jnp.float32  # float32 adapters
    merged = lora.merge_lora(adapted)
    assert merged.layers.mlp.gate[...].dtype == jnp.bfloat16
    out, ref = _logits(adapted), _logits(merged)
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


# ------------------------------------------------------------------------------- training


def _loss(model, ids, dropout_rng=None):
    """Next-token NLL through the chunked log-probs: the training path."""
    hidden, _ = model.hidden_states(ids, dropout_rng=dropout_rng)
    return -jnp.mean(models.token_logps(hidden[:, :-1], model.lm_head_weight(), ids[:, 1:],
                                        chunk_size=16))


def _cheap_loss(model, ids, dropout_rng=None):
    hidden, _ = model.hidden_states(ids, dropout_rng=dropout_rng)
    return jnp.mean(jnp.square(hidden))


def test_only_adapters_get_gradients():
    model = lora.add_lora(models.init_model(models.tiny_config("llama")), rank=RANK,
                          alpha=ALPHA)
    graphdef, adapters, frozen = lora.split_lora(model)
    ids = _ids()
    tx = optax.adamw(1e-2)

    @jax.jit
    def step(adapters, opt_state, frozen):
        loss, grads = jax.value_and_grad(
            lambda ad: _loss(nnx.merge(graphdef, ad, frozen), ids))(adapters)
        updates, opt_state = tx.update(grads, opt_state, adapters)
        return optax.apply_updates(adapters, updates), opt_state, loss, grads

    opt_state = tx.init(adapters)  # optimizer state for the adapters only
    new, opt_state, loss0, grads = step(adapters, opt_state, frozen)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    g = grads["layers"]["mlp"]["gate_lora"]
    # At B = 0 only B gets a gradient (dL/dA = x^T dL/dy B^T s = 0): the LoRA init.
    assert not np.any(np.asarray(g["a"][...])) and np.abs(np.asarray(g["b"][...])).max() > 0
    for _ in range(3):
        new, opt_state, loss, grads = step(new, opt_state, frozen)
    assert float(loss) < float(loss0)
    assert np.abs(np.asarray(grads["layers"]["mlp"]["gate_lora"]["a"][...])).max() > 0

    # Through the whole model: nnx.grad with a LoRA filter differentiates adapters only.
    grad_fn = nnx.jit(nnx.grad(lambda m: _cheap_loss(m, ids),
                               argnums=nnx.DiffState(0, lora.LoRA)))
    grads = grad_fn(nnx.merge(graphdef, new, frozen))
    assert jax.tree.structure(grads) == jax.tree.structure(new)


def test_dropout_needs_a_key_touches_only_adapters_and_is_replayed_by_remat():
    ids = _ids()
    grads = {}
    for remat in ("none", "full"):
        base = models.init_model(models.tiny_config("llama", remat=remat))
        fresh = lora.add_lora(base, rank=RANK, alpha=ALPHA, dropout=0.5,
                              targets=("v_proj", "up"))
        graphdef, fresh_ad, frozen = lora.split_lora(fresh)
        adapters = lora.split_lora(_randomize(fresh))[1]
        loss = lambda ad, k, g=graphdef, f=frozen: _cheap_loss(nnx.merge(g, ad, f), ids, k)
        if remat == "full":
            # Raw uint32 key data (like TrainState.rng) gives the same masks as the typed key;
            # the recomputed forward replays them.
            grads[remat] = jax.jit(jax.value_and_grad(loss))(
                adapters, jax.random.key_data(jax.random.key(7)))
            continue

        @jax.jit
        def run(adapters, fresh_ad, loss=loss):
            key, other = jax.random.key(7), jax.random.key(8)
            return (jax.value_and_grad(loss)(adapters, key), loss(adapters, other),
                    loss(adapters, None), loss(fresh_ad, key), loss(fresh_ad, None))

        grads[remat], other, no_key, fresh_key, fresh_no_key = run(adapters, fresh_ad)
        assert float(grads[remat][0]) != float(other)  # the masks depend on the key
        assert float(grads[remat][0]) != float(no_key)  # no key: no dropout
        # Dropout is on the adapter branch only: with B = 0 it changes nothing.
        assert float(fresh_key) == float(fresh_no_key)
    for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads["full"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_remat_policies_give_the_same_adapter_gradients():
    """`save_dots` keeps an adapted projection's sum (`lora.LORA_OUT`): same numbers."""
    ids = _ids()
    outs = []
    for remat in ("none", "save_dots"):
        base = models.init_model(models.tiny_config("qwen3", remat=remat))
        graphdef, adapters, frozen = lora.split_lora(
            _randomize(lora.add_lora(base, rank=RANK, alpha=ALPHA, targets=("q_proj", "up"))))
        fn = jax.jit(jax.value_and_grad(
            lambda ad, g=graphdef, f=frozen: _cheap_loss(nnx.merge(g, ad, f), ids)))
        outs.append(fn(adapters))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------- decoding / sampling


def test_kv_cache_decode_with_adapters_equals_merged():
    base = models.init_model(models.tiny_config("mistral", sliding_window=3), seed=1)
    adapted = _randomize(lora.add_lora(base, rank=RANK, alpha=ALPHA))
    merged = lora.merge_lora(adapted)
    rs = np.random.RandomState(0)
    p, n = 6, 4
    prompt, mask = rs.randint(0, 256, (2, p)), np.ones((2, p), np.int32)
    prompt[1, :2], mask[1, :2] = PAD, 0
    gen = jnp.asarray(rs.randint(0, 256, (2, n)))
    steps = {}
    for name, model in (("adapted", adapted), ("merged", merged)):
        cache = models.init_cache(model.config, batch_size=2, max_length=p + n)
        logits, cache = models.prefill(model, jnp.asarray(prompt), jnp.asarray(mask), cache)
        out = [logits]
        for i in range(n - 1):
            logits, cache = models.decode_step(model, gen[:, i], cache)
            out.append(logits)
        steps[name] = np.stack([np.asarray(x) for x in out], 1)
    np.testing.assert_allclose(steps["adapted"], steps["merged"], atol=1e-5)
    full = _logits(adapted, jnp.concatenate([jnp.asarray(prompt), gen], 1),
                   jnp.concatenate([jnp.asarray(mask), jnp.ones((2, n), jnp.int32)], 1))
    np.testing.assert_allclose(steps["adapted"], full[:, p - 1:p + n - 1], atol=1e-5)


def test_sampler_with_adapters_equals_merged(llama):
    _, _, adapted = llama
    prompts = [[1, 2, 3, 4], [5, 6]]
    kw = dict(max_new_tokens=5, eos_id=EOS, pad_id=PAD, temperature=0.0)
    ours = sampling.generate(adapted, prompts, **kw)
    merged = sampling.generate(lora.merge_lora(adapted), prompts, **kw)
    np.testing.assert_array_equal(ours.tokens, merged.tokens)
    np.testing.assert_allclose(ours.logps, merged.logps, atol=1e-5)
    base = sampling.generate(llama[0], prompts, **kw)
    assert not np.array_equal(ours.tokens, base.tokens)


def test_merged_export_round_trips_through_hf(qwen3, tmp_path):
    pytest.importorskip("safetensors")
    _, _, adapted = qwen3
    merged = lora.merge_lora(adapted)
    models.to_hf(merged, tmp_path)
    again = models.from_hf(tmp_path)
    for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(merged))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(_logits(again), _logits(adapted), atol=1e-5)


# --------------------------------------------------------------------------- errors, sharding


def test_bad_arguments_raise(llama):
    base = llama[0]
    for rank in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            lora.add_lora(nnx.clone(base), rank=rank, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        lora.add_lora(nnx.clone(base), rank=2, alpha=0.0)
    with pytest.raises(ValueError, match="dropout"):
        lora.add_lora(nnx.clone(base), rank=2, alpha=1.0, dropout=1.0)
    with pytest.raises(ValueError, match=r"unknown LoRA targets \['qproj'\].*q_proj.*down"):
        lora.add_lora(nnx.clone(base), rank=2, alpha=1.0, targets=("qproj", "up"))
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        lora.add_lora(nnx.clone(base), rank=2, alpha=1.0, targets=())
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(nnx.clone(llama[1]), rank=2, alpha=1.0)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.split_lora(base)
    with pytest.raises(ValueError, match="no attention / MLP"):
        lora.add_lora(models.ValueHead(base.config, rngs=nnx.Rngs(0)), rank=2, alpha=1.0)


def test_adapter_shardings_follow_the_rules(llama):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    specs = sharding.tree_shardings(lora.lora_state(llama[1]), mesh=mesh)["layers"]
    assert specs["attn"]["q_proj_lora"]["a"].spec == P(None, "fsdp")
    assert specs["attn"]["q_proj_lora"]["b"].spec == P(None, None, "tensor")
    assert specs["mlp"]["down_lora"]["a"].spec == P(None, "tensor")


# ------------------------------------------------------------------------------- memory


def test_memory_of_adapter_training_at_1b_scale():
    """Optimizer state + gradients of LoRA (r=16, all 7 projections) vs full fine-tuning on the
    Llama-3.2-1B shape; abstract only (eval_shape + a compile, nothing allocated)."""
    cfg = models.ModelConfig(family="llama", vocab_size=128256, hidden_size=2048,
                             intermediate_size=8192, num_layers=16, num_heads=32,
                             num_kv_heads=8, head_dim=64, tie_word_embeddings=True,
                             remat="full")
    tx = optax.adamw(1e-4)
    ids = jax.ShapeDtypeStruct((1, 512), jnp.int32)
    gib = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**30
    out = {}
    for kind in ("full", "lora"):
        def make(kind=kind):
            model = models.Transformer(cfg, rngs=nnx.Rngs(0))
            return lora.add_lora(model, rank=16, alpha=32.0) if kind == "lora" else model

        abstract = nnx.eval_shape(make)
        if kind == "full":
            graphdef, params = nnx.split(abstract)
            frozen, merge = (), lambda p, f, g=graphdef: nnx.merge(g, p)
        else:
            graphdef, params, frozen = lora.split_lora(abstract)
            merge = lambda p, f, g=graphdef: nnx.merge(g, p, f)

        def step(params, opt_state, frozen, ids, merge=merge):
            loss, grads = jax.value_and_grad(lambda p: _loss(merge(p, frozen), ids))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        opt_state = jax.eval_shape(tx.init, params)
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, frozen,
                                                             ids).compile()
        out[kind] = dict(trainable=gib(params), frozen=gib(frozen), grads=gib(params),
                         opt_state=gib(opt_state),
                         temp=compiled.memory_analysis().temp_size_in_bytes / 2**30)
        print(kind, {k: f"{v:.3f} GiB" for k, v in out[kind].items()})
    full, ad = out["full"], out["lora"]
    assert 4.5 < full["trainable"] < 4.7 and full["opt_state"] > 9.0  # 1.24B float32
    assert ad["frozen"] == pytest.approx(full["trainable"], rel=1e-3)  # the base, once
    assert ad["grads"] + ad["opt_state"] < 0.02 * (full["grads"] + full["opt_state"])
    assert ad["temp"] < 0.5 * full["temp"]  # full FT's temp holds its 4.6 GiB of gradients
