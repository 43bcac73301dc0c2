"""GRAO: Group Relative Alignment Optimization (arXiv 2508.07750, Eq. 2-4).

Per query: G trajectories o_1..o_G sampled from pi_old, one reference answer y (the dataset's
preferred response; "reference" is the answer, there is no reference model and no KL), rewards
R(o_i, y) and R(y, y). The objective, maximised, is (Eq. 3)

    J = 1/G sum_i [ A_oi l(o_i) + beta A_y l(y) + lambda A_oi (l(o_i) - l(y)) ]

with l(.) the length-normalised log-likelihood under the live policy (no importance ratio, no
clipping) and A the group-normalised rewards (Eq. 4, population std). The loss is -J.

References:
  GRAO (arXiv 2508.07750v1, "Optimization Objective of GRAO", Eq. 2-4, "Training Details").
  No official code exists; the readings chosen where the paper is ambiguous are in
  docs/algorithms.md, GRAO.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses import reduce
from alignax.losses._util import as_float


def grao_advantages(sample_rewards, answer_reward, *, pooled: bool = True):
    """Group-relative advantages (GRAO Eq. 4): A = (R - mu) / sigma, sigma the population std.

    `pooled=True` (recommended reading of the paper's prose): mu and sigma over the G + 1
    rewards {R(o_1, y) .. R(o_G, y), R(y, y)}. `pooled=False` (literal Eq. 4): over the G sample
    rewards only, applied to R(y, y) as well. When the normalising rewards are all equal
    (sigma = 0) every advantage of the group is 0 (the paper gives no epsilon).

    Args:
      sample_rewards: `[..., G]` R(o_i, y). answer_reward: `[...]` R(y, y) (0 under the judge).
      pooled: see above.
    Returns: (A_o `[..., G]`, A_y `[...]`), constants (under stop-gradient).
    """
    sample_rewards, answer_reward = jax.lax.stop_gradient(as_float(sample_rewards,
                                                                    answer_reward))
    everything = jnp.concatenate([sample_rewards, answer_reward[..., None]], axis=-1)
    group = everything if pooled else sample_rewards
    mu = jnp.mean(group, axis=-1, keepdims=True)
    sigma = jnp.sqrt(jnp.mean(jnp.square(group - mu), axis=-1, keepdims=True))
    # Exact test for an all-equal group: the float mean can leave sigma ~ 1e-17, not 0.
    flat = jnp.max(group, axis=-1, keepdims=True) == jnp.min(group, axis=-1, keepdims=True)
    adv = jnp.where(flat, 0.0, (everything - mu) / jnp.where(flat, 1.0, sigma))
    return adv[..., :-1], adv[..., -1]


def grao_loss(sample_token_logps, sample_mask, answer_token_logps, answer_mask, sample_rewards,
              answer_reward, *, beta: float = 0.5, lam: float = 0.6, pooled: bool = True,
              sample_weights=None):
    """GRAO loss per query, -J of Eq. 3, with its three components.

    exploration = -1/G sum_i A_oi l(o_i); imitation = -beta A_y l(y);
    alignment = -lambda/G sum_i A_oi (l(o_i) - l(y)); loss = their sum. l(.) is the masked mean
    of the token log-probs (each sequence normalised by its own length, the paper's Eq. 1).
    Take the batch mean over queries for the paper's objective. With beta = lambda = 0 this is
    REINFORCE with a group baseline and no ratio (an advantage-weighted mean NLL).

    Args:
      sample_token_logps: `[..., G, T]` log pi_theta of the sampled trajectories' tokens.
      sample_mask: `[..., G, T]` their completion masks.
      answer_token_logps: `[..., T']` log pi_theta of the reference answer's tokens.
      answer_mask: `[..., T']`.
      sample_rewards: `[..., G]` R(o_i, y). answer_reward: `[...]` R(y, y).
      beta: imitation weight (paper 0.5). lam: alignment-regulariser weight lambda (paper 0.6).
      pooled: advantage normalisation over samples + answer (True) or samples only (False).
      sample_weights: optional `[..., G, T]` per-token weights of the samples' log-probs
        (constants): off-policy samples' truncated importance weights min(pi_old / pi_sampler,
        cap) (async rollouts): l(o_i) = sum of w * log-prob over the sample's tokens / its
        token count. The answer's l(y) is never weighted (it is data, not a sample).
    Returns:
      (loss `[...]` per query, metrics): batch means of `loss/exploration`, `loss/imitation`,
      `loss/alignment` and `loss/total` (each component's contribution to the loss).
    """
    if sample_weights is not None:
        sample_token_logps = sample_token_logps * jax.lax.stop_gradient(sample_weights)
    l_o = reduce.masked_mean(sample_token_logps, sample_mask)
    l_y = reduce.masked_mean(answer_token_logps, answer_mask)
    a_o, a_y = grao_advantages(sample_rewards, answer_reward, pooled=pooled)
    exploration = -jnp.mean(a_o * l_o, axis=-1)
    imitation = -beta * a_y * l_y
    alignment = -lam * jnp.mean(a_o * (l_o - l_y[..., None]), axis=-1)
    loss = exploration + imitation + alignment
    metrics = {f"loss/{name}": jax.lax.stop_gradient(jnp.mean(value)) for name, value in (
        ("exploration", exploration), ("imitation", imitation), ("alignment", alignment),
        ("total", loss))}
    return loss, metrics
