"""Evaluation helpers of the engine."""

import pytest

from alignax import sharding
from alignax.train.evaluation import mean_eval_metrics


def test_mean_eval_metrics_weights_per_objective_metrics():
    # Batch 1 has no pair of objective "a" (its metrics read 0), batch 2 has two: the mean of
    # a/loss must be batch 2's value, not half of it; other metrics stay plain means.
    mets = iter([{"a/loss": 0.0, "a/examples": 0.0, "b/loss": 0.2},
                 {"a/loss": 0.6, "a/examples": 2.0, "b/loss": 0.4}])
    res = mean_eval_metrics(
        lambda st, b: (1.0, next(mets)), None, iter([0, 1]), num_batches=2,
        mesh=sharding.make_mesh({"data": -1}),
        weight_of=lambda k: "a/examples" if k == "a/loss" else None)
    assert res == pytest.approx({"a/loss": 0.6, "a/examples": 1.0, "b/loss": 0.3, "loss": 1.0})
