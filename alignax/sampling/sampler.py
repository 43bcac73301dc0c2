"""A jitted sampler over the model's KV cache: prefill once per prompt, then one token per step.

Prompts are left-padded so every row's last prompt token is in the same slot. The prompt is
written into the cache once and the cache is repeated G times (G samples per prompt, rows
prompt-major: row `b * G + g`). Each step scales the logits by `1 / temperature`, keeps the
top-k / nucleus (top-p) tokens, draws one (greedy at temperature 0), records its log-prob and
stops a row at any of the stop tokens (the stop token itself is kept, mask 1; later slots hold
`pad_id`, mask 0). A `lax.while_loop` ends as soon as every row has stopped. Deterministic
under a key: step i draws with `fold_in(key, i)`.

The recorded log-prob is log softmax(logits / temperature) of the sampled token, before the
top-k / top-p truncation: the quantity the training forward computes
(`models.token_logps(..., temperature=T)`), so the two can be compared token by token. At
temperature 0 it is the plain log softmax.

Speed: the whole generation is one device call (prefill, then the decode loop on device, no
host sync per token). Before the loop the weights are cast once to the compute dtype and the
stacked layers and the KV cache are split into one buffer per layer, so each decode step reads
every weight once, reads each layer's cache in place and writes only the new token's slot.
The price: while sampling, device memory holds one extra copy of the weights (compute dtype)
besides the KV cache of `R x (P + N)` slots.

Shapes: B prompts, G samples per prompt, R = B * G rows, P prompt width, N new tokens, V vocab.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.attention import SharedPromptKV
from alignax.models.cache import KVCache, init_cache
from alignax.models.heads import mix_heads
from alignax.models.precision import matmul_precision


class Samples(NamedTuple):
    """What the sampler returns (unpacks as `tokens, logps, mask`).

    Attributes:
      tokens: `[R, N]` int32 sampled ids, `pad_id` after a row stopped.
      logps: `[R, N]` float32 log softmax(logits / T) of each sampled token, 0 on padding.
      mask: `[R, N]` int32, 1 on generated tokens including the stop token.
    """

    tokens: jax.Array
    logps: jax.Array
    mask: jax.Array


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Top-k, then nucleus (top-p) filtering: excluded tokens get -inf.

    Top-k keeps the k largest logits (ties at the k-th value are all kept). Top-p keeps the
    smallest set of most likely tokens whose probability (after top-k) reaches `top_p`: token
    i is kept when the mass of the tokens ranked before it is < top_p, so the most likely
    token always stays. The order (temperature, top-k, top-p) is that of HF `generate`/vLLM.

    Args:
      logits: `[..., V]` (already divided by the temperature).
      top_k: k; 0 (or >= V) = off.
      top_p: p in (0, 1]; 1 = off.
    Returns:
      `[..., V]` logits, -inf outside the kept set.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    v = logits.shape[-1]
    if 0 < top_k < v:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ranked = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        probs = jax.nn.softmax(ranked, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        threshold = jnp.min(jnp.where(before < top_p, ranked, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def cast_params(params, dtype):
    """Floating parameters cast to `dtype` once, before the decode loop.

    The model casts every weight to its compute dtype where it is used, so this changes no
    number; it keeps float32 master weights from being re-read (and re-cast) at every
    generated token, halving the bytes a bandwidth-bound decode step reads.
    """
    dtype = jnp.dtype(dtype)
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def repeat_cache(cache: KVCache, g: int) -> KVCache:
    """A prefilled `[B, ...]` cache repeated G times along the rows (prompt-major `[B*G]`)."""
    if g == 1:
        return cache
    rep = lambda x, axis: jnp.repeat(x, g, axis=axis)
    return KVCache(k=rep(cache.k, 1), v=rep(cache.v, 1), valid=rep(cache.valid, 0),
                   index=cache.index, next_position=rep(cache.next_position, 0))


_STATIC = ("graphdef", "num_samples", "max_new_tokens", "temperature", "top_k", "top_p",
           "stop_ids", "pad_id", "row_keys", "shared_prompt", "ragged")


def row_request_keys(key, num_rows: int, start=0):
    """`[num_rows]` keys, row j's `fold_in(key, start + j)`: a row's draws then depend on its
    request index only, not on which rows share its batch (`sampling.engine`)."""
    return jax.vmap(lambda j: jax.random.fold_in(key, j))(start + jnp.arange(num_rows))


def split_policy(model, head_weights=None):
    """`(trunk, head)`: the `Transformer` that decodes and the `[E, V]` head it decodes with.

    A plain LM decodes with its own head (`head` None); a multi-head model (`trunk` + `heads`,
    e.g. `models.MultiHeadLM`) with the mixture `models.mix_heads(W, head_weights)`.
    """
    if hasattr(model, "heads"):
        if head_weights is None:
            raise ValueError("a multi-head model samples from mixed heads: pass head_weights")
        return model.trunk, mix_heads(model.heads.weight[...], head_weights)
    if head_weights is not None:
        raise ValueError("head_weights given for a single-head model")
    return model, None


def _logits_fn(trunk, head):
    """`[R, S, E]` hidden -> float32 logits, with the trunk's own head or `head` `[E, V]`."""
    if head is None:
        return trunk.logits
    return lambda h: jnp.einsum("bse,ev->bsv", h, head.astype(h.dtype),
                                preferred_element_type=jnp.float32,
                                precision=matmul_precision(h.dtype))


