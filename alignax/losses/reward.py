"""Reward-model losses: Bradley-Terry with margin and reward centring.

References: Bradley & Terry 1952; Ouyang et al. 2022 (InstructGPT, Eq. 1); Llama 2 (Touvron et
al. 2023, margin); Eisenstein et al. 2023 (centring). TRL 1.16 `RewardTrainer.compute_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float


def bradley_terry_loss(chosen_rewards, rejected_rewards, *, margin=None,
                       center_rewards_coefficient: float | None = None) -> jax.Array:
    """Pairwise reward-model loss per pair: -log sigma(r_w - r_l - m) [+ c (r_w + r_l)^2].

    The batch mean of this equals TRL's loss, centring term included.

    Args:
      chosen_rewards: `[...]` scalar rewards of the chosen sequences.
      rejected_rewards: `[...]` of the rejected ones.
      margin: optional `[...]` per-pair margin m (0 if None).
      center_rewards_coefficient: optional c that pulls rewards towards zero mean (TRL default
        None; 0.01 recommended).
    Returns: `[...]` loss per pair.
    """
    r_w, r_l = as_float(chosen_rewards, rejected_rewards)
    diff = r_w - r_l
    if margin is not None:
        diff = diff - as_float(margin)
    loss = -jax.nn.log_sigmoid(diff)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (r_w + r_l) ** 2
    return loss


def reward_metrics(chosen_rewards, rejected_rewards) -> dict[str, jax.Array]:
    """TRL reward-trainer metrics: accuracy, margin, min_reward, mean_reward, max_reward."""
    r_w, r_l = jax.lax.stop_gradient(as_float(chosen_rewards, rejected_rewards))
    both = jnp.concatenate([r_w.reshape(-1), r_l.reshape(-1)])
    return {
        "accuracy": (r_w > r_l).astype(r_w.dtype).mean(),
        "margin": (r_w - r_l).mean(),
        "min_reward": both.min(),
        "mean_reward": both.mean(),
        "max_reward": both.max(),
    }
