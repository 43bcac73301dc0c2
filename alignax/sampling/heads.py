"""Inference-time control of a multi-head policy (MAH-DPO): sweep the heads' mixing weights in
one compiled program.

The user gives weights `w` `[H]` (normalised to sum 1); each step's logits are
`z = sum_k w_k z_k`, the weighted sum of the heads' **raw logits**, then the usual
temperature / top-k / top-p softmax (the reference `generate_ensemble(head_weights)` of
`pearls-lab/multiobj-align` @ 5060d1a; arXiv 2510.01167), computed as one mixed `[E, V]` head
(`models.mix_heads`). One weight vector is `sampler.sample_tokens(..., head_weights=w)`.

`sweep_head_weights` maps the decoder over K weight vectors with `jax.vmap`: the prompt is
prefilled once (it does not depend on the weights) and all K decodes run as one batched loop
(`sampler.decode`, the loop every sampler uses), with the same key for every weight (common
random numbers), and an optional jittable scorer reduces each weight's completions to
objective scores inside the same program.

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

from alignax.sampling.sampler import Samples, decode, prefill, split_policy


class Sweep(NamedTuple):
    """What `sweep_head_weights` returns.

    Attributes:
      samples: `Samples` of `[K, R, N]` arrays (one row block per weight vector).
      scores: `[K, R, O]` float32 per-completion scores from `score_fn`, or None.
    """

    samples: Samples
    scores: jax.Array | None


_STATIC = ("graphdef", "num_samples", "max_new_tokens", "temperature", "top_k", "top_p",
           "stop_ids", "pad_id", "score_fn")


@functools.partial(jax.jit, static_argnames=_STATIC)
def sweep_head_weights(graphdef, params, prompt_ids, prompt_mask, key, weights,
                       score_args=(), *, score_fn: Callable | None = None, num_samples: int = 1,
                       max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, stop_ids: tuple[int, ...], pad_id: int) -> Sweep:
    """`sample_tokens(..., head_weights=w)` for K weight vectors at once (`jax.vmap`), scored in
    the same program. Equal to a Python loop over the rows of `weights` with the same key.

    Args:
      graphdef, params: a multi-head model (`models.MultiHeadLM`).
      prompt_ids, prompt_mask: `[B, P]` left-padded prompts. key: a PRNG key.
      weights: `[K, H]` mixing weights, one vector per row.
      score_args: extra arrays for `score_fn` (e.g. `[R]` answers), shared by all K.
      score_fn: optional jittable `(tokens [R, N], mask [R, N], *score_args) -> [R, O]`
        (static: pass the same function object to reuse the compiled program), e.g.
        `data.arithmetic.token_scores`.
      other keywords: as `sample_tokens`; `temperature` defaults to greedy here.
    Returns:
      `Sweep(samples [K, R, N], scores [K, R, O] or None)`.
    """
    model = nnx.merge(graphdef, params)
    trunk = model.trunk
    last, cache = prefill(trunk, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens)

    def one(w):
        _, head = split_policy(model, w)
        out = decode(trunk, head, last, cache, key, num_samples=num_samples,
                     max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                     top_p=top_p, stop_ids=stop_ids, pad_id=pad_id)
        scores = None if score_fn is None else score_fn(out.tokens, out.mask, *score_args)
        return out, scores

    samples, scores = jax.vmap(one)(jnp.asarray(weights, jnp.float32))
    return Sweep(samples, scores)


def weight_grid(num_points: int) -> np.ndarray:
    """`[num_points, 2]` two-head weights `(1 - a, a)` for a = 0 .. 1 evenly spaced."""
    a = np.linspace(0.0, 1.0, num_points, dtype=np.float32)
    return np.stack([1.0 - a, a], axis=-1)
