"""Unit tests for the DPO family: closed forms, invariants, gradients, broadcasting, registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignax import losses
from alignax.losses import PREFERENCE_LOSSES

# docs/algorithms.md, DPO family worked pair: l(y_w)=-10, l(y_l)=-12, l_ref(y_w)=-11,
# l_ref(y_l)=-11.5, |y_w|=5, |y_l|=8, beta=0.1 -> rho_w=1, rho_l=-0.5, delta=1.5.
PAIR = dict(chosen_logps=[-10.0], rejected_logps=[-12.0], ref_chosen_logps=[-11.0],
            ref_rejected_logps=[-11.5])
LENGTHS = dict(chosen_lengths=[5.0], rejected_lengths=[8.0])

WORKED = {  # loss_type: (extra kwargs, value from docs/algorithms.md DPO family, float64)
    "sigmoid": ({}, 0.620957),
    "hinge": ({}, 0.85),            # 1 - 0.1 * 1.5
    "ipo": ({}, 22.443906),         # (1/5 + 0.5/8 - 5)^2
    "exo_pair": ({"label_smoothing": 1e-3}, 2.505517),
    "nca_pair": ({}, 1.350825),
    "robust": ({"label_smoothing": 0.1}, 0.602207),
    "bco_pair": ({}, 1.312856),
    "sppo_hard": ({}, 36.25),       # (1 - 5)^2 + (-0.5 + 5)^2
    "apo_zero": ({}, 0.962523),
    "apo_down": ({}, 0.987549),
    "discopop": ({}, 0.849338),
    "sigmoid_norm": ({}, 0.680108),
    "aot": ({}, 0.620957),          # a batch of one: sorting changes nothing
    "aot_unpaired": ({}, 0.620957),
    "sft": ({}, 2.0),               # -(-10) / 5
}


def _call(name, pair=PAIR, **kw):
    args = [jnp.asarray(pair[k]) for k in ("chosen_logps", "rejected_logps", "ref_chosen_logps",
                                           "ref_rejected_logps")]
    kw = {**{k: jnp.asarray(v) for k, v in LENGTHS.items()}, "beta": 0.1, **kw}
    fn = PREFERENCE_LOSSES[name]
    return jax.jit(lambda *a: fn(*a, **kw))(*args)


def test_registry_has_every_trl_116_loss_type():
    # TRL 1.16.0 DPOConfig.loss_type choices, exactly.
    assert set(PREFERENCE_LOSSES) == set(WORKED)


@pytest.mark.parametrize("name", sorted(WORKED))
def test_worked_example(name, x64):
    extra, expected = WORKED[name]
    np.testing.assert_allclose(_call(name, **extra), [expected], rtol=1e-6, atol=1e-6)


def test_legacy_cdpo_label_smoothing(x64):
    # docs/algorithms.md, DPO family: legacy sigmoid with eps=0.1 is 0.635957; eps=0 is the
    # plain sigmoid.
    args = [jnp.asarray(PAIR[k]) for k in PAIR]
    np.testing.assert_allclose(losses.dpo_loss(*args, beta=0.1, label_smoothing=0.1), [0.635957],
                               rtol=1e-6)
    np.testing.assert_allclose(losses.dpo_loss(*args, beta=0.1),
                               losses.sigmoid_loss(*args, beta=0.1), rtol=1e-12)


def test_aot_batch_of_two(x64):
    # docs/algorithms.md, DPO family: second pair (-20, -19, -20, -21): aot mean 0.707677,
    # unpaired 0.706428.
    pair = dict(chosen_logps=[-10.0, -20.0], rejected_logps=[-12.0, -19.0],
                ref_chosen_logps=[-11.0, -20.0], ref_rejected_logps=[-11.5, -21.0])
    kw = dict(chosen_lengths=jnp.ones(2), rejected_lengths=jnp.ones(2), beta=0.1)
    args = [jnp.asarray(pair[k]) for k in pair]
    np.testing.assert_allclose(PREFERENCE_LOSSES["sigmoid"](*args, **kw),
                               [0.620957, 0.798139], rtol=1e-6)
    np.testing.assert_allclose(PREFERENCE_LOSSES["aot"](*args, **kw).mean(), 0.707677, rtol=1e-6)
    np.testing.assert_allclose(PREFERENCE_LOSSES["aot_unpaired"](*args, **kw).mean(), 0.706428,
                               rtol=1e-6)


def test_ld_dpo_worked_example(x64):
    # docs/algorithms.md, DPO family (LD-DPO): shared length 3; chosen -3.5,
    # rejected -1.5-1-2 + 0.5*(-0.5-1) = -5.25.
    cw = jnp.array([[0.0, -1.0, -2.0, -0.5, 0.0, 0.0]])
    mw = jnp.array([[0.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    cl = jnp.array([[-1.5, -1.0, -2.0, -0.5, -1.0, 0.0]])
    ml = jnp.array([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    w, lo = losses.ld_sequence_logps(cw, mw, cl, ml, ld_alpha=0.5)
    np.testing.assert_allclose(w, [-3.5], rtol=1e-12)
    np.testing.assert_allclose(lo, [-5.25], rtol=1e-12)
    # alpha = 1 gives the plain masked sums.
    w1, l1 = losses.ld_sequence_logps(cw, mw, cl, ml, ld_alpha=1.0)
    np.testing.assert_allclose([w1[0], l1[0]], [-3.5, -6.0], rtol=1e-12)


def test_wpo_weights_closed_form(x64):
    # One token each: w = exp(logp_w - logsq_w) * exp(logp_l - logsq_l), no gradient.
    w = losses.wpo_weights(jnp.array([[-1.0]]), jnp.array([[-2.0]]), jnp.ones((1, 1)),
                           jnp.array([[-3.0]]), jnp.array([[-2.5]]), jnp.ones((1, 1)))
    np.testing.assert_allclose(w, [math.exp(1.0) * math.exp(-0.5)], rtol=1e-12)
    g = jax.grad(lambda x: losses.wpo_weights(x, x, jnp.ones((1, 1)), x, x,
                                              jnp.ones((1, 1))).sum())(jnp.ones((1, 1)))
    assert float(jnp.abs(g).sum()) == 0.0


def _random_pairs(key, shape, scale=20.0):
    ks = jax.random.split(key, 4)
    return [-scale * jax.random.uniform(k, shape, jnp.float64) for k in ks]


@pytest.mark.parametrize("name", sorted(WORKED))
def test_no_gradient_into_reference(name, x64):
    args = _random_pairs(jax.random.PRNGKey(0), (2, 5))
    extra = WORKED[name][0]
    kw = dict(beta=0.1, chosen_lengths=jnp.full((2, 5), 4.0),
              rejected_lengths=jnp.full((2, 5), 6.0), **extra)
    fn = PREFERENCE_LOSSES[name]
    g_ref = jax.grad(lambda rc, rr: fn(args[0], args[1], rc, rr, **kw).sum(), argnums=(0, 1))(
        args[2], args[3])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in g_ref)


# The policy gradient of every loss matches finite differences (float64).
@pytest.mark.parametrize("name", sorted(set(WORKED) - {"aot", "aot_unpaired", "hinge"}))
def test_check_grads(name, x64):
    args = _random_pairs(jax.random.PRNGKey(1), (3,), scale=5.0)
    extra = WORKED[name][0]
    kw = dict(beta=0.5, chosen_lengths=jnp.array([3.0, 4.0, 5.0]),
              rejected_lengths=jnp.array([2.0, 6.0, 1.0]), **extra)
    fn = PREFERENCE_LOSSES[name]
    check_grads(lambda cw, cl: fn(cw, cl, args[2], args[3], **kw), (args[0], args[1]), order=2,
                modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "hinge", "robust", "discopop", "exo_pair"])
def test_swap_symmetry(name, x64):
    # Swapping chosen and rejected turns delta into -delta; for sigmoid, loss(d) - loss(-d) = -b d.
    cw, cl, rw, rl = _random_pairs(jax.random.PRNGKey(2), (4,))
    kw = dict(beta=0.1, chosen_lengths=jnp.ones(4), rejected_lengths=jnp.ones(4),
              **WORKED[name][0])
    fn = PREFERENCE_LOSSES[name]
    fwd, back = fn(cw, cl, rw, rl, **kw), fn(cl, cw, rl, rw, **kw)
    delta = (cw - rw) - (cl - rl)
    if name == "sigmoid":
        np.testing.assert_allclose(fwd - back, -0.1 * delta, rtol=1e-9, atol=1e-12)
    elif name == "ipo":  # (d - c)^2 - (-d - c)^2 = -4 c d with c = 1/(2 beta)
        np.testing.assert_allclose(fwd - back, -4 * 5.0 * delta, rtol=1e-9)
    else:
        # Symmetric-in-label losses: the loss of the better ordering is the smaller one.
        assert bool(jnp.all((fwd <= back) == (delta >= 0)))


def test_broadcast_over_heads(x64):
    # [H, B] inputs give per-head losses equal to looping over heads.
    args = _random_pairs(jax.random.PRNGKey(3), (3, 4))
    lens = dict(chosen_lengths=jnp.full((3, 4), 3.0), rejected_lengths=jnp.full((3, 4), 5.0))
    for name in PREFERENCE_LOSSES:
        kw = dict(beta=0.2, **lens, **WORKED[name][0])
        full = PREFERENCE_LOSSES[name](*args, **kw)
        assert full.shape == (3, 4), name
        for h in range(3):
            one = PREFERENCE_LOSSES[name](*[a[h] for a in args],
                                          **{k: (v[h] if hasattr(v, "shape") else v)
                                             for k, v in kw.items()})
            np.testing.assert_allclose(full[h], one, rtol=1e-12, err_msg=name)


def test_bf16_inputs_compute_in_float32():
    args = [jnp.asarray(PAIR[k], jnp.bfloat16) for k in PAIR]
    out = PREFERENCE_LOSSES["sigmoid"](*args, beta=0.1)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [0.620957], rtol=1e-5)


def test_f_divergence_scores(x64):
    rho = jnp.array([1.0, -0.5])
    np.testing.assert_allclose(losses.f_divergence_score(rho, f_divergence_type="forward_kl"),
                               1 - np.exp(-np.array([1.0, -0.5])), rtol=1e-12)
    # alpha = 0.5: (exp(-0.5 rho) - 1) / -0.5
    np.testing.assert_allclose(
        losses.f_divergence_score(rho, f_divergence_type="alpha_divergence"),
        (np.exp(-0.5 * np.array([1.0, -0.5])) - 1) / -0.5, rtol=1e-12)
    np.testing.assert_allclose(
        losses.f_divergence_score(rho, f_divergence_type="js_divergence"),
        np.log(2) - np.log1p(np.exp(-np.array([1.0, -0.5]))), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown f_divergence_type"):
        losses.f_divergence_score(rho, f_divergence_type="kl")


def test_registry_rejects_unused_hyperparameters():
    args = [jnp.asarray(PAIR[k]) for k in PAIR]
    with pytest.raises(ValueError, match="does not use label_smoothing"):
        PREFERENCE_LOSSES["sigmoid"](*args, beta=0.1, label_smoothing=0.1)
    with pytest.raises(ValueError, match="does not use f_divergence_type"):
        PREFERENCE_LOSSES["nca_pair"](*args, f_divergence_type="forward_kl")
    with pytest.raises(ValueError, match="needs `chosen_lengths`"):
        PREFERENCE_LOSSES["ipo"](*args, beta=0.1)
    with pytest.raises(TypeError, match="unknown arguments"):
        PREFERENCE_LOSSES["sigmoid"](*args, betta=0.1)
    with pytest.raises(ValueError, match="exo_pair needs label_smoothing"):
        PREFERENCE_LOSSES["exo_pair"](*args)
    with pytest.raises(ValueError, match="unknown preference loss 'dpo'"):
        losses.get_preference_loss("dpo")


def test_mixed_loss_is_weighted_sum(x64):
    args = _random_pairs(jax.random.PRNGKey(4), (5,))
    kw = dict(beta=0.1, chosen_lengths=jnp.full(5, 4.0), rejected_lengths=jnp.full(5, 2.0))
    mixed = losses.mixed_preference_loss(*args, loss_types=["sigmoid", "sft"],
                                         loss_weights=[0.8, 0.2], **kw)
    expected = (0.8 * PREFERENCE_LOSSES["sigmoid"](*args, **kw)
                + 0.2 * PREFERENCE_LOSSES["sft"](*args, **kw))
    np.testing.assert_allclose(mixed, expected, rtol=1e-12)
    # label_smoothing goes to robust only (TRL 1.16); a value no listed type uses is an error.
    mixed = losses.mixed_preference_loss(*args, loss_types=["sigmoid", "robust"],
                                         label_smoothing=0.1, **kw)
    np.testing.assert_allclose(mixed, PREFERENCE_LOSSES["sigmoid"](*args, **kw)
                               + PREFERENCE_LOSSES["robust"](*args, label_smoothing=0.1, **kw),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="none of the loss types"):
        losses.mixed_preference_loss(*args, loss_types=["sigmoid", "sft"], label_smoothing=0.1,
                                     **kw)
    with pytest.raises(ValueError, match="loss_weights has 1 entries"):
        losses.mixed_preference_loss(*args, loss_types=["sigmoid", "sft"], loss_weights=[1.0])


def test_register_user_loss():
    def my_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta):
        return jnp.square(beta * ((chosen_logps - ref_chosen_logps)
                                  - (rejected_logps - ref_rejected_logps)) - 1.0)

    try:
        fn = losses.register_preference_loss("my_square", my_loss)
        args = [jnp.asarray(PAIR[k]) for k in PAIR]
        np.testing.assert_allclose(fn(*args, beta=0.1), [(0.15 - 1.0) ** 2], rtol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            losses.register_preference_loss("my_square", my_loss)
    finally:
        PREFERENCE_LOSSES.pop("my_square", None)


def test_preference_metrics(x64):
    args = [jnp.asarray(PAIR[k]) for k in PAIR]
    m = losses.preference_metrics(*args, beta=0.1)
    # docs/algorithms.md, DPO family: rewards chosen 0.1, rejected -0.05, margin 0.15, accuracy 1.
    np.testing.assert_allclose([m["rewards/chosen"], m["rewards/rejected"],
                                m["rewards/margins"], m["rewards/accuracies"],
                                m["logps/chosen"], m["logps/rejected"]],
                               [0.1, -0.05, 0.15, 1.0, -10.0, -12.0], rtol=1e-12)


def test_stable_for_extreme_margins():
    # log_sigmoid keeps the loss finite where log(sigmoid(.)) would give -inf.
    big = jnp.array([1e4])
    out = PREFERENCE_LOSSES["sigmoid"](-big, jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta=1.0)
    assert bool(jnp.isfinite(out).all())
    np.testing.assert_allclose(out, [1e4], rtol=1e-6)
