"""Rollout pieces of the online trainers against independent computations: row layout, the
rollout forward vs per-sequence forwards, PPO advantages (the worked example of docs/algorithms.md),
GRAO's single concatenated forward, dynamic sampling, rewards, the prompt iterator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import config, data, losses, rewards
from alignax.algorithms.online import data_state, rollout, trainer
from alignax.algorithms.online.grao import grao_loss_fn
from alignax.algorithms.online.ppo import PPO_LOSS, ppo_advantages
from alignax.models import ByteTokenizer, forward, init_model, tiny_config
from alignax.sampling import left_pad, sample_tokens, sequences

PAD, EOS = 256, 258


@pytest.fixture(scope="module")
def model():
    return init_model(tiny_config("llama"), seed=4)


def _rollout(model, g=3, n=5, temperature=1.0):
    prompts = [[5, 6, 7], [8, 9]]
    ids, pmask = left_pad(prompts, PAD)
    graphdef, params = nnx.split(model)
    s = sample_tokens(graphdef, params, ids, pmask, jax.random.key(0), num_samples=g,
                      max_new_tokens=n, temperature=temperature, stop_ids=(EOS,), pad_id=PAD)
    tokens, logps, mask = (np.asarray(x).reshape(2, g, n) for x in s)
    return prompts, ids, pmask, tokens, logps, mask


def test_sequences_layout():
    ids, attn = sequences(np.array([[0, 1, 2]]), np.array([[0, 1, 1]]),
                             np.array([[[3, 4], [5, 0]]]), np.array([[[1, 1], [1, 0]]]))
    np.testing.assert_array_equal(ids, [[[0, 1, 2, 3, 4], [0, 1, 2, 5, 0]]])
    np.testing.assert_array_equal(attn, [[[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]]])


def test_rollout_forward_matches_unpadded_forwards(model):
    prompts, ids, pmask, tokens, logps, mask = _rollout(model)
    seq, attn = sequences(ids, pmask, tokens, mask)
    graphdef, params = nnx.split(model)
    batch = {"input_ids": seq, "attention_mask": attn, "completion_mask": mask,
             "sampler_logps": logps}
    out = jax.jit(lambda p, b: rollout.rollout_forward({"policy": graphdef}, {"policy": p}, p, b,
                                                  temperature=1.0))(params, batch)
    assert float(out["sampler/logp_gap"]) < 1e-5
    np.testing.assert_allclose(out["ref_logps"], out["old_logps"], atol=1e-6)
    # Reference: each sample right-padded on its own row (no left padding), one forward.
    lp = _right_padded_logps(model, [(prompts[b], tokens[b, g], mask[b, g])
                                     for b in range(2) for g in range(3)])
    for j, (b, g) in enumerate((b, g) for b in range(2) for g in range(3)):
        n, p = int(mask[b, g].sum()), len(prompts[b])
        at = lp[j, p - 1:p - 1 + n]
        np.testing.assert_allclose(out["old_logps"][b, g, :n],
                                   at[np.arange(n), tokens[b, g, :n]], atol=2e-5)
        ent = -np.sum(np.exp(at) * at, -1)
        np.testing.assert_allclose(out["entropy"][b, g, :n], ent, atol=2e-5)


def _right_padded_logps(model, rows):
    """`[R, W, V]` log-softmax of one causal forward over `prompt + completion` rows, each
    right-padded (positions 0.. on every row: an independent layout from the rollout's)."""
    seqs = [list(p) + t[m.astype(bool)].tolist() for p, t, m in rows]
    width = max(map(len, seqs))
    ids = np.array([x + [PAD] * (width - len(x)) for x in seqs], np.int32)
    attn = (np.arange(width) < np.array([[len(x)] for x in seqs])).astype(np.int32)
    return np.asarray(jax.nn.log_softmax(forward(model, jnp.asarray(ids), jnp.asarray(attn))))


def test_ppo_advantages_worked_example():
    # docs/algorithms.md (PPO): k1, kl_coef 0.05, gamma 1, lam 0.95; TRL-whitened advantages.
    old, ref = jnp.array([[-1.0, -0.5, -0.2]]), jnp.array([[-1.2, -0.4, -0.2]])
    values, scores, mask = jnp.array([[0.5, 0.6, 0.7]]), jnp.array([1.0]), jnp.ones((1, 3))
    np.testing.assert_allclose(losses.kl_penalized_rewards(old, ref, scores, mask, kl_coef=0.05),
                               [[-0.01, 0.005, 1.0]], atol=1e-6)
    cfg = config.to_config({"loss": PPO_LOSS})
    out, mets = ppo_advantages(cfg)({"rewards": scores},
                                    {"old_logps": old, "ref_logps": ref, "values": values}, mask)
    np.testing.assert_allclose(out["returns"], [[0.9605, 0.99, 1.0]], atol=1e-5)
    np.testing.assert_allclose(out["advantages"], [[0.957149, 0.080798, -1.037947]], atol=1e-5)
    # non-score reward = the summed KL penalty: -0.01 + 0.005 + 0 = -0.005.
    np.testing.assert_allclose(mets["objective/non_score_reward"], -0.005, atol=1e-6)


def test_grao_objective_equals_loss_on_separate_forwards(model):
    prompts, ids, pmask, tokens, _, mask = _rollout(model, g=3)
    answers = np.array([[40, 41, EOS, PAD, PAD], [42, EOS, PAD, PAD, PAD]], np.int32)
    amask = (np.arange(5) < np.array([[3], [2]])).astype(np.int32)
    seq, attn = sequences(ids, pmask, tokens, mask)
    a_seq, a_attn = sequences(ids, pmask, answers, amask)
    rewards = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]], np.float32)
    answer_reward = np.array([1.0, 0.5], np.float32)
    batch = {"input_ids": seq, "attention_mask": attn, "completion_mask": mask,
             "rewards": rewards, "answer_ids": a_seq, "answer_attention": a_attn,
             "answer_mask": amask, "answer_reward": answer_reward}
    graphdef, params = nnx.split(model)
    obj = grao_loss_fn({"policy": graphdef}, temperature=1.0, beta=0.5, lam=0.6, pooled=True)
    loss, mets = obj({"policy": params}, batch, None)

    rows = [(prompts[b], tokens[b, g], mask[b, g]) for b in range(2) for g in range(3)]
    rows += [(prompts[b], answers[b], amask[b]) for b in range(2)]
    lp = _right_padded_logps(model, rows)
    per_token = np.zeros((8, 5), np.float32)
    for j, (p, t, m) in enumerate(rows):
        n = int(m.sum())
        per_token[j, :n] = lp[j, len(p) - 1:len(p) - 1 + n][np.arange(n), t[:n]]
    s_lp, a_lp = per_token[:6].reshape(2, 3, 5), per_token[6:]
    want, _ = losses.grao_loss(s_lp, mask, a_lp, amask, rewards, answer_reward, beta=0.5,
                               lam=0.6)
    np.testing.assert_allclose(loss, np.mean(want), atol=2e-5)
    assert {"loss/exploration", "loss/imitation", "loss/alignment"} <= set(mets)


