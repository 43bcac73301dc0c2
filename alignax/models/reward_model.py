"""A reward model: a transformer trunk plus a `RewardHead` (Bradley-Terry score of the last token).

Saved as an HF directory for the trunk (`to_hf`) plus `reward_head/head.safetensors` holding
the head's `weight [E]` and `bias []`; `load_reward_model` reads both back.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from alignax.models.heads import RewardHead
from alignax.models.hf import from_hf, to_hf
from alignax.models.transformer import Transformer

HEAD_FILE = os.path.join("reward_head", "head.safetensors")  # beside, not among, the trunk


class RewardModel(nnx.Module):
    """`rm(input_ids, attention_mask) -> [B]` float32 rewards."""

    def __init__(self, trunk: Transformer, *, rngs: nnx.Rngs | None = None, std: float = 0.02):
        self.trunk = trunk
        self.head = RewardHead(trunk.config, rngs=rngs or nnx.Rngs(0), std=std)

    def __call__(self, input_ids, attention_mask) -> jax.Array:
        hidden, _ = self.trunk.hidden_states(input_ids, attention_mask)
        return self.head(hidden, attention_mask)


def save_reward_model(rm: RewardModel, path: str | os.PathLike) -> None:
    """Writes the trunk as an HF directory and the head beside it."""
    from safetensors.numpy import save_file

    to_hf(rm.trunk, path)
    os.makedirs(os.path.join(path, os.path.dirname(HEAD_FILE)), exist_ok=True)
    save_file({"weight": np.asarray(rm.head.value.weight[...], np.float32),
               "bias": np.asarray(rm.head.value.bias[...], np.float32)},
              os.path.join(path, HEAD_FILE))


def load_reward_model(path: str | os.PathLike, **kwargs) -> RewardModel:
    """Reads a directory written by `save_reward_model` (kwargs go to `from_hf`)."""
    from safetensors.numpy import load_file

    head_path = os.path.join(path, HEAD_FILE)
    if not os.path.exists(head_path):
        raise FileNotFoundError(f"{head_path} not found: not an alignax reward model directory")
    rm = RewardModel(from_hf(path, **kwargs))
    tensors = load_file(head_path)
    dtype = rm.head.value.weight[...].dtype
    rm.head.value.weight[...] = tensors["weight"].astype(dtype)
    rm.head.value.bias[...] = tensors["bias"].astype(dtype)
    return rm
