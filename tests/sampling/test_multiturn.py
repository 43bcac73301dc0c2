"""Multi-turn episodes: the sampler's log-probs of the policy's tokens equal a full forward over
`[prompt | stream]` with the episode's attention mask (observations appended to the KV cache,
never recomputed); loss and attention masks, turn / call / error counts, budgets, stop
sequences, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax.envs import StepResult
from alignax.models import init_model, tiny_config
from alignax.models.logprobs import completion_logps
from alignax.models.tokenizers import ByteTokenizer
from alignax.sampling import left_pad
from alignax.sampling.multiturn import sample_episodes

TOK = ByteTokenizer()


class Scripted:
    """Row-dependent episodes: `calls` tool calls with observations of `width` characters
    (the second call of row 1 fails), then done; row 0 also gets a first observation."""

    def __init__(self, row):
        self.row, self.calls = row, 0

    def reset(self, prompt):
        return "hello" if self.row == 0 else None

    def step(self, turn):
        self.calls += 1
        if self.calls > 1 + self.row % 3:
            return StepResult(reward=1.0, done=True)
        return StepResult(observation="o" * (3 + 5 * self.row), done=False, reward=0.5,
                          error=(self.row == 1 and self.calls == 2))


@pytest.fixture(scope="module")
def policy():
    graphdef, params = nnx.split(init_model(tiny_config("llama"), seed=0))
    ids, mask = left_pad([TOK.encode("12+7=", add_bos=True), TOK.encode("3*4=", add_bos=True)],
                         TOK.pad_id)
    return graphdef, params, np.asarray(ids), np.asarray(mask)


def _episodes(policy, key=0, **kw):
    graphdef, params, ids, mask = policy
    args = dict(num_samples=2, max_turns=4, max_total_tokens=128, max_turn_tokens=5,
                stop_ids=(9999,))  # no EOS: turns end at their token limit
    args.update(kw)
    envs = [Scripted(r) for r in range(ids.shape[0] * args["num_samples"])]
    return sample_episodes(graphdef, params, ids, mask, jax.random.key(key), envs=envs,
                           tokenizer=TOK, **args)


def test_logps_equal_a_full_forward_over_the_episode(policy):
    graphdef, params, ids, mask = policy
    ep = _episodes(policy)
    r, p = ep.tokens.shape[0], ids.shape[1]
    full_ids = np.concatenate([np.repeat(ids, 2, 0), ep.tokens], -1)
    full_attn = np.concatenate([np.repeat(mask, 2, 0), ep.attention_mask], -1)
    lengths = ep.attention_mask.sum(-1)
    assert all(ep.attention_mask[i, :n].all() for i, n in enumerate(lengths))  # a prefix
    loss_mask = np.concatenate([np.zeros_like(np.repeat(mask, 2, 0)), ep.mask], -1)
    token_logps, _ = jax.jit(lambda prm: completion_logps(
        nnx.merge(graphdef, prm), jnp.asarray(full_ids), jnp.asarray(full_attn),
        jnp.asarray(loss_mask), chunk_size=16, right_padded=False))(params)
    stream = np.asarray(token_logps)[:, p - 1:]
    on = ep.mask.astype(bool)
    assert on.sum() > 40
    np.testing.assert_allclose(stream[on], ep.logps[on], atol=2e-5)
    assert np.all(ep.logps[~on] == 0)
    # Observations: seen (attention) but not trained (loss), and exactly the scripted text.
    obs = ep.attention_mask.astype(bool) & ~on
    assert not np.any(on & ~ep.attention_mask.astype(bool))
    for i in range(r):
        calls = min(1 + i % 3, 3)
        width = 3 + 5 * i
        want = calls * width + (5 if i == 0 else 0)
        assert obs[i].sum() == want, (i, obs[i].sum(), want)
        assert ep.turns[i] == calls + 1 and ep.tool_calls[i] == calls
        assert ep.rewards[i] == pytest.approx(0.5 * calls + 1.0)
        assert ep.mask[i].sum() == 5 * ep.turns[i]
        assert not ep.truncated[i]
    assert list(ep.tool_errors) == [0, 1, 0, 0]
    assert ep.texts[0].startswith("hello") and "ooo" in ep.texts[0]
    m = ep.metrics()
    assert m["episodes/tool_call_fraction"] == 1.0 and m["episodes/tool_errors"] == 1


def test_rows_sharded_over_devices_give_the_same_episodes(policy):
    # The prompts' rows (and with them the KV caches, each turn's live rows and observation
    # blocks) split over 2 data-parallel devices: the same episodes as on one device.
    from alignax import sharding

    one = _episodes(policy, key=5)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1})
    two = _episodes(policy, key=5, shard=sharding.batch_sharding(mesh))
    np.testing.assert_array_equal(two.tokens, one.tokens)
    np.testing.assert_array_equal(two.attention_mask, one.attention_mask)
    np.testing.assert_allclose(two.logps, one.logps, atol=1e-6)
    assert list(two.tool_calls) == list(one.tool_calls) and two.texts == one.texts


def test_same_key_same_episodes_and_budgets_truncate(policy):
    a, b = _episodes(policy, key=3), _episodes(policy, key=3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logps, b.logps)
    # Two turns at most: rows that would call again are cut (truncated), none runs over.
    short = _episodes(policy, key=3, max_turns=2)
    assert list(short.turns) == [2, 2, 2, 2]
    assert list(short.truncated) == [False, True, True, False]
    # A token budget smaller than the episodes: the stream is full width, rows truncated.
    tight = _episodes(policy, key=3, max_total_tokens=24)
    assert tight.tokens.shape == (4, 24) and tight.truncated.any()
    assert (tight.mask.sum(-1) <= 24).all()


def test_a_stop_sequence_ends_the_turn(policy):
    greedy = _episodes(policy, temperature=0.0, max_turns=1)
    first = [int(t) for t in greedy.tokens[0, 5:10]]  # row 0: after its 5-token observation
    # Ending the turn on the greedy turn's tokens 2 and 3: row 0's turn stops after 3.
    stopped = _episodes(policy, temperature=0.0, max_turns=1, stop_sequence=tuple(first[1:3]))
    assert stopped.mask[0].sum() == 3
    np.testing.assert_array_equal(stopped.tokens[0, 5:8], first[:3])


def test_bad_arguments_name_themselves(policy):
    with pytest.raises(ValueError, match="max_turn_tokens"):
        _episodes(policy, max_turn_tokens=0)
    graphdef, params, ids, mask = policy
    with pytest.raises(ValueError, match="3 environments for 2 prompts x 2 samples"):
        sample_episodes(graphdef, params, ids, mask, jax.random.key(0),
                        envs=[Scripted(0)] * 3, tokenizer=TOK, num_samples=2, max_turns=1,
                        max_total_tokens=8, max_turn_tokens=4)