def test_dynamic_sampling_index():
    first = np.array([[1.0, 1.0], [0.0, 1.0], [np.nan, 2.0], [np.nan, np.nan]])
    second = np.array([[0.0, 0.5], [3.0, 3.0], [1.0, 2.0], [0.0, 0.0]])
    index, informative = rollout.dynamic_sampling_index([first], 4)
    assert informative == 1 and index == [(0, 1), (0, 0), (0, 2), (0, 3)]
    index, informative = rollout.dynamic_sampling_index([first, second], 3)
    assert informative == 3 and index == [(0, 1), (1, 0), (1, 2)]
    picked = rollout.select_groups([{"r": first}, {"r": second}], index)["r"]
    np.testing.assert_array_equal(picked, [[0.0, 1.0], [0.0, 0.5], [1.0, 2.0]])


def test_select_groups_keeps_object_shapes():
    # Chat prompts are lists of messages: np.stack would make them 2-D (or fail when the
    # groups' conversations differ in length).
    def chat(*turns):
        out = np.empty(len(turns), object)
        out[:] = [[{"role": "user", "content": t}] * (i + 1) for i, t in enumerate(turns)]
        return out

    def texts(*rows):
        out = np.empty((len(rows), 2), object)
        out[:] = rows
        return out

    a = {"prompts": chat("a", "b"), "r": np.array([[1.0, 2.0], [3.0, 4.0]]),
         "texts": texts(["1", "2"], ["3", "4"])}
    b = {"prompts": chat("c", "d"), "r": np.array([[5.0, 6.0], [7.0, 8.0]]),
         "texts": texts(["5", "6"], ["7", "8"])}
    out = rollout.select_groups([a, b], [(0, 0), (1, 1)])
    assert out["prompts"].shape == (2,) and out["prompts"].dtype == object
    assert out["prompts"][0] == a["prompts"][0] and out["prompts"][1] == b["prompts"][1]
    np.testing.assert_array_equal(out["r"], [[1.0, 2.0], [7.0, 8.0]])
    # The [B, G] texts stay [B, G] strings (the rollout metrics read them per sample).
    assert out["texts"].shape == (2, 2) and out["texts"].reshape(-1).tolist() == [
        "1", "2", "7", "8"]


