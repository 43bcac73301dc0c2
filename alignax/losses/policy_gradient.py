"""Policy-gradient losses for RLHF: PPO (GAE, whitening, clipped surrogate and value losses),
the GRPO family (TRL 1.16.0 `GRPOTrainer` numbers for loss types grpo, bnpo, dr_grpo, dapo; GSPO
sequence-level ratios) and RLOO advantages.

Per-token functions take right-padded `[..., T]` arrays and a completion mask `[..., T]`
(1 = real completion token, including the appended EOS). Losses return per-token values, zero
on padding; the caller reduces them with `alignax.losses.reduce` (or `grpo_aggregate` for TRL's
loss types) and gets the metrics TRL logs, as scalars, alongside.

References:
  PPO (Schulman et al. 2017, arXiv 1707.06347, Eq. 7), GAE (Schulman et al. 2016, arXiv
  1506.02438, Eq. 16), RLHF-PPO details (Huang et al. 2022, "The N+ implementation details of
  RLHF with PPO"), dual-clip PPO (Ye et al. 2020, arXiv 1912.09729, Eq. 5), GRPO (Shao et al.
  2024, arXiv 2402.03300, Eq. 3), DAPO (Yu et al. 2025, arXiv 2503.14476, Eq. 8), Dr. GRPO
  (Liu et al. 2025, arXiv 2503.20783), GSPO (Zheng et al. 2025, arXiv 2507.18071, Eq. 7),
  RLOO (Ahmadian et al. 2024, arXiv 2402.14740, Eq. 5); TRL 1.16.0 `grpo_trainer.py`, TRL
  `experimental/ppo/ppo_trainer.py`, OpenRLHF `models/loss.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses import reduce
from alignax.losses._util import as_float
from alignax.losses.kl import KL_ESTIMATORS, kl_k3

sg = jax.lax.stop_gradient


def _per_sequence(advantages, like):
    """`[...]` per-sequence advantages broadcast over tokens; `[..., T]` ones pass through."""
    advantages = sg(as_float(advantages))
    return advantages[..., None] if advantages.ndim == like.ndim - 1 else advantages


def _token_mean(x, mask):
    return sg(reduce.token_mean(x, mask))


# ---------------------------------------------------------------------------------------------
# PPO: shaped rewards, GAE, whitening, clipped losses.

def kl_penalized_rewards(logps, ref_logps, scores, mask, *, kl_coef: float = 0.05,
                         kl_estimator: str = "k1", score_after_last: bool = False) -> jax.Array:
    """RLHF per-token rewards r_t = -c_KL kl_t, plus the sequence score s at the final token.

    (Ziegler et al. 2019, arXiv 1909.08593, Eq. 2; TRL PPOTrainer step 4.) The score goes on the
    last real token (OpenRLHF). `score_after_last=True` is TRL's placement: one past the last real
    token when that slot exists (the first pad), else the last token; pass GAE a mask extended by
    that one position then, so the slot is not dropped.

    Args:
      logps: `[..., T]` log pi_old(y_t|.) of the sampled tokens (the rollout policy).
      ref_logps: `[..., T]` log pi_ref(y_t|.).
      scores: `[...]` reward-model score s per sequence (EOS penalty already applied).
      mask: `[..., T]` completion mask, right-padded.
      kl_coef: c_KL (TRL `kl_coef` 0.05; OpenRLHF `init_kl_coef` 0.01).
      kl_estimator: a `KL_ESTIMATORS` name: k1 (TRL default), k2, k3.
      score_after_last: TRL's score slot (see above).
    Returns: `[..., T]` rewards (KL part zero on padding), under stop-gradient.
    """
    logps, ref_logps, scores, mask = sg(as_float(logps, ref_logps, scores, mask))
    kl = KL_ESTIMATORS[kl_estimator](logps, ref_logps) * mask
    t = mask.shape[-1]
    last = t - 1 - jnp.argmax(mask[..., ::-1] > 0, axis=-1)
    pos = last + (score_after_last & (last + 1 < t))
    has_tokens = (mask.sum(-1) > 0).astype(mask.dtype)
    score = (scores * has_tokens)[..., None] * jax.nn.one_hot(pos, t, dtype=mask.dtype)
    return -kl_coef * kl + score


def gae(rewards, values, mask, *, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) over the real tokens of
    each sequence, which may have gaps (multi-turn episodes mask tool / environment output).

    For a real token t with t' the next real token of its row (none: V_{t'} = A_{t'} = 0),
    delta_t = r_t + gamma V_{t'} - V_t and A_t = delta_t + gamma lam A_{t'}: masked tokens are
    skipped, not a restart, so the value bootstraps across an observation (as verl's multi-turn
    GAE). On a right-padded mask (no gaps) t' = t + 1: the usual recursion. A reverse
    `jax.lax.scan` over T. Returns R_t = A_t + V_t, before any whitening (TRL, OpenRLHF). With
    gamma = lam = 1, A_t is the reward-to-go minus V_t.

    Worked example (gamma = lam = 1): rewards [0, 0, 1], values [0.5, 9, 0.25], mask [1, 0, 1]:
    A_2 = 1 - 0.25 = 0.75, A_0 = 0 + 0.25 - 0.5 + 0.75 = 0.5 (the masked token's value 9 and
    position play no part), A_1 = 0.

    Args:
      rewards: `[..., T]` per-token rewards (`kl_penalized_rewards`); a reward on a masked
        token is dropped: put a turn's reward on its last model token.
      values: `[..., T]` V(s_t) from the rollout value head.
      mask: `[..., T]` 1 on the tokens the policy generated, 0 on padding and observations.
      gamma: discount (TRL and OpenRLHF default 1). lam: GAE lambda (TRL 0.95, OpenRLHF 1).
    Returns: (advantages `[..., T]`, returns `[..., T]`), zero where mask is 0, under
      stop-gradient.
    """
    rewards, values, mask = sg(as_float(rewards, values, mask))
    rewards, values = rewards * mask, values * mask

    def step(carry, x):
        next_value, next_adv = carry  # of the next real token (0 past the last)
        reward, value, m = x
        adv = (reward + gamma * next_value - value + gamma * lam * next_adv) * m
        real = m > 0
        return (jnp.where(real, value, next_value), jnp.where(real, adv, next_adv)), adv

    xs = tuple(jnp.moveaxis(a, -1, 0) for a in (rewards, values, mask))
    zeros = jnp.zeros_like(rewards[..., 0])
    _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
    adv = jnp.moveaxis(adv, 0, -1)
    return adv, (adv + values) * mask


