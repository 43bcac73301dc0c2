"""HF import/export: logits equal transformers' float32 logits, round trips, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import models
from tests.models.hf_util import FAMILIES, VOCAB, hf_logits

pytest.importorskip("transformers")

# Same float32 maths in a different order (XLA vs torch kernels): ~1e-6 on logits of size ~5.
TOL = 1e-4
B, S, REAL = 2, 12, 7  # row 1 is right-padded after REAL tokens


def _ids_and_mask():
    ids = np.random.RandomState(0).randint(0, VOCAB, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, REAL:] = 0
    return ids, mask


def _real_error(a, b, mask):
    """Max |a - b| over real (mask = 1) positions."""
    return float(np.max(np.abs(a - b) * mask[..., None]))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family, saved_hf):
    hf_model, path = saved_hf(family)
    ids, mask = _ids_and_mask()
    model = models.from_hf(path)
    assert model.config.family == family.replace("llama3", "llama")

    ours = np.asarray(models.forward(model, jnp.asarray(ids)))
    ref = hf_logits(hf_model, ids)
    assert ours.shape == (B, S, VOCAB)
    err = float(np.max(np.abs(ours - ref)))
    print(f"{family}: max |logit error| no padding {err:.2e} (max |logit| "
          f"{np.abs(ref).max():.2f})")
    assert err < TOL

    ours_pad = np.asarray(models.forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    ref_pad = hf_logits(hf_model, ids, mask)
    err_pad = _real_error(ours_pad, ref_pad, mask)
    print(f"{family}: max |logit error| right padding {err_pad:.2e}")
    assert err_pad < TOL
    # Padding changes nothing on the real tokens of the padded row.
    assert _real_error(ours_pad, ours, mask) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_to_hf_round_trip(family, saved_hf, tmp_path):
    import transformers

    hf_model, path = saved_hf(family)
    model = models.from_hf(path)
    written = models.to_hf(model, tmp_path)
    assert "model.safetensors" in written and "config.json" in written
    reloaded = getattr(transformers, type(hf_model).__name__).from_pretrained(tmp_path).eval()
    ids, mask = _ids_and_mask()
    err = float(np.max(np.abs(hf_logits(reloaded, ids) - hf_logits(hf_model, ids))))
    err_pad = _real_error(hf_logits(reloaded, ids, mask), hf_logits(hf_model, ids, mask), mask)
    print(f"{family}: to_hf round trip max |logit error| {err:.2e} / padded {err_pad:.2e}")
    assert err < TOL and err_pad < TOL
    # Our own loader reads the export back bit for bit.
    again = models.from_hf(tmp_path)
    for a, b in zip(jax.tree.leaves(models.logical_axes(model)),
                    jax.tree.leaves(models.logical_axes(again))):
        assert a == b
    np.testing.assert_array_equal(np.asarray(again.embed[...]), np.asarray(model.embed[...]))
    np.testing.assert_array_equal(np.asarray(again.layers.mlp.down[...]),
                                  np.asarray(model.layers.mlp.down[...]))


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_sharded_checkpoint_with_index(saved_hf, tmp_path):
    import transformers

    hf_model, path = saved_hf("qwen3")
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
    sharded, single = models.from_hf(tmp_path / "hf"), models.from_hf(path)
    for a, b in zip(_params(sharded), _params(single)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Our exporter shards too, and transformers reads its index.
    written = models.to_hf(sharded, tmp_path / "out", max_shard_bytes=16_000)
    assert "model.safetensors.index.json" in written and len(written) > 3
    reloaded = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids, _ = _ids_and_mask()
    assert np.max(np.abs(hf_logits(reloaded, ids) - hf_logits(hf_model, ids))) < TOL


def test_missing_tensor_is_named(saved_hf, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = saved_hf("llama")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    del tensors["model.norm.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(models.MissingTensorsError) as info:
        models.from_hf(tmp_path)
    assert "model.layers.1.self_attn.k_proj.weight" in str(info.value)
    assert "model.norm.weight" in str(info.value)
    assert "2 tensor(s)" in str(info.value)


def test_unknown_architecture_is_named(saved_hf, tmp_path):
    _, path = saved_hf("llama")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        models.from_hf(tmp_path)


def test_pickle_checkpoints_are_refused(saved_hf, tmp_path):
    _, path = saved_hf("llama")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle"):
        models.from_hf(tmp_path)


def test_unexpected_tensor_is_named(saved_hf, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = saved_hf("llama")
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.bias"] = np.zeros(64, np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(ValueError, match="up_proj.bias"):
        models.from_hf(tmp_path)


def test_dtypes(saved_hf):
    _, path = saved_hf("qwen2")
    mixed = models.from_hf(path, dtype=jnp.bfloat16)
    assert mixed.embed[...].dtype == jnp.float32  # f32 master weights, bf16 compute
    hidden, _ = nnx.eval_shape(lambda m: m.hidden_states(jnp.zeros((1, 4), jnp.int32)), mixed)
    assert hidden.dtype == jnp.bfloat16
    low = models.from_hf(path, dtype="bfloat16", param_dtype="bfloat16")
    assert all(p.dtype == jnp.bfloat16 for p in _params(low))


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 256},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
     "beta_fast": 16, "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.5},
])
def test_rope_frequencies_match_transformers(scaling):
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from alignax.models.attention import rope_frequencies

    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                        rope_theta=500000.0, max_position_embeddings=1024,
                        rope_scaling=dict(scaling))
    inv, factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    cfg = models.ModelConfig.from_hf({**hf.to_dict(), "architectures": ["LlamaForCausalLM"]})
    ours, our_factor = rope_frequencies(cfg)
    np.testing.assert_allclose(ours, inv.numpy(), rtol=1e-6)  # same float32 recipe
    assert our_factor == pytest.approx(factor, rel=1e-12)


def test_config_round_trip_and_tiny_configs():
    for name in ("llama", "llama3", "qwen2", "qwen3", "mistral"):
        cfg = models.tiny_config(name)
        back = models.ModelConfig.from_hf(cfg.to_hf())
        assert back == cfg, name
    with pytest.raises(ValueError, match="unknown tiny model"):
        models.tiny_config("gpt2")


def test_uses_own_random_model_end_to_end(tmp_path):
    """to_hf of a freshly initialised alignax model loads in transformers with our logits."""
    import transformers

    cfg = models.tiny_config("qwen3", vocab_size=VOCAB, hidden_size=32, head_dim=8,
                             intermediate_size=64, pad_token_id=None, bos_token_id=None,
                             eos_token_id=None)
    model = models.init_model(cfg, seed=3)
    models.to_hf(model, tmp_path)
    hf_model = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = _ids_and_mask()
    ours = np.asarray(models.forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert _real_error(ours, hf_logits(hf_model, ids, mask), mask) < TOL


def test_per_layer_sliding_window_matches_transformers(tmp_path):
    """Qwen2 with use_sliding_window: only layers >= max_window_layers use the window."""
    import transformers

    from tests.models.hf_util import make_hf_model

    hf_model = make_hf_model("qwen2", use_sliding_window=True, sliding_window=3,
                             max_window_layers=1)
    assert hf_model.config.layer_types == ["full_attention", "sliding_attention"]
    hf_model.save_pretrained(tmp_path / "in")
    model = models.from_hf(tmp_path / "in")
    assert model.config.sliding_window == 3 and model.config.sliding_layers == (False, True)
    ids, mask = _ids_and_mask()
    ours = np.asarray(models.forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    assert _real_error(ours, hf_logits(hf_model, ids, mask), mask) < TOL
    # The window matters here: the same weights without it give other logits.
    models.to_hf(model, tmp_path / "out")
    back = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert back.config.layer_types == ["full_attention", "sliding_attention"]
    no_window = transformers.Qwen2ForCausalLM.from_pretrained(
        tmp_path / "out", layer_types=["full_attention"] * 2).eval()
    assert np.max(np.abs(hf_logits(no_window, ids) - hf_logits(hf_model, ids))) > 1e-3
