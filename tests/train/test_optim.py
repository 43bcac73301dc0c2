"""Optimizers from keyword arguments and config dicts: schedules, clipping, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignax.train import make_optimizer, make_schedule, optimizer_from_config


@pytest.mark.parametrize("decay, halfway, end", [
    ("cosine", 0.5, 0.0),    # cos(pi/2): half the peak halfway through the decay
    ("linear", 0.5, 0.0),    # straight line from peak to 0
    ("constant", 1.0, 1.0),  # no decay after warmup
])
def test_warmup_then_decay(decay, halfway, end):
    lr = make_schedule(learning_rate=1.0, total_steps=12, warmup_steps=2, decay=decay)
    np.testing.assert_allclose([lr(0), lr(1), lr(2)], [0.0, 0.5, 1.0], atol=1e-6)  # warmup
    np.testing.assert_allclose(lr(7), halfway, atol=1e-6)  # 5 of 10 decay steps
    np.testing.assert_allclose(lr(12), end, atol=1e-6)


def test_cosine_ends_at_end_learning_rate():
    lr = make_schedule(learning_rate=1e-3, total_steps=10, end_learning_rate=1e-4)
    np.testing.assert_allclose([lr(0), lr(10)], [1e-3, 1e-4], rtol=1e-5)


def test_clipping_and_adamw_first_step():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([30.0, -40.0])}  # global norm 50, clipped to 1 -> [0.6, -0.8]
    tx = make_optimizer(learning_rate=0.1, decay="constant", max_grad_norm=1.0, eps=0.0)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # Adam's first step is lr * g / |g| = -lr * sign(g), whatever the scale of g (float32:
    # the bias corrections 1 - 0.9 and 1 - 0.999 round, hence 1e-5).
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=1e-5)
    tx_wd = make_optimizer(learning_rate=0.1, decay="constant", weight_decay=0.5, eps=0.0)
    updates, _ = tx_wd.update(grads, tx_wd.init(params), params)
    # Decoupled decay adds lr * wd * w = 0.05 * w.
    np.testing.assert_allclose(updates["w"], [-0.1 - 0.05, 0.1 + 0.1], rtol=1e-5)


def test_from_config_matches_keywords_and_rejects_unknown_keys():
    config = {"name": "adamw", "learning_rate": 0.01, "warmup_steps": 1, "decay": "linear"}
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.array([1.0, 2.0, 3.0])}
    a = optimizer_from_config(config, total_steps=5)
    b = make_optimizer(learning_rate=0.01, warmup_steps=1, decay="linear", total_steps=5)
    state_a, state_b = a.init(params), b.init(params)
    for _ in range(3):
        ua, state_a = a.update(grads, state_a, params)
        ub, state_b = b.update(grads, state_b, params)
        np.testing.assert_array_equal(ua["w"], ub["w"])
    with pytest.raises(ValueError, match=r"unknown optim keys \['lr'\]"):
        optimizer_from_config({"lr": 0.1}, total_steps=5)
    with pytest.raises(ValueError, match=r"unknown decay 'step'"):
        optimizer_from_config({"decay": "step"}, total_steps=5)
    with pytest.raises(ValueError, match="only 'adamw'"):
        optimizer_from_config({"name": "sgd"})
    assert isinstance(a, optax.GradientTransformation)
