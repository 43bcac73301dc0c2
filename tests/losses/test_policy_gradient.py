"""PPO (GAE, whitening, clipped losses), GRPO family and RLOO: worked numbers, TRL goldens,
invariants and gradients."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignax import losses
from alignax.losses import reduce

GOLDENS = json.loads((pathlib.Path(__file__).parent.parent / "testdata" /
                      "trl_grpo_goldens.json").read_text())

# docs/algorithms.md, PPO and GAE worked rollout: one sequence of three tokens, no padding.
OLD = np.array([[-1.0, -0.5, -0.2]])
REF = np.array([[-1.2, -0.4, -0.2]])
VALUES = np.array([[0.5, 0.6, 0.7]])
MASK3 = np.ones((1, 3))


def _rollout(kl_estimator):
    rewards = losses.kl_penalized_rewards(OLD, REF, np.array([1.0]), MASK3, kl_coef=0.05,
                                          kl_estimator=kl_estimator)
    adv, ret = jax.jit(lambda r: losses.gae(r, VALUES, MASK3, gamma=1.0, lam=0.95))(rewards)
    return rewards, adv, ret


def test_ppo_worked_rewards_gae_returns(x64):
    rewards, adv, ret = _rollout("k1")
    # PPO and GAE: r = -0.05 kl + s at the last token, kl = [0.2, -0.1, 0].
    np.testing.assert_allclose(rewards, [[-0.01, 0.005, 1.0]], atol=1e-12)
    # PPO and GAE: A = [0.4605, 0.39, 0.3] (delta_3 = 0.3, A_2 = 0.105 + 0.95 x 0.3, ...),
    # R = A + V.
    np.testing.assert_allclose(adv, [[0.4605, 0.39, 0.3]], atol=1e-12)
    np.testing.assert_allclose(ret, [[0.9605, 0.99, 1.0]], atol=1e-12)
    # PPO and GAE: TRL-whitened A (unbiased variance, + 1e-8) = [0.957149, 0.080798, -1.037947].
    white = jax.jit(losses.masked_whiten)(adv, MASK3)
    np.testing.assert_allclose(white, [[0.957149, 0.080798, -1.037947]], atol=1e-6)


def test_ppo_worked_rewards_k3(x64):
    _, adv, _ = _rollout("k3")
    # PPO and GAE: with k3 (kl = [0.018731, 0.005171, 0]) A = [0.464568, 0.384741, 0.3].
    np.testing.assert_allclose(adv, [[0.464568, 0.384741, 0.3]], atol=1e-6)


def test_ppo_worked_update_step(x64):
    _, adv, ret = _rollout("k1")
    white = losses.masked_whiten(adv, MASK3)
    new = np.array([[-0.8, -0.5, -0.4]])  # ratio = [1.221403, 1, 0.818731]

    @jax.jit
    def step(new, v):
        pg, pg_m = losses.ppo_policy_loss(new, OLD, white, MASK3, epsilon=0.2)
        vf, vf_m = losses.ppo_value_loss(v, VALUES, ret, MASK3, epsilon_value=0.2)
        return reduce.token_mean(pg, MASK3), reduce.token_mean(vf, MASK3), {**pg_m, **vf_m}

    pg, vf, metrics = step(new, np.array([[0.9, 0.5, 0.75]]))
    np.testing.assert_allclose(pg, -0.126526, atol=1e-6)  # PPO L_pg
    np.testing.assert_allclose(vf, 0.061743, atol=1e-6)  # PPO L_v (clipped v = [0.7, 0.5, 0.75])
    np.testing.assert_allclose(pg + 0.1 * vf, -0.120352, atol=1e-6)  # PPO total, vf_coef 0.1
    # Token 1 (A > 0, ratio 1.2214 > 1.2) is the only clipped one: clipfrac 1/3.
    np.testing.assert_allclose(metrics["policy/clipfrac"], 1 / 3, rtol=1e-12)
    # approx_kl = mean(0.5 x [0.04, 0, 0.04]) = 0.04 / 3.
    np.testing.assert_allclose(metrics["policy/approx_kl"], 0.04 / 3, rtol=1e-12)
    # Only token 1's value is clipped (0.9 -> 0.7, further from R = 0.9605).
    np.testing.assert_allclose(metrics["value/clipfrac"], 1 / 3, rtol=1e-12)


def test_gae_right_padding_matches_unpadded(x64):
    # The same rollout padded to T = 5 with junk rewards and values on padding gives the same
    # advantages on real tokens and 0 on padding.
    rewards, adv, ret = _rollout("k1")
    pad_r = jnp.concatenate([rewards, jnp.array([[7.0, -3.0]])], -1)
    pad_v = jnp.concatenate([VALUES, jnp.array([[9.0, 4.0]])], -1)
    mask = np.array([[1.0, 1, 1, 0, 0]])
    adv5, ret5 = jax.jit(losses.gae)(pad_r, pad_v, mask)
    np.testing.assert_allclose(adv5, np.pad(adv, ((0, 0), (0, 2))), atol=1e-12)
    np.testing.assert_allclose(ret5, np.pad(ret, ((0, 0), (0, 2))), atol=1e-12)


def test_gae_lambda_gamma_one_is_reward_to_go_minus_values(x64):
    key1, key2 = jax.random.split(jax.random.PRNGKey(1))
    r = jax.random.normal(key1, (4, 6))
    v = jax.random.normal(key2, (4, 6))
    mask = (jnp.arange(6)[None] < jnp.array([[6], [3], [1], [5]])).astype(r.dtype)
    adv, ret = jax.jit(lambda r, v: losses.gae(r, v, mask, gamma=1.0, lam=1.0))(r, v)
    # Telescoping with V past the end = 0: A_t = sum_{k >= t} r_k - V_t.
    to_go = jnp.flip(jnp.cumsum(jnp.flip(r * mask, -1), -1), -1)
    np.testing.assert_allclose(adv, (to_go - v) * mask, atol=1e-12)
    np.testing.assert_allclose(ret, to_go * mask, atol=1e-12)


def test_score_position_last_and_trl_after_last(x64):
    mask = np.array([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    zeros = np.zeros((2, 4))
    scores = np.array([2.0, 3.0])
    last = losses.kl_penalized_rewards(zeros, zeros, scores, mask)
    # Score on the last real token (index 1 and index 3).
    np.testing.assert_allclose(last, [[0, 2, 0, 0], [0, 0, 0, 3]], atol=0)
    trl = losses.kl_penalized_rewards(zeros, zeros, scores, mask, score_after_last=True)
    # TRL: one past the last real token when that slot exists (index 2), else the last (3).
    np.testing.assert_allclose(trl, [[0, 0, 2, 0], [0, 0, 0, 3]], atol=0)


def test_whiten_population_and_shift_mean(x64):
    x = np.array([[1.0, 2.0, 3.0, 100.0]])
    mask = np.array([[1.0, 1, 1, 0]])
    # mean 2; population var 2/3, unbiased var 1; padding stays 0.
    np.testing.assert_allclose(losses.masked_whiten(x, mask, eps=0.0), [[-1, 0, 1, 0]],
                               atol=1e-12)
    pop = losses.masked_whiten(x, mask, unbiased=False, eps=0.0)
    np.testing.assert_allclose(pop, [[-np.sqrt(1.5), 0, np.sqrt(1.5), 0]], atol=1e-12)
    kept = losses.masked_whiten(x, mask, shift_mean=False, eps=0.0)  # whiten_rewards
    np.testing.assert_allclose(kept, [[1, 2, 3, 0]], atol=1e-12)


def test_dual_clip(x64):
    # ratio e^{log 5} = 5 on a negative advantage: PPO min(5 A, 1.2 A) = -5 -> loss 5;
    # dual clip c = 3 floors the objective at 3 A = -3 -> loss 3. Positive A is untouched.
    logp, old = np.log([[5.0, 5.0]]), np.zeros((1, 2))
    adv = np.array([[-1.0, 1.0]])
    mask = np.ones((1, 2))
    plain, _ = losses.ppo_policy_loss(logp, old, adv, mask)
    dual, _ = jax.jit(lambda a: losses.ppo_policy_loss(logp, old, a, mask, dual_clip=3.0))(adv)
    np.testing.assert_allclose(plain, [[5.0, -1.2]], rtol=1e-12)
    np.testing.assert_allclose(dual, [[3.0, -1.2]], rtol=1e-12)
    with pytest.raises(ValueError, match="dual_clip"):
        losses.ppo_policy_loss(logp, old, adv, mask, dual_clip=0.5)


def test_ppo_gradients(x64):
    old = np.array([[-1.0, -0.5, -0.2, -0.9]])
    adv = np.array([[0.7, -0.4, 1.1, -0.2]])
    mask = np.array([[1.0, 1, 1, 0]])
    new = old + np.array([[0.05, -0.03, 0.1, 0.02]])  # inside the clip range: smooth

    def pg(lp):
        return reduce.token_mean(losses.ppo_policy_loss(lp, old, adv, mask)[0], mask)

    check_grads(jax.jit(pg), (new,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    # Inside the range the gradient is -A ratio / n_tokens (0 on padding).
    np.testing.assert_allclose(jax.grad(pg)(new), -adv * np.exp(new - old) * mask / 3,
                               rtol=1e-12)

    def vf(v):
        return reduce.token_mean(losses.ppo_value_loss(v, old, old + 0.3, mask)[0], mask)

    check_grads(jax.jit(vf), (old + 0.1,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# GRPO

# docs/algorithms.md, GRPO family and RLOO worked batch: four completions of lengths 2, 3, 1, 2
# (padded to 3).
GRPO_MASK = np.array([[1.0, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
GRPO_LOGPS = np.array([[-1, -0.5, 0], [-0.2, -0.3, -0.4], [-2, 0, 0], [-0.7, -0.9, 0]])
GRPO_OLD = np.array([[-1.1, -0.5, 0], [-0.2, -0.6, -0.4], [-1.5, 0, 0], [-0.7, -0.9, 0]])
GRPO_REF = np.array([[-1, -0.7, 0], [-0.3, -0.3, -0.4], [-2, 0, 0], [-0.5, -0.9, 0]])


def test_grpo_worked_advantages(x64):
    rewards = np.array([1.0, 0.0, 0.0, 1.0])
    # GRPO worked advantages: mean 0.5, Bessel std 0.577350 (+1e-4): A = +-0.865875;
    # scale "none": A = +-0.5.
    adv = jax.jit(losses.grpo_advantages)(rewards)
    np.testing.assert_allclose(adv, [0.865875, -0.865875, -0.865875, 0.865875], atol=1e-6)
    none = losses.grpo_advantages(rewards, scale_rewards="none")
    np.testing.assert_allclose(none, [0.5, -0.5, -0.5, 0.5], atol=1e-12)
    # A single group: batch std = group std.
    np.testing.assert_allclose(losses.grpo_advantages(rewards, scale_rewards="batch"), adv,
                               atol=1e-12)


@pytest.mark.parametrize("beta,expected", [
    (0.0, {"grpo": -0.029432, "bnpo": 0.004837, "dapo": 0.004837, "dr_grpo": 0.002418}),
    (0.04, {"grpo": -0.029216, "bnpo": 0.005062, "dapo": 0.005062, "dr_grpo": 0.002531}),
])
def test_grpo_worked_losses(beta, expected, x64):
    adv = losses.grpo_advantages(np.array([1.0, 0.0, 0.0, 1.0]))

    @jax.jit
    def run(logps):
        per_token, metrics = losses.grpo_loss(
            logps, GRPO_OLD, adv, GRPO_MASK, ref_logps=GRPO_REF, epsilon=0.2, epsilon_high=0.28,
            beta=beta, use_bias_correction_kl=False)
        out = {name: losses.grpo_aggregate(per_token, GRPO_MASK, loss_type=name,
                                           max_completion_length=4) for name in expected}
        return out, metrics

    out, metrics = run(GRPO_LOGPS)
    for name, value in expected.items():  # GRPO table (dapo = bnpo with 1 process, 1 step)
        np.testing.assert_allclose(out[name], value, atol=1e-6, err_msg=name)
    # GRPO: only seq 3 (ratio e^{-0.5} < 0.8, A < 0) is low-clipped: 1 of 8 tokens.
    np.testing.assert_allclose(metrics["clip_ratio/low_mean"], 0.125, rtol=1e-12)
    np.testing.assert_allclose(metrics["clip_ratio/high_mean"], 0.0, atol=0)


def test_grpo_worked_k3_values(x64):
    # GRPO: the non-zero per-token k3 values are 0.018731, 0.004837 and 0.021403.
    kl = losses.kl_k3(GRPO_LOGPS, GRPO_REF) * GRPO_MASK
    np.testing.assert_allclose(kl[0, 1], 0.018731, atol=1e-6)
    np.testing.assert_allclose(kl[1, 0], 0.004837, atol=1e-6)
    np.testing.assert_allclose(kl[3, 0], 0.021403, atol=1e-6)


@functools.cache
def _trl_case_fn(level, beta, use_bias_correction_kl, on_policy, has_delta):
    """One compiled function per static configuration; returns all four loss types, their
    gradients with respect to the policy log-probs, and the metrics."""

    def losses_fn(logps, old, adv, mask, ref, eps_high, delta, max_len, normalizer):
        per_token, metrics = losses.grpo_loss(
            logps, None if on_policy else old, adv, mask, ref_logps=ref, epsilon=0.2,
            epsilon_high=eps_high, beta=beta, importance_sampling_level=level,
            use_bias_correction_kl=use_bias_correction_kl, delta=delta if has_delta else None)
        out = jnp.stack([losses.grpo_aggregate(per_token, mask, loss_type=name,
                                               max_completion_length=max_len,
                                               normalizer=normalizer) for name in LOSS_TYPES])
        return out, (out, metrics)

    return jax.jit(jax.jacrev(losses_fn, has_aux=True))


LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


@pytest.mark.parametrize("case", GOLDENS["loss_cases"], ids=lambda c: (
    f"{c['loss_type']}-{c['importance_sampling_level']}-b{c['beta']}-bc{c['use_bias_correction_kl']}"
    f"-eh{c['epsilon_high']}-d{c['delta']}-on{c['on_policy']}-e{c['empty_row']}"
    f"-x{c['extra_items']}"))
def test_grpo_matches_trl_116(case, x64):
    # TRL 1.16.0 GRPOTrainer._compute_loss on the same inputs (make_trl_grpo_goldens.py).
    assert GOLDENS["trl_version"] == "1.16.0"
    fn = _trl_case_fn(case["importance_sampling_level"], case["beta"],
                      case["use_bias_correction_kl"], case["on_policy"], case["delta"] is not None)
    eps_high = case["epsilon"] if case["epsilon_high"] is None else case["epsilon_high"]
    args = [np.asarray(case[k]) for k in ("logps", "old_logps", "advantages", "mask",
                                          "ref_logps")]
    grads, (out, metrics) = fn(*args, eps_high, case["delta"] or 0.0,
                               case["max_completion_length"], case["dapo_normalizer"])
    i = LOSS_TYPES.index(case["loss_type"])
    np.testing.assert_allclose(out[i], case["loss"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(grads[i], case["grad_logps"], rtol=1e-6, atol=1e-12)
    assert set(metrics) == set(case["metrics"])
    for name, value in case["metrics"].items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-6, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", GOLDENS["advantage_cases"],
                         ids=lambda c: f"{c['scale_rewards']}-nan{None in c['rewards']}")
def test_grpo_advantages_match_trl_116(case, x64):
    rewards = np.array([np.nan if r is None else r for r in case["rewards"]])
    grouped = rewards.reshape(-1, case["num_generations"])
    adv = jax.jit(lambda r: losses.grpo_advantages(r, scale_rewards=case["scale_rewards"]))(
        grouped)
    np.testing.assert_allclose(adv.reshape(-1), case["advantages"], rtol=1e-6, atol=1e-12)


def test_nanstd_is_trl_nanstd(x64):
    # Bessel-corrected, NaNs ignored, NaN with fewer than two values (as trl.trainer.utils).
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 2.0, np.nan]])
    np.testing.assert_allclose(losses.nanstd(x, axis=-1)[:, 0], [np.sqrt(2.0), np.nan])
    np.testing.assert_allclose(losses.nanstd(x), np.std([1.0, 3.0, 2.0], ddof=1), rtol=1e-12)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_group_gives_zero_advantage_and_zero_gradient(scale, x64):
    rewards = np.array([[0.3, 0.3, 0.3, 0.3], [1.0, 0.0, 0.5, 0.0]])
    adv = losses.grpo_advantages(rewards, scale_rewards=scale)
    np.testing.assert_array_equal(adv[0], 0.0)  # r - mean = 0 exactly in every mode
    logps = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 3)) - 1.0
    mask = np.ones((2, 4, 3))

    def loss(lp):
        per_token, _ = losses.grpo_loss(lp, lp + 0.1, adv, mask)
        return losses.grpo_aggregate(per_token, mask, loss_type="bnpo")

    grad = jax.jit(jax.grad(loss))(logps)
    np.testing.assert_array_equal(grad[0], 0.0)  # no signal from the flat group
    assert bool(jnp.any(grad[1] != 0.0))


def test_grpo_on_policy_gradient_is_reinforce(x64):
    # old = sg(logps): ratio 1, no clipping; d loss / d logp = -A / n_tokens (bnpo), beta = 0.
    adv = np.array([0.5, -1.0])
    mask = np.array([[1.0, 1, 0], [1, 1, 1]])
    logps = np.array([[-1.0, -0.5, 0.0], [-0.2, -0.3, -0.4]])

    def loss(lp):
        per_token, _ = losses.grpo_loss(lp, None, adv, mask)
        return losses.grpo_aggregate(per_token, mask, loss_type="bnpo")

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(logps), -adv[:, None] * mask / 5,
                               rtol=1e-12)
    # (Finite differences cannot check this case: the loss is constant in value.) Off-policy,
    # with the ratio inside the clip range and beta > 0, the gradient is smooth:
    ref = logps - 0.2

    def off_policy(lp):
        per_token, _ = losses.grpo_loss(lp, logps + 0.05, adv, mask, ref_logps=ref, beta=0.04)
        return losses.grpo_aggregate(per_token, mask, loss_type="grpo")

    check_grads(jax.jit(off_policy), (logps,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_grpo_unknown_names_raise():
    with pytest.raises(ValueError, match="loss_type"):
        losses.grpo_aggregate(jnp.zeros((1, 2)), jnp.ones((1, 2)), loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logps"):
        losses.grpo_loss(jnp.zeros((1, 2)), None, jnp.zeros(1), jnp.ones((1, 2)), beta=0.1)
    assert set(losses.GRPO_LOSS_TYPES) == {"grpo", "bnpo", "dr_grpo", "dapo"}


def test_dapo_normalizer(x64):
    # TRL: max(N, 1) / processes x grad_accum / steps_per_generation = 40 / 2 x 4 / 8.
    n = losses.dapo_normalizer(40.0, num_processes=2, gradient_accumulation_steps=4,
                               steps_per_generation=8)
    np.testing.assert_allclose(n, 10.0, rtol=0)


def test_rloo_advantages(x64):
    # r_i - mean of the other three: 1 - 1/3, 0 - 2/3.
    adv = jax.jit(losses.rloo_advantages)(np.array([[1.0, 0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(adv, [[2 / 3, -2 / 3, -2 / 3, 2 / 3]], rtol=1e-12)
    # Equal to G / (G - 1) x (r - mean).
    r = np.array([0.2, 0.9, 0.5])
    np.testing.assert_allclose(losses.rloo_advantages(r), 1.5 * (r - r.mean()), rtol=1e-12)
    # A group of one has no leave-one-out mean: an error, not 0/0 = NaN advantages.
    with pytest.raises(ValueError, match="G >= 2 .* got G=1"):
        losses.rloo_advantages(np.array([[1.0], [0.0]]))
    # GRPO's group of one: advantage 0 (documented), never NaN.
    np.testing.assert_array_equal(losses.grpo_advantages(np.array([[1.0], [0.0]])), [[0], [0]])


def test_float32_and_bf16_inputs():
    # Default float32 (no x64): the GRPO worked grpo and dapo values hold at 1e-5; bf16 log-probs
    # are upcast, so the loss comes back in float32.
    adv = losses.grpo_advantages(jnp.array([1.0, 0.0, 0.0, 1.0]))
    per_token, _ = jax.jit(lambda lp: losses.grpo_loss(lp, GRPO_OLD, adv, GRPO_MASK,
                                                       epsilon_high=0.28))(GRPO_LOGPS)
    assert per_token.dtype == jnp.float32
    np.testing.assert_allclose(losses.grpo_aggregate(per_token, GRPO_MASK, loss_type="grpo"),
                               -0.029432, atol=1e-5)
    np.testing.assert_allclose(losses.grpo_aggregate(per_token, GRPO_MASK), 0.004837, atol=1e-5)
    bf16, _ = losses.ppo_policy_loss(jnp.asarray(GRPO_LOGPS, jnp.bfloat16), GRPO_OLD,
                                     adv, GRPO_MASK)
    assert bf16.dtype == jnp.float32


def _gae_loop(rewards, values, mask, gamma, lam):
    """GAE over the real tokens of one row, by hand: the next real token, skipping gaps."""
    real = [t for t in range(len(mask)) if mask[t]]
    adv = np.zeros(len(mask))
    next_v = next_a = 0.0
    for t in reversed(real):
        adv[t] = rewards[t] + gamma * next_v - values[t] + gamma * lam * next_a
        next_v, next_a = values[t], adv[t]
    return adv


def test_gae_skips_interior_masked_tokens(x64):
    # The docstring's worked example: the masked token's value plays no part.
    adv, ret = losses.gae(np.array([[0.0, 0.0, 1.0]]), np.array([[0.5, 9.0, 0.25]]),
                          np.array([[1.0, 0.0, 1.0]]), gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [[0.5, 0.0, 0.75]], atol=1e-15)
    np.testing.assert_allclose(ret, [[1.0, 0.0, 1.0]], atol=1e-15)
    # Two turns with an observation between them, padding after, and a row with no gap.
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(3, 9)), rng.normal(size=(3, 9))
    mask = np.array([[1, 1, 0, 0, 0, 1, 1, 0, 0],
                     [1, 0, 1, 0, 1, 1, 1, 1, 0],
                     [1, 1, 1, 1, 1, 1, 0, 0, 0]], float)
    adv, ret = jax.jit(lambda r, v, m: losses.gae(r, v, m, gamma=0.9, lam=0.8))(r, v, mask)
    for i in range(3):
        want = _gae_loop(r[i], v[i], mask[i], 0.9, 0.8)
        np.testing.assert_allclose(adv[i], want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ret[i], (want + v[i]) * mask[i], rtol=1e-12, atol=1e-15)
    # A gap is not a restart: the first turn's advantages see the second turn's rewards.
    restart = _gae_loop(r[0] * [1, 1, 0, 0, 0, 0, 0, 0, 0], v[0], [1, 1, 0, 0, 0, 0, 0, 0, 0],
                        0.9, 0.8)
    assert abs(adv[0, 1] - restart[1]) > 1e-3


def test_gae_without_gaps_is_the_contiguous_recursion(x64):
    rng = np.random.default_rng(1)
    r, v = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    lengths = [7, 5, 1, 0]
    mask = (np.arange(7)[None] < np.array(lengths)[:, None]).astype(float)
    adv, _ = losses.gae(r, v, mask, gamma=0.99, lam=0.95)
    for i, n in enumerate(lengths):
        want, carry = np.zeros(7), 0.0
        for t in reversed(range(n)):
            nv = v[i, t + 1] if t + 1 < n else 0.0
            carry = r[i, t] + 0.99 * nv - v[i, t] + 0.99 * 0.95 * carry
            want[t] = carry
        np.testing.assert_allclose(adv[i], want, rtol=1e-12, atol=1e-15)


def test_sequence_level_clip_ratio_with_token_advantages_is_a_masked_mean():
    # TRL 1.16 `masked_batch_mean`: per-token flags are averaged over real tokens only. Row 0
    # (one real token) is clipped low, row 1 (two) not: 1/3, not 2/4.
    mask = np.array([[1.0, 0.0], [1.0, 1.0]])
    old = np.zeros((2, 2))
    logps = np.array([[-1.0, -1.0], [0.0, 0.0]])  # row 0's ratio exp(-1) < 0.8
    adv = np.array([[-1.0, -1.0], [1.0, 1.0]])
    _, m = losses.grpo_loss(logps, old, adv, mask, importance_sampling_level="sequence")
    assert float(m["clip_ratio/low_mean"]) == pytest.approx(1 / 3)
    assert float(m["clip_ratio/region_mean"]) == pytest.approx(1 / 3)
    # Sequence advantages: one flag per sequence, averaged over sequences (as before).
    _, m = losses.grpo_loss(logps, old, np.array([-1.0, 1.0]), mask,
                            importance_sampling_level="sequence")
    assert float(m["clip_ratio/low_mean"]) == pytest.approx(1 / 2)