def test_prompt_widths_are_bucketed_and_tries_of_other_widths_combine():
    ex = lambda n: rollout.PromptExample("p", tuple(range(1, n + 1)))
    # The longest prompt rounded up to a power of two, at least 8, at most the cap.
    assert [rollout.prompt_width([ex(n)], 512) for n in (1, 8, 9, 33, 600)] == [
        8, 8, 16, 64, 512]
    assert rollout.prompt_width([ex(3), ex(20)], 16) == 16
    # DAPO's tries can differ in width: their prompts are left-padded (masked) to the widest.
    a = {"prompt_ids": np.array([[0, 0, 5, 6]]), "prompt_mask": np.array([[0, 0, 1, 1]])}
    b = {"prompt_ids": np.array([[0] * 6 + [7, 8]]), "prompt_mask": np.array([[0] * 6 + [1, 1]])}
    out = rollout.select_groups([a, b], [(0, 0), (1, 0)])
    np.testing.assert_array_equal(out["prompt_ids"], [[0] * 6 + [5, 6], [0] * 6 + [7, 8]])
    np.testing.assert_array_equal(out["prompt_mask"], [[0] * 6 + [1, 1]] * 2)


def test_stop_tokens_add_to_eos():
    tok = ByteTokenizer()
    ro = config.defaults("rollout").rollout
    ro.stop_tokens = (10,)
    assert trainer.sampling_options(ro, tok, prompt_width=8).stop_ids == (tok.eos_id, 10)
    ro.stop_tokens = ()
    assert trainer.sampling_options(ro, tok, prompt_width=8).stop_ids == (tok.eos_id,)


