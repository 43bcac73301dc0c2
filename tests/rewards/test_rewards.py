"""Reward functions, vector rewards and shaping against hand-computed values; reward-model
scoring against the model's own forward and a save / load round trip."""

import jax.numpy as jnp
import numpy as np
import pytest

from alignax import rewards
from alignax.models import init_model, tiny_config
from alignax.models.reward_model import RewardModel, save_reward_model


def test_arithmetic_checker():
    got = rewards.arithmetic_correct(["2+3=", "2+3=", "10-4=", "hello", "3*4="],
                               ["5", " 6", "6 and more", "5", "12"])
    assert got == [1.0, 0.0, 1.0, None, 1.0]


def test_answer_match_and_format_rewards():
    assert rewards.answer_match(["p"] * 3, ["a  b", "ab", "x"], answers=["a b", "a b", None]) == [
        1.0, 0.0, None]
    assert rewards.integer_format(None, ["12", " -3 ", "12a", ""]) == [1.0, 1.0, 0.0, 0.0]
    fn = rewards.get_reward_function("regex:<a>.*</a>")
    assert fn(None, ["<a>x\ny</a>", "<a>x"]) == [1.0, 0.0]
    assert rewards.brevity(None, ["", "1234567890"]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="unknown reward function 'nope'"):
        rewards.get_reward_function("nope")


def test_reward_vector_and_weighted_combination():
    fns = [("correct", rewards.arithmetic_correct), ("short", rewards.brevity)]
    prompts = ["1+1=", "1+1=", "bad"]
    vec = rewards.reward_vector(fns, prompts, ["2", "3333", "2"])
    np.testing.assert_allclose(vec, [[1.0, -0.1], [0.0, -0.4], [np.nan, -0.1]])
    total = np.asarray(rewards.combine_rewards(vec, [2.0, 0.5]))
    np.testing.assert_allclose(total, [2.0 - 0.05, -0.2, -0.05], rtol=1e-6)
    # A completion no objective can score stays NaN (left out of group statistics).
    assert np.isnan(np.asarray(rewards.combine_rewards([[np.nan, np.nan]], [1.0, 1.0]))[0])
    mets = rewards.vector_metrics(vec, ["correct", "short"])
    assert mets["rewards/correct/mean"] == 0.5
    np.testing.assert_allclose(mets["rewards/short/std"], np.std([-0.1, -0.4, -0.1], ddof=1))
    with pytest.raises(ValueError, match="'bad' returned 1 values for 3"):
        rewards.reward_vector([("bad", lambda p, c, **_: [1.0])], prompts, ["a", "b", "c"])


def test_kwargs_reach_reward_functions():
    seen = {}

    def fn(prompts, completions, *, answers, terminated, **_):
        seen.update(answers=answers, terminated=terminated)
        return [0.0] * len(completions)

    rewards.reward_vector([("f", fn)], ["a", "b"], ["x", "y"], answers=["1", None],
                    terminated=[True, False])
    assert seen == {"answers": ["1", None], "terminated": [True, False]}


def test_shaping():
    # DAPO Eq. 13 with L_max = 10, L_cache = 4: 0 up to 6 tokens, linear to -1 at 10.
    np.testing.assert_allclose(rewards.overlong_penalty([3, 6, 7, 8, 10, 12], max_length=10,
                                                  buffer=4), [0, 0, -0.25, -0.5, -1, -1])
    np.testing.assert_allclose(rewards.length_penalty([0, 4], coef=0.5), [0.0, -2.0])
    np.testing.assert_allclose(rewards.missing_eos_penalty([True, False], penalty=1.5), [0.0, -1.5])


def test_reward_model_scoring_and_round_trip(tmp_path):
    rm = RewardModel(init_model(tiny_config("llama"), seed=3))
    ids = jnp.asarray([[256, 5, 6, 7], [9, 10, 11, 256]])
    mask = jnp.asarray([[0, 1, 1, 1], [1, 1, 1, 0]])
    want = np.asarray(rm(ids, mask))
    save_reward_model(rm, str(tmp_path / "rm"))
    graphdef, params = rewards.load_scorer(str(tmp_path / "rm"))
    got = np.asarray(rewards.score_sequences(graphdef, params, ids, mask))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The score is read at the last real token: padding after it changes nothing.
    longer = np.asarray(rewards.score_sequences(graphdef, params, jnp.pad(ids, ((0, 0), (0, 2)),
                                                                    constant_values=256),
                                          jnp.pad(mask, ((0, 0), (0, 2)))))
    np.testing.assert_allclose(longer, want, atol=1e-5)
