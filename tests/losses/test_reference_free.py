"""CPO / SimPO / AlphaPO / ORPO, KTO and reward-model losses: worked numbers and invariants."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from alignax import losses


def test_simpo_worked_example(x64):
    # docs/algorithms.md, SimPO: mean log-probs -2 (-10/5) and -1.5 (-12/8), beta 2, gamma 0.5
    # -> 1.701413.
    out = losses.simpo_loss(jnp.array([-10.0]), jnp.array([-12.0]), jnp.array([5.0]),
                            jnp.array([8.0]), beta=2.0, gamma=0.5)
    np.testing.assert_allclose(out, [1.701413], rtol=1e-6)


def test_cpo_sigmoid_worked_example(x64):
    # docs/algorithms.md, CPO: summed (-10, -12), beta 0.1 -> -log sigmoid(0.2) = 0.598139.
    np.testing.assert_allclose(losses.cpo_loss(jnp.array([-10.0]), jnp.array([-12.0]), beta=0.1),
                               [0.598139], rtol=1e-6)


def test_alphapo_limits(x64):
    # alpha -> 0 recovers the log-prob reward; alpha = 1: r = 1 - 1/p.
    lp = jnp.array([-0.5, -2.0])
    np.testing.assert_allclose(losses.alphapo_reward(lp, alpha=1e-9), lp, rtol=1e-7)
    np.testing.assert_allclose(losses.alphapo_reward(lp, alpha=1.0), 1 - np.exp(-lp), rtol=1e-12)
    np.testing.assert_allclose(losses.alphapo_reward(lp, alpha=0.0), lp, rtol=0)


def test_orpo_worked_example(x64):
    # docs/algorithms.md, ORPO: mean log-probs -2 and -1.5 give log odds -0.607069,
    # log sigma -1.042058.
    args = (jnp.array([-10.0]), jnp.array([-12.0]), jnp.array([5.0]), jnp.array([8.0]))
    np.testing.assert_allclose(losses.orpo_log_odds(*args), [-0.607069], rtol=1e-5)
    np.testing.assert_allclose(losses.orpo_loss(*args, beta=0.1), [0.1042058], rtol=1e-5)
    # With NLL = 2 the ORPO total is 2.104206.
    np.testing.assert_allclose(2.0 + losses.orpo_loss(*args, beta=0.1)[0], 2.104206, rtol=1e-6)


def test_log1mexp_both_branches_and_grads(x64):
    x = jnp.array([-1e-6, -0.3, -0.69, -0.7, -5.0, -40.0])
    np.testing.assert_allclose(losses.log1mexp(x), np.log1p(-np.exp(np.asarray(x))), rtol=1e-9)
    g = jax.grad(lambda v: losses.log1mexp(v).sum())(x)
    assert bool(jnp.all(jnp.isfinite(g)))
    check_grads(losses.log1mexp, (x[1:],), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_kto_worked_example(x64):
    # docs/algorithms.md, KTO: z0 = mean([0.5, 0.2, 0.1, 0.4]) = 0.3; losses [0.482507, 0.495,
    # 0.467546, 0.505]; mean 0.487513.
    kl = losses.kto_kl_estimate(jnp.array([0.5, 0.2, 0.1, 0.4]), jnp.zeros(4))
    np.testing.assert_allclose(kl, 0.3, rtol=1e-12)
    out = losses.kto_loss(jnp.array([-10.0, -8.0, -12.0, -9.0]),
                          jnp.array([-11.0, -8.5, -11.0, -9.5]),
                          jnp.array([True, True, False, False]), kl, beta=0.1)
    np.testing.assert_allclose(out, [0.482507, 0.495, 0.467546, 0.505], rtol=1e-5)
    np.testing.assert_allclose(out.mean(), 0.487513, rtol=1e-6)


def test_kto_kl_is_clamped_and_detached(x64):
    # A negative mean KL estimate is clamped to 0; no gradient flows through z0.
    assert float(losses.kto_kl_estimate(jnp.array([-1.0, 0.5]), jnp.zeros(2))) == 0.0
    g = jax.grad(lambda x: losses.kto_kl_estimate(x, jnp.zeros(2)))(jnp.array([1.0, 2.0]))
    assert float(jnp.abs(g).sum()) == 0.0


def test_apo_zero_unpaired(x64):
    # rho = 1 desirable -> 1 - sigma(0.1); rho = -1 undesirable -> sigma(-0.1).
    out = losses.apo_zero_unpaired_loss(jnp.array([0.0, -1.0]), jnp.array([-1.0, 0.0]),
                                        jnp.array([True, False]), beta=0.1)
    s = 1 / (1 + np.exp(-0.1))
    np.testing.assert_allclose(out, [1 - s, 1 - s], rtol=1e-12)


def test_bradley_terry_worked_example(x64):
    # docs/algorithms.md, Reward model (Bradley-Terry): BT 0.636108; with margins [0.3, 0]
    # 0.698139; centring c=0.01 adds 0.01305.
    r_w, r_l = jnp.array([1.0, 0.2]), jnp.array([0.5, 0.4])
    np.testing.assert_allclose(losses.bradley_terry_loss(r_w, r_l).mean(), 0.636108, rtol=1e-6)
    np.testing.assert_allclose(
        losses.bradley_terry_loss(r_w, r_l, margin=jnp.array([0.3, 0.0])).mean(), 0.698139,
        rtol=1e-6)
    centred = losses.bradley_terry_loss(r_w, r_l, center_rewards_coefficient=0.01).mean()
    np.testing.assert_allclose(centred - 0.636108, 0.01305, rtol=1e-4)
    m = losses.reward_metrics(r_w, r_l)
    np.testing.assert_allclose([m["accuracy"], m["margin"], m["min_reward"], m["max_reward"]],
                               [0.5, 0.15, 0.2, 1.0], rtol=1e-12)


def test_nll_and_reductions(x64):
    logps = jnp.array([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    nll = losses.nll_loss(logps, mask)
    # token mean over the batch: (1 + 2 + 4) / 3
    np.testing.assert_allclose(losses.reduce.token_mean(nll, mask), 7 / 3, rtol=1e-12)
    # sequence mean of token means: (1.5 + 4) / 2
    np.testing.assert_allclose(losses.reduce.seq_mean_token_mean(nll, mask), 2.75, rtol=1e-12)
