"""Multi-turn GRPO through `alignax train` (experiments/configs/grpo_tools.py): episodes with
observations train, the trainer's forward reproduces the sampler's log-probs over the whole
episode, tool errors are counted, an interrupted run resumes identically; config errors name
the field."""

import numpy as np
import pytest

from alignax import config, metrics
from tests.runs import load, train

SCRIPTED = ("--config.environment.name=tests.algorithms.online.scripted_env:make",
            "--config.environment.max_turn_tokens=4", "--config.train.eval_every=0",
            "--config.train.export_hf=False")


@pytest.mark.slow
def test_multiturn_grpo_trains_and_resumes(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(load("grpo_tools", *SCRIPTED), straight)
    rows = metrics.read_metrics(str(straight))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    obs = len("<result>111</result>")
    for r in rows:
        # 3 turns, 2 observations, unless the random policy drew EOS first (its episode ends).
        assert 2.5 <= r["episodes/turns"] <= 3 and r["episodes/tool_call_fraction"] >= 0.9
        assert 0.8 * 32 <= r["episodes/tool_errors"] <= 32  # each episode's second call fails
        assert 1.5 * obs <= r["episodes/observation_tokens"] <= 2 * obs
        assert 0.8 <= r["episodes/environment_reward"] <= 1.0
        assert r["sampler/logp_gap"] <= 1e-5  # observations appended, not recomputed
        assert np.isfinite(r["loss"])
    train(load("grpo_tools", *SCRIPTED, "--config.train.steps=2"), resumed)
    train(load("grpo_tools", *SCRIPTED, "--config.resume.allow_changes=True"), resumed)
    again = metrics.read_metrics(str(resumed))
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]
    assert [r["grad_norm"] for r in again] == [r["grad_norm"] for r in rows]


def test_environment_rewards_join_the_reward_with_their_weight(tmp_path):
    # The scripted environment pays 1.0 at its last turn; with reward_weight 2 the logged
    # reward is the checker's mean + 2 x the environment's.
    train(load("grpo_tools", *SCRIPTED, "--config.train.steps=1",
               "--config.environment.reward_weight=2.0"), tmp_path)
    (row,) = metrics.read_metrics(str(tmp_path))
    checker = row["rewards/arithmetic_correct/mean"]
    assert row["episodes/environment_reward"] > 0.5
    assert row["reward"] == pytest.approx(checker + 2.0 * row["episodes/environment_reward"],
                                          abs=1e-6)


def test_environment_errors_name_the_field(tmp_path):
    with pytest.raises(config.ConfigError, match="environment.name"):
        train(load("grpo_tools", "--config.environment.name=nowhere"), tmp_path / "a")
    with pytest.raises(config.ConfigError, match="environment"):  # GRAO: single-turn only
        train(load("grao", "--config.environment.name=calculator"), tmp_path / "c")
