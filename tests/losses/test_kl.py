"""KL estimators and chunked entropy: closed forms, invariants, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from alignax import losses

# docs/algorithms.md, PPO and GAE worked rollout: log pi_old and log pi_ref of three tokens.
OLD = np.array([-1.0, -0.5, -0.2])
REF = np.array([-1.2, -0.4, -0.2])


def test_k1_k2_k3_worked_values(x64):
    # log r = ref - old = [-0.2, 0.1, 0]: k1 = -log r, k2 = (log r)^2 / 2, k3 = e^u - 1 - u.
    np.testing.assert_allclose(jax.jit(losses.kl_k1)(OLD, REF), [0.2, -0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(jax.jit(losses.kl_k2)(OLD, REF), [0.02, 0.005, 0.0], atol=1e-12)
    # docs/algorithms.md, KL estimators: k3 = [0.018731, 0.005171, 0].
    np.testing.assert_allclose(jax.jit(losses.kl_k3)(OLD, REF), [0.018731, 0.005171, 0.0],
                               atol=1e-6)


def test_estimators_vanish_at_equality_and_k3_nonnegative(x64):
    x = jnp.linspace(-3.0, 0.0, 7)
    for fn in losses.KL_ESTIMATORS.values():
        np.testing.assert_allclose(fn(x, x), 0.0, atol=0)  # log r = 0 gives 0 for all three
    y = x[::-1] - 0.5
    assert bool(jnp.all(losses.kl_k3(x, y) >= 0))  # e^u - 1 - u >= 0 for every u


def test_k3_is_unbiased_for_kl(x64):
    # Sampling y ~ p exactly (weights p): E_p[k1] = E_p[k3] = KL(p || q) for categoricals.
    p = jnp.array([0.5, 0.3, 0.2])
    q = jnp.array([0.2, 0.5, 0.3])
    kl = jnp.sum(p * jnp.log(p / q))
    np.testing.assert_allclose(jnp.sum(p * losses.kl_k1(jnp.log(p), jnp.log(q))), kl, rtol=1e-12)
    np.testing.assert_allclose(jnp.sum(p * losses.kl_k3(jnp.log(p), jnp.log(q))), kl, rtol=1e-12)


def test_bias_corrected_k3_gradient_differs_on_policy(x64):
    # Weight = exp(logp - sg(logp)) = 1 in value, but d/dlogp gains k3 * 1.
    logp = jnp.array([-1.0, -0.3])
    ref = jnp.array([-1.4, -0.1])

    def corrected(lp):
        return losses.kl_k3_bias_corrected(lp, ref, jnp.exp(lp - jax.lax.stop_gradient(lp))).sum()

    np.testing.assert_allclose(corrected(logp), losses.kl_k3(logp, ref).sum(), rtol=1e-12)
    g_plain = jax.grad(lambda lp: losses.kl_k3(lp, ref).sum())(logp)
    g_corr = jax.grad(corrected)(logp)
    np.testing.assert_allclose(g_corr - g_plain, losses.kl_k3(logp, ref), rtol=1e-12)


def test_kl_gradients_and_no_gradient_into_reference(x64):
    logp = jnp.array([[-1.0, -0.3, -2.0]])
    ref = jnp.array([[-1.4, -0.1, -1.0]])
    for fn in losses.KL_ESTIMATORS.values():
        check_grads(jax.jit(lambda lp, fn=fn: fn(lp, ref)), (logp,), order=2, atol=1e-6, rtol=1e-6)
        g_ref = jax.grad(lambda r, fn=fn: fn(logp, r).sum())(ref)
        np.testing.assert_array_equal(g_ref, 0.0)  # the reference is frozen


def test_entropy_from_logits_chunked_matches_direct(x64):
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 11)) * 3.0
    direct = -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), -1)
    for chunk in (1, 4, 15, 128):  # 15 rows: chunks that divide, do not divide, exceed
        out = jax.jit(lambda x, c=chunk: losses.entropy_from_logits(x, chunk_size=c))(logits)
        assert out.shape == (3, 5)
        np.testing.assert_allclose(out, direct, rtol=1e-12, atol=1e-12)
    check_grads(jax.jit(lambda x: losses.entropy_from_logits(x, chunk_size=4)), (logits[:1, :2],),
                order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_entropy_closed_forms():
    # Uniform over V = 8 has entropy log 8; a masked (-inf) half leaves log 4 with finite grads.
    np.testing.assert_allclose(losses.entropy_from_logits(jnp.zeros((2, 8))), np.log(8.0),
                               rtol=1e-6)
    half = jnp.array([[0.0] * 4 + [-jnp.inf] * 4])
    np.testing.assert_allclose(losses.entropy_from_logits(half), [np.log(4.0)], rtol=1e-6)
    g = jax.grad(lambda x: losses.entropy_from_logits(x).sum())(half)
    assert bool(jnp.all(jnp.isfinite(g)))
    bf16 = losses.entropy_from_logits(jnp.zeros((1, 8), jnp.bfloat16))
    assert bf16.dtype == jnp.float32  # computed in float32
