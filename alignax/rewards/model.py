"""Reward-model scoring: a `models.reward_model.RewardModel` (trunk + `RewardHead`, trained
with `experiments/configs/reward_model.py`) scores prompt + completion rows.

    graphdef, params = load_scorer("runs/rm/hf")
    scores = score_sequences(graphdef, params, input_ids, attention_mask)   # [B]

Shapes: B sequences, S tokens.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from alignax.models.reward_model import RewardModel, load_reward_model


@functools.partial(jax.jit, static_argnames=("graphdef",))
def score_sequences(graphdef, params, input_ids, attention_mask) -> jax.Array:
    """Scores sequences with the reward model `nnx.merge(graphdef, params)` (pure, jitted).

    Args:
      graphdef, params: `nnx.split(reward_model)`.
      input_ids: `[B, S]` prompt + completion (left and/or right padded).
      attention_mask: `[B, S]` 1 = real token; the score is read at the last real token.
    Returns:
      `[B]` float32 scores.
    """
    return nnx.merge(graphdef, params)(input_ids, attention_mask)


def load_scorer(path: str, **kwargs) -> tuple[nnx.GraphDef, nnx.State]:
    """`(graphdef, params)` of the reward model saved in `path` (kwargs go to `from_hf`)."""
    return nnx.split(load_reward_model(path, **kwargs))


__all__ = ["RewardModel", "load_scorer", "score_sequences"]
