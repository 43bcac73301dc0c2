"""Continuous batching: a fixed number of decode slots, each refilled with the next waiting
request as soon as its row stops.

A request is one sample of one prompt (G samples of a prompt are G requests, prompt-major, as
`sample_tokens` orders its rows). The engine keeps `slots` rows on the device, each with its
own KV-cache row of `prompt_width + max_new_tokens` slots, its own write position and its own
length limit. One jitted decode program runs every live slot a token at a time until enough
slots have stopped (`refill_at`; no host round trip per token), the host then collects the
finished rows, prefills the next waiting prompts (each distinct prompt once, however many of
its samples start) into the free slots, and the decoding goes on. Static batching instead runs
every row of a batch until the longest is done, the finished rows' slots idling.

Same samples as static batching for the same seed: request j draws its t-th token with
`fold_in(fold_in(key, j), t)`, which `sample_tokens(..., row_keys=True)` does too, and a row's
cache layout (left-padded prompt in `[0, P)`, token t at `P + t`) is the static sampler's.
The results come back per request, in request order, with per-token log-probs (log softmax of
logits / T before top-k / top-p), exactly as `sample_tokens` returns its rows.

Example (3 prompts x 2 samples through 2 slots):

    out, stats = sample_continuous(model, [[5, 6], [7], [8, 9, 10]], jax.random.key(0),
                                   num_samples=2, slots=2, max_new_tokens=8, eos_id=2, pad_id=0)
    out.tokens.shape, stats.refills      # ((6, 8), 4)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.cache import init_cache
from alignax.sampling.sampler import (
    Samples,
    _logits_fn,
    cast_params,
    decode_token,
    draw_token,
    left_pad,
    row_request_keys,
    split_policy,
    unstack_layers,
)


class EngineStats(NamedTuple):
    """What a continuous run did.

    Attributes:
      decode_steps: decode-loop iterations (each advances every slot by one position).
      slot_steps: decode_steps x slots: the token slots the device computed.
      tokens: generated tokens kept (stop tokens included): the useful share of slot_steps.
      refills: requests started in a slot another request had used.
      chunks: decode programs run (host round trips).
    """

    decode_steps: int
    slot_steps: int
    tokens: int
    refills: int
    chunks: int

    @property
    def efficiency(self) -> float:
        """Useful tokens per computed slot-step."""
        return self.tokens / max(1, self.slot_steps)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Slots:
    kv: list  # per layer (k, v), each [S, W, K, D]
    valid: jax.Array  # [S, W]
    next_position: jax.Array  # [S]
    t: jax.Array  # [S] tokens generated
    limit: jax.Array  # [S] this request's max new tokens
    active: jax.Array  # [S]
    logits: jax.Array  # [S, V]
    keys: jax.Array  # [S] request keys
    tokens: jax.Array  # [S, N]
    logps: jax.Array  # [S, N]
    mask: jax.Array  # [S, N]
    steps: jax.Array  # [] decode iterations so far


def _empty(trunk, head, slots: int, width: int, new: int, key, pad_id: int) -> _Slots:
    cfg = trunk.config
    cache = init_cache(cfg, slots, width)
    vocab = (cfg.vocab_size if head is None else head.shape[-1])
    return _Slots(kv=[(cache.k[i], cache.v[i]) for i in range(cfg.num_layers)],
                  valid=cache.valid, next_position=cache.next_position,
                  t=jnp.zeros(slots, jnp.int32), limit=jnp.zeros(slots, jnp.int32),
                  active=jnp.zeros(slots, bool), logits=jnp.zeros((slots, vocab), jnp.float32),
                  keys=row_request_keys(key, slots), tokens=jnp.full((slots, new), pad_id,
                                                                     jnp.int32),
                  logps=jnp.zeros((slots, new), jnp.float32),
                  mask=jnp.zeros((slots, new), jnp.int32), steps=jnp.zeros((), jnp.int32))


_STATIC = ("graphdef", "prompt_width", "max_new_tokens", "temperature", "top_k", "top_p",
           "stop_ids", "pad_id")


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def _prefill(graphdef, params, state: _Slots, slot_ids, prompt_ids, prompt_mask, source,
             request_ids, limits, key, head=None, *, prompt_width, max_new_tokens, temperature,
             top_k, top_p, stop_ids, pad_id) -> _Slots:
    """Prefills the `[U, P]` distinct prompts once and starts request `request_ids[m]` (prompt
    `source[m]`) in slot `slot_ids[m]`; a slot id past the end starts nothing."""
    del temperature, top_k, top_p, stop_ids
    trunk = nnx.merge(graphdef, params)
    cache = init_cache(trunk.config, prompt_ids.shape[0], prompt_width + max_new_tokens)
    hidden, cache = trunk.hidden_states(prompt_ids, prompt_mask, cache=cache)
    logits = _logits_fn(trunk, head)(hidden[:, -1:])[:, 0]
    put = lambda buf, rows: buf.at[slot_ids].set(rows[source], mode="drop")
    m = slot_ids.shape[0]
    return _Slots(
        kv=[(put(k, cache.k[i]), put(v, cache.v[i])) for i, (k, v) in enumerate(state.kv)],
        valid=put(state.valid, cache.valid), next_position=put(state.next_position,
                                                               cache.next_position),
        t=state.t.at[slot_ids].set(0, mode="drop"),
        limit=state.limit.at[slot_ids].set(limits, mode="drop"),
        active=state.active.at[slot_ids].set(True, mode="drop"),
        logits=put(state.logits, logits),
        keys=state.keys.at[slot_ids].set(
            jax.vmap(lambda j: jax.random.fold_in(key, j))(request_ids), mode="drop"),
        tokens=state.tokens.at[slot_ids].set(jnp.full((m, max_new_tokens), pad_id,
                                                      jnp.int32), mode="drop"),
        logps=state.logps.at[slot_ids].set(0.0, mode="drop"),
        mask=state.mask.at[slot_ids].set(0, mode="drop"), steps=state.steps)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def _decode(graphdef, params, state: _Slots, new_free, head=None, *, prompt_width,
            max_new_tokens, temperature, top_k, top_p, stop_ids, pad_id) -> _Slots:
    """Decodes every live slot until `new_free` more slots have stopped (or none is live)."""
    del max_new_tokens  # (the slots' buffers have it)
    trunk = nnx.merge(graphdef, params)
    layers = unstack_layers(trunk)
    logits_fn = _logits_fn(trunk, head)
    stops = jnp.asarray(stop_ids, jnp.int32)
    free0 = jnp.sum(~state.active)

    def cond(s: _Slots):
        return jnp.any(s.active) & (jnp.sum(~s.active) - free0 < new_free)

    def body(s: _Slots):
        live = s.active
        step_keys = jax.vmap(jax.random.fold_in)(s.keys, s.t)
        token, tokens, logps, mask = draw_token(
            s.logits, step_keys, s.t, live, s.tokens, s.logps, s.mask,
            temperature=temperature, top_k=top_k, top_p=top_p, pad_id=pad_id)
        h, kv, valid, next_position = decode_token(trunk, layers, token, live, s.kv,
                                                   s.valid, s.next_position,
                                                   prompt_width + s.t)
        t = s.t + live.astype(jnp.int32)
        active = live & ~jnp.isin(token, stops) & (t < s.limit)
        return _Slots(kv=kv, valid=valid, next_position=next_position, t=t, limit=s.limit,
                      active=active, logits=logits_fn(h)[:, 0], keys=s.keys, tokens=tokens,
                      logps=logps, mask=mask, steps=s.steps + 1)

    return jax.lax.while_loop(cond, body, state)


def _pad_rows(x: np.ndarray, fill, *, rows: int) -> np.ndarray:
    return np.concatenate([x, np.full((rows - len(x),) + x.shape[1:], fill, x.dtype)])


def _bucket(n: int, cap: int) -> int:
    """n rounded up to a power of two, at most `cap`: few compiled prefill shapes."""
    return min(cap, 1 << max(0, n - 1).bit_length())


def sample_continuous(model, prompts: Sequence[Sequence[int]], key, *, slots: int,
                      max_new_tokens: int, eos_id: int, pad_id: int, num_samples: int = 1,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      stop_ids: tuple[int, ...] | None = None, prompt_width: int | None = None,
                      limits: Sequence[int] | None = None, refill_at: int = 0,
                      head_weights=None) -> tuple[Samples, EngineStats]:
    """Samples `num_samples` completions per prompt through `slots` continuously refilled rows.

    Args:
      model: an NNX `Transformer` (or a multi-head model with `head_weights`).
      prompts: B token-id prompts (left-padded to `prompt_width`, default the longest; longer
        prompts keep their last tokens).
      key: the sampling key (request j draws with `fold_in(key, j)`).
      slots: decode rows on the device.
      max_new_tokens: N, every request's cap; `limits`: per request (B * G values <= N).
      eos_id, pad_id, stop_ids, temperature, top_k, top_p: as `sampler.generate`.
      refill_at: refill once this many slots are free (default: an eighth of them, at least
        one); fewer round trips against slots idling until the refill.
      head_weights: `[H]` weights of a multi-head model.
    Returns:
      (`Samples` of numpy `[B * G, N]` arrays in request order, `EngineStats`).
    """
    trunk, head = split_policy(model, head_weights)
    graphdef, params = nnx.split(trunk)
    params = cast_params(params, trunk.config.dtype)
    stops = tuple(int(s) for s in (stop_ids if stop_ids is not None else (eos_id,)))
    width = prompt_width or max(len(x) for x in prompts)
    n_req = len(prompts) * num_samples
    limits = np.full(n_req, max_new_tokens, np.int32) if limits is None else np.asarray(
        limits, np.int32)
    if limits.shape != (n_req,) or limits.min() < 1 or limits.max() > max_new_tokens:
        raise ValueError(f"limits: {n_req} values in [1, {max_new_tokens}] expected")
    opts = dict(prompt_width=width, max_new_tokens=int(max_new_tokens),
                temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                stop_ids=stops, pad_id=int(pad_id))
    refill_at = refill_at or max(1, slots // 8)
    state = _empty(trunk, head, slots, width + max_new_tokens, max_new_tokens, key, pad_id)
    owner = np.full(slots, -1)  # request in each slot
    out_tokens = np.full((n_req, max_new_tokens), pad_id, np.int32)
    out_logps = np.zeros((n_req, max_new_tokens), np.float32)
    out_mask = np.zeros((n_req, max_new_tokens), np.int32)
    waiting, used, refills, chunks = 0, np.zeros(slots, bool), 0, 0
    while waiting < n_req or (owner >= 0).any():
        free = np.flatnonzero(owner < 0)[:n_req - waiting]
        if len(free):
            reqs = np.arange(waiting, waiting + len(free))
            waiting += len(free)
            refills += int(used[free].sum())
            used[free] = True
            owner[free] = reqs
            distinct, source = np.unique(reqs // num_samples, return_inverse=True)
            m = _bucket(len(free), slots)
            ids, pmask = left_pad([list(prompts[b]) for b in distinct], pad_id, width)
            pad = functools.partial(_pad_rows, rows=m)
            state = _prefill(graphdef, params, state, pad(free, slots), pad(ids, pad_id),
                             pad(pmask, 0), pad(source, 0), pad(reqs, 0),
                             pad(limits[reqs], 1), key, head, **opts)
        new_free = refill_at if waiting < n_req else slots
        state = _decode(graphdef, params, state, np.int32(new_free), head, **opts)
        chunks += 1
        active = np.asarray(state.active)
        done = np.flatnonzero((owner >= 0) & ~active)
        if len(done):
            rows = owner[done]
            out_tokens[rows] = np.asarray(state.tokens)[done]
            out_logps[rows] = np.asarray(state.logps)[done]
            out_mask[rows] = np.asarray(state.mask)[done]
            owner[done] = -1
    steps = int(state.steps)
    stats = EngineStats(decode_steps=steps, slot_steps=steps * slots,
                        tokens=int(out_mask.sum()), refills=refills, chunks=chunks)
    return Samples(out_tokens, out_logps, out_mask), stats
