"""Continuous batching: a fixed number of decode slots, each refilled with the next waiting
request as soon as its row stops, the whole request list in one device program.

A request is one sample of one prompt (G samples of a prompt are G requests, prompt-major, as
`sample_tokens` orders its rows). The engine keeps `slots` rows on the device, each with its
own KV-cache row of `prompt_width + max_new_tokens` slots, its own write position and its own
length limit. One jitted program holds the prompts, the slots and the results: its loop
decodes every live slot a token at a time and, between two decode steps, once `refill_at`
slots have stopped (or every waiting request fits), stores the finished rows' results and
prefills the next waiting requests' prompts into the free slots, `refill_at` requests per
prefill, each distinct prompt among them once (G samples of a prompt start from one prefill
row). No host round trip until the last request is done. Static batching instead runs every
row of a batch until the longest is done, the finished rows' slots idling.

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

from alignax import sharding
from alignax.models.cache import init_cache
from alignax.sampling.sampler import (
    Samples,
    _logits_fn,
    cast_params,
    decode_token,
    draw_token,
    left_pad,
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
      prefills: prefill passes run between decode steps (each of up to `refill_at` requests).
    """

    decode_steps: int
    slot_steps: int
    tokens: int
    refills: int
    prefills: int

    @property
    def efficiency(self) -> float:
        """Useful tokens per computed slot-step."""
        return self.tokens / max(1, self.slot_steps)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _State:
    kv: list  # per layer (k, v), each [S, W, K, D]
    valid: jax.Array  # [S, W]
    next_position: jax.Array  # [S]
    t: jax.Array  # [S] tokens generated
    limit: jax.Array  # [S] this request's max new tokens
    active: jax.Array  # [S]
    owner: jax.Array  # [S] request in the slot, -1 once its results are stored
    used: jax.Array  # [S] the slot has held a request
    logits: jax.Array  # [S, V]
    keys: jax.Array  # [S] request keys
    tokens: jax.Array  # [S, N]
    logps: jax.Array  # [S, N]
    mask: jax.Array  # [S, N]
    results: Samples  # [B * G, N] per request
    next_request: jax.Array  # [] the first request not started
    steps: jax.Array  # [] decode iterations
    refills: jax.Array  # []
    prefills: jax.Array  # []


_PER_SLOT = ("kv", "valid", "next_position", "t", "limit", "active", "owner", "used", "logits",
             "keys", "tokens", "logps", "mask", "results")


