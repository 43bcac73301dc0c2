"""Rewards of a rollout: reward functions and/or a reward model, weighted, plus shaping.

A rollout is a dict of numpy arrays with a leading prompt axis B and a sample axis G:
`prompt_ids`, `prompt_mask` `[B, P]` (left-padded), `tokens`, `mask` `[B, G, N]`, `lengths`,
`terminated` `[B, G]`, `texts` `[B, G]` and `prompts`, `answers` `[B]` (objects). The scorer
adds `reward_vector` `[B, G, K]` (one entry per objective: each function, then the reward
model) and `rewards` `[B, G]` (their weighted sum plus shaping; NaN where a function could not
score a completion).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alignax.rewards.functions import (
    RewardFn,
    length_penalty,
    missing_eos_penalty,
    overlong_penalty,
)
from alignax.rewards.model import score_sequences
from alignax.rewards.vector import combine_rewards, reward_vector
from alignax.sampling.sampler import sequences


class RewardScorer:
    """Rewards of a rollout: reward functions and/or a reward model, weighted, plus shaping.

    Args:
      functions: `(name, fn)` verifiable reward functions (see `rewards.functions`).
      weights: one weight per objective: the functions, then the reward model if any.
      reward_model: `(graphdef, params)` of a `models.RewardModel`, or None.
      length_penalty, missing_eos_penalty: shaping coefficients (0 = off).
      overlong_buffer: DAPO soft over-long buffer in tokens (0 = off), against N.
      timeout: seconds per reward-function call; > 0 runs the functions concurrently in
        threads (`rewards.reward_vector`). Failed or timed-out calls give NaN and are counted
        in `failures` (name -> calls).
      log: where failures are reported.
    """

    def __init__(self, functions: Sequence[tuple[str, RewardFn]], weights: Sequence[float],
                 *, reward_model=None, length_penalty: float = 0.0,
                 missing_eos_penalty: float = 0.0, overlong_buffer: int = 0,
                 timeout: float = 0.0, log=print):
        self.functions = list(functions)
        self.names = [n for n, _ in self.functions] + (["reward_model"] if reward_model else [])
        if not self.names:
            raise ValueError("no rewards: set reward.functions and/or reward.model_path")
        if len(weights) != len(self.names):
            raise ValueError(f"reward.weights has {len(weights)} entries for the objectives "
                             f"{self.names}")
        self.weights = np.asarray(weights, np.float32)
        self.reward_model = reward_model
        self.length_penalty, self.missing_eos = length_penalty, missing_eos_penalty
        self.overlong_buffer = overlong_buffer
        self.timeout, self.log = timeout, log
        self.failures: dict[str, int] = {}

    def vector(self, prompts, texts, **kwargs) -> np.ndarray:
        """`[N, K]` per-objective rewards of N completions; kwargs as `rewards.reward_vector`
        plus `input_ids`, `attention_mask` `[N, S]` for the reward model."""
        ids, attn = kwargs.pop("input_ids", None), kwargs.pop("attention_mask", None)
        vec = reward_vector(self.functions, prompts, texts, timeout=self.timeout,
                            failures=self.failures, log=self.log, **kwargs)
        if self.reward_model is not None:
            scores = np.asarray(score_sequences(*self.reward_model, ids, attn), np.float32)
            vec = np.concatenate([vec, scores[:, None]], axis=1)
        return vec

    def __call__(self, rollout: dict) -> dict:
        """Adds `reward_vector` `[B, G, K]` and `rewards` `[B, G]` (weighted + shaping)."""
        b, g, n = rollout["tokens"].shape
        ids, attn = sequences(rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                              rollout["mask"])
        lengths, terminated = rollout["lengths"].reshape(-1), rollout["terminated"].reshape(-1)
        vec = self.vector(np.repeat(rollout["prompts"], g), list(rollout["texts"].reshape(-1)),
                          answers=list(np.repeat(rollout["answers"], g)),
                          terminated=list(terminated), lengths=list(lengths),
                          input_ids=ids.reshape(b * g, -1), attention_mask=attn.reshape(b * g, -1))
        total = np.asarray(combine_rewards(vec, self.weights))
        if self.length_penalty:
            total = total + np.asarray(length_penalty(lengths, coef=self.length_penalty))
        if self.overlong_buffer:
            total = total + np.asarray(overlong_penalty(lengths, max_length=n,
                                                          buffer=self.overlong_buffer))
        if self.missing_eos:
            total = total + np.asarray(missing_eos_penalty(terminated,
                                                             penalty=self.missing_eos))
        return dict(rollout, reward_vector=vec.reshape(b, g, -1), rewards=total.reshape(b, g))

    def answer_rewards(self, rollout: dict) -> dict:
        """Adds `answer_reward` `[B]`: R(y, y), the reference answer scored like a sample."""
        one = {k: rollout[k][:, None] for k in ("answer_tokens", "answer_mask")}
        ans = np.array([a if a is not None else "" for a in rollout["answers"]], dtype=object)
        sub = dict(rollout, tokens=one["answer_tokens"], mask=one["answer_mask"],
                   texts=ans[:, None], lengths=one["answer_mask"].sum(-1),
                   terminated=np.ones_like(one["answer_mask"][..., 0], bool))
        return dict(rollout, answer_reward=self(sub)["rewards"][:, 0])
