"""MAH-DPO loss: worked numbers (docs/algorithms.md), routing, per-head gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignax import losses

# docs/algorithms.md, MAH-DPO: (l(y_w), l(y_l), l_ref(y_w), l_ref(y_l)) of four pairs, beta = 0.1.
PAIRS = np.array([[-10, -12, -11, -11.5], [-9, -9.5, -9.2, -9.1], [-20, -19, -20.5, -19.5],
                  [-7, -8, -7.5, -7.6]])
PER_PAIR = [0.620957, 0.663597, 0.693147, 0.649159]  # per-example DPO losses


def _two_heads(noise=0.0):
    """Policy log-probs `[B, 2]`: the worked values on every head (+ noise on the unused
    head)."""
    w = np.stack([PAIRS[:, 0], PAIRS[:, 0] + noise], -1)
    l_ = np.stack([PAIRS[:, 1], PAIRS[:, 1] - noise], -1)
    return w, l_, PAIRS[:, 2], PAIRS[:, 3]


@pytest.mark.parametrize("dims,heads,combined", [
    ([0, 1, 0, 1], [0.657052, 0.656378], 0.656715),  # balanced = the plain mean
    ([0, 0, 0, 1], [0.659234, 0.649159], 0.654197),  # mean of head means != plain mean
])
def test_worked_example(dims, heads, combined, x64):
    fn = jax.jit(lambda *a: losses.mah_dpo_loss(*a, beta=0.1))
    loss, metrics = fn(*_two_heads(), np.array(dims))
    np.testing.assert_allclose(loss, combined, atol=1e-6)
    np.testing.assert_allclose(metrics["loss/heads"], heads, atol=1e-6)
    np.testing.assert_array_equal(metrics["examples"], np.bincount(dims, minlength=2))


def test_one_hot_equals_index_routing(x64):
    dims = np.array([0, 0, 0, 1])
    by_index = losses.mah_dpo_loss(*_two_heads(0.3), dims)
    by_one_hot = losses.mah_dpo_loss(*_two_heads(0.3), np.eye(2)[dims])
    np.testing.assert_allclose(by_index[0], by_one_hot[0], rtol=1e-12)


def test_single_head_is_sigmoid_dpo(x64):
    w, l_, rw, rl = PAIRS.T
    loss, _ = jax.jit(lambda *a: losses.mah_dpo_loss(*a, beta=0.1))(
        w[:, None], l_[:, None], rw, rl, np.zeros(4, int))
    np.testing.assert_allclose(loss, losses.sigmoid_loss(w, l_, rw, rl, beta=0.1).mean(),
                               rtol=1e-12)
    np.testing.assert_allclose(losses.sigmoid_loss(w, l_, rw, rl, beta=0.1), PER_PAIR,
                               atol=1e-6)


def test_absent_heads_are_left_out(x64):
    # Three heads, only head 0 in the batch: the loss is head 0's mean, not a third of it.
    w, l_, rw, rl = PAIRS.T
    loss, metrics = losses.mah_dpo_loss(np.tile(w[:, None], 3), np.tile(l_[:, None], 3), rw, rl,
                                        np.zeros(4, int))
    np.testing.assert_allclose(loss, np.mean(PER_PAIR), atol=1e-6)
    np.testing.assert_array_equal(metrics["loss/heads"][1:], 0.0)


def test_each_head_gets_gradient_only_from_its_pairs(x64):
    dims = np.array([0, 0, 0, 1])
    w, l_, rw, rl = _two_heads(0.3)
    gw = jax.jit(jax.grad(lambda w: losses.mah_dpo_loss(w, l_, rw, rl, dims)[0]))(w)
    routed = np.eye(2)[dims]
    np.testing.assert_array_equal(gw * (1 - routed), 0.0)  # no gradient into unrouted heads
    assert bool(jnp.all(gw[routed == 1] < 0))  # raising l(y_w) lowers the DPO loss
    # Head 1 has one pair, weight 1/2 (1 of 2 heads, 1 pair): -beta sigma(-beta delta) / 2.
    delta = (w[3, 1] - l_[3, 1]) - (rw[3] - rl[3])
    np.testing.assert_allclose(gw[3, 1], -0.1 * jax.nn.sigmoid(-0.1 * delta) / 2, rtol=1e-12)
    check_grads(jax.jit(lambda w, l_: losses.mah_dpo_loss(w, l_, rw, rl, dims)[0]), (w, l_),
                order=2, atol=1e-6, rtol=1e-6)


def test_implicit_rewards_and_metrics(x64):
    w, l_, rw, rl = _two_heads(0.3)
    r_w, r_l = losses.mah_dpo_rewards(w, l_, rw, rl, beta=0.1)
    assert r_w.shape == (4, 2)
    np.testing.assert_allclose(r_w, 0.1 * (w - rw[:, None]), rtol=1e-12)  # beta sg[rho]
    _, metrics = losses.mah_dpo_loss(w, l_, rw, rl, np.array([0, 0, 0, 1]))
    # Head 0 pairs 0-2: rewards/chosen = mean of 0.1 x [1, 0.2, 0.5].
    np.testing.assert_allclose(metrics["rewards/chosen"][0], 0.1 * np.mean([1, 0.2, 0.5]),
                               rtol=1e-12)
    # Head 0 margins 0.1 x [1.5, 0.6, 0] (0 is not a win) -> accuracies 2/3.
    np.testing.assert_allclose(metrics["rewards/accuracies"][0], 2 / 3, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss/heads"][0], 0.659234, atol=1e-6)  # worked example
    assert metrics["examples"][1] == 1.0


def test_label_smoothing_ipo_reference_free(x64):
    w, l_, rw, rl = PAIRS.T
    args = (w[:, None], l_[:, None], rw, rl, np.zeros(4, int))
    cdpo, _ = losses.mah_dpo_loss(*args, label_smoothing=0.1)
    np.testing.assert_allclose(cdpo, losses.dpo_loss(w, l_, rw, rl, label_smoothing=0.1).mean(),
                               rtol=1e-12)
    ipo, _ = losses.mah_dpo_loss(*args, loss_type="ipo")
    delta = (w - l_) - (rw - rl)
    np.testing.assert_allclose(ipo, np.mean((delta - 5.0) ** 2), rtol=1e-12)  # summed IPO
    free, _ = losses.mah_dpo_loss(*args, reference_free=True)
    np.testing.assert_allclose(free, np.mean(-jax.nn.log_sigmoid(0.1 * (w - l_))), rtol=1e-12)
