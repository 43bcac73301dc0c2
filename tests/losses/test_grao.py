"""GRAO: docs/algorithms.md (GRAO) worked numbers, the algebraic form, invariants, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from alignax import losses

# docs/algorithms.md, GRAO worked example, G = 3: mean log-probs l(o) = [-0.8, -1.5, -1.0],
# l(y) = -1.2. Token rows of different lengths with those means exercise the per-sequence length
# normalisation.
SAMPLE_TOKENS = np.array([[-0.6, -1.0, 0.0], [-1.5, -1.5, -1.5], [-1.0, 0.0, 0.0]])
SAMPLE_MASK = np.array([[1.0, 1, 0], [1, 1, 1], [1, 0, 0]])
ANSWER_TOKENS = np.array([-1.0, -1.4, 9.0])  # the 9.0 is padding
ANSWER_MASK = np.array([1.0, 1, 0])


def _loss(rewards, answer_reward, pooled=True, beta=0.5, lam=0.6, tokens=SAMPLE_TOKENS):
    fn = jax.jit(lambda t, r, ry: losses.grao_loss(t, SAMPLE_MASK, ANSWER_TOKENS, ANSWER_MASK, r,
                                                   ry, beta=beta, lam=lam, pooled=pooled))
    return fn(tokens, np.asarray(rewards), np.asarray(answer_reward))


def test_worked_pooled(x64):
    # Judge rewards [1, -1, 0], R(y, y) = 0: mu = 0, sigma = 0.707107 over the pooled 4.
    a_o, a_y = losses.grao_advantages(np.array([1.0, -1.0, 0.0]), np.array(0.0))
    np.testing.assert_allclose(a_o, [1.414214, -1.414214, 0.0], atol=1e-6)
    np.testing.assert_allclose(a_y, 0.0, atol=1e-12)
    loss, metrics = _loss([1.0, -1.0, 0.0], 0.0)
    np.testing.assert_allclose(loss, -0.527973, atol=1e-6)  # GRAO pooled L
    # Components: exploration -1.414214 x 0.7 / 3; alignment 0.6 x the same; imitation 0 (A_y=0).
    np.testing.assert_allclose(metrics["loss/exploration"], -1.414214 * 0.7 / 3, atol=1e-6)
    np.testing.assert_allclose(metrics["loss/alignment"], -0.6 * 1.414214 * 0.7 / 3, atol=1e-6)
    np.testing.assert_allclose(metrics["loss/imitation"], 0.0, atol=1e-12)
    np.testing.assert_allclose(metrics["loss/total"], loss, rtol=1e-12)


def test_worked_gradient_wrt_mean_logps(x64):
    # docs/algorithms.md, GRAO: dL/dl(o) = -(1 + lambda) A_o / G = [-0.754247, 0.754247, 0];
    # per token it is that divided by the sequence length (mean log-prob), 0 on padding.
    grad = jax.grad(lambda t: _loss([1.0, -1.0, 0.0], 0.0, tokens=t)[0])(SAMPLE_TOKENS)
    per_seq = np.array([-0.754247, 0.754247, 0.0])
    np.testing.assert_allclose(grad, per_seq[:, None] * SAMPLE_MASK / SAMPLE_MASK.sum(1,
                               keepdims=True), atol=1e-6)


def test_worked_samples_only(x64):
    # sigma over the 3 samples = 0.816497: A_o = [1.224745, -1.224745, 0], L = -0.457238.
    a_o, _ = losses.grao_advantages(np.array([1.0, -1.0, 0.0]), np.array(0.0), pooled=False)
    np.testing.assert_allclose(a_o, [1.224745, -1.224745, 0.0], atol=1e-6)
    np.testing.assert_allclose(_loss([1.0, -1.0, 0.0], 0.0, pooled=False)[0], -0.457238,
                               atol=1e-6)


def test_worked_pointwise_rewards(x64):
    # RM rewards [0.2, 0.9, 0.5], R_y = 0.8, pooled: A_o = [-1.460593, 1.095445, -0.365148],
    # A_y = 0.730297, L = 0.671873.
    a_o, a_y = losses.grao_advantages(np.array([0.2, 0.9, 0.5]), np.array(0.8))
    np.testing.assert_allclose(a_o, [-1.460593, 1.095445, -0.365148], atol=1e-6)
    np.testing.assert_allclose(a_y, 0.730297, atol=1e-6)
    np.testing.assert_allclose(_loss([0.2, 0.9, 0.5], 0.8)[0], 0.671873, atol=1e-6)


def test_algebraic_form(x64):
    # docs/algorithms.md, GRAO: J = (1 + lam)/G sum A_o l(o) + beta A_y l(y) - lam l(y) mean(A_o);
    # pooled: mean(A_o) = -A_y / G.
    l_o, l_y = np.array([-0.8, -1.5, -1.0]), -1.2
    a_o, a_y = losses.grao_advantages(np.array([0.2, 0.9, 0.5]), np.array(0.8))
    np.testing.assert_allclose(a_o.mean(), -a_y / 3, atol=1e-12)
    j = 1.6 / 3 * np.sum(a_o * l_o) + 0.5 * a_y * l_y - 0.6 * l_y * a_o.mean()
    np.testing.assert_allclose(_loss([0.2, 0.9, 0.5], 0.8)[0], -j, rtol=1e-12)


def test_beta_lambda_zero_is_advantage_weighted_mean_nll(x64):
    rewards, ry = np.array([0.2, 0.9, 0.5]), np.array(0.8)
    loss, _ = _loss(rewards, ry, beta=0.0, lam=0.0)
    a_o, _ = losses.grao_advantages(rewards, ry)
    mean_nll = -(SAMPLE_TOKENS * SAMPLE_MASK).sum(1) / SAMPLE_MASK.sum(1)
    np.testing.assert_allclose(loss, np.mean(a_o * mean_nll), rtol=1e-12)  # REINFORCE, no ratio


def test_equal_rewards_give_zero_loss_and_gradient(x64):
    for pooled in (True, False):
        # 0.1 x 4 makes a float mean with rounding error; the group must still be exactly flat.
        a_o, a_y = losses.grao_advantages(np.full(3, 0.1), np.array(0.1), pooled=pooled)
        np.testing.assert_array_equal(a_o, 0.0)
        np.testing.assert_array_equal(a_y, 0.0)
        loss_fn = lambda t, p=pooled: _loss([0.1] * 3, 0.1, pooled=p, tokens=t)[0]
        np.testing.assert_array_equal(loss_fn(SAMPLE_TOKENS), 0.0)
        np.testing.assert_array_equal(jax.grad(loss_fn)(SAMPLE_TOKENS), 0.0)
    # Samples-only with equal samples but a different R(y, y): sigma = 0, every advantage 0.
    a_o, a_y = losses.grao_advantages(np.zeros(3), np.array(1.0), pooled=False)
    np.testing.assert_array_equal(jnp.append(a_o, a_y), 0.0)


def test_batched_queries_and_gradients(x64):
    key = jax.random.PRNGKey(0)
    tokens = jax.random.normal(key, (2, 3, 4)) - 2.0
    mask = np.ones((2, 3, 4))
    answer = jax.random.normal(jax.random.PRNGKey(1), (2, 5)) - 2.0
    rewards = np.array([[1.0, -1.0, 0.0], [0.2, 0.9, 0.5]])
    ry = np.array([0.0, 0.8])
    loss, _ = jax.jit(losses.grao_loss)(tokens, mask, answer, np.ones((2, 5)), rewards, ry)
    assert loss.shape == (2,)
    single, _ = losses.grao_loss(tokens[1], mask[1], answer[1], np.ones(5), rewards[1], ry[1])
    np.testing.assert_allclose(loss[1], single, rtol=1e-12)  # queries are independent
    check_grads(jax.jit(lambda t, a: losses.grao_loss(t, mask, a, np.ones((2, 5)), rewards,
                                                    ry)[0]),
                (tokens, answer), order=2, atol=1e-6, rtol=1e-6)


def test_sample_weights_scale_each_sampled_token(x64):
    """Async rollouts' truncated importance weights: a sampled token's log-prob enters l(o_i)
    times its weight (its gradient scaled by it); the answer's l(y) is unweighted; weights of
    1 change nothing."""
    rewards, ry = np.array([1.0, 0.0, 0.5]), np.array(0.3)
    weights = np.array([[0.5, 2.0, 1.0], [1.0, 1.5, 0.25], [0.8, 1.0, 1.0]])

    def loss(t, a, w=None):
        return losses.grao_loss(t, SAMPLE_MASK, a, ANSWER_MASK, rewards, ry,
                                sample_weights=w)[0]

    plain, ones = loss(SAMPLE_TOKENS, ANSWER_TOKENS), loss(SAMPLE_TOKENS, ANSWER_TOKENS,
                                                           np.ones((3, 3)))
    np.testing.assert_allclose(ones, plain, rtol=1e-14)
    np.testing.assert_allclose(loss(SAMPLE_TOKENS, ANSWER_TOKENS, weights),
                               loss(SAMPLE_TOKENS * weights, ANSWER_TOKENS), rtol=1e-14)
    g_plain = jax.grad(loss, argnums=(0, 1))(SAMPLE_TOKENS, ANSWER_TOKENS)
    g_weighted = jax.grad(loss, argnums=(0, 1))(SAMPLE_TOKENS, ANSWER_TOKENS, weights)
    np.testing.assert_allclose(g_weighted[0], weights * g_plain[0], rtol=1e-12)
    np.testing.assert_allclose(g_weighted[1], g_plain[1], rtol=1e-12)
    assert np.abs(g_plain[0]).max() > 0.01  # the gradient is not trivially zero
