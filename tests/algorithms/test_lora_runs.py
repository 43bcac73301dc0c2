"""LoRA through the engine (`lora.rank > 0`): only the adapters (and small heads) train, the
frozen base is the reference, the export is the merged model, resume is exact."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from alignax import config, metrics
from alignax.models import from_hf, init_model, merge_lora, tiny_config
from alignax.models.lora import add_lora, lora_base_params, lora_trainable
from tests.runs import load, train

LORA = ("--config.lora.rank=4", "--config.lora.alpha=8.0", "--config.train.eval_every=0",
        "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=10")


def _raw_state(workdir, step):
    """The checkpoint's saved state as nested dicts of numpy arrays (no target needed)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    tree = ocp.PyTreeCheckpointer().restore(path)
    return jax.tree.map(np.asarray, tree)


def _flat(tree):
    """`{"a/b/c": array}` of a restored tree (nnx's `/value` level dropped)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        out["/".join(keys[:-1] if keys[-1] == "value" else keys)] = leaf
    return out


def test_trainable_mask_freezes_each_adapted_transformer_only():
    model = init_model(tiny_config(), seed=0)
    add_lora(model, rank=2, alpha=4.0)
    state = nnx.state(model)
    params = {"policy": state, "critic": {"head": state["norm"]}}
    mask = lora_trainable(params)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    names = {"/".join(str(getattr(k, "key", k)) for k in p): m for p, m in flat}
    assert names["critic/head/scale"] is True  # outside the adapted transformer: trained
    assert names["policy/layers/attn/q_proj_lora/a"] is True
    assert names["policy/layers/attn/q_proj_lora/b"] is True
    for frozen in ("policy/embed", "policy/layers/attn/q_proj", "policy/norm/scale",
                   "policy/lm_head"):
        assert names[frozen] is False, frozen
    # No adapters: everything trains.
    assert all(jax.tree.leaves(lora_trainable(nnx.state(init_model(tiny_config(), seed=0)))))


def test_base_params_are_the_model_without_adapters():
    model = init_model(tiny_config(), seed=0)
    base_logits = model(np.array([[1, 2, 3, 4]]))
    add_lora(model, rank=2, alpha=4.0)
    graphdef, state = nnx.split(model)
    # Move b off zero: the adapted model differs, its base view does not.
    state = jax.tree.map(lambda v: v + 0.1, state)
    adapted = nnx.merge(graphdef, state)(np.array([[1, 2, 3, 4]]))
    base = nnx.merge(graphdef, lora_base_params(state))(np.array([[1, 2, 3, 4]]))
    assert not np.allclose(adapted, base_logits, atol=1e-3)
    shifted = init_model(tiny_config(), seed=0)
    shifted_state = jax.tree.map(lambda v: v + 0.1, nnx.state(shifted))
    want = nnx.merge(nnx.graphdef(shifted), shifted_state)(np.array([[1, 2, 3, 4]]))
    np.testing.assert_array_equal(base, want)


@pytest.fixture(scope="module")
def lora_dpo(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lora_dpo"))
    summary = train(load("dpo", *LORA), workdir)
    return workdir, summary


@pytest.mark.slow
def test_lora_dpo_trains_only_adapters_against_the_base(lora_dpo):
    workdir, summary = lora_dpo
    rows = metrics.read_metrics(workdir)
    # The reference is the base model and fresh adapters change nothing: step 1's policy is
    # its reference exactly, so the loss is log 2 and the margins 0.
    assert rows[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-6)
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["rewards/margins"] != 0.0
    first, last = _raw_state(workdir, 1), _raw_state(workdir, 4)
    assert first.get("ref_params") is None and last.get("ref_params") is None  # no copy
    p1, p4 = _flat(first["params"]), _flat(last["params"])
    lora_keys = [k for k in p1 if "_lora/" in k]
    assert lora_keys and len(lora_keys) < len(p1)
    for k in p1:
        if "_lora/" in k:
            continue
        np.testing.assert_array_equal(p1[k], p4[k], err_msg=k)  # the base never moves
    assert any(not np.array_equal(p1[k], p4[k]) for k in lora_keys if k.endswith("/b"))
    # The optimizer state covers the adapters only: Adam's mu holds no base weight.
    mu = [k for k in _flat(last["opt_state"]) if "/mu/" in k]
    assert mu and all("_lora/" in k for k in mu), mu[:5]
    # The export is the merged model: a plain HF checkpoint of base + (alpha / r) A B.
    exported = from_hf(summary["hf_export"])
    assert not any("_lora" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(
        nnx.state(exported)))


@pytest.mark.slow
def test_lora_export_equals_merged_checkpoint(lora_dpo, tmp_path):
    workdir, summary = lora_dpo
    cfg = config.load_config(os.path.join(workdir, "config.json"))
    from alignax.train.context import build_model

    model = build_model(cfg.model, seed=cfg.train.seed, lora=cfg.lora)
    graphdef, state = nnx.split(model)
    saved = _flat(_raw_state(workdir, 4)["params"])
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        var.set_value(saved["/".join(map(str, path))])
    merged = merge_lora(nnx.merge(graphdef, nnx.from_flat_state(flat)))
    exported = from_hf(summary["hf_export"])
    ids = np.array([[3, 5, 7, 9, 11]])
    np.testing.assert_allclose(exported(ids), merged(ids), atol=1e-5)


@pytest.mark.slow
def test_lora_resume_is_identical(lora_dpo, tmp_path):
    straight, resumed = lora_dpo[0], str(tmp_path)
    train(load("dpo", *LORA, "--config.train.export_hf=False", "--config.train.steps=2"),
          resumed)
    train(load("dpo", *LORA, "--config.resume.allow_changes=True"), resumed)
    a, b = metrics.read_metrics(straight), metrics.read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sft", "reward_model"])  # kto: same path as dpo
def test_lora_offline_smoke(name, tmp_path):
    extra = ("--config.lora.dropout=0.1",) if name == "sft" else ()
    train(load(name, *LORA, *extra), str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows)
    params = _flat(_raw_state(str(tmp_path), 4)["params"])
    first = _flat(_raw_state(str(tmp_path), 1)["params"])
    changed = {k for k in params if not np.array_equal(params[k], first[k])}
    assert changed and all("_lora/" in k or "head" in k for k in changed), sorted(changed)
    if name == "reward_model":  # the score head trains in full
        assert any("head" in k and "_lora" not in k for k in changed)


def test_lora_dropout_is_refused_where_unused(tmp_path):
    with pytest.raises(config.ConfigError, match="lora.dropout"):
        train(load("reward_model", *LORA, "--config.lora.dropout=0.1"), str(tmp_path))


@pytest.mark.slow
def test_lora_grpo_kl_starts_at_zero(tmp_path):
    cfg = load("grpo", *LORA, "--config.train.export_hf=False", "--config.loss.beta=0.04",
               "--config.train.steps=2")
    cfg.reward.functions = tuple(cfg.reward.functions) + ("brevity",)
    cfg.reward.weights = tuple(cfg.reward.weights) + (1.0,)
    train(cfg, str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2]
    # The reference is the base: the first rollout's policy is it exactly.
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)
    first, last = _raw_state(str(tmp_path), 1), _raw_state(str(tmp_path), 2)
    assert last.get("ref_params") is None
    p1, p4 = _flat(first["params"]), _flat(last["params"])
    assert all(np.array_equal(p1[k], p4[k]) for k in p1 if "_lora/" not in k)