def test_reward_scorer_shaping_and_answers():
    tok = ByteTokenizer()
    scorer = rewards.RewardScorer([("correct", rewards.arithmetic_correct)], [2.0],
                                  length_penalty=0.1, missing_eos_penalty=1.0)
    texts = np.array([["5", "6"]], dtype=object)
    r = {"prompt_ids": np.zeros((1, 2), np.int32), "prompt_mask": np.ones((1, 2), np.int32),
         "tokens": np.zeros((1, 2, 3), np.int32), "mask": np.ones((1, 2, 3), np.int32),
         "lengths": np.array([[2, 3]]), "terminated": np.array([[True, False]]),
         "texts": texts, "prompts": np.array(["2+3="], dtype=object),
         "answers": np.array(["5"], dtype=object)}
    out = scorer(r)
    np.testing.assert_allclose(out["rewards"], [[2.0 - 0.2, 0.0 - 0.3 - 1.0]], atol=1e-6)
    np.testing.assert_allclose(out["reward_vector"][..., 0], [[1.0, 0.0]])
    ex = [rollout.PromptExample("2+3=", tuple(tok.encode("2+3=")), "5", (53, EOS))]
    out = scorer.answer_rewards(rollout.add_answers(out, ex, pad_id=PAD))
    np.testing.assert_array_equal(out["answer_tokens"], [[53, EOS, PAD]])
    np.testing.assert_allclose(out["answer_reward"], [2.0 - 0.2])  # R(y, y), 2 tokens
    long = [rollout.PromptExample("2+3=", (1,), "5555", (53, 53, 53, 53, EOS))]
    with pytest.raises(ValueError, match="5 tokens .* rollout.max_new_tokens=3"):
        rollout.add_answers(out, long, pad_id=PAD)
    with pytest.raises(ValueError, match="reward.weights has 2 entries"):
        rewards.RewardScorer([("correct", rewards.arithmetic_correct)], [1.0, 2.0])


def test_prompt_iterator_resumes():
    ex = [rollout.PromptExample(str(i), (i,)) for i in range(10)]
    it = data.PromptIterator(ex, batch_size=3, seed=1)
    seen = [[e.prompt for e in it.next_batch()] for _ in range(2)]
    state = it.state_dict()
    rest = [[e.prompt for e in it.next_batch()] for _ in range(4)]
    again = data.PromptIterator(ex, batch_size=3, seed=1)
    again.load_state_dict(state)
    assert [[e.prompt for e in again.next_batch()] for _ in range(4)] == rest
    # Within an epoch no prompt repeats; 3 batches of 3 per epoch of 10.
    assert len(set(sum(seen + rest[:1], []))) == 9


def test_pending_batch_round_trips_through_the_checkpoint_state():
    """Async rollouts' pending batch goes into the data state as JSON: numeric arrays exact
    (NaN rewards included), texts / chat prompts / answers as they were; a batch JSON cannot
    hold falls back to the state before it was drawn (a resumed run draws it again)."""
    import json

    ex = [rollout.PromptExample(str(i), (i,)) for i in range(10)]
    state = data_state.Rollouts(data.PromptIterator(ex, batch_size=2, seed=1), seed=0)
    state.mark()
    before = state.state_dict()
    state.prompts.next_batch()
    key = state.split()
    chat = [{"role": "user", "content": "2+3="}]
    texts = np.empty((2, 2), object)
    texts[:] = [["5", "6"], ["", "7"]]
    prompts = np.empty(2, object)
    prompts[0], prompts[1] = chat, "1+1="
    r = {"tokens": np.arange(8, dtype=np.int32).reshape(2, 2, 2),
         "sampler_logps": np.float32([[-0.1, np.nan], [1e-30, -7.25]]),
         "texts": texts, "prompts": prompts, "answers": np.array(["5", None], object)}
    state.pending = (r, {"episodes/turns": 2.0}, {"seconds": 0.5, "rows": 4}, key)
    saved = json.loads(json.dumps(state.state_dict()))  # as the checkpoint writes it
    assert saved["prompts"] != before["prompts"] and "pending" in saved
    again = data_state.Rollouts(data.PromptIterator(ex, batch_size=2, seed=1), seed=0)
    again.load_state_dict(saved)
    r2, row, sampled, key2 = again.take_pending()
    for name, value in r.items():
        assert r2[name].dtype == value.dtype and r2[name].shape == value.shape, name
        if value.dtype == object:
            assert r2[name].tolist() == value.tolist(), name
        else:
            np.testing.assert_array_equal(r2[name], value)
    assert row == {"episodes/turns": 2.0} and sampled == {"seconds": 0.5, "rows": 4}
    assert np.array_equal(jax.random.key_data(key2), jax.random.key_data(key))
    assert again.pending is None
    r["answers"][0] = object()  # not JSON-able: the state from before the draw
    assert state.state_dict() == before
