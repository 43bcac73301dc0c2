"""Reward model: scores the last real token; save/load round trip is exact."""

import jax.numpy as jnp
import numpy as np
import pytest

from alignax.models import init_model, tiny_config
from alignax.models.reward_model import RewardModel, load_reward_model, save_reward_model


def test_reward_model_round_trip_and_padding(tmp_path):
    rm = RewardModel(init_model(tiny_config("llama"), seed=0))
    ids = jnp.array([[5, 6, 7, 0], [5, 6, 7, 9]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    scores = rm(ids, mask)
    # Row 0 is row 1 minus its last token: its score is row 1's forward read one slot earlier.
    alone = rm(ids[:1, :3], mask[:1, :3])
    np.testing.assert_allclose(scores[0], alone[0], atol=1e-5)
    assert abs(float(scores[0] - scores[1])) > 1e-6
    save_reward_model(rm, tmp_path)
    np.testing.assert_array_equal(load_reward_model(tmp_path)(ids, mask), scores)
    with pytest.raises(FileNotFoundError, match="not an alignax reward model"):
        load_reward_model(tmp_path / "missing")
