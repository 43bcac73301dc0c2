"""`completion_logps`: right-padded batches give the same log-probs with or without the padding
mask."""

import jax.numpy as jnp
import numpy as np

from alignax.models import completion_logps, init_model, tiny_config


def test_right_padded_causal_path_equals_masked_path():
    model = init_model(tiny_config("llama"), seed=3)
    ids = jnp.array([[5, 6, 7, 8, 9, 256, 256], [5, 6, 7, 256, 256, 256, 256]])
    attn = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    comp = jnp.array([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0]])
    fast, mask = completion_logps(model, ids, attn, comp)
    slow, _ = completion_logps(model, ids, attn, comp, right_padded=False)
    np.testing.assert_allclose(fast * mask, slow * mask, atol=1e-6)
    # The check can fail: left padding would change the numbers.
    left = jnp.array([[256, 5, 6, 7, 8, 9, 10]])
    lmask = jnp.array([[0, 1, 1, 1, 1, 1, 1]])
    a, m = completion_logps(model, left, lmask, lmask)
    b, _ = completion_logps(model, left, lmask, lmask, right_padded=False)
    assert float(jnp.max(jnp.abs((a - b) * m))) > 1e-4
