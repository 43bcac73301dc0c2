"""Inference-time control of a multi-head policy (MAH-DPO): sample from mixed head logits, and
sweep the mixing weights in one compiled program.

The user gives weights `w` `[H]` (normalised to sum 1); each step's logits are
`z = sum_k w_k z_k`, the weighted sum of the heads' **raw logits**, then the usual
temperature / top-k / top-p softmax (the reference `generate_ensemble(head_weights)` of
`pearls-lab/multiobj-align` @ 5060d1a; arXiv 2510.01167). Logits are linear in the head
weights, so the mixture is computed as one `[E, V]` head `sum_k w_k W_k` (`mixed_head`):
decoding costs one head, whatever H. A one-hot `w` gives that
head's weights exactly (1 * W_k + 0 * W_j), hence exactly its samples.

`sweep_head_weights` maps the decoder over K weight vectors with `jax.vmap`: the prompt is
prefilled once (it does not depend on the weights) and all K decodes run as one batched loop,
with the same key for every weight (common random numbers), and an optional jittable scorer
reduces each weight's completions to objective scores inside the same program.

The model is any NNX module with `trunk` (a `Transformer`: `hidden_states`, `config`) and
`heads` (a `MultiLMHead`), e.g. `alignax.train.multihead.MultiHeadLM`. The decoding loop is
the one of `sampler.sample_tokens` (left-padded prompts, KV cache, `lax.while_loop` that stops
when every row has stopped, step i draws with `fold_in(key, i)`, recorded log-probs are
log softmax(z / T) before top-k / top-p).

Shapes: B prompts, G samples per prompt, R = B * G rows, P prompt width, N new tokens,
V vocab, H heads, K weight vectors, O objectives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.cache import init_cache
from alignax.sampling.sampler import Samples, draw_token, left_pad, repeat_cache


class Sweep(NamedTuple):
    """What `sweep_head_weights` returns.

    Attributes:
      samples: `Samples` of `[K, R, N]` arrays (one row block per weight vector).
      scores: `[K, R, O]` float32 per-completion scores from `score_fn`, or None.
    """

    samples: Samples
    scores: jax.Array | None


def mixed_head(head_weights: jax.Array, weights: jax.Array) -> jax.Array:
    """`[E, V]` float32 head `sum_k w_k W_k` with `w` normalised to sum 1.

    Elementwise products and a sum, not a matmul: a one-hot `w` gives `W_k` bit for bit on
    every backend (a TPU/GPU matmul at default precision would round `W_k` to bfloat16).

    Args:
      head_weights: `[H, E, V]`. weights: `[H]` non-negative mixing weights.
    """
    w = jnp.asarray(weights, jnp.float32)
    w = w / jnp.sum(w)
    return jnp.sum(w[:, None, None] * head_weights.astype(jnp.float32), axis=0)


def check_head_weights(weights, num_heads: int, *, field: str = "head weights") -> np.ndarray:
    """Host-side check of user mixing weights: `[H]` (or `[K, H]`), >= 0, each sums > 0.

    Raises:
      ValueError naming `field` otherwise.
    Returns:
      the weights as float32, normalised to sum 1 per vector.
    """
    w = np.asarray(weights, np.float32)
    if w.ndim not in (1, 2) or w.shape[-1] != num_heads:
        raise ValueError(f"{field}: expected {num_heads} weights (one per head), got shape "
                         f"{tuple(w.shape)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w.sum(-1) <= 0):
        raise ValueError(f"{field}: weights must be finite, >= 0 and not all 0, got "
                         f"{w.tolist()}")
    return w / w.sum(-1, keepdims=True)


def _prefill(model, prompt_ids, prompt_mask, *, num_samples, max_new_tokens):
    """Weight-independent part: `[R, E]` last prompt state and the repeated cache."""
    trunk = model.trunk
    b, p = prompt_ids.shape
    cache = init_cache(trunk.config, b, p + max_new_tokens)
    hidden, cache = trunk.hidden_states(prompt_ids, prompt_mask, cache=cache)
    last = jnp.repeat(hidden[:, -1], num_samples, axis=0)
    return last, repeat_cache(cache, num_samples)


def _decode(model, last, cache, key, weights, *, max_new_tokens, temperature, top_k, top_p,
            stop_ids, pad_id) -> Samples:
    """The decoding loop from the prefilled state, under mixing weights `[H]`."""
    trunk = model.trunk
    head = mixed_head(model.heads.weight[...], weights)  # [E, V] float32

    def logits_of(h):  # [R, E] -> [R, V]
        return jnp.einsum("re,ev->rv", h, head.astype(h.dtype),
                          preferred_element_type=jnp.float32)

    r, n = last.shape[0], max_new_tokens
    stops = jnp.asarray(stop_ids, jnp.int32)

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, logits, cache, done, tokens, logps, mask = carry
        live = ~done
        token, tokens, logps, mask = draw_token(
            logits, jax.random.fold_in(key, i), i, live, tokens, logps, mask,
            temperature=temperature, top_k=top_k, top_p=top_p, pad_id=pad_id)
        hidden, cache = trunk.hidden_states(token[:, None], live[:, None].astype(jnp.int32),
                                            cache=cache)
        done = done | jnp.isin(token, stops)
        return i + 1, logits_of(hidden[:, 0]), cache, done, tokens, logps, mask

    init = (jnp.zeros((), jnp.int32), logits_of(last), cache, jnp.zeros(r, bool),
            jnp.full((r, n), pad_id, jnp.int32), jnp.zeros((r, n), jnp.float32),
            jnp.zeros((r, n), jnp.int32))
    *_, tokens, logps, mask = jax.lax.while_loop(cond, body, init)
    return Samples(tokens, logps, mask)


_STATIC = ("graphdef", "num_samples", "max_new_tokens", "temperature", "top_k", "top_p",
           "stop_ids", "pad_id")


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample_mixed(graphdef, params, prompt_ids, prompt_mask, key, weights, *,
                 num_samples: int = 1, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, stop_ids: tuple[int, ...],
                 pad_id: int) -> Samples:
    """Samples G completions per prompt from softmax(sum_k w_k z_k / T) (pure, jitted).

    Args:
      graphdef: the multi-head model's NNX graph definition (static).
      params: its `nnx.State`.
      prompt_ids: `[B, P]` int32 prompts, left-padded. prompt_mask: `[B, P]` 1 = real token.
      key: a PRNG key.
      weights: `[H]` non-negative mixing weights (normalised here; one-hot = one head).
      num_samples: G. max_new_tokens: N. temperature: T (0 = greedy).
      top_k, top_p: see `sampler.filter_logits`.
      stop_ids: tokens that end a row, kept with mask 1. pad_id: written after a row stopped.
    Returns:
      `Samples` with `[B * G, N]` arrays, rows prompt-major.
    """
    model = nnx.merge(graphdef, params)
    last, cache = _prefill(model, prompt_ids, prompt_mask, num_samples=num_samples,
                           max_new_tokens=max_new_tokens)
    return _decode(model, last, cache, key, weights, max_new_tokens=max_new_tokens,
                   temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids,
                   pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=_STATIC + ("score_fn",))
def sweep_head_weights(graphdef, params, prompt_ids, prompt_mask, key, weights,
                       score_args=(), *, score_fn: Callable | None = None, num_samples: int = 1,
                       max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, stop_ids: tuple[int, ...], pad_id: int) -> Sweep:
    """`sample_mixed` for K weight vectors at once (`jax.vmap`), scored in the same program.

    Equal to a Python loop of `sample_mixed` over the rows of `weights` with the same key.

    Args:
      graphdef, params, prompt_ids, prompt_mask, key: as `sample_mixed`.
      weights: `[K, H]` mixing weights, one vector per row.
      score_args: extra arrays for `score_fn` (e.g. `[R]` answers), shared by all K.
      score_fn: optional jittable `(tokens [R, N], mask [R, N], *score_args) -> [R, O]`
        (static: pass the same function object to reuse the compiled program), e.g.
        `data.multiobjective.token_scores`.
      other keywords: as `sample_mixed`; `temperature` defaults to greedy here.
    Returns:
      `Sweep(samples [K, R, N], scores [K, R, O] or None)`.
    """
    model = nnx.merge(graphdef, params)
    last, cache = _prefill(model, prompt_ids, prompt_mask, num_samples=num_samples,
                           max_new_tokens=max_new_tokens)

    def one(w):
        out = _decode(model, last, cache, key, w, max_new_tokens=max_new_tokens,
                      temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids,
                      pad_id=pad_id)
        scores = None if score_fn is None else score_fn(out.tokens, out.mask, *score_args)
        return out, scores

    samples, scores = jax.vmap(one)(jnp.asarray(weights, jnp.float32))
    return Sweep(samples, scores)


def weight_grid(num_points: int) -> np.ndarray:
    """`[num_points, 2]` two-head weights `(1 - a, a)` for a = 0 .. 1 evenly spaced."""
    a = np.linspace(0.0, 1.0, num_points, dtype=np.float32)
    return np.stack([1.0 - a, a], axis=-1)


def generate_mixed(model, prompts: list[list[int]], weights, *, max_new_tokens: int,
                   eos_id: int, pad_id: int, temperature: float = 0.0, seed: int = 0,
                   prompt_width: int | None = None, num_samples: int = 1, top_k: int = 0,
                   top_p: float = 1.0, stop_ids: tuple[int, ...] | None = None) -> Samples:
    """Host convenience over `sample_mixed` for token-id prompts (see `sampler.generate`).

    Args:
      model: a multi-head model (`trunk` + `heads`).
      prompts: B lists of prompt token ids.
      weights: `[H]` mixing weights.
      other arguments: as `sampler.generate`.
    Returns:
      `Samples` of numpy `[B * G, N]` arrays.
    """
    graphdef, params = nnx.split(model)
    weights = check_head_weights(weights, model.heads.num_heads)
    ids, mask = left_pad(prompts, pad_id, prompt_width)
    stops = tuple(int(s) for s in (stop_ids if stop_ids is not None else (eos_id,)))
    out = sample_mixed(graphdef, params, ids, mask, jax.random.key(seed),
                       jnp.asarray(weights, jnp.float32), num_samples=int(num_samples),
                       max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                       top_k=int(top_k), top_p=float(top_p), stop_ids=stops, pad_id=int(pad_id))
    return Samples(*(np.asarray(x) for x in out))


def decode_completions(tokenizer, tokens, mask, *, stop_ids: tuple[int, ...] | None = None
                       ) -> list[str]:
    """`[R, N]` sampled ids -> R strings, up to and excluding the stop token.

    Args:
      tokenizer: has `decode(ids)` and `eos_id`.
      tokens, mask: `[R, N]` from the sampler (mask 1 = generated).
      stop_ids: default `(tokenizer.eos_id,)`.
    """
    stops = set(stop_ids if stop_ids is not None else (tokenizer.eos_id,))
    out = []
    for row, m in zip(np.asarray(tokens), np.asarray(mask)):
        ids = [int(t) for t, keep in zip(row, m) if keep and int(t) not in stops]
        out.append(tokenizer.decode(ids))
    return out