def masked_whiten(values, mask, *, shift_mean: bool = True, unbiased: bool = True,
                  eps: float = 1e-8) -> jax.Array:
    """(x - mu) / sqrt(var + eps) over the valid tokens of the whole batch (TRL `masked_whiten`).

    Args:
      values: `[..., T]`; mask: `[..., T]` 1 = counts.
      shift_mean: False adds mu back (TRL `whiten_rewards`).
      unbiased: Bessel-corrected variance (TRL); False is OpenRLHF's population variance.
      eps: added to the variance (TRL 1e-8).
    Returns: `[..., T]` whitened values, 0 on padding.
    """
    values, mask = as_float(values, mask)
    n = jnp.sum(mask)
    mean = reduce.token_mean(values, mask)
    var = reduce.token_mean(jnp.square(values - mean), mask)
    if unbiased:
        var = var * jnp.where(n > 1, n / jnp.maximum(n - 1, 1.0), 1.0)
    out = (values - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def ppo_policy_loss(logps, old_logps, advantages, mask, *, epsilon: float = 0.2,
                    epsilon_high: float | None = None, dual_clip: float | None = None):
    """PPO clipped surrogate per token (Schulman et al. 2017, Eq. 7), optional dual clip.

    l_t = -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A), rho = pi_theta / pi_old. Dual clip
    (Ye et al. 2020, Eq. 5; OpenRLHF `dual_clip`): for A < 0 the objective is floored at c A.

    Args:
      logps: `[..., T]` log pi_theta(y_t|.). old_logps: `[..., T]` log pi_old (no gradient).
      advantages: `[..., T]` (whitened GAE) or `[...]` per sequence (no gradient).
      mask: `[..., T]` completion mask.
      epsilon: clip range (TRL `cliprange` 0.2). epsilon_high: upper range (default epsilon).
      dual_clip: c > 1, or None for standard PPO.
    Returns:
      (per-token loss `[..., T]` (0 on padding), metrics): `policy/clipfrac` (token fraction where
      the clipped branch is active), `policy/approx_kl` (mean of (log rho)^2 / 2 over tokens).
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    logps, mask = as_float(logps, mask)
    adv = _per_sequence(advantages, logps)
    log_ratio = logps - sg(as_float(old_logps))
    ratio = jnp.exp(log_ratio)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    surr1 = ratio * adv
    surr2 = jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_high) * adv
    objective = jnp.minimum(surr1, surr2)
    if dual_clip is not None:
        objective = jnp.where(adv < 0, jnp.maximum(objective, dual_clip * adv), objective)
    metrics = {
        "policy/clipfrac": _token_mean((surr2 < surr1).astype(mask.dtype), mask),
        "policy/approx_kl": _token_mean(0.5 * jnp.square(log_ratio), mask),
    }
    return -objective * mask, metrics


def ppo_value_loss(values, old_values, returns, mask, *, epsilon_value: float = 0.2):
    """Clipped value loss per token: 1/2 max((v - R)^2, (clip(v, V_old +- eps_v) - R)^2).

    (TRL PPOTrainer; OpenRLHF `ValueLoss`; Huang et al. 2022 detail 9.)

    Args:
      values: `[..., T]` current value predictions v. old_values: `[..., T]` rollout V_old.
      returns: `[..., T]` GAE returns R. mask: `[..., T]`.
      epsilon_value: eps_v (TRL `cliprange_value` 0.2; OpenRLHF `value_clip` 0.5).
    Returns: (per-token loss `[..., T]`, metrics with `value/clipfrac`).
    """
    values, mask = as_float(values, mask)
    old_values, returns = sg(as_float(old_values, returns))
    clipped = old_values + jnp.clip(values - old_values, -epsilon_value, epsilon_value)
    loss_unclipped = jnp.square(values - returns)
    loss_clipped = jnp.square(clipped - returns)
    metrics = {"value/clipfrac": _token_mean((loss_clipped > loss_unclipped).astype(mask.dtype),
                                             mask)}
    return 0.5 * jnp.maximum(loss_unclipped, loss_clipped) * mask, metrics


# ---------------------------------------------------------------------------------------------
# Group advantages: GRPO (TRL `scale_rewards`), RLOO.

def _nanmean(x, axis):
    valid = ~jnp.isnan(x)
    total = jnp.sum(jnp.where(valid, x, 0.0), axis=axis, keepdims=True)
    return total / jnp.sum(valid, axis=axis, keepdims=True)


def nanstd(x, axis=None) -> jax.Array:
    """TRL `trl.trainer.utils.nanstd`: Bessel-corrected std ignoring NaNs, NaN if < 2 values.

    Args: x `[...]`; axis None (all) or an axis. Returns: the std with the axis kept (size 1).
    """
    x = as_float(x)
    valid = ~jnp.isnan(x)
    count = jnp.sum(valid, axis=axis, keepdims=True)
    sq = jnp.where(valid, jnp.square(x - _nanmean(x, axis)), 0.0)
    var = jnp.sum(sq, axis=axis, keepdims=True) / jnp.maximum(count - 1, 1)
    return jnp.sqrt(jnp.where(count > 1, var, jnp.nan))


_REWARD_SCALES = {
    "group": lambda r: nanstd(r, axis=-1),
    "batch": lambda r: nanstd(r, axis=None),
    "none": lambda r: None,
}


def grpo_advantages(rewards, *, scale_rewards: str = "group",
                    std_epsilon: float = 1e-4) -> jax.Array:
    """GRPO group-relative advantages, TRL 1.16 `sum_then_normalize` (Shao et al. 2024, Eq. 3).

    A = (r - mean_group(r)) / (std + 1e-4), std Bessel-corrected (n - 1) as TRL's `nanstd`:
    over the group (`"group"`, default), over the whole batch (`"batch"`), or no division
    (`"none"`, Dr. GRPO). NaN rewards (unscorable completions) are left out of the mean and std
    and get advantage 0; so does every completion of a group whose rewards are all equal.

    Args:
      rewards: `[..., G]` the weighted reward sum of each completion; G = num_generations on the
        last axis, every leading axis is a prompt ("batch" pools all of them).
      scale_rewards: "group", "batch" or "none".
      std_epsilon: added to the std (TRL 1e-4).
    Returns: `[..., G]` advantages (constants: under stop-gradient).
    """
    rewards = sg(as_float(rewards))
    adv = rewards - _nanmean(rewards, axis=-1)
    std = _REWARD_SCALES[scale_rewards](rewards)
    if std is not None:
        adv = adv / (std + std_epsilon)
    return jnp.nan_to_num(adv, nan=0.0)


def rloo_advantages(rewards) -> jax.Array:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, Eq. 5): r_i - mean_{j != i} r_j.

    Args: rewards `[..., G]` (G >= 2 samples of one prompt on the last axis).
    Returns: `[..., G]` advantages, under stop-gradient.
    """
    rewards = sg(as_float(rewards))
    g = rewards.shape[-1]
    if g < 2:
        raise ValueError(f"rloo_advantages: the leave-one-out mean needs G >= 2 samples per "
                         f"prompt on the last axis, got G={g}")
    return rewards - (jnp.sum(rewards, axis=-1, keepdims=True) - rewards) / (g - 1)


# ---------------------------------------------------------------------------------------------
# GRPO loss (TRL 1.16.0 `GRPOTrainer._compute_loss`).

def _token_log_weights(log_ratio, mask):
    return log_ratio


def _sequence_log_weights(log_ratio, mask):
    # GSPO: the exp of the length-normalised sequence log-ratio, one weight per sequence.
    return reduce.masked_mean(log_ratio, mask)[..., None]


def _token_metric(x, mask):
    return _token_mean(x, mask)


def _sequence_metric(x, mask):
    # TRL's `masked_batch_mean`: one flag per sequence (sequence advantages) is averaged over
    # sequences; flags per token (per-token advantages) over the real tokens only.
    if x.shape[-1] == 1:
        return sg(jnp.mean(x))
    return _token_mean(x, mask)


_IMPORTANCE_LEVELS = {
    "token": (_token_log_weights, _token_metric),
    "sequence": (_sequence_log_weights, _sequence_metric),
}


def grpo_loss(logps, old_logps, advantages, mask, *, ref_logps=None, epsilon: float = 0.2,
              epsilon_high: float | None = None, beta: float = 0.0,
              importance_sampling_level: str = "token", use_bias_correction_kl: bool = True,
              delta: float | None = None):
    """GRPO / DAPO / GSPO per-token loss, TRL 1.16.0 (Shao et al. 2024, Eq. 3; Yu et al. 2025).

    c1 = exp(log pi_theta - log pi_old) per token, or per sequence
    exp(mean_t(log pi_theta - log pi_old)) for `importance_sampling_level="sequence"` (GSPO Eq. 7);
    c2 = clip(c1, 1 - epsilon, 1 + epsilon_high); optional c1 <- min(c1, delta) (INTELLECT-2);
    l_t = -min(c1 A, c2 A) + beta kl_t with kl_t the k3 estimator, times c1 when
    `use_bias_correction_kl` (TRL 1.16 default). `old_logps=None` is the on-policy case
    (num_iterations = 1): pi_old = sg(pi_theta), so c1 = 1 in value and the gradient flows.

    Args:
      logps: `[..., T]` log pi_theta(y_t|.) (temperature-scaled logits, as sampled).
      old_logps: `[..., T]` log pi_old, or None (see above). No gradient.
      advantages: `[...]` per sequence (`grpo_advantages`) or `[..., T]` per token.
      mask: `[..., T]` completion mask.
      ref_logps: `[..., T]` log pi_ref; needed when beta != 0.
      epsilon: epsilon_low (TRL 0.2). epsilon_high: upper clip (default epsilon; DAPO 0.28).
      beta: KL coefficient (TRL 1.16 default 0).
      importance_sampling_level: "token" or "sequence".
      use_bias_correction_kl: multiply k3 by c1.
      delta: upper bound on c1 (None = off).
    Returns:
      (per-token loss `[..., T]`, 0 on padding; reduce with `grpo_aggregate`), metrics:
      `clip_ratio/low_mean` (c1 < 1 - eps with A < 0), `clip_ratio/high_mean`
      (c1 > 1 + eps_high with A > 0), `clip_ratio/region_mean`, and `kl` (masked token mean of
      the, possibly corrected, k3) when beta != 0.
    """
    logps, mask = as_float(logps, mask)
    old = sg(logps) if old_logps is None else sg(as_float(old_logps))
    adv = _per_sequence(advantages, logps)
    log_weights_fn, metric_fn = _IMPORTANCE_LEVELS[importance_sampling_level]
    coef_1 = jnp.exp(log_weights_fn(logps - old, mask))
    eps_high = epsilon if epsilon_high is None else epsilon_high
    coef_2 = jnp.clip(coef_1, 1.0 - epsilon, 1.0 + eps_high)
    ratio = coef_1 if delta is None else jnp.minimum(coef_1, delta)
    per_token = -jnp.minimum(ratio * adv, coef_2 * adv)

    low = ((ratio < 1.0 - epsilon) & (adv < 0)).astype(mask.dtype)
    high = ((ratio > 1.0 + eps_high) & (adv > 0)).astype(mask.dtype)
    metrics = {
        "clip_ratio/low_mean": metric_fn(low, mask),
        "clip_ratio/high_mean": metric_fn(high, mask),
        "clip_ratio/region_mean": metric_fn(jnp.maximum(low, high), mask),
    }
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("grpo_loss with beta != 0 needs ref_logps")
        kl = kl_k3(logps, ref_logps)
        if use_bias_correction_kl:
            kl = kl * coef_1
        per_token = per_token + beta * kl
        metrics["kl"] = _token_mean(kl, mask)
    return jnp.broadcast_to(per_token, logps.shape) * mask, metrics


def dapo_normalizer(num_items_in_batch, *, num_processes: int = 1,
                    gradient_accumulation_steps: int = 1, steps_per_generation: int = 1):
    """TRL 1.16 `dapo` normaliser: active tokens of the generation batch, rescaled to one
    accumulation window: max(N, 1) / num_processes x grad_accum / steps_per_generation.

    Args: num_items_in_batch: scalar, the global count of active completion tokens.
    Returns: scalar.
    """
    n = jnp.maximum(as_float(num_items_in_batch), 1.0)
    return n / num_processes * gradient_accumulation_steps / steps_per_generation


def _agg_grpo(values, mask, **_):
    return reduce.seq_mean_token_mean(values, mask)


def _agg_bnpo(values, mask, **_):
    return reduce.token_mean(values, mask)


def _agg_dr_grpo(values, mask, *, max_completion_length, **_):
    return reduce.seq_mean_token_sum_norm(values, mask, max_length=max_completion_length)


def _agg_dapo(values, mask, *, normalizer=None, **_):
    normalizer = dapo_normalizer(jnp.sum(as_float(mask))) if normalizer is None else normalizer
    return reduce.masked_sum(values, mask, axis=None) / normalizer


GRPO_LOSS_TYPES = {
    "grpo": _agg_grpo,
    "bnpo": _agg_bnpo,
    "dr_grpo": _agg_dr_grpo,
    "dapo": _agg_dapo,
}
"""TRL 1.16 `loss_type` -> aggregation `(values [..., T], mask [..., T], **kw) -> scalar`."""


def grpo_aggregate(per_token_loss, mask, *, loss_type: str = "dapo",
                   max_completion_length: int = 512, normalizer=None) -> jax.Array:
    """Reduces `grpo_loss` output as TRL 1.16's `loss_type` does (before the division by the
    gradient-accumulation steps that TRL applies to grpo, bnpo and dr_grpo).

    grpo: mean over sequences of token means; bnpo: token mean over the batch; dr_grpo:
    sum / (num_sequences x max_completion_length); dapo: sum / `normalizer` (`dapo_normalizer`;
    default: the local count of active tokens, i.e. one process, one step).

    Args:
      per_token_loss: `[..., T]`; mask: `[..., T]`.
      loss_type: a `GRPO_LOSS_TYPES` name (TRL default "dapo").
      max_completion_length: L_max of dr_grpo (TRL default 512).
      normalizer: dapo's denominator (scalar) or None.
    Returns: scalar loss.
    """
    try:
        fn = GRPO_LOSS_TYPES[loss_type]
    except KeyError:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; known: "
                         f"{', '.join(sorted(GRPO_LOSS_TYPES))}") from None
    return fn(per_token_loss, mask, max_completion_length=max_completion_length,
              normalizer=normalizer)