def prefill(trunk, prompt_ids, prompt_mask, *, max_new_tokens: int):
    """Writes the `[B, P]` prompts into a fresh cache of `P + N` slots.

    Returns `(last hidden state [B, 1, E], cache)`: what every decode of these prompts shares
    (the G samples of a prompt, or K head mixtures of `sampling.heads.sweep_head_weights`).
    """
    b, p = prompt_ids.shape
    cache = init_cache(trunk.config, b, p + max_new_tokens)
    hidden, cache = trunk.hidden_states(prompt_ids, prompt_mask, cache=cache)
    return hidden[:, -1:], cache


def decode(trunk, head, last_hidden, cache, key, *, num_samples: int, max_new_tokens: int,
           temperature: float, top_k: int, top_p: float, stop_ids: tuple[int, ...],
           pad_id: int, row_keys: bool = False, shared_prompt: bool = False,
           ragged: bool = True) -> Samples:
    """The decoding loop from a prefilled `[B]`-row cache: G samples per prompt, one
    `lax.while_loop` that ends when every row has stopped.

    Args:
      trunk, head: from `split_policy`. last_hidden, cache: from `prefill`.
      key: step i draws with `fold_in(key, i)` (`row_keys`: row j's step i with
        `fold_in(fold_in(key, j), i)`). Other arguments: as `sample_tokens`.
      shared_prompt: `cache` holds the prompts only (`prefill(..., max_new_tokens=0)`); the
        G rows of a prompt share its keys and values (`models.attention.SharedPromptKV`)
        instead of G copies of them.
      ragged: attend over the cache slots filled so far, in `ragged_segments` (else every
        step attends over all of them, masked).
    """
    logits_fn = _logits_fn(trunk, head)
    p = cache.k.shape[2] - (0 if shared_prompt else max_new_tokens)
    r, n = last_hidden.shape[0] * num_samples, max_new_tokens
    logits = jnp.repeat(logits_fn(last_hidden)[:, 0], num_samples, axis=0)
    layers = unstack_layers(trunk)
    if shared_prompt:
        own = jnp.zeros((r, n) + cache.k.shape[3:], cache.k.dtype)
        kv = [SharedPromptKV(cache.k[i], cache.v[i], own, own) for i in range(len(layers))]
        prompt_valid, valid = cache.valid, jnp.zeros((r, n), bool)
        next_position = jnp.repeat(cache.next_position, num_samples)
    else:
        cache = repeat_cache(cache, num_samples)
        kv = [(cache.k[i], cache.v[i]) for i in range(len(layers))]  # one copy, before the loop
        valid, next_position = cache.valid, cache.next_position
    stops = jnp.asarray(stop_ids, jnp.int32)
    keys = row_request_keys(key, r) if row_keys else None

    def step_key(i):
        if keys is None:
            return jax.random.fold_in(key, i)
        return jax.vmap(jax.random.fold_in, (0, None))(keys, i)

    def segment(end: int):
        """Steps up to `end`, attending over the cache slots those steps can have filled."""
        width = end if shared_prompt else p + end
        width = None if width == (n if shared_prompt else p + n) else width

        def cond(carry):
            i, _, _, _, _, done, *_ = carry
            return (i < end) & ~jnp.all(done)

        def body(carry):
            i, logits, kv, valid, next_position, done, tokens, logps, mask = carry
            live = ~done
            token, tokens, logps, mask = draw_token(
                logits, step_key(i), i, live, tokens, logps, mask,
                temperature=temperature, top_k=top_k, top_p=top_p, pad_id=pad_id)
            if shared_prompt:
                h, kv, valid, next_position = decode_token_shared(
                    trunk, layers, token, live, kv, prompt_valid, valid, next_position, i,
                    width)
            else:
                h, kv, valid, next_position = decode_token(
                    trunk, layers, token, live, kv, valid, next_position, p + i, width)
            done = done | jnp.isin(token, stops)
            return i + 1, logits_fn(h)[:, 0], kv, valid, next_position, done, tokens, logps, mask

        return lambda carry: jax.lax.while_loop(cond, body, carry)

    carry = (jnp.zeros((), jnp.int32), logits, kv, valid, next_position,
             jnp.zeros(r, bool), jnp.full((r, n), pad_id, jnp.int32),
             jnp.zeros((r, n), jnp.float32), jnp.zeros((r, n), jnp.int32))
    for end in ragged_segments(n) if ragged else (n,):
        carry = segment(end)(carry)
    *_, tokens, logps, mask = carry
    return Samples(tokens, logps, mask)


