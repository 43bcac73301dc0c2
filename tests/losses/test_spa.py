"""SPA: docs/algorithms.md (SPA) worked pairs and loss, filters, the SimPO reduction (alpha = 0),
gradients."""

import jax
import numpy as np
from jax.test_util import check_grads

from alignax import losses

# docs/algorithms.md, SPA: samples y1 = (9, 4), y2 = (9, 6), y3 = (7, 8); refined y~ = (10, 9);
# delta 2.
SAMPLES = np.array([[9.0, 4.0], [9.0, 6.0], [7.0, 8.0]])
REFINED = np.array([10.0, 9.0])


def test_worked_pairs():
    pairs = losses.spa_pairs(SAMPLES, REFINED, delta=2.0)
    # SPA worked pairs: (y1>y3, 6), (y2>y1, 2), (y2>y3, 4), (y~>y1, 6), (y~>y2, 4), (y~>y3, 4);
    # y~ is index 3.
    got = list(zip(pairs.chosen.tolist(), pairs.rejected.tolist(), pairs.distance.tolist(),
                   strict=True))
    assert got == [(0, 2, 6.0), (1, 0, 2.0), (1, 2, 4.0), (3, 0, 6.0), (3, 1, 4.0), (3, 2, 4.0)]
    # Loss weights use the total-score gap: |13 - 15| = 2, |15 - 13| = 2, 0, 6, 4, 4.
    np.testing.assert_array_equal(pairs.score_gap, [2.0, 2.0, 0.0, 6.0, 4.0, 4.0])


def test_delta_filter():
    # delta 3 drops (y2>y1), whose L1 distance is 2.
    pairs = losses.spa_pairs(SAMPLES, REFINED, delta=3.0)
    assert (1, 0) not in list(zip(pairs.chosen.tolist(), pairs.rejected.tolist(), strict=True))
    assert len(pairs.chosen) == 5


def test_consistency_filter_is_strict():
    # y~ = (10, 8) ties max s_b = 8: the prompt is dropped (our reading)...
    assert len(losses.spa_pairs(SAMPLES, np.array([10.0, 8.0]), delta=2.0).chosen) == 0
    # ...or, with the flag off, only y~ is: the three sample pairs remain.
    kept = losses.spa_pairs(SAMPLES, np.array([10.0, 8.0]), delta=2.0,
                            drop_prompt_if_inconsistent=False)
    assert kept.chosen.tolist() == [0, 1, 1] and kept.rejected.tolist() == [2, 0, 2]


def test_informativeness_filter():
    # SPA worked example: det Cov = 1.333333 (ddof 1) and 0.592593 (ddof 0).
    np.testing.assert_allclose(losses.score_covariance_det(SAMPLES), 4 / 3, rtol=1e-12)
    np.testing.assert_allclose(losses.score_covariance_det(SAMPLES, ddof=0), 16 / 27,
                               rtol=1e-12)
    assert len(losses.spa_pairs(SAMPLES, REFINED, delta=2.0, tau=1.0).chosen) == 0  # 4/3 > tau
    assert len(losses.spa_pairs(SAMPLES, REFINED, delta=2.0, tau=1.0, ddof=0).chosen) == 6
    collinear = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])  # det = 0: uninformative
    assert len(losses.spa_pairs(collinear, np.array([9.0, 9.0])).chosen) == 0


def test_worked_loss(x64):
    # Mean log-probs w = [-1, -0.8, -1.2], l = [-1.3, -0.9, -1.1], gaps [2, 1, 3], beta 2.5,
    # gamma 0.5, alpha 1: w = [1, 0.5, 1.5], SimPO terms [0.575939, 0.825939, 1.136871].
    w, l_ = np.array([-1.0, -0.8, -1.2]), np.array([-1.3, -0.9, -1.1])
    ones, gaps = np.ones(3), np.array([2.0, 1.0, 3.0])
    np.testing.assert_allclose(losses.spa_weights(gaps), [1.0, 0.5, 1.5], rtol=1e-12)
    fn = jax.jit(lambda w, l_: losses.spa_loss(w, l_, ones, ones, gaps, beta=2.5, gamma=0.5,
                                               alpha=1.0))
    per_pair = fn(w, l_)
    np.testing.assert_allclose(per_pair / np.array([1.0, 0.5, 1.5]),
                               [0.575939, 0.825939, 1.136871], atol=1e-6)
    np.testing.assert_allclose(per_pair.mean(), 0.898072, atol=1e-6)  # SPA worked L_SPA
    # alpha = 0: plain SimPO, 0.846250 (SPA worked example, unweighted), equal to simpo_loss.
    simpo = losses.spa_loss(w, l_, ones, ones, gaps, beta=2.5, gamma=0.5, alpha=0.0)
    np.testing.assert_allclose(simpo.mean(), 0.846250, atol=1e-6)
    np.testing.assert_allclose(simpo, losses.simpo_loss(w, l_, ones, ones, beta=2.5, gamma=0.5),
                               rtol=1e-12)


def test_summed_logps_with_lengths_and_gradients(x64):
    # Summed log-probs with lengths give the same loss as the means; weights carry no gradient.
    w_sum, l_sum = np.array([-4.0, -1.6]), np.array([-3.9, -2.7])
    w_len, l_len = np.array([4.0, 2.0]), np.array([3.0, 3.0])
    gaps = np.array([2.0, 6.0])
    out = losses.spa_loss(w_sum, l_sum, w_len, l_len, gaps)
    ref = losses.spa_loss(w_sum / w_len, l_sum / l_len, np.ones(2), np.ones(2), gaps)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    g_gaps = jax.grad(lambda g: losses.spa_loss(w_sum, l_sum, w_len, l_len, g).sum())(gaps)
    np.testing.assert_array_equal(g_gaps, 0.0)
    check_grads(jax.jit(lambda a, b: losses.spa_loss(a, b, w_len, l_len, gaps)), (w_sum, l_sum),
                order=2, atol=1e-6, rtol=1e-6)
