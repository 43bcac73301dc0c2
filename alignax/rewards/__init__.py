"""Rewards for online training: verifiable functions over decoded text, reward-model scoring,
vector rewards (one entry per objective) with weights, and length / format shaping.

    from alignax import rewards
    fns = [(name, rewards.get_reward_function(name)) for name in ("arithmetic_correct",)]
    vec = rewards.reward_vector(fns, prompts, completions, answers=answers)   # [N, K]
    r = rewards.combine_rewards(vec, weights=[1.0])                          # [N]
"""

from alignax.rewards.functions import (
    REWARD_FUNCTIONS,
    RewardFn,
    answer_match,
    arithmetic_correct,
    brevity,
    get_reward_function,
    integer_format,
    length_penalty,
    missing_eos_penalty,
    overlong_penalty,
    regex_format,
)
from alignax.rewards.model import RewardModel, load_scorer, score_sequences
from alignax.rewards.scorer import RewardScorer
from alignax.rewards.vector import combine_rewards, reward_vector, vector_metrics

__all__ = [
    "REWARD_FUNCTIONS", "RewardFn", "RewardModel", "RewardScorer", "answer_match",
    "arithmetic_correct", "brevity", "combine_rewards", "get_reward_function", "integer_format",
    "length_penalty", "load_scorer", "missing_eos_penalty", "overlong_penalty", "regex_format",
    "reward_vector", "score_sequences", "vector_metrics",
]
