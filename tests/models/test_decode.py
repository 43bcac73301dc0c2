"""KV-cache decoding: prefill + one-token steps equal the full forward pass."""

import jax.numpy as jnp
import numpy as np
import pytest

from alignax import models

PAD = 256


@pytest.mark.parametrize("name,kw", [
    ("llama3", {}),
    ("mistral", {"sliding_window": 3}),  # window shorter than prompt + generation
])
def test_incremental_logits_equal_full_forward(name, kw):
    cfg = models.tiny_config(name, **kw)
    model = models.init_model(cfg, seed=1)
    rs = np.random.RandomState(0)
    p, n = 6, 5
    prompt = rs.randint(0, 256, (2, p))
    prompt_mask = np.ones((2, p), np.int32)
    prompt[1, :3], prompt_mask[1, :3] = PAD, 0  # row 1 is left-padded
    gen = rs.randint(0, 256, (2, n))
    full_ids = np.concatenate([prompt, gen], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones((2, n), np.int32)], axis=1)
    ref = np.asarray(models.forward(model, jnp.asarray(full_ids), jnp.asarray(full_mask)))

    # Row 1 is left-padded; forward() counts positions over real tokens only, so (with
    # test_left_padding_equals_unpadded) its continuation is that of the unpadded prompt.
    cache = models.init_cache(cfg, batch_size=2, max_length=p + n)
    logits, cache = models.extend(model, jnp.asarray(prompt), jnp.asarray(prompt_mask), cache)
    # Same float32 ops on the same values, keys merely read back from the cache.
    real = prompt_mask[..., None].astype(bool)
    np.testing.assert_allclose(np.where(real, logits, 0), np.where(real, ref[:, :p], 0),
                               atol=1e-5)
    for i in range(n - 1):
        step, cache = models.decode_step(model, jnp.asarray(gen[:, i]), cache)
        np.testing.assert_allclose(np.asarray(step), ref[:, p + i], atol=1e-5)
    assert int(cache.index) == p + n - 1
    np.testing.assert_array_equal(np.asarray(cache.next_position), [p + n - 1, p + n - 4])

    # prefill = extend restricted to the next-token logits.
    cache = models.init_cache(cfg, batch_size=2, max_length=p + n)
    last, cache = models.prefill(model, jnp.asarray(prompt), jnp.asarray(prompt_mask), cache)
    np.testing.assert_allclose(np.asarray(last), ref[:, p - 1], atol=1e-5)


def test_cache_shapes_and_dtype():
    cfg = models.tiny_config("llama", dtype="bfloat16")
    cache = models.init_cache(cfg, batch_size=3, max_length=16)
    assert cache.k.shape == (cfg.num_layers, 3, 16, cfg.num_kv_heads, cfg.head_dim)
    assert cache.k.dtype == jnp.bfloat16 and cache.max_length == 16
    assert not bool(cache.valid.any()) and int(cache.index) == 0