def ragged_segments(n: int) -> tuple[int, ...]:
    """Ends of the decode loop's segments for N new tokens: the first quarter of the steps
    attends over P + N/4 cache slots, the next quarter over P + N/2, the rest over P + N, so
    a step reads ~69% of the generated slots' keys instead of all of them (one compiled loop
    body per segment: only for N >= 64).

    >>> ragged_segments(256), ragged_segments(16)
    ((64, 128, 256), (16,))
    """
    return (n // 4, n // 2, n) if n >= 64 else (n,)


@functools.partial(jax.jit, static_argnames=_STATIC)
def sample_tokens(graphdef, params, prompt_ids, prompt_mask, key, head_weights=None, *,
                  num_samples: int = 1, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, stop_ids: tuple[int, ...],
                  pad_id: int, row_keys: bool = False,
                  shared_prompt: bool | None = None, ragged: bool = True) -> Samples:
    """Samples G completions per prompt from `nnx.merge(graphdef, params)` (pure, jitted).

    The parameters are used where they are (any sharding; never copied through the host;
    float32 weights are cast once to the compute dtype on device); shard `prompt_ids` over the
    data-parallel axes to split the rows across devices.

    Args:
      graphdef: the policy's NNX graph definition (static).
      params: its `nnx.State` (e.g. `state.params` of the train state).
      prompt_ids: `[B, P]` int32 prompts, left-padded.
      prompt_mask: `[B, P]` 1 = real prompt token.
      key: a PRNG key (`jax.random.key` or `PRNGKey`).
      head_weights: `[H]` mixing weights of a multi-head policy (MAH-DPO): each step samples
        from softmax(sum_k w_k z_k / T), the weighted sum of the heads' raw logits
        (normalised; one-hot = that head exactly). None for a plain LM.
      num_samples: G.
      max_new_tokens: N.
      temperature: T; 0 = greedy (top-k / top-p then do not matter).
      top_k, top_p: see `filter_logits`.
      stop_ids: tokens that end a row (e.g. `(eos_id,)`), kept with mask 1.
      pad_id: the token written after a row stopped.
      row_keys: row j draws its step-i token with `fold_in(fold_in(key, j), i)`: the draws
        the continuous-batching engine makes for request j (`sampling.engine`), so the two
        give the same samples. Default: one key per step for the whole batch.
      shared_prompt: the G rows of a prompt read one copy of its cached keys and values
        (`models.attention.SharedPromptKV`; B x P + R x N cache slots instead of R x (P + N));
        None = whenever `shares_prompt` allows (G > 1, no sliding window); False = G copies.
      ragged: each decode step attends over the cache slots filled so far, in segments
        (`ragged_segments`: N >= 64), instead of all P + N (masked). Same numbers.
    Returns:
      `Samples` with `[B * G, N]` arrays, rows prompt-major.
    """
    model = nnx.merge(graphdef, params)
    trunk, head = split_policy(model, head_weights)
    trunk = nnx.merge(*_cast_module(trunk))
    shared = shares_prompt(trunk.config, num_samples) and shared_prompt is not False
    last, cache = prefill(trunk, prompt_ids, prompt_mask,
                          max_new_tokens=0 if shared else max_new_tokens)
    return decode(trunk, head, last, cache, key, num_samples=num_samples,
                  max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                  top_p=top_p, stop_ids=stop_ids, pad_id=pad_id, row_keys=row_keys,
                  shared_prompt=shared, ragged=ragged)


def shares_prompt(config, num_samples: int) -> bool:
    """Whether G samples of a prompt share its cached keys and values (G > 1, no sliding
    window: a windowed layer's mask needs each key's slot, which the split layout drops)."""
    return num_samples > 1 and not config.uses_window


def _cast_module(trunk):
    graphdef, params = nnx.split(trunk)
    return graphdef, cast_params(params, trunk.config.dtype)


def _key_batch(key) -> bool:
    """Whether `key` holds one key per row (typed `[R]`, or raw uint32 `[R, 2]`)."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return jnp.ndim(key) == (1 if typed else 2)


def draw_token(logits, step_key, i, live, tokens, logps, mask, *, temperature: float,
               top_k: int, top_p: float, pad_id: int):
    """One step of the decoding loop's bookkeeping, shared by every sampler.

    Draws from `logits` `[R, V]` (greedy at temperature 0, else softmax(logits / T) after
    `filter_logits`; `step_key` one key, or `[R]` keys, one per row), writes the token, its
    log-prob (log softmax(logits / T), before top-k / top-p) and `live` into column `i` (or
    `[R]` columns, one per row) of `tokens` / `logps` / `mask` `[R, N]`; rows that already
    stopped (`live` False) get `pad_id`, log-prob 0 and mask 0.
    Returns `(token [R], tokens, logps, mask)`.
    """
    if temperature <= 0:
        logp_all, token = jax.nn.log_softmax(logits, axis=-1), jnp.argmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        kept = filter_logits(scaled, top_k=top_k, top_p=top_p)
        if _key_batch(step_key):  # one key per row: a row's draw ignores its neighbours
            token = jax.vmap(jax.random.categorical)(step_key, kept)
        else:
            token = jax.random.categorical(step_key, kept)
        logp_all = jax.nn.log_softmax(scaled, axis=-1)
    token = jnp.where(live, token.astype(jnp.int32), pad_id)
    logp = jnp.where(live, jnp.take_along_axis(logp_all, token[:, None], -1)[:, 0], 0.0)
    if jnp.ndim(i) == 1:  # a column per row (continuous batching); past the end: dropped
        rows = jnp.arange(token.shape[0])
        put = lambda out, x: out.at[rows, i].set(x, mode="drop")
        return (token, put(tokens, token), put(logps, logp),
                put(mask, live.astype(jnp.int32)))
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
    logps = jax.lax.dynamic_update_slice(logps, logp[:, None], (0, i))
    mask = jax.lax.dynamic_update_slice(mask, live[:, None].astype(jnp.int32), (0, i))
    return token, tokens, logps, mask


def unstack_layers(model) -> list:
    """The model's stacked (scanned) decoder layers as L separate modules."""
    graphdef, state = nnx.split(model.layers)
    return [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state))
            for i in range(model.config.num_layers)]


