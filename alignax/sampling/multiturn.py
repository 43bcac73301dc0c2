"""Multi-turn episodes: the policy generates a turn, an environment answers, the answer's tokens
are appended to the KV cache, the policy goes on; within a turn and token budget.

All rows take their turns in step (a turn lasts until every live row has stopped; an
observation block is as wide as the longest observation), so in the cache a row's episode is

    [turn 1 tokens | pad..] [observation 1 | pad..] [turn 2 tokens | pad..] ...

with the padding slots invalid. The returned stream of each row is its real tokens only, in
order, right-padded: `[turn 1 | observation 1 | turn 2 | ...| pad..]` (`attention_mask` 1 on
them). The training forward over `[left-padded prompt | stream]` with the default positions
(real tokens counted) attends to the same tokens at the same positions as the sampler did, and
reproduces `logps`. `mask` is the loss mask: 1 on the policy's tokens only, 0 on observations
(interior gaps: GAE and the token means skip them) and padding.

Host side: environments (`alignax.envs`) and tokenisation of observations run between jitted
calls; the cache is never recomputed from the prefix. Compiles: one prefill, one turn program
per distinct turn length (the budget's remainder near its end), one extend per observation
width (rounded up to a multiple of 8).

    episodes = sample_episodes(graphdef, params, prompt_ids, prompt_mask, key,
                               envs=[ToolEnvironment({"calc": calculator}) for _ in range(R)],
                               tokenizer=tok, prompts=texts, num_samples=G, max_turns=3,
                               max_total_tokens=96, max_turn_tokens=32,
                               stop_sequence=tuple(tok.encode("</tool>")))
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import distributed
from alignax.models.cache import KVCache
from alignax.sampling.sampler import (
    decode_token,
    draw_token,
    prefill,
    repeat_cache,
    unstack_layers,
)


@dataclasses.dataclass
class Episodes:
    """Sampled episodes, `R = B * G` rows (prompt-major), `N = max_total_tokens`.

    Attributes:
      tokens: `[R, N]` int32 stream (turns and observations, in order), then `pad_id`.
      logps: `[R, N]` float32 sampler log-probs of the policy's tokens, 0 elsewhere.
      mask: `[R, N]` int32 loss mask: 1 on the policy's tokens.
      attention_mask: `[R, N]` int32: 1 on the policy's and the observations' tokens (a
        prefix of each row).
      rewards: `[R]` float32 sum of the environment's per-turn rewards.
      turns, tool_calls, tool_errors: `[R]` int32 counts (a tool call = an observation).
      truncated: `[R]` bool, the episode ran out of turns or tokens before it ended.
      texts: `[R]` the episode's text (turns and observations, special tokens dropped).
    """

    tokens: np.ndarray
    logps: np.ndarray
    mask: np.ndarray
    attention_mask: np.ndarray
    rewards: np.ndarray
    turns: np.ndarray
    tool_calls: np.ndarray
    tool_errors: np.ndarray
    truncated: np.ndarray
    texts: list[str]

    def metrics(self) -> dict[str, float]:
        """Episode statistics for the metrics log."""
        return {"episodes/turns": float(self.turns.mean()),
                "episodes/tool_call_fraction": float((self.tool_calls > 0).mean()),
                "episodes/tool_errors": float(self.tool_errors.sum()),
                "episodes/truncated_fraction": float(self.truncated.mean()),
                "episodes/model_tokens": float(self.mask.sum(-1).mean()),
                "episodes/observation_tokens": float(
                    (self.attention_mask - self.mask).sum(-1).mean())}


@functools.partial(jax.jit, static_argnames=("graphdef", "width", "num_samples"))
def _start(graphdef, params, prompt_ids, prompt_mask, *, width: int, num_samples: int):
    trunk = nnx.merge(graphdef, params)
    last, cache = prefill(trunk, prompt_ids, prompt_mask, max_new_tokens=width)
    logits = jnp.repeat(trunk.logits(last)[:, 0], num_samples, axis=0)
    return logits, repeat_cache(cache, num_samples)


_TURN = ("graphdef", "steps", "temperature", "top_k", "top_p", "stop_ids", "stop_sequence",
         "pad_id")


@functools.partial(jax.jit, static_argnames=_TURN, donate_argnames=("cache",))
def _turn(graphdef, params, logits, cache, live, key, *, steps: int, temperature: float,
          top_k: int, top_p: float, stop_ids: tuple[int, ...],
          stop_sequence: tuple[int, ...], pad_id: int):
    """Decodes one turn for the `live` rows from cache slot `cache.index`, until each has
    drawn a stop id or ended `stop_sequence`, or `steps` tokens. Returns `(tokens, logps,
    mask [R, steps], next logits, cache, steps used, eos [R])`."""
    trunk = nnx.merge(graphdef, params)
    r, start = logits.shape[0], cache.index
    layers = unstack_layers(trunk)
    kv = [(cache.k[i], cache.v[i]) for i in range(len(layers))]
    stops = jnp.asarray(stop_ids, jnp.int32)
    seq = jnp.asarray(stop_sequence or (pad_id,), jnp.int32)
    m = len(stop_sequence)

    def cond(carry):
        i, done = carry[0], carry[5]
        return (i < steps) & ~jnp.all(done)

    def body(carry):
        i, logits, kv, valid, next_position, done, tokens, logps, mask, eos = carry
        live_now = ~done
        token, tokens, logps, mask = draw_token(
            logits, jax.random.fold_in(key, i), i, live_now, tokens, logps, mask,
            temperature=temperature, top_k=top_k, top_p=top_p, pad_id=pad_id)
        h, kv, valid, next_position = decode_token(trunk, layers, token, live_now, kv, valid,
                                                    next_position, start + i)
        hit = jnp.isin(token, stops)
        ended_seq = jnp.zeros_like(hit)
        if 0 < m <= steps:  # a longer sequence cannot end inside this turn
            tail = jax.lax.dynamic_slice(tokens, (0, jnp.maximum(i - m + 1, 0)), (r, m))
            ended_seq = jnp.all(tail == seq, axis=-1) & (i >= m - 1)
        eos = eos | (hit & live_now)
        done = done | ((hit | ended_seq) & live_now)
        return (i + 1, trunk.logits(h)[:, 0], kv, valid, next_position, done, tokens, logps,
                mask, eos)

    init = (jnp.zeros((), jnp.int32), logits, kv, cache.valid, cache.next_position, ~live,
            jnp.full((r, steps), pad_id, jnp.int32), jnp.zeros((r, steps), jnp.float32),
            jnp.zeros((r, steps), jnp.int32), jnp.zeros(r, bool))
    n, logits, kv, valid, next_position, _, tokens, logps, mask, eos = jax.lax.while_loop(
        cond, body, init)
    cache = KVCache(k=jnp.stack([k for k, _ in kv]), v=jnp.stack([v for _, v in kv]),
                    valid=valid, index=start + n, next_position=next_position)
    return tokens, logps, mask, logits, cache, n, eos


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _observe(graphdef, params, logits, cache, obs_ids, obs_mask):
    """Appends `[R, W]` right-padded observation tokens to the cache (rows with none keep
    their logits); the next turn's logits come from each row's last observation token."""
    trunk = nnx.merge(graphdef, params)
    hidden, cache = trunk.hidden_states(obs_ids, obs_mask, cache=cache)
    w = obs_ids.shape[1]
    last = w - 1 - jnp.argmax(obs_mask[:, ::-1] > 0, axis=-1)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
    has = jnp.sum(obs_mask, axis=-1) > 0
    return jnp.where(has[:, None], trunk.logits(h)[:, 0], logits), cache


def sample_episodes(graphdef, params, prompt_ids, prompt_mask, key, *, envs: Sequence,
                    tokenizer, prompts: Sequence[Any] | None = None, num_samples: int = 1,
                    max_turns: int, max_total_tokens: int, max_turn_tokens: int,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    stop_ids: tuple[int, ...] | None = None,
                    stop_sequence: tuple[int, ...] = (), pad_id: int | None = None,
                    shard=None) -> Episodes:
    """Samples G multi-turn episodes per prompt against `envs` (one per row, prompt-major).

    Args:
      graphdef, params: the policy (a plain `Transformer`), as `sampling.sample_tokens`.
      prompt_ids, prompt_mask: `[B, P]` left-padded prompts.
      key: PRNG key; turn k draws with `fold_in(key, k)`.
      envs: `B * G` environments (`alignax.envs.Environment`), row r = prompt r // G.
      tokenizer: encodes observations (no special tokens) and decodes turns.
      prompts: what each environment's `reset` gets (default: the decoded prompt ids).
      max_turns: policy turns per episode. max_total_tokens: N, the cache slots of an episode
        and the stream's width (rows take turns in step and an observation block is as wide
        as the turn's longest observation, so a row's own tokens may be fewer); a row that
        runs out is truncated. max_turn_tokens: tokens per turn.
      stop_ids: ids that end the episode (default the tokenizer's EOS).
      stop_sequence: token ids that end a turn (a tool call's end tag), e.g.
        `tuple(tokenizer.encode("</tool>"))`.
      pad_id: written after a row stopped (default the tokenizer's pad id).
      shard: a row sharding (`sharding.batch_sharding(mesh)`, B divisible by its size): the
        prompts, each turn's live rows and each observation block are placed with it, so the
        rows (and their KV caches) split over the data-parallel devices; the environments stay
        on the host. None = one device.
    Returns: `Episodes`.
    """
    if max_turns < 1 or max_turn_tokens < 1 or max_total_tokens < max_turn_tokens:
        raise ValueError("need max_turns >= 1 and 1 <= max_turn_tokens <= max_total_tokens "
                         f"(got {max_turns}, {max_turn_tokens}, {max_total_tokens})")
    b = prompt_ids.shape[0]
    r, n_total = b * num_samples, max_total_tokens
    if len(envs) != r:
        raise ValueError(f"{len(envs)} environments for {b} prompts x {num_samples} samples")
    stop_ids = tuple(stop_ids if stop_ids is not None else (tokenizer.eos_id,))
    pad_id = tokenizer.pad_id if pad_id is None else pad_id
    encode = functools.partial(encode_text, tokenizer)
    if prompts is None:
        prompts = [tokenizer.decode([int(t) for t, m in zip(row, mrow) if m])
                   for row, mrow in zip(np.asarray(prompt_ids), np.asarray(prompt_mask))]

    tokens = np.full((r, n_total), pad_id, np.int32)
    logps = np.zeros((r, n_total), np.float32)
    mask = np.zeros((r, n_total), np.int32)
    attn = np.zeros((r, n_total), np.int32)
    rewards = np.zeros(r, np.float32)
    turns, calls, errors = (np.zeros(r, np.int32) for _ in range(3))
    ended, truncated = np.zeros(r, bool), np.zeros(r, bool)
    texts = [""] * r

    put = jnp.asarray if shard is None else (lambda x: jax.device_put(np.asarray(x), shard))
    logits, cache = _start(graphdef, params, put(prompt_ids), put(prompt_mask),
                           width=n_total, num_samples=num_samples)
    pos = 0

    def observe(observations: list[list[int] | None]):
        nonlocal logits, cache, pos
        longest = max((len(o) for o in observations if o), default=0)
        if not longest:
            return
        w = min(-(-longest // 8) * 8, n_total - pos)
        ids = np.full((r, max(w, 1)), pad_id, np.int32)
        obs_mask = np.zeros((r, max(w, 1)), np.int32)
        for i, obs in enumerate(observations):
            if not obs:
                continue
            if len(obs) > w:  # no room left for the whole observation: the episode stops
                obs, ended[i], truncated[i] = obs[:w], True, True
            ids[i, :len(obs)], obs_mask[i, :len(obs)] = obs, 1
            texts[i] += tokenizer.decode(obs)
        if w <= 0:
            return
        logits, cache = _observe(graphdef, params, logits, cache, put(ids), put(obs_mask))
        tokens[:, pos:pos + w], attn[:, pos:pos + w] = ids, obs_mask
        pos += w

    # Environments run on process 0 only; every process gets their answers (one process:
    # a plain call). The turn's tokens reach every process whole (`host_tree`).
    first = distributed.from_primary(
        lambda: [envs[i].reset(prompts[i // num_samples]) for i in range(r)])
    observe([encode(o) if o else None for o in first])
    for turn in range(max_turns):
        steps = min(max_turn_tokens, n_total - pos)
        if steps <= 0 or ended.all():
            break
        out = _turn(graphdef, params, logits, cache, put(~ended),
                    jax.random.fold_in(key, turn), steps=steps, temperature=temperature,
                    top_k=top_k, top_p=top_p, stop_ids=stop_ids,
                    stop_sequence=tuple(stop_sequence), pad_id=pad_id)
        t_tokens, t_logps, t_mask, logits, cache, used, eos = out
        used = int(used)
        t_tokens, t_logps, t_mask, eos = (np.asarray(x) for x in distributed.host_tree(
            (t_tokens, t_logps, t_mask, eos)))
        tokens[:, pos:pos + used] = t_tokens[:, :used]
        logps[:, pos:pos + used] = t_logps[:, :used]
        mask[:, pos:pos + used] = attn[:, pos:pos + used] = t_mask[:, :used]
        pos += used
        observations: list[list[int] | None] = [None] * r
        live = np.flatnonzero(~ended)
        turn_texts = {int(i): tokenizer.decode(
            [int(t) for t, m in zip(t_tokens[i, :used], t_mask[i, :used]) if m]) for i in live}
        results = distributed.from_primary(
            lambda texts=turn_texts: {i: envs[i].step(t) for i, t in texts.items()})
        for i in live:
            turns[i] += 1
            texts[i] += turn_texts[int(i)]
            result = results[int(i)]
            rewards[i] += float(result.reward)
            errors[i] += bool(result.error)
            if eos[i] or result.done or result.observation is None:
                ended[i] = True
                continue
            calls[i] += 1
            if turns[i] >= max_turns:  # the answer to this call would go unread
                ended[i], truncated[i] = True, True
                continue
            observations[i] = encode(result.observation)
        observe(observations)
    truncated |= ~ended
    return Episodes(*_compact(tokens, logps, mask, attn, pad_id), rewards, turns, calls,
                    errors, truncated, texts)


def _compact(tokens, logps, mask, attn, pad_id):
    """Each row's real stream tokens moved to the front (right padding after): the sampler's
    slots have gaps (a turn's padding after a row stopped, an observation block's padding),
    and a token must follow its predecessor for the training forward's next-token shift. The
    positions (real tokens counted) and what each token attends to are unchanged."""
    out = (np.full_like(tokens, pad_id), np.zeros_like(logps), np.zeros_like(mask),
           np.zeros_like(attn))
    for i in range(tokens.shape[0]):
        keep = np.flatnonzero(attn[i])
        n = len(keep)
        out[0][i, :n], out[1][i, :n], out[2][i, :n] = tokens[i, keep], logps[i, keep], mask[
            i, keep]
        out[3][i, :n] = 1
    return out


def encode_text(tokenizer, text: str) -> list[int]:
    """`text`'s ids without BOS / EOS (an observation, a tag), for either tokenizer kind."""
    params = inspect.signature(tokenizer.encode).parameters
    kw = {"add_special_tokens": False} if "add_special_tokens" in params else {}
    return list(tokenizer.encode(text, **kw))
