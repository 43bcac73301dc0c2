"""The sampler against independent computations: a full forward pass per step (greedy), the
training forward's log-probs, a numpy top-k / top-p reference, and empirical frequencies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax.models import forward, init_model, tiny_config, token_logps
from alignax.sampling import filter_logits, generate, left_pad, sample_tokens

EOS, PAD = 258, 256
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]  # ragged: rows 1 and 2 are left-padded


@pytest.fixture(scope="module")
def model():
    return init_model(tiny_config("llama"), seed=0)


def _full_forward_check(model, prompts, tokens, logps, mask):
    """Greedy tokens are the argmax, and logps the log softmax, of one causal full forward over
    each finished row (right-padded, no cache): step t is predicted at slot len(prompt)-1+t."""
    seqs = [p + t[m.astype(bool)].tolist() for p, t, m in zip(prompts, tokens, mask)]
    width = max(map(len, seqs))
    ids = np.array([s + [PAD] * (width - len(s)) for s in seqs], np.int32)
    attn = np.array([[1] * len(s) + [0] * (width - len(s)) for s in seqs], np.int32)
    lp = np.asarray(jax.nn.log_softmax(forward(model, jnp.asarray(ids), jnp.asarray(attn))))
    for i, prompt in enumerate(prompts):
        n = int(mask[i].sum())
        at = lp[i, len(prompt) - 1:len(prompt) - 1 + n]
        np.testing.assert_array_equal(np.argmax(at, -1), tokens[i, :n])
        np.testing.assert_allclose(logps[i, :n], at[np.arange(n), tokens[i, :n]], atol=1e-4)


def test_greedy_matches_full_forward(model):
    tokens, logps, mask = generate(model, PROMPTS, max_new_tokens=5, eos_id=EOS, pad_id=PAD)
    assert tokens.shape == (3, 5) and mask[:, 0].all()
    _full_forward_check(model, PROMPTS, tokens, logps, mask)


@pytest.mark.parametrize("name,overrides", [
    ("mistral", {}),                                  # every layer slides (window 8)
    ("mistral", {"sliding_layers": (True, False)}),   # mixed sliding / full layers
    ("qwen2", {}), ("qwen3", {}),                     # q/k/v biases; q/k norms, tied head
])
def test_greedy_matches_full_forward_across_families(name, overrides):
    # Prompt + new tokens run past the sliding window: the decode masks must match.
    model = init_model(tiny_config(name, **overrides), seed=1)
    prompts = [list(range(20, 27)), [30, 31, 32]]
    tokens, logps, mask = generate(model, prompts, max_new_tokens=6, eos_id=EOS, pad_id=PAD,
                                   stop_ids=(-1,))
    assert mask.all()
    _full_forward_check(model, prompts, tokens, logps, mask)


def test_g_greedy_samples_per_prompt_are_prompt_major_copies(model):
    one = generate(model, PROMPTS, max_new_tokens=4, eos_id=EOS, pad_id=PAD)
    many = generate(model, PROMPTS, max_new_tokens=4, eos_id=EOS, pad_id=PAD, num_samples=3)
    assert many.tokens.shape == (9, 4)
    np.testing.assert_array_equal(many.tokens, np.repeat(one.tokens, 3, axis=0))
    np.testing.assert_allclose(many.logps, np.repeat(one.logps, 3, axis=0), atol=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 0.9)])
def test_sampler_logps_match_training_forward(model, temperature, top_k, top_p):
    ids, pmask = left_pad(PROMPTS, PAD)
    graphdef, params = nnx.split(model)
    out = sample_tokens(graphdef, params, ids, pmask, jax.random.key(3), num_samples=4,
                        max_new_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p,
                        stop_ids=(EOS,), pad_id=PAD)
    p = ids.shape[1]
    seq = np.concatenate([np.repeat(ids, 4, 0), np.asarray(out.tokens)], 1)
    attn = np.concatenate([np.repeat(pmask, 4, 0), np.asarray(out.mask)], 1)
    hidden, _ = model.hidden_states(jnp.asarray(seq), jnp.asarray(attn))
    ref = token_logps(hidden[:, p - 1:-1], model.lm_head_weight(), jnp.asarray(seq[:, p:]),
                      jnp.asarray(out.mask), temperature=temperature)
    assert np.asarray(out.mask).sum() > 0
    np.testing.assert_allclose(np.asarray(out.logps), np.asarray(ref), atol=2e-5)
    assert np.all(np.asarray(out.logps)[np.asarray(out.mask) == 0] == 0)


def _np_filter(logits, top_k, top_p):
    """Straightforward per-row reference: sort, keep the top k, then the nucleus."""
    out = np.full_like(logits, -np.inf)
    for r, row in enumerate(logits):
        order = np.argsort(-row, kind="stable")
        keep = order[:top_k] if top_k else order
        kth = row[keep[-1]]
        keep = np.flatnonzero(row >= kth)  # ties at the k-th value stay
        z = row[keep] - row[keep].max()
        probs = np.exp(z) / np.exp(z).sum()
        ranked = np.argsort(-probs, kind="stable")
        cum = 0.0
        chosen = []
        for j in ranked:
            if cum >= top_p:
                break
            chosen.append(keep[j])
            cum += probs[j]
        thresh = row[chosen].min()
        final = [i for i in keep if row[i] >= thresh]
        out[r, final] = row[final]
    return out


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.5), (7, 0.8), (0, 1.0), (1, 0.3),
                                         (3, 0.999)])
def test_filter_logits_matches_numpy_reference(top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32) * 2
    logits[0, :4] = 3.0  # ties
    got = np.asarray(filter_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p))
    want = _np_filter(logits, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)])
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(jnp.asarray(logits), top_p=0.0)


def test_draws_follow_the_filtered_distribution(model):
    # One new token, 4000 samples of one prompt: frequencies match softmax over the top k.
    n, k, temp = 4000, 4, 0.8
    s = generate(model, [PROMPTS[0]], max_new_tokens=1, eos_id=EOS, pad_id=PAD,
                 temperature=temp, top_k=k, num_samples=n, seed=1)
    logits = np.asarray(model(jnp.asarray([PROMPTS[0]]))[0, -1]) / temp
    top = np.argsort(-logits)[:k]
    probs = np.exp(logits[top] - logits[top].max())
    probs /= probs.sum()
    assert set(np.unique(s.tokens[:, 0])) <= set(top.tolist())
    freq = np.array([(s.tokens[:, 0] == t).mean() for t in top])
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / n))
    # The recorded log-prob is of the unfiltered tempered distribution.
    full = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    np.testing.assert_allclose(s.logps[:, 0], full[s.tokens[:, 0]], atol=1e-5)


def test_sampling_is_deterministic_under_a_key(model):
    kw = dict(max_new_tokens=6, eos_id=EOS, pad_id=PAD, temperature=1.0, num_samples=4)
    a = generate(model, PROMPTS, seed=7, **kw)
    b = generate(model, PROMPTS, seed=7, **kw)
    c = generate(model, PROMPTS, seed=8, **kw)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)
    # G samples of one prompt differ from each other at temperature 1.
    assert len({tuple(r) for r in a.tokens[:4]}) > 1


def test_stop_tokens_end_rows_and_pad_after(model):
    free = generate(model, PROMPTS, max_new_tokens=6, eos_id=EOS, pad_id=PAD)
    stop = int(free.tokens[0, 2])  # the greedy path emits this at step 2 of row 0
    out = generate(model, PROMPTS, max_new_tokens=6, eos_id=EOS, pad_id=PAD,
                   stop_ids=(stop, EOS))
    for row, m, ref in zip(out.tokens, out.mask, free.tokens):
        hits = np.flatnonzero(ref == stop)
        end = hits[0] + 1 if hits.size else 6  # the stop token is kept, mask 1
        np.testing.assert_array_equal(row[:end], ref[:end])
        assert m[:end].all() and not m[end:].any()
        assert (row[end:] == PAD).all() and (out.logps[0][~m.astype(bool)] == 0).all()
    assert out.mask[0].sum() <= 3


def test_float32_weights_with_bf16_compute_sample_like_bf16_weights():
    # The sampler casts weights once up front: identical to a model stored in bf16.
    cfg = tiny_config("llama", dtype="bfloat16")
    m32 = init_model(cfg, seed=2)
    g, p = nnx.split(m32)
    m16 = nnx.merge(g, jax.tree.map(lambda x: x.astype(jnp.bfloat16), p))
    kw = dict(max_new_tokens=5, eos_id=EOS, pad_id=PAD)
    a, b = generate(m32, PROMPTS, **kw), generate(m16, PROMPTS, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logps, b.logps)