def decode_token(model, layers, token, live, kv, valid, next_position, slot,
                 width: int | None = None):
    """One decode step with per-layer caches: `model.hidden_states(token[:, None], live,
    cache=...)` with the layers unrolled; returns the `[R, 1, E]` hidden state.

    Each layer's `(k, v)` is its own `[R, S, K, D]` buffer in the loop carry, so the step
    writes the new token's slot in place and attention reads the buffer directly. (The
    model's scan over stacked layers would slice each layer's cache out and stack the updated
    ones back: several copies of the whole cache per generated token, in a bandwidth-bound
    loop.) Same layer code (`DecoderLayer.__call__`), same masks and positions. `slot`: the
    cache slot every row writes, or `[R]` one per row (continuous batching; past the end:
    nothing written). `width` (static): attend over the first `width` cache slots only
    (ragged decode: the slots after the step's own are empty).
    """
    cfg = model.config
    h = jnp.take(model.embed[...], token[:, None], axis=0).astype(cfg.compute_dtype)
    positions = next_position[:, None]  # the row's next RoPE position (real tokens only)
    if jnp.ndim(slot) == 1:
        valid = valid.at[jnp.arange(token.shape[0]), slot].set(live, mode="drop")
        q_slots = slot[:, None]  # [R, 1]: each row's query at its own slot
    else:
        valid = jax.lax.dynamic_update_slice(valid, live[:, None], (0, slot))
        q_slots = jnp.reshape(slot, (1, 1))
    seen = valid if width is None else valid[:, :width]
    # Causal (keys at or before the query's slot) and valid; a sliding window also drops keys
    # W or more slots back (`attention.make_mask` with one query slot per row).
    k_slots = jnp.arange(seen.shape[-1], dtype=jnp.int32)
    mask = (seen & (k_slots <= q_slots))[:, None, None, :]
    window_mask = None
    if cfg.uses_window:
        window_mask = mask & (k_slots > q_slots - cfg.sliding_window)[:, None, None, :]
    new_kv = []
    for i, layer in enumerate(layers):
        slides = window_mask is not None and (cfg.sliding_layers is None
                                              or cfg.sliding_layers[i])
        h, layer_kv = layer(h, positions, window_mask if slides else mask, kv[i],
                            jnp.asarray(slot, jnp.int32))
        new_kv.append(layer_kv)
    return model.norm(h), new_kv, valid, next_position + live.astype(jnp.int32)


