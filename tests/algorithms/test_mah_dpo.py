"""MAH-DPO model and loss function: heads = base + noise, reference = base model, one head =
DPO, routing (a pair reaches only its own head), per-objective metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alignax import config, data
from alignax.algorithms.dpo import dpo_loss_fn, reference_logps_fn
from alignax.algorithms.mah_dpo import (
    mah_dpo_loss_fn,
    multihead_optimizer,
    pair_head_logps,
    scale_trunk_updates,
)
from alignax.models import (
    ByteTokenizer,
    MultiHeadLM,
    from_hf,
    init_model,
    load_multihead,
    save_multihead,
    tiny_config,
)

NAMES = ("correct", "round")


def _batch(objective):
    """A tokenised pair batch of the built-in task with the given objectives per pair."""
    tok = ByteTokenizer()
    pairs = [data.Pair(f"{i + 3}+{2 * i}=", str(3 * i + 3), str(3 * i + 4), objective=k)
             for i, k in enumerate(objective)]
    rows = data.tokenize_examples(pairs, tok, data.Limits(8, 6))
    return data.collate(rows, pad_id=tok.pad_id, buckets=(16,))


@pytest.fixture(scope="module")
def base():
    return init_model(tiny_config("llama", hidden_size=32, intermediate_size=64, num_heads=2,
                                  num_kv_heads=1), seed=1)


@pytest.fixture(scope="module")
def policy_base(base):
    # A policy that differs from the reference (so DPO margins and gradients are not trivial).
    return init_model(base.config, seed=2)


def _trunk_leaves(state):
    return {k: v for k, v in nnx.to_flat_state(state) if k[0] != "lm_head"}


def test_heads_are_base_head_plus_noise(base):
    model = MultiHeadLM.from_base(base, 3, noise_std=0.01, seed=5)
    w = np.asarray(model.heads.weight[...])
    delta = w - np.asarray(base.lm_head_weight())[None]
    assert w.shape == (3, 32, base.config.vocab_size)
    # N(0, 0.01^2) noise over ~30k entries per head: sample std within 2%, mean ~ 0.
    assert np.allclose(delta.std(axis=(1, 2)), 0.01, rtol=0.02)
    assert abs(delta.mean()) < 1e-3
    assert not np.allclose(delta[0], delta[1])  # heads differ from each other
    # The trunk is the base model's, untouched; the trunk's own LM head is gone.
    trunk = dict(nnx.to_flat_state(nnx.state(model.trunk)))
    for k, v in _trunk_leaves(nnx.state(base)).items():
        assert np.array_equal(np.asarray(trunk[k][...]), np.asarray(v[...])), k
    assert not any(k[0] == "lm_head" for k in trunk)
    exact = MultiHeadLM.from_base(base, 2, noise_std=0.0)
    assert np.array_equal(np.asarray(exact.heads.weight[...][1]), np.asarray(base.lm_head_weight()))


def test_tied_embeddings_heads_untied_and_embedding_kept(tmp_path):
    tied = init_model(tiny_config("qwen2", hidden_size=32, intermediate_size=64, num_heads=2,
                                  num_kv_heads=1), seed=0)
    model = MultiHeadLM.from_base(tied, 2, noise_std=0.1)
    assert np.array_equal(np.asarray(model.trunk.embed[...]), np.asarray(tied.embed[...]))
    assert np.allclose(np.asarray(model.heads.weight[...][0]), np.asarray(tied.embed[...]).T,
                       atol=0.6)
    lm = model.as_lm(np.array([0.0, 1.0]))
    assert not lm.config.tie_word_embeddings
    assert np.array_equal(np.asarray(lm.lm_head[...]), np.asarray(model.heads.weight[...][1]))
    # Export + reload: the HF model's head is the export mixture, the heads come back exactly.
    save_multihead(model, tmp_path / "hf", objectives=NAMES, weights=[1.0, 3.0])
    back, names = load_multihead(tmp_path / "hf")
    assert names == list(NAMES)
    assert np.array_equal(np.asarray(back.heads.weight[...]), np.asarray(model.heads.weight[...]))
    assert np.array_equal(np.asarray(back.trunk.embed[...]), np.asarray(tied.embed[...]))
    w = np.asarray(model.heads.weight[...])
    np.testing.assert_allclose(from_hf(tmp_path / "hf").lm_head[...], 0.25 * w[0] + 0.75 * w[1],
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(FileNotFoundError, match="not an alignax multi-head directory"):
        load_multihead(tmp_path / "nothing")


def test_reference_logps_are_the_base_models(base):
    batch = _batch([0, 1, 0, 1])
    graphdef, params = nnx.split(base)
    ref = reference_logps_fn(graphdef)(params, batch)["ref_logps"]  # [B, 2]
    # Independent: full logits, log_softmax, gather, sum over completion tokens.
    b, _, s = batch["input_ids"].shape
    ids = jnp.asarray(batch["input_ids"]).reshape(2 * b, s)
    logits = base(ids, jnp.asarray(batch["attention_mask"]).reshape(2 * b, s))
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], -1)[..., 0]
    want = jnp.sum(lp * batch["completion_mask"].reshape(2 * b, s)[:, 1:], -1).reshape(b, 2)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)
    # Every noise-free head of a fresh MultiHeadLM gives the same numbers: loss log 2.
    model = MultiHeadLM.from_base(base, 2, noise_std=0.0)
    mg, mp = nnx.split(model)
    heads = pair_head_logps(mg, mp, batch)  # [B, 2, H]
    np.testing.assert_allclose(heads, np.broadcast_to(want[..., None], heads.shape), rtol=1e-5,
                               atol=1e-5)
    obj = mah_dpo_loss_fn(mg, objectives=NAMES, ref_graphdef=graphdef)
    loss, mets = jax.jit(obj)(mp, batch, None, ref_params=params)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-5)
    np.testing.assert_allclose(mets["rewards/margins"], 0.0, atol=1e-5)
    # Precomputed reference log-probs in the batch (reference.precompute) instead of params.
    cached = dict(batch, ref_logps=np.asarray(ref) + np.array([0.5, -0.5], np.float32))
    loss, mets = jax.jit(obj)(mp, cached, None)
    np.testing.assert_allclose(mets["rewards/margins"], -0.1, rtol=1e-4)  # beta * (-1)
    with pytest.raises(ValueError, match="needs a reference"):
        jax.eval_shape(lambda p: obj(p, batch, None), mp)


def test_one_head_equals_dpo_loss_and_grads(base, policy_base):
    batch = _batch([0, 1, 1, 0])
    ref_graphdef, ref_params = nnx.split(base)
    pol_graphdef, pol_params = nnx.split(policy_base)
    kw = dict(beta=0.3)
    dpo = dpo_loss_fn(pol_graphdef, loss_types="sigmoid", **kw)
    (l_dpo, m_dpo), g_dpo = jax.jit(jax.value_and_grad(
        lambda p: dpo(p, batch, None, ref_params=ref_params), has_aux=True))(pol_params)

    model = MultiHeadLM.from_base(policy_base, 1, noise_std=0.0)
    mg, mp = nnx.split(model)
    mah = mah_dpo_loss_fn(mg, objectives=NAMES, ref_graphdef=ref_graphdef, **kw)
    (l_mah, m_mah), g_mah = jax.jit(jax.value_and_grad(
        lambda p: mah(p, batch, None, ref_params=ref_params), has_aux=True))(mp)

    assert abs(float(l_dpo) - np.log(2.0)) > 1e-3  # not the trivial loss at the reference
    np.testing.assert_allclose(l_mah, l_dpo, rtol=1e-6)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
              "logps/rejected", "rewards/accuracies"):
        np.testing.assert_allclose(m_mah[k], m_dpo[k], rtol=1e-5, atol=1e-6, err_msg=k)
    flat_dpo = dict(nnx.to_flat_state(g_dpo))
    flat_mah = dict(nnx.to_flat_state(g_mah))
    n = 0
    for k, v in flat_dpo.items():
        if k[0] == "lm_head":
            got = flat_mah[("heads", "weight")][...][0]
        else:
            got = flat_mah[("trunk", *k)][...]
        np.testing.assert_allclose(got, v[...], rtol=2e-4, atol=1e-7, err_msg=str(k))
        n += 1
    assert n == len(flat_mah)  # every policy parameter compared


def test_pairs_reach_only_their_head(base, policy_base):
    ref_graphdef, ref_params = nnx.split(base)
    model = MultiHeadLM.from_base(policy_base, 2, noise_std=0.01)
    mg, mp = nnx.split(model)
    obj = mah_dpo_loss_fn(mg, objectives=NAMES, ref_graphdef=ref_graphdef)
    vg = jax.jit(jax.value_and_grad(lambda p, b: obj(p, b, None, ref_params=ref_params),
                                    has_aux=True))

    def head_grads(objective):
        (loss, mets), g = vg(mp, _batch(objective))
        return loss, mets, np.asarray(g["heads"]["weight"][...])

    _, _, g0 = head_grads([0, 0, 0, 0])
    assert np.all(g0[1] == 0.0) and np.abs(g0[0]).max() > 0  # exactly zero, not small
    _, _, g1 = head_grads([1, 1, 1, 1])
    assert np.all(g1[0] == 0.0) and np.abs(g1[1]).max() > 0
    # Pairs with no objective (-1) train no head.
    _, _, gn = head_grads([-1, 0, -1, 0])
    assert np.all(gn[1] == 0.0)
    # Mixed batch: mean over the present heads of each head's mean loss.
    loss, mets, _ = head_grads([0, 1, 1, 1])
    per = [float(mets["correct/loss"]), float(mets["round/loss"])]
    np.testing.assert_allclose(loss, np.mean(per), rtol=1e-6)
    assert float(mets["correct/examples"]) == 1 and float(mets["round/examples"]) == 3
    # Independent: head k's log-probs, plain DPO per pair, means per objective.
    mixed = _batch([0, 1, 1, 1])
    lp, ref = jax.jit(lambda p, r: (pair_head_logps(mg, p, mixed),
                                    reference_logps_fn(ref_graphdef)(r, mixed)["ref_logps"]))(
        mp, ref_params)
    lp, ref = np.asarray(lp, np.float64), np.asarray(ref, np.float64)
    k = np.array([0, 1, 1, 1])
    logits = 0.1 * ((lp[np.arange(4), 0, k] - lp[np.arange(4), 1, k]) - (ref[:, 0] - ref[:, 1]))
    pair = np.log1p(np.exp(-logits))
    np.testing.assert_allclose(per, [pair[0], pair[1:].mean()], rtol=1e-5)


def test_head_count_must_match_objectives(base):
    model = MultiHeadLM.from_base(base, 3, noise_std=0.0)
    mg, mp = nnx.split(model)
    obj = mah_dpo_loss_fn(mg, objectives=NAMES, reference_free=True)
    with pytest.raises(ValueError, match="3 heads for 2 objectives"):
        jax.eval_shape(lambda p: obj(p, _batch([0, 1]), None), mp)
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        MultiHeadLM.from_base(base, 0)


def test_trunk_lr_scale_scales_only_trunk_updates(base):
    _, params = nnx.split(MultiHeadLM.from_base(base, 2, noise_std=0.0))
    ones = jax.tree.map(jnp.ones_like, params)
    out, _ = scale_trunk_updates(0.25).update(ones, optax.EmptyState())
    flat = dict(nnx.to_flat_state(out))
    assert np.all(np.asarray(flat[("heads", "weight")][...]) == 1.0)
    trunk = [np.asarray(v[...]) for k, v in flat.items() if k[0] == "trunk"]
    assert len(trunk) == len(flat) - 1 and all(np.all(t == 0.25) for t in trunk)
    with pytest.raises(config.ConfigError, match="heads.trunk_lr_scale"):
        scale_trunk_updates(-1.0)


def test_frozen_trunk_gradients_do_not_shrink_the_heads_steps(base):
    # trunk_lr_scale=0: with global-norm clipping active, the heads' updates must not depend
    # on how large the (never applied) trunk gradients are, and the trunk must not move even
    # under weight decay.
    _, params = nnx.split(MultiHeadLM.from_base(base, 2, noise_std=0.0))
    tx = multihead_optimizer(dict(learning_rate=1e-2, warmup_steps=0, max_grad_norm=1.0,
                                  weight_decay=0.1), total_steps=10, trunk_lr_scale=0.0)

    def heads_and_trunk(trunk_grad):
        grads = jax.tree_util.tree_map_with_path(
            lambda p, x: jnp.full_like(x, trunk_grad if p[0].key == "trunk" else 0.5), params)
        updates, _ = tx.update(grads, tx.init(params), params)
        flat = dict(nnx.to_flat_state(updates))
        return (np.asarray(flat[("heads", "weight")][...]),
                max(float(np.abs(np.asarray(v[...])).max()) for k, v in flat.items()
                    if k[0] == "trunk"))

    small, big = heads_and_trunk(1e-3), heads_and_trunk(1e3)
    np.testing.assert_array_equal(small[0], big[0])
    assert np.abs(small[0]).max() > 0 and small[1] == 0.0 and big[1] == 0.0
