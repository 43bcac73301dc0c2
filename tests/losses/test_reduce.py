"""Aggregation modes on one hand-checkable batch (two sequences, lengths 2 and 1)."""

import jax
import numpy as np

from alignax.losses import reduce

VALUES = np.array([[1.0, 3.0, 100.0], [6.0, 100.0, 100.0]])  # 100 sits on padding
MASK = np.array([[1.0, 1, 0], [1, 0, 0]])


def test_modes(x64):
    run = jax.jit(lambda v, m: {
        "token_mean": reduce.token_mean(v, m),
        "token_sum_norm": reduce.token_sum_norm(v, m, 5.0),
        "seq_mean_token_mean": reduce.seq_mean_token_mean(v, m),
        "seq_mean_token_sum": reduce.seq_mean_token_sum(v, m),
        "seq_mean_token_sum_norm": reduce.seq_mean_token_sum_norm(v, m, max_length=4),
        "masked_sum": reduce.masked_sum(v, m),
        "masked_mean": reduce.masked_mean(v, m),
    })
    out = run(VALUES, MASK)
    np.testing.assert_allclose(out["token_mean"], 10 / 3, rtol=1e-12)  # (1 + 3 + 6) / 3 tokens
    np.testing.assert_allclose(out["token_sum_norm"], 2.0, rtol=1e-12)  # 10 / 5
    np.testing.assert_allclose(out["seq_mean_token_mean"], 4.0, rtol=1e-12)  # mean(2, 6)
    np.testing.assert_allclose(out["seq_mean_token_sum"], 5.0, rtol=1e-12)  # mean(4, 6)
    np.testing.assert_allclose(out["seq_mean_token_sum_norm"], 1.25, rtol=1e-12)  # 10 / (2 x 4)
    np.testing.assert_allclose(out["masked_sum"], [4.0, 6.0], rtol=1e-12)
    np.testing.assert_allclose(out["masked_mean"], [2.0, 6.0], rtol=1e-12)


def test_empty_mask_is_zero_not_nan():
    # Every denominator is clamped at 1: an empty batch reduces to 0.
    zeros = np.zeros((1, 3))
    assert float(reduce.token_mean(VALUES[:1], zeros)) == 0.0
    assert float(reduce.seq_mean_token_mean(VALUES[:1], zeros)) == 0.0