def decode_token_shared(model, layers, token, live, kv, prompt_valid, valid, next_position,
                        i, width: int | None = None):
    """`decode_token` over `SharedPromptKV` caches: the step's key / value go to slot `i` of
    each row's generated part; attention reads the row's prompt from its group's copy (and,
    with `width`, the first `width` generated slots only)."""
    cfg = model.config
    h = jnp.take(model.embed[...], token[:, None], axis=0).astype(cfg.compute_dtype)
    valid = jax.lax.dynamic_update_slice(valid, live[:, None], (0, i))
    new_kv = []
    for layer, layer_kv in zip(layers, kv, strict=True):
        seen = valid if width is None else valid[:, :width]
        h, layer_kv = layer(h, next_position[:, None], (prompt_valid, seen), layer_kv,
                            jnp.asarray(i, jnp.int32))
        new_kv.append(layer_kv)
    return model.norm(h), new_kv, valid, next_position + live.astype(jnp.int32)


def left_pad(prompts: list[list[int]], pad_id: int, width: int | None = None):
    """`[B, P]` left-padded ids and mask (P = the longest prompt, or `width`; longer prompts
    keep their last P tokens)."""
    width = width or max(len(x) for x in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, x in enumerate(prompts):
        x = x[-width:]
        if x:
            ids[i, -len(x):] = x
            mask[i, -len(x):] = 1
    return ids, mask


def decode_completions(tokenizer, tokens, mask, *, stop_ids: tuple[int, ...] | None = None
                       ) -> list[str]:
    """Decodes sampled tokens to text, up to and excluding the stop token.

    Args:
      tokenizer: has `decode(ids)` and `eos_id`.
      tokens, mask: `[R, N]` from the sampler.
      stop_ids: default `(tokenizer.eos_id,)`.
    Returns:
      R strings.
    """
    stops = set(stop_ids if stop_ids is not None else (tokenizer.eos_id,))
    out = []
    for row, m in zip(np.asarray(tokens), np.asarray(mask)):
        ids = [int(t) for t, keep in zip(row, m) if keep and int(t) not in stops]
        out.append(tokenizer.decode(ids))
    return out


def sequences(prompt_ids, prompt_mask, tokens, mask):
    """Training rows `[..., P + N]`: the left-padded prompt then the right-padded completion.

    Args: prompt_ids, prompt_mask `[B, P]`; tokens, mask `[B, G, N]` or `[B, N]`.
    Returns: (input_ids, attention_mask) shaped like `tokens` with P + N columns.
    """
    xp = jnp if isinstance(tokens, jax.Array) else np
    extra = tokens.ndim - prompt_ids.ndim
    shape = tokens.shape[:-1] + prompt_ids.shape[-1:]
    p_ids = xp.broadcast_to(prompt_ids.reshape(prompt_ids.shape[:1] + (1,) * extra
                                               + prompt_ids.shape[1:]), shape)
    p_mask = xp.broadcast_to(prompt_mask.reshape(p_ids.shape[:1] + (1,) * extra
                                                 + prompt_mask.shape[1:]), shape)
    return (xp.concatenate([p_ids, tokens], -1).astype(np.int32),
            xp.concatenate([p_mask, mask], -1).astype(np.int32))
