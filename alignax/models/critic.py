"""The PPO critic: a `Transformer` trunk + a `ValueHead`.

TRL's value model starts from the reward model (its trunk and scalar head);
`Critic.from_reward_model` does the same, and `Critic.from_policy` puts a fresh head on a copy
of the policy's trunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alignax.models.heads import ValueHead
from alignax.models.transformer import Transformer


class Critic(nnx.Module):
    """`critic(ids, mask, n)` -> `[R, N]` values V(s_t) of the states that emit each of the
    last N tokens (`ids`, `mask` `[R, S]`, the completion in the last N slots)."""

    def __init__(self, trunk: Transformer, *, rngs: nnx.Rngs):
        self.trunk = trunk
        self.head = ValueHead(trunk.config, rngs=rngs)

    def __call__(self, input_ids, attention_mask, num_completion_tokens: int) -> jax.Array:
        hidden, _ = self.trunk.hidden_states(input_ids, attention_mask)
        p = input_ids.shape[-1] - num_completion_tokens
        return self.head(hidden[:, p - 1:-1])

    @classmethod
    def from_reward_model(cls, reward_model, *, seed: int = 0) -> Critic:
        """A critic with the reward model's trunk and head (`models.reward_model.RewardModel`)."""
        critic = cls(reward_model.trunk, rngs=nnx.Rngs(seed))
        critic.head.weight.set_value(reward_model.head.value.weight.get_value())
        critic.head.bias.set_value(reward_model.head.value.bias.get_value())
        return critic

    @classmethod
    def from_policy(cls, policy: Transformer, *, seed: int = 0) -> Critic:
        """A critic on a copy of the policy's trunk (its own parameters) with a fresh head."""
        graphdef, state = nnx.split(policy)
        return cls(nnx.merge(graphdef, jax.tree.map(jnp.copy, state)), rngs=nnx.Rngs(seed))
