"""Inference-time head control: one-hot weights = that head's samples, mixing = weighted sum of
raw logits (against a direct full forward), a vmapped sweep = separate calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax.data import arithmetic
from alignax.models import (
    ByteTokenizer,
    MultiHeadLM,
    check_head_weights,
    init_model,
    mix_heads,
    tiny_config,
)
from alignax.sampling import generate, left_pad, sample_tokens, sweep_head_weights, weight_grid

TOK = ByteTokenizer()
PROMPTS = ["12+7=", "3+15=", "9+9=", "20+1="]
KW = dict(max_new_tokens=5, stop_ids=(TOK.eos_id,), pad_id=TOK.pad_id)


@pytest.fixture(scope="module")
def model():
    base = init_model(tiny_config("llama", hidden_size=32, intermediate_size=64, num_heads=2,
                                  num_kv_heads=1), seed=0)
    # Large noise: the three heads are really different models.
    return MultiHeadLM.from_base(base, 3, noise_std=0.3, seed=1)


@pytest.fixture(scope="module")
def prompts():
    return left_pad([TOK.encode(p) for p in PROMPTS], TOK.pad_id)


def test_one_hot_weights_sample_exactly_that_head(model, prompts):
    ids, mask = prompts
    graphdef, params = nnx.split(model)
    key = jax.random.key(3)
    w = np.zeros(3, np.float32)
    w[2] = 1.0
    assert np.array_equal(mix_heads(model.heads.weight[...], w),
                          np.asarray(model.heads.weight[...][2]))  # bit for bit
    got = sample_tokens(graphdef, params, ids, mask, key, w, num_samples=2, temperature=1.0,
                          top_k=20, **KW)
    # The same head as a plain Transformer through the ordinary sampler.
    lm_graphdef, lm_params = nnx.split(model.as_lm(w))
    want = sample_tokens(lm_graphdef, lm_params, ids, mask, key, num_samples=2,
                         temperature=1.0, top_k=20, **KW)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.logps, want.logps, rtol=1e-5, atol=1e-5)
    # And it is not head 0's sample (the check can fail).
    other = sample_tokens(graphdef, params, ids, mask, key, np.eye(3, dtype=np.float32)[0],
                            num_samples=2, temperature=1.0, top_k=20, **KW)
    assert not np.array_equal(other.tokens, got.tokens)


def test_mixing_is_the_weighted_sum_of_raw_logits(model, prompts):
    ids, mask = prompts
    graphdef, params = nnx.split(model)
    w = np.array([2.0, 1.0, 1.0], np.float32)  # normalised to (0.5, 0.25, 0.25)
    temperature = 0.7
    out = sample_tokens(graphdef, params, ids, mask, jax.random.key(0), w, num_samples=1,
                          temperature=temperature, **KW)
    # Direct: full forward over prompt + sampled tokens, every head's logits, mix, softmax.
    full_ids = jnp.concatenate([jnp.asarray(ids), out.tokens], axis=1)
    full_mask = jnp.concatenate([jnp.asarray(mask), out.mask], axis=1)
    head_logits = model(full_ids, full_mask)  # [H, B, S, V]
    mixed = jnp.tensordot(jnp.asarray(w / w.sum()), head_logits, axes=1)
    p = ids.shape[1]
    lp = jax.nn.log_softmax(mixed[:, p - 1:-1] / temperature, axis=-1)
    want = jnp.take_along_axis(lp, out.tokens[..., None], -1)[..., 0] * out.mask
    np.testing.assert_allclose(out.logps, want, atol=2e-5)
    # Not a mixture of probabilities: that would give other numbers.
    probs = jnp.tensordot(jnp.asarray(w / w.sum()),
                          jax.nn.softmax(head_logits[:, :, p - 1:-1] / temperature), axes=1)
    wrong = jnp.take_along_axis(jnp.log(probs), out.tokens[..., None], -1)[..., 0] * out.mask
    assert float(jnp.max(jnp.abs(wrong - want))) > 1e-3
    # The mixed head (`models.mix_heads`) gives the same mixture: logits are linear in W.
    hidden, _ = model.hidden_states(full_ids, full_mask)
    np.testing.assert_allclose(hidden @ mix_heads(model.heads.weight[...], w), mixed, atol=1e-4)


def test_sweep_equals_separate_calls(model, prompts):
    ids, mask = prompts
    graphdef, params = nnx.split(model)
    weights = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5], [0, 0, 1]], np.float32)
    answers = np.repeat(np.asarray([arithmetic.answer_of(p) for p in PROMPTS], np.int32), 2)
    key = jax.random.key(7)
    kw = dict(KW, num_samples=2, temperature=1.0, top_p=0.9)
    sweep = sweep_head_weights(graphdef, params, ids, mask, key, weights, (answers,),
                                  score_fn=arithmetic.token_scores, **kw)
    assert sweep.samples.tokens.shape == (4, 8, 5) and sweep.scores.shape == (4, 8, 2)
    for k, w in enumerate(weights):
        one = sample_tokens(graphdef, params, ids, mask, key, w, **kw)
        np.testing.assert_array_equal(sweep.samples.tokens[k], one.tokens)
        np.testing.assert_array_equal(sweep.samples.mask[k], one.mask)
        np.testing.assert_allclose(sweep.samples.logps[k], one.logps, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(sweep.scores[k],
                                      arithmetic.token_scores(one.tokens, one.mask, answers))
    assert len({bytes(np.asarray(t)) for t in sweep.samples.tokens}) > 1  # weights matter


def test_weight_checks_and_grid(model):
    np.testing.assert_allclose(check_head_weights([3, 1, 0], 3), [0.75, 0.25, 0.0])
    with pytest.raises(ValueError, match="expected 3 weights"):
        check_head_weights([0.7, 0.3], 3)
    with pytest.raises(ValueError, match="not all 0"):
        check_head_weights([0, 0, 0], 3)
    with pytest.raises(ValueError, match=">= 0"):
        check_head_weights([1, -1, 1], 3)
    grid = weight_grid(5)
    np.testing.assert_allclose(grid[:, 1], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(grid.sum(1), 1.0)
    out = generate(model, [TOK.encode("1+1=")], head_weights=[0, 1, 0], max_new_tokens=3,
                   eos_id=TOK.eos_id, pad_id=TOK.pad_id)
    assert isinstance(out.tokens, np.ndarray) and out.tokens.shape == (1, 3)
