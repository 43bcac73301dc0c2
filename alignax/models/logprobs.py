"""Chunked token log-probabilities, entropies and log sum p^2 from hidden states.

The float32 logits `[B, T, V]` never exist: `scan_chunks` walks the sequence in chunks of
`chunk_size` tokens, each chunk's logits `[B, C, V]` are built, reduced to per-token numbers
and dropped; the scan body is checkpointed so the backward pass rebuilds one chunk at a time
as well. Peak temporary memory is O(B * C * V) instead of O(B * T * V). Other chunked
statistics (the distillation losses' top-k and KL) use the same `scan_chunks`.

Convention: `hidden[..., t, :]` is the state that predicts `targets[..., t]` (the caller
shifts by one). `lm_head_weight` is `[E, V]` (`Transformer.lm_head_weight()`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alignax.models.precision import matmul_precision


def _chunk_stats(h, w, y, inv_temp, want):
    """Per-token statistics of one chunk: h `[B, C, E]`, y `[B, C]` -> dict of `[B, C]`."""
    logits = jnp.einsum("bce,ev->bcv", h, w, preferred_element_type=jnp.float32,
                        precision=matmul_precision(h.dtype)) * inv_temp
    lse = jax.nn.logsumexp(logits, axis=-1)
    out = {}
    if "logps" in want:
        out["logps"] = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - lse
    if "entropy" in want:
        # H = lse - sum_v p_v z_v, with p from the same logits (no separate log-softmax tensor).
        p = jnp.exp(logits - lse[..., None])
        out["entropy"] = lse - jnp.sum(p * logits, axis=-1)
    if "log_sum_sq_probs" in want:
        # log sum_v p_v^2 = logsumexp(2 z) - 2 lse, stable for peaked distributions.
        out["log_sum_sq_probs"] = jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * lse
    return out


def scan_chunks(fn, arrays, chunk_size: int) -> dict[str, jax.Array]:
    """Applies `fn` to chunks of `chunk_size` positions along axis 1; outputs re-joined.

    The one chunked-logits engine: every log-prob, entropy, top-k or KL that needs the
    `[N, T, V]` logits builds them chunk by chunk inside `fn`. The body is checkpointed, so the
    backward pass rebuilds one chunk's logits at a time as well.

    Args:
      fn: `(*chunk_arrays) -> {name: [N, C, ...]}` for `[N, C, ...]` slices of `arrays`.
      arrays: `[N, T, ...]` arrays (None entries are passed through as None).
      chunk_size: C (temporary memory ~ N * C * V floats).
    Returns:
      `{name: [N, T, ...]}`.
    """
    ref = next(a for a in arrays if a is not None)
    n, t = ref.shape[:2]
    c = max(1, min(chunk_size, t))
    k = -(-t // c)
    pad = k * c - t

    def split(a):
        if a is None:
            return None
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)) if pad else a
        return a.reshape(n, k, c, *a.shape[2:]).swapaxes(0, 1)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def body(carry, xs):
        return carry, fn(*xs)

    _, out = jax.lax.scan(body, None, tuple(split(a) for a in arrays))
    return {name: v.swapaxes(0, 1).reshape(n, k * c, *v.shape[3:])[:, :t]
            for name, v in out.items()}


def _token_stats(hidden, w, targets, inv_temp, want: tuple[str, ...], chunk_size: int):
    *lead, t, e = hidden.shape
    h = hidden.reshape(-1, t, e)
    b = h.shape[0]
    y = (jnp.zeros((b, t), jnp.int32) if targets is None
         else jnp.clip(targets.reshape(b, t), 0, w.shape[-1] - 1).astype(jnp.int32))
    w = w.astype(h.dtype)
    out = scan_chunks(lambda hc, yc: _chunk_stats(hc, w, yc, inv_temp, want), (h, y),
                      chunk_size)
    return {k: v.reshape(*lead, t) for k, v in out.items()}


def _masked(x, mask):
    return x if mask is None else x * mask.astype(x.dtype)


_STATIC = ("chunk_size",)


@functools.partial(jax.jit, static_argnames=_STATIC)
def token_logps(hidden, lm_head_weight, targets, mask=None, *, chunk_size: int = 128,
                temperature: float = 1.0) -> jax.Array:
    """log pi(y_t | x, y_<t) per token, in chunks (no `[B, T, V]` float32 logits).

    Args:
      hidden: `[..., T, E]` final hidden states; position t predicts `targets[..., t]`.
      lm_head_weight: `[E, V]` output projection.
      targets: `[..., T]` int token ids.
      mask: `[..., T]` 1 = count this token; None = all.
      chunk_size: tokens per chunk C (temporary memory ~ B * C * V floats).
      temperature: logits are divided by it (sampling-consistent log-probs).
    Returns:
      `[..., T]` float32 log-probs, 0 where `mask` is 0.
    """
    out = _token_stats(hidden, lm_head_weight, targets, 1.0 / temperature, ("logps",),
                       chunk_size)
    return _masked(out["logps"], mask)


@functools.partial(jax.jit, static_argnames=_STATIC + ("average",))
def sequence_logps(hidden, lm_head_weight, targets, mask, *, average: bool = False,
                   chunk_size: int = 128, temperature: float = 1.0) -> jax.Array:
    """Summed (or, with `average=True`, length-normalised) log pi(y | x) per sequence.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; targets, mask: `[..., T]`.
      average: divide by the number of masked-in tokens (SimPO / IPO length normalisation).
    Returns:
      `[...]` float32 sequence log-probs.
    """
    logps = token_logps(hidden, lm_head_weight, targets, mask, chunk_size=chunk_size,
                        temperature=temperature)
    total = jnp.sum(logps, axis=-1)
    if average:
        total = total / jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1), 1.0)
    return total


@functools.partial(jax.jit, static_argnames=_STATIC)
def token_entropy(hidden, lm_head_weight, mask=None, *, chunk_size: int = 128,
                  temperature: float = 1.0) -> jax.Array:
    """Entropy -sum_v p_v log p_v of the next-token distribution, in chunks.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; mask: `[..., T]` or None.
    Returns:
      `[..., T]` float32 entropies (nats), 0 where `mask` is 0.
    """
    out = _token_stats(hidden, lm_head_weight, None, 1.0 / temperature, ("entropy",),
                       chunk_size)
    return _masked(out["entropy"], mask)


@functools.partial(jax.jit, static_argnames=_STATIC)
def log_sum_sq_probs(hidden, lm_head_weight, mask=None, *, chunk_size: int = 128,
                     temperature: float = 1.0) -> jax.Array:
    """log sum_v p_v^2 per token (the normaliser of WPO weights, Zhou et al. 2024), in chunks.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; mask: `[..., T]` or None.
    Returns:
      `[..., T]` float32, 0 where `mask` is 0.
    """
    out = _token_stats(hidden, lm_head_weight, None, 1.0 / temperature,
                       ("log_sum_sq_probs",), chunk_size)
    return _masked(out["log_sum_sq_probs"], mask)


@functools.partial(jax.jit, static_argnames=_STATIC + ("entropy", "sum_sq"))
def token_stats(hidden, lm_head_weight, targets, mask=None, *, entropy: bool = True,
                sum_sq: bool = False, chunk_size: int = 128,
                temperature: float = 1.0) -> dict[str, jax.Array]:
    """Log-probs and, from the same chunked logits, entropy and log sum p^2 in one pass.

    Args:
      hidden: `[..., T, E]`; lm_head_weight: `[E, V]`; targets, mask: `[..., T]`.
      entropy / sum_sq: also return "entropy" / "log_sum_sq_probs".
    Returns:
      dict with "logps" (and the requested extras), each `[..., T]`, 0 where `mask` is 0.
    """
    want = ("logps",) + (("entropy",) if entropy else ()) + (
        ("log_sum_sq_probs",) if sum_sq else ())
    out = _token_stats(hidden, lm_head_weight, targets, 1.0 / temperature, want, chunk_size)
    return {k: _masked(v, mask) for k, v in out.items()}


def completion_logps(model, input_ids, attention_mask, completion_mask, *,
                     chunk_size: int = 128, with_sq: bool = False, right_padded: bool = True,
                     dropout_rng=None):
    """Per-token log-probs of each next token of `[N, S]` rows, masked to completion tokens.

    The model side of every offline loss: one forward, then the chunked `token_stats`.

    Args:
      model: an NNX `Transformer` (or a module with `hidden_states` and `lm_head_weight`).
      input_ids, attention_mask, completion_mask: `[N, S]`.
      chunk_size: tokens per logits chunk.
      with_sq: also return log sum_v p_v^2 per token (WPO weights).
      right_padded: the batch pads on the right only (as `data.collate` does). Then causal
        attention alone keeps every real position from seeing padding, so the mask is not
        passed: the same numbers, and cuDNN can use its causal flash kernel.
      dropout_rng: the LoRA-dropout key of a training forward (None = none; ignored when no
        adapter has dropout).
    Returns:
      (token_logps `[N, S-1]` float32, mask `[N, S-1]` float32[, log_sum_sq_probs `[N, S-1]`]):
      position t scores token t+1; the mask is the completion mask shifted by one.
    """
    hidden, _ = model.hidden_states(input_ids, None if right_padded else attention_mask,
                                    **_dropout(dropout_rng))
    mask = completion_mask[:, 1:].astype(jnp.float32)
    stats = token_stats(hidden[:, :-1], model.lm_head_weight(), input_ids[:, 1:], mask,
                        entropy=False, sum_sq=with_sq, chunk_size=chunk_size)
    if not with_sq:
        return stats["logps"], mask
    return stats["logps"], mask, stats["log_sum_sq_probs"]


def _dropout(rng) -> dict:
    return {} if rng is None else {"dropout_rng": rng}


def pair_logps(model, batch, *, chunk_size: int = 128, with_sq: bool = False,
               dropout_rng=None):
    """`completion_logps` of a `[B, 2, S]` pair batch (chosen, rejected) as one `[2B, S]`
    forward; outputs reshaped to `[B, 2, S-1]`."""
    b, two, s = batch["input_ids"].shape
    flat = lambda x: x.reshape(b * two, s)
    out = completion_logps(model, flat(batch["input_ids"]), flat(batch["attention_mask"]),
                           flat(batch["completion_mask"]), chunk_size=chunk_size,
                           with_sq=with_sq, dropout_rng=dropout_rng)
    return tuple(x.reshape(b, two, s - 1) for x in out)


# ------------------------------------------------------------------------------- packed rows
# Batches of `data.PackedBatchIterator`: several examples per row as segments (see
# `alignax/data/packing.py` for the layout). Per-token numbers come from the segment-aware
# forward and the same chunked `token_stats`; per-example sums from a segment sum.


def packed_completion_logps(model, batch, *, chunk_size: int = 128, with_sq: bool = False,
                            dropout_rng=None):
    """Per-token log-probs of a packed batch, masked to completion tokens.

    One forward with `segment_ids` (tokens attend only within their segment) and the batch's
    `positions` (restarting per segment), then the chunked `token_stats`.

    Args:
      model: an NNX `Transformer` (or a module with `hidden_states` and `lm_head_weight`).
      batch: `input_ids`, `segment_ids`, `positions`, `completion_mask` `[R, W]`.
      chunk_size: tokens per logits chunk.
      with_sq: also return log sum_v p_v^2 per token (WPO weights).
      dropout_rng: as in `completion_logps`.
    Returns:
      (token_logps `[R, W-1]` float32, mask `[R, W-1]` float32[, log_sum_sq_probs]): position t
      scores token t+1, counted when t+1 is a completion token of t's segment, so no token is
      scored across a segment boundary (as `completion_logps` never scores a row's first one).
    """
    ids, seg = batch["input_ids"], batch["segment_ids"]
    hidden, _ = model.hidden_states(ids, None, positions=batch["positions"], segment_ids=seg,
                                    **_dropout(dropout_rng))
    same = (seg[:, 1:] == seg[:, :-1]).astype(jnp.float32)
    mask = batch["completion_mask"][:, 1:].astype(jnp.float32) * same
    stats = token_stats(hidden[:, :-1], model.lm_head_weight(), ids[:, 1:], mask,
                        entropy=False, sum_sq=with_sq, chunk_size=chunk_size)
    if not with_sq:
        return stats["logps"], mask
    return stats["logps"], mask, stats["log_sum_sq_probs"]


def segment_sums(values, segment_ids, num_segments: int) -> jax.Array:
    """Sums of `values` per (row, segment).

    Args:
      values: `[R, T]` per-token values.
      segment_ids: `[R, T]` int, 1..num_segments (0 = padding, dropped).
      num_segments: K, the most segments a row holds.
    Returns:
      `[R, K]`: column k is the sum over segment k+1 of each row.
    """
    r, t = values.shape
    k = num_segments + 1
    ids = jnp.clip(segment_ids, 0, num_segments) + k * jnp.arange(r, dtype=jnp.int32)[:, None]
    sums = jax.ops.segment_sum(values.reshape(r * t), ids.reshape(r * t), num_segments=r * k)
    return sums.reshape(r, k)[:, 1:]


def examples_from_slots(slot_values, slot_example, num_examples: int) -> jax.Array:
    """Per-slot values `[R, K, ...]` -> per-example `[N, ...]` in batch order.

    Args:
      slot_values: `[R, K, ...]`, one entry per example slot of each packed row.
      slot_example: `[R, K]` int, the batch position of the slot's example, -1 = empty; the
        filled slots of a (micro-)batch hold N distinct positions (any offset).
      num_examples: N (static; the leading size of the batch's per-example arrays).
    Returns:
      `[N, ...]`, ordered by batch position (the order of the per-example arrays).
    """
    key = slot_example.reshape(-1)
    key = jnp.where(key < 0, jnp.iinfo(jnp.int32).max, key)
    order = jnp.argsort(key)[:num_examples]
    return slot_values.reshape(-1, *slot_values.shape[2:])[order]


def example_sums(values, batch, *, per_example: int = 1) -> jax.Array:
    """Per-token values of a packed batch summed per example, in batch order.

    Args:
      values: `[R, W-1]` per-token values aligned with `packed_completion_logps` (position t
        belongs to the segment of token t+1).
      batch: the packed batch (`segment_ids` `[R, W]`, `slot_example` `[R, K]`,
        `example_index` `[N]`).
      per_example: segments per example: 1 (SFT rows) or 2 (pairs: chosen, rejected).
    Returns:
      `[N]` (per_example=1) or `[N, 2]` float32 sums (e.g. summed log-probs, with the mask
      completion lengths).
    """
    slots = batch["slot_example"]
    r, k = slots.shape
    sums = segment_sums(values.astype(jnp.float32), batch["segment_ids"][:, 1:],
                        k * per_example)
    out = examples_from_slots(sums.reshape(r, k, per_example), slots,
                              batch["example_index"].shape[0])
    return out[:, 0] if per_example == 1 else out