def _split_rows(s: _State) -> _State:
    """Under a mesh: the slots (and the results' rows) split over the `batch` rule's axes,
    each device decoding its share; other dimensions left to XLA (e.g. tensor-split heads)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return s

    def split(x):
        rows = sharding.logical_to_spec(("batch",), mesh=mesh, shape=x.shape[:1])
        spec = jax.sharding.PartitionSpec(rows[0] if len(rows) else None,
                                          *[jax.sharding.PartitionSpec.UNCONSTRAINED]
                                          * (x.ndim - 1))
        return jax.lax.with_sharding_constraint(x, spec)

    return dataclasses.replace(s, **{f: jax.tree.map(split, getattr(s, f)) for f in _PER_SLOT})


_STATIC = ("graphdef", "slots", "num_samples", "max_new_tokens", "temperature", "top_k",
           "top_p", "stop_ids", "pad_id", "refill_at")


def prefill_rows(refill_at: int, num_samples: int, num_prompts: int) -> int:
    """Prompt rows one prefill pass computes: the distinct prompts `refill_at` consecutive
    requests can need (at most `ceil((refill_at - 1) / G) + 1` with G samples per prompt).

    >>> prefill_rows(8, 8, 64), prefill_rows(8, 1, 64), prefill_rows(16, 4, 2)
    (2, 8, 2)
    """
    return min(num_prompts, -(-(refill_at - 1) // num_samples) + 1)


@functools.partial(jax.jit, static_argnames=_STATIC)
def run_engine(graphdef, params, prompt_ids, prompt_mask, limits, key, head=None, *,
               slots: int, num_samples: int, max_new_tokens: int, temperature: float,
               top_k: int, top_p: float, stop_ids: tuple[int, ...], pad_id: int,
               refill_at: int = 0) -> tuple[Samples, dict]:
    """The engine as one device program: `[B, P]` left-padded prompts, `limits` `[B * G]`
    (each request's new-token cap, <= N). Returns device `Samples` `[B * G, N]` in request
    order and `{decode_steps, refills, prefills}` (device scalars)."""
    refill_at = refill_at or max(1, slots // 8)  # default: an eighth of the slots
    if not 1 <= refill_at <= slots:
        raise ValueError(f"refill_at: between 1 and slots={slots} expected, got {refill_at} "
                         "(a refill waits for that many free slots)")
    trunk = nnx.merge(graphdef, params)
    cfg = trunk.config
    b, width = prompt_ids.shape
    n_req, n, s_ = b * num_samples, max_new_tokens, slots
    layers = unstack_layers(trunk)
    logits_fn = _logits_fn(trunk, head)
    stops = jnp.asarray(stop_ids, jnp.int32)
    rows = prefill_rows(refill_at, num_samples, b)
    cache = init_cache(cfg, s_, width + n)
    vocab = cfg.vocab_size if head is None else head.shape[-1]
    i32 = lambda v: jnp.full((s_,), v, jnp.int32)
    state = _State(
        kv=[(cache.k[i], cache.v[i]) for i in range(cfg.num_layers)], valid=cache.valid,
        next_position=cache.next_position, t=i32(0), limit=i32(0),
        active=jnp.zeros(s_, bool), owner=i32(-1), used=jnp.zeros(s_, bool),
        logits=jnp.zeros((s_, vocab), jnp.float32),
        keys=jax.random.split(key, s_), tokens=jnp.full((s_, n), pad_id, jnp.int32),
        logps=jnp.zeros((s_, n), jnp.float32), mask=jnp.zeros((s_, n), jnp.int32),
        results=Samples(jnp.full((n_req, n), pad_id, jnp.int32),
                        jnp.zeros((n_req, n), jnp.float32), jnp.zeros((n_req, n), jnp.int32)),
        next_request=jnp.zeros((), jnp.int32), steps=jnp.zeros((), jnp.int32),
        refills=jnp.zeros((), jnp.int32), prefills=jnp.zeros((), jnp.int32))

    def store(s: _State) -> _State:
        """Copies the stopped slots' rows to their requests' results; frees the slots."""
        done = (s.owner >= 0) & ~s.active
        to = jnp.where(done, s.owner, n_req)  # past the end: dropped
        put = lambda out, x: out.at[to].set(x, mode="drop")
        results = Samples(put(s.results.tokens, s.tokens), put(s.results.logps, s.logps),
                          put(s.results.mask, s.mask))
        return dataclasses.replace(s, results=results, owner=jnp.where(done, -1, s.owner))

    def waiting(s: _State):
        return n_req - s.next_request

    def wants_refill(s: _State):
        free = jnp.sum(~s.active)
        return (waiting(s) > 0) & (free >= jnp.minimum(refill_at, waiting(s)))

    def refill(s: _State) -> _State:
        """Starts up to `refill_at` waiting requests in free slots, prefilling their
        distinct prompts once."""
        s = store(s)
        count = jnp.minimum(jnp.minimum(jnp.sum(~s.active), waiting(s)), refill_at)
        m = jnp.arange(refill_at)
        free = jnp.nonzero(~s.active, size=refill_at, fill_value=s_)[0]
        slot_ids = jnp.where(m < count, free, s_)  # past the end: starts nothing
        reqs = jnp.minimum(s.next_request + m, n_req - 1)
        first = jnp.clip(s.next_request // num_samples, 0, b - rows)
        source = jnp.clip(reqs // num_samples - first, 0, rows - 1)
        ids = jax.lax.dynamic_slice_in_dim(prompt_ids, first, rows)
        pmask = jax.lax.dynamic_slice_in_dim(prompt_mask, first, rows)
        fresh = init_cache(cfg, rows, width + n)
        hidden, fresh = trunk.hidden_states(ids, pmask, cache=fresh)
        logits = logits_fn(hidden[:, -1:])[:, 0]
        put = lambda buf, x: buf.at[slot_ids].set(x[source], mode="drop")
        at = lambda buf, x: buf.at[slot_ids].set(x, mode="drop")
        started = m < count
        return dataclasses.replace(
            s, kv=[(put(k, fresh.k[i]), put(v, fresh.v[i])) for i, (k, v) in enumerate(s.kv)],
            valid=put(s.valid, fresh.valid), next_position=put(s.next_position,
                                                               fresh.next_position),
            t=at(s.t, 0), limit=at(s.limit, limits[reqs]), active=at(s.active, True),
            owner=at(s.owner, reqs), used=at(s.used, True), logits=put(s.logits, logits),
            keys=at(s.keys, jax.vmap(lambda j: jax.random.fold_in(key, j))(reqs)),
            tokens=at(s.tokens, jnp.full((refill_at, n), pad_id, jnp.int32)),
            logps=at(s.logps, 0.0), mask=at(s.mask, 0),
            next_request=s.next_request + count,
            refills=s.refills + jnp.sum(started & s.used[jnp.minimum(free, s_ - 1)]),
            prefills=s.prefills + 1)

    def decode_step(s: _State) -> _State:
        live = s.active
        step_keys = jax.vmap(jax.random.fold_in)(s.keys, s.t)
        token, tokens, logps, mask = draw_token(
            s.logits, step_keys, s.t, live, s.tokens, s.logps, s.mask,
            temperature=temperature, top_k=top_k, top_p=top_p, pad_id=pad_id)
        h, kv, valid, next_position = decode_token(trunk, layers, token, live, s.kv,
                                                   s.valid, s.next_position, width + s.t)
        t = s.t + live.astype(jnp.int32)
        active = live & ~jnp.isin(token, stops) & (t < s.limit)
        return dataclasses.replace(s, kv=kv, valid=valid, next_position=next_position, t=t,
                                   active=active, logits=logits_fn(h)[:, 0], tokens=tokens,
                                   logps=logps, mask=mask, steps=s.steps + 1)

    def body(s: _State) -> _State:
        return _split_rows(decode_step(jax.lax.while_loop(wants_refill, refill, s)))

    state = jax.lax.while_loop(lambda s: jnp.any(s.active) | (waiting(s) > 0), body,
                               _split_rows(state))
    state = store(state)
    return state.results, {"decode_steps": state.steps, "refills": state.refills,
                           "prefills": state.prefills}


def engine_inputs(prompts: Sequence[Sequence[int]], *, num_samples: int, max_new_tokens: int,
                  pad_id: int, prompt_width: int | None = None, limits=None):
    """`(ids, mask, limits)` numpy inputs of `run_engine`, checked: `[B, P]` left-padded
    prompts (P = `prompt_width`, default the longest) and `[B * G]` limits (default N)."""
    ids, mask = left_pad([list(x) for x in prompts], pad_id, prompt_width)
    n_req = len(prompts) * num_samples
    limits = (np.full(n_req, max_new_tokens, np.int32) if limits is None
              else np.asarray(limits, np.int32))
    if limits.shape != (n_req,) or limits.min() < 1 or limits.max() > max_new_tokens:
        raise ValueError(f"limits: {n_req} values in [1, {max_new_tokens}] expected, got "
                         f"{limits.shape[0] if limits.ndim else 'a scalar'} in "
                         f"[{limits.min()}, {limits.max()}]")
    return ids, mask, limits


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
      eos_id, pad_id, stop_ids, temperature, top_k, top_p: as `generation.generate`.
      refill_at: refill once this many slots are free (default: an eighth of them, at least
        one; at most `slots`), this many requests per prefill pass: fewer, larger prefills
        against slots idling until the refill.
      head_weights: `[H]` weights of a multi-head model.
    Returns:
      (`Samples` of numpy `[B * G, N]` arrays in request order, `EngineStats`).
    """
    if slots < 1:
        raise ValueError(f"slots: at least 1 decode row expected, got {slots}")
    trunk, head = split_policy(model, head_weights)
    graphdef, params = nnx.split(trunk)
    params = cast_params(params, trunk.config.dtype)
    ids, mask, limits = engine_inputs(prompts, num_samples=num_samples,
                                      max_new_tokens=max_new_tokens, pad_id=pad_id,
                                      prompt_width=prompt_width, limits=limits)
    out, stats = run_engine(
        graphdef, params, ids, mask, limits, key, head, slots=int(slots),
        num_samples=int(num_samples), max_new_tokens=int(max_new_tokens),
        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
        stop_ids=tuple(int(s) for s in (stop_ids if stop_ids is not None else (eos_id,))),
        pad_id=int(pad_id), refill_at=int(refill_at))
    out = Samples(*(np.asarray(x) for x in out))
    return out, engine_stats(stats, slots, out.mask)


def engine_stats(stats: dict, slots: int, mask) -> EngineStats:
    """`EngineStats` from `run_engine`'s counters and the results' mask."""
    steps = int(stats["decode_steps"])
    return EngineStats(decode_steps=steps, slot_steps=steps * slots, tokens=int(np.sum(mask)),
                       refills=int(stats["refills"]), prefills=int(stats["prefills"]))
