"""Chunked log-probs / entropy / log sum p^2 equal the naive maths, and use less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import models

B, T, E, V = 2, 13, 16, 50  # T = 13 is not a multiple of the chunk size 4: padding path


def _inputs(seed=0):
    rs = np.random.RandomState(seed)  # numpy, not threefry: nothing to compile
    hidden = jnp.asarray(rs.standard_normal((B, T, E)), jnp.float32)
    w = jnp.asarray(rs.standard_normal((E, V)) / np.sqrt(E) * 3.0, jnp.float32)  # peaked
    targets = jnp.asarray(rs.randint(0, V, (B, T)))
    mask = jnp.asarray(rs.uniform(size=(B, T)) > 0.3, jnp.float32)
    return hidden, w, targets, mask


@jax.jit
def _naive(hidden, w, targets, mask, temperature=1.0):
    logits = jnp.einsum("bte,ev->btv", hidden, w) / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    p = jnp.exp(logp)
    ent = -jnp.sum(p * logp, axis=-1)
    sq = jnp.log(jnp.sum(p * p, axis=-1))
    return tok * mask, ent * mask, sq * mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_equal_naive(temperature):
    hidden, w, targets, mask = _inputs()
    tok, ent, sq = _naive(hidden, w, targets, mask, temperature)
    kw = dict(chunk_size=4, temperature=temperature)
    stats = models.token_stats(hidden, w, targets, mask, entropy=True, sum_sq=True, **kw)
    # float32 throughout; only the order of the vocabulary reductions differs.
    np.testing.assert_allclose(stats["logps"], tok, atol=1e-5)
    np.testing.assert_allclose(stats["entropy"], ent, atol=1e-5)
    np.testing.assert_allclose(stats["log_sum_sq_probs"], sq, atol=1e-5)
    np.testing.assert_allclose(models.token_logps(hidden, w, targets, mask, **kw), tok,
                               atol=1e-5)
    np.testing.assert_allclose(models.token_entropy(hidden, w, mask, **kw), ent, atol=1e-5)
    np.testing.assert_allclose(models.log_sum_sq_probs(hidden, w, mask, **kw), sq, atol=1e-5)
    seq = models.sequence_logps(hidden, w, targets, mask, **kw)
    np.testing.assert_allclose(seq, tok.sum(-1), atol=1e-5)
    avg = models.sequence_logps(hidden, w, targets, mask, average=True, **kw)
    np.testing.assert_allclose(avg, tok.sum(-1) / mask.sum(-1), atol=1e-5)


def test_gradients_equal_naive():
    hidden, w, targets, mask = _inputs(1)

    def chunked(h, w):
        s = models.token_stats(h, w, targets, mask, entropy=True, sum_sq=True, chunk_size=4)
        return jnp.sum(s["logps"]) + 0.3 * jnp.sum(s["entropy"]) \
            - 0.2 * jnp.sum(s["log_sum_sq_probs"])

    def naive(h, w):
        tok, ent, sq = _naive(h, w, targets, mask)
        return jnp.sum(tok) + 0.3 * jnp.sum(ent) - 0.2 * jnp.sum(sq)

    g_chunked = jax.jit(jax.grad(chunked, argnums=(0, 1)))(hidden, w)
    g_naive = jax.jit(jax.grad(naive, argnums=(0, 1)))(hidden, w)
    for a, b in zip(g_chunked, g_naive):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Masked positions get no gradient at all.
    assert float(jnp.abs(g_chunked[0] * (1 - mask)[..., None]).max()) == 0.0


def test_leading_dims_and_chunk_larger_than_t():
    hidden, w, targets, mask = _inputs(2)
    stacked = models.token_logps(jnp.stack([hidden, hidden]), w,
                                 jnp.stack([targets, targets]), jnp.stack([mask, mask]),
                                 chunk_size=64)
    tok, _, _ = _naive(hidden, w, targets, mask)
    assert stacked.shape == (2, B, T)
    np.testing.assert_allclose(stacked[1], tok, atol=1e-5)


def test_bf16_hidden_gives_float32_logps():
    hidden, w, targets, mask = _inputs(3)
    out = models.token_logps(hidden.astype(jnp.bfloat16), w, targets, mask, chunk_size=4)
    assert out.dtype == jnp.float32
    tok, _, _ = _naive(hidden, w, targets, mask)
    # bf16 inputs (8 mantissa bits) on logits of size ~3: errors of a few 1e-2 are expected.
    np.testing.assert_allclose(out, tok, atol=0.1)


def test_temp_memory_does_not_scale_with_t_times_v():
    """Gradient of the summed log-probs: naive keeps [B, T, V] float32 (64 MiB), chunked not."""
    b, t, e, v = 2, 512, 64, 16384  # B*T*V*4 bytes = 64 MiB
    args = (jax.ShapeDtypeStruct((b, t, e), jnp.float32),
            jax.ShapeDtypeStruct((e, v), jnp.float32),
            jax.ShapeDtypeStruct((b, t), jnp.int32),
            jax.ShapeDtypeStruct((b, t), jnp.float32))

    def naive(h, w, y, m):
        logp = jax.nn.log_softmax(jnp.einsum("bte,ev->btv", h, w), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0] * m)

    def chunked(h, w, y, m):
        return jnp.sum(models.token_logps(h, w, y, m, chunk_size=32))

    def temp_bytes(f):
        compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile()
        analysis = compiled.memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis")
        return analysis.temp_size_in_bytes

    naive_b, chunked_b = temp_bytes(naive), temp_bytes(chunked)
    print(f"temp memory of the log-prob gradient: naive {naive_b / 2**20:.1f} MiB, "
          f"chunked {chunked_b / 2**20:.1f} MiB")
    assert naive_b >= b * t * v * 4  # at least one full float32 [B, T, V]
    assert chunked_b * 5 < naive_b
    assert chunked_b < b * t * v * 4 / 4  # well under one [B, T, V]
