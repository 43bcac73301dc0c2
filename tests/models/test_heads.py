"""Value, reward and multi-action LM heads; head mixing."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import models

B, S, E, V, H = 2, 5, 8, 11, 3


def _rngs(seed):
    # rbg keys: XLA:CPU compiles threefry sampling slowly, and any key will do here.
    return nnx.Rngs(params=jax.random.key(seed, impl="rbg"))


def _hidden(seed=0):
    return jnp.asarray(np.random.RandomState(seed).standard_normal((B, S, E)), jnp.float32)


def test_value_head_shape_and_linearity():
    cfg = models.tiny_config("llama", hidden_size=E)
    head = models.ValueHead(cfg, rngs=_rngs(0))
    hidden = _hidden()
    values = head(hidden)
    assert values.shape == (B, S) and values.dtype == jnp.float32
    expected = hidden @ head.weight[...] + head.bias[...]
    np.testing.assert_allclose(values, expected, atol=1e-6)


def test_reward_head_scores_last_real_token():
    cfg = models.tiny_config("llama", hidden_size=E)
    head = models.RewardHead(cfg, rngs=_rngs(0))
    hidden = _hidden(1)
    mask = jnp.asarray([[1, 1, 1, 0, 0],    # right padding: last real index 2
                        [0, 0, 1, 1, 1]])   # left padding: last real index 4
    np.testing.assert_array_equal(models.last_token_index(mask), [2, 4])
    rewards = head(hidden, mask)
    per_token = head.value(hidden)
    assert rewards.shape == (B,)
    np.testing.assert_allclose(rewards, [per_token[0, 2], per_token[1, 4]], atol=1e-6)


def _base():
    return jnp.asarray(np.random.RandomState(7).standard_normal((E, V)), jnp.float32)


def test_multi_head_init_is_base_plus_small_noise():
    base = _base()
    heads = models.MultiLMHead(base, H, rngs=_rngs(0), noise_std=1e-3)
    w = np.asarray(heads.weight[...])
    assert w.shape == (H, E, V) and heads.num_heads == H
    noise = w - np.asarray(base)[None]
    assert 0.7e-3 < noise.std() < 1.3e-3  # N(0, 0.001^2) over 264 draws
    assert not np.allclose(noise[0], noise[1])  # heads differ


def test_head_logits_and_mixing():
    heads = models.MultiLMHead(_base(), H, rngs=_rngs(1), noise_std=0.5)
    hidden = _hidden(2)
    logits = heads(hidden)
    assert logits.shape == (H, B, S, V)
    np.testing.assert_allclose(logits[1], hidden @ heads.weight[1], atol=1e-5)
    weights = jnp.asarray([2.0, 1.0, 1.0])
    mixed = hidden @ models.mix_heads(heads.weight[...], weights)
    expected = 0.5 * logits[0] + 0.25 * logits[1] + 0.25 * logits[2]  # normalised weights
    np.testing.assert_allclose(mixed, expected, atol=1e-5)
    # Scale-free weights; a one-hot weight selects that head bit for bit.
    np.testing.assert_array_equal(models.mix_heads(heads.weight[...], 10 * weights),
                                  models.mix_heads(heads.weight[...], weights))
    np.testing.assert_array_equal(models.mix_heads(heads.weight[...], jnp.asarray([0, 0, 1.0])),
                                  heads.weight[...][2])


def test_mixing_worked_example():
    # z0 = [2, 1, 0], z1 = [0, 1, 3], weights (3, 1) -> (0.75, 0.25): z = [1.5, 1, 0.75],
    # softmax [0.481024, 0.291756, 0.227220] (docs/algorithms.md, MAH-DPO).
    z = jnp.asarray([[[2.0, 1.0, 0.0]], [[0.0, 1.0, 3.0]]])  # [H=2, E=1, V=3]: logits = W
    mixed = jax.jit(models.mix_heads)(z, jnp.asarray([3.0, 1.0]))[0]
    np.testing.assert_allclose(mixed, [1.5, 1.0, 0.75], rtol=1e-7)
    np.testing.assert_allclose(jax.nn.softmax(mixed), [0.481024, 0.291756, 0.227220],
                               atol=1e-6)


def test_multi_head_token_logps():
    heads = models.MultiLMHead(_base(), H, rngs=_rngs(3), noise_std=0.5)
    hidden = _hidden(3)
    targets = jnp.asarray(np.random.RandomState(4).randint(0, V, (B, S)))
    mask = jnp.ones((B, S))
    out = models.multi_head_token_logps(hidden, heads.weight[...], targets, mask,
                                        chunk_size=2)
    assert out.shape == (H, B, S)
    for h in range(H):
        logp = jax.nn.log_softmax(hidden @ heads.weight[h], axis=-1)
        expected = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        np.testing.assert_allclose(out[h], expected, atol=1e-5)
