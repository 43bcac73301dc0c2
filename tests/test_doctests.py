"""The worked examples in docstrings run and give the numbers they show."""

import doctest
import importlib

import pytest

MODULES = ["alignax.compare", "alignax.costs", "alignax.decoding.best_of_n", "alignax.envs.base",
           "alignax.rewards.functions", "alignax.models.precision",
           "alignax.algorithms.online.rollout", "benchmarks.batching_efficiency"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
