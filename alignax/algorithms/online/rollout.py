"""Rollouts for online training: prompts -> sampler -> completions -> rewards -> the rollout
forward (old / reference log-probs, entropy, values) -> advantages.

A rollout is a dict of numpy arrays with a leading prompt axis B; samples add a G axis:

* `prompt_ids`, `prompt_mask` `[B, P]` (left-padded); `tokens`, `mask`, `sampler_logps`
  `[B, G, N]` (right-padded completions, mask 1 on the stop token); `lengths`, `terminated`,
  `rewards` `[B, G]`; `reward_vector` `[B, G, K]`; `texts` `[B, G]` (object);
  `prompts`, `answers` `[B]` (object); for GRAO `answer_tokens`, `answer_mask` `[B, N]` and
  `answer_reward` `[B]`.

The training rows are `[pad.. prompt | completion ..pad]`, `S = P + N`: the exact slots the
sampler used (`sampling.sequences`), so the training forward reproduces the sampler's log-probs
(checked every step as `sampler/logp_gap`). Hidden state `P - 1 + t` predicts completion token
`t`. Rewards: `rewards.RewardScorer`.

Shapes: B prompts, G samples per prompt, P prompt width, N new tokens, S = P + N, K objectives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import data, distributed, losses, sharding
from alignax.models import Transformer, logprobs
from alignax.sampling import (
    cast_params,
    decode_completions,
    left_pad,
    multiturn,
    run_engine,
    sample_tokens,
)

# ------------------------------------------------------------------------------- prompts


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One prompt: as given to reward functions, as token ids, and its reference answer."""

    prompt: Any                    # text, or chat messages
    prompt_ids: tuple[int, ...]
    answer: str | None = None      # the dataset's reference answer (GRAO's y), if any
    answer_ids: tuple[int, ...] = ()  # its tokens + EOS


def _answer_of(ex) -> Any:
    if isinstance(ex, data.Pair):
        return ex.chosen
    if isinstance(ex, data.Unpaired):
        return ex.completion if ex.label else None
    return ex.completion


def prompt_examples(examples: Sequence, tokenizer, limits: data.Limits) -> list[PromptExample]:
    """`PromptExample`s from parsed examples (`Pair` -> chosen, `SFT` -> completion as the
    answer; an undesirable `Unpaired` row has none). Chat prompts are rendered by the
    tokenizer's chat template; truncation follows `limits`."""
    out = []
    for ex in examples:
        answer = _answer_of(ex)
        row = data.tokenize_examples([data.SFT(ex.prompt, answer if answer is not None else " ")],
                                  tokenizer, limits)[0]
        out.append(PromptExample(ex.prompt, tuple(row["prompt"]),
                                 answer if isinstance(answer, str) else None,
                                 tuple(row["completion"]) if answer is not None else ()))
    return out


# ------------------------------------------------------------------------------- sampling

@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """Static sampler settings (`sampling.sample_tokens` arguments)."""

    num_samples: int
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    stop_ids: tuple[int, ...]
    pad_id: int
    prompt_width: int
    slots: int = 0  # > 0: continuous batching through this many decode rows (sampling.engine)


def sampler_params_fn(params_like, *, mesh, dtype):
    """A jitted `params -> params` for the sampler: floating leaves cast to the compute `dtype`
    and resharded on device to `sharding.decode_rules()` (weights not split over `fsdp`), so
    the decode loop neither re-casts float32 master weights nor all-gathers FSDP shards at
    every token. `params_like`: the policy's parameters (arrays or abstract, with NNX
    logical-axis metadata)."""
    shardings = sharding.tree_shardings(params_like, mesh=mesh, rules=sharding.decode_rules())
    return jax.jit(lambda p: cast_params(p, dtype), out_shardings=shardings)


def prompt_width(examples: Sequence[PromptExample], cap: int) -> int:
    """A rollout batch's prompt width: its longest prompt rounded up to a power of two (at
    least 8), at most `cap` (`data.max_prompt_length`). A few compiled shapes, instead of
    every row of every batch paying `cap` slots in the sampler and the training forward (512
    for file data, where prompts are often a few dozen tokens).

    >>> prompt_width([PromptExample("", (1,) * 20)], 512), prompt_width([], 512)
    (32, 8)
    """
    longest = max((len(e.prompt_ids) for e in examples), default=1)
    return min(cap, max(8, 1 << (longest - 1).bit_length()))


def sample(graphdef, params, examples: Sequence[PromptExample], key, opts: SamplingOptions, *,
           tokenizer, shard=None, mesh=None, stats: dict | None = None, defer: bool = False):
    """Samples G completions per prompt with the policy's parameters and decodes them.

    Args:
      graphdef, params: the policy (`params` used in place).
      examples: B prompts. key: the sampling key. opts: `SamplingOptions`.
      tokenizer: decodes completions. shard: optional sharding for the `[B, P]` prompts.
      mesh: the trainer's mesh; with `opts.slots`, the engine's slots are split over its
        `batch` axes.
      stats: with `opts.slots`, the engine's `slot_steps` and `slot_tokens` are added to it
        (when the rollout is finished: with `defer`, by `finish`).
      defer: return `finish() -> rollout` instead: the sampling is queued on the devices
        (JAX's asynchronous dispatch), the host work (the transfer, decoding) waits for
        `finish`, so work queued after it (an update) runs while the host decodes and scores.
    Returns:
      the sampling part of a rollout (see the module docstring), or `finish` with `defer`.
    """
    g, n = opts.num_samples, opts.max_new_tokens
    ids, pmask = left_pad([list(e.prompt_ids) for e in examples], opts.pad_id,
                          prompt_width(examples, opts.prompt_width))
    kw = dict(num_samples=g, max_new_tokens=n, temperature=opts.temperature,
              top_k=opts.top_k, top_p=opts.top_p, stop_ids=opts.stop_ids, pad_id=opts.pad_id)
    dev_ids, dev_mask = (ids, pmask) if shard is None else jax.device_put((ids, pmask), shard)
    counters = None
    if opts.slots:  # continuous batching: rows refill slots as others stop (one program)
        with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
            out, counters = run_engine(graphdef, params, dev_ids, dev_mask,
                                       np.full(len(examples) * g, n, np.int32), key,
                                       slots=opts.slots, **kw)
    else:
        out = sample_tokens(graphdef, params, dev_ids, dev_mask, key, **kw)
    finish = functools.partial(_finish_sample, out, examples, ids, pmask, opts, tokenizer,
                               counters, stats)
    return finish if defer else finish()


def _finish_sample(out, examples, ids, pmask, opts: SamplingOptions, tokenizer, counters=None,
                   stats: dict | None = None) -> dict:
    b, g, n = len(examples), opts.num_samples, opts.max_new_tokens
    # Every process takes the whole rollout to the host (an all-gather across processes):
    # rewards, advantages' inputs and metrics are then computed identically everywhere.
    tokens, logps, mask = (np.asarray(x) for x in distributed.host_tree(tuple(out)))
    if counters is not None and stats is not None:  # the engine's useful share of its slots
        steps = int(np.asarray(counters["decode_steps"]))  # a scalar: on every device
        stats["slot_steps"] = stats.get("slot_steps", 0) + steps * opts.slots
        stats["slot_tokens"] = stats.get("slot_tokens", 0) + int(mask.sum())
    texts = decode_completions(tokenizer, tokens, mask, stop_ids=opts.stop_ids)
    lengths = mask.sum(-1)
    last = np.take_along_axis(tokens, np.maximum(lengths - 1, 0)[:, None], -1)[:, 0]
    terminated = (lengths > 0) & np.isin(last, opts.stop_ids)
    obj = lambda xs: np.array(list(xs) + [None], dtype=object)[:-1]
    return {"prompt_ids": ids, "prompt_mask": pmask,
            "tokens": tokens.reshape(b, g, n), "mask": mask.reshape(b, g, n),
            "sampler_logps": logps.reshape(b, g, n), "lengths": lengths.reshape(b, g),
            "terminated": terminated.reshape(b, g), "texts": obj(texts).reshape(b, g),
            "prompts": obj(e.prompt for e in examples),
            "answers": obj(e.answer for e in examples)}


@dataclasses.dataclass(frozen=True)
class EpisodeOptions:
    """Multi-turn settings (the `environment` section, resolved)."""

    make_env: Any               # () -> alignax.envs.Environment, one per episode
    max_turns: int
    max_turn_tokens: int
    max_total_tokens: int       # N of the rollout's `[B, G, N]` arrays
    stop_sequence: tuple[int, ...]
    reward_weight: float = 0.0  # environment rewards' weight in the reward (0 = logged only)


def sample_episodes(graphdef, params, examples: Sequence[PromptExample], key,
                    opts: SamplingOptions, episodes: EpisodeOptions, *, tokenizer, shard=None
                    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """`sample` for multi-turn episodes (`sampling.multiturn.sample_episodes`): the same
    rollout dict, with `tokens` / `mask` / `sampler_logps` over each episode's stream (`mask`
    0 on observations), its `attention` `[B, G, N]`, and `texts` the whole episode (turns and
    observations) for the reward functions; plus the episodes' metrics."""
    b, g, n = len(examples), opts.num_samples, episodes.max_total_tokens
    ids, pmask = left_pad([list(e.prompt_ids) for e in examples], opts.pad_id,
                          prompt_width(examples, opts.prompt_width))
    ep = multiturn.sample_episodes(
        graphdef, params, ids, pmask, key, envs=[episodes.make_env() for _ in range(b * g)],
        tokenizer=tokenizer, prompts=[e.prompt for e in examples], num_samples=g,
        max_turns=episodes.max_turns, max_total_tokens=n,
        max_turn_tokens=episodes.max_turn_tokens, temperature=opts.temperature,
        top_k=opts.top_k, top_p=opts.top_p, stop_ids=opts.stop_ids,
        stop_sequence=episodes.stop_sequence, pad_id=opts.pad_id, shard=shard)
    obj = lambda xs: np.array(list(xs) + [None], dtype=object)[:-1]
    shape = lambda x: x.reshape(b, g, *x.shape[1:])
    metrics = ep.metrics()
    metrics["episodes/environment_reward"] = float(ep.rewards.mean())
    return {"prompt_ids": ids, "prompt_mask": pmask, "tokens": shape(ep.tokens),
            "mask": shape(ep.mask), "attention": shape(ep.attention_mask),
            "sampler_logps": shape(ep.logps), "lengths": shape(ep.mask.sum(-1)),
            "terminated": shape(~ep.truncated), "texts": shape(obj(ep.texts)),
            "environment_rewards": shape(ep.rewards),
            "prompts": obj(e.prompt for e in examples),
            "answers": obj(e.answer for e in examples)}, metrics


def add_environment_rewards(rollout: dict, weight: float) -> dict:
    """`rewards` + weight x the episodes' summed per-turn environment rewards (a reward that
    is NaN, unscorable, stays NaN); weight 0 leaves the rollout as it is.

    >>> r = {"rewards": np.array([[1.0, np.nan]]), "environment_rewards": np.array([[0.5, 1]])}
    >>> add_environment_rewards(r, 2.0)["rewards"].tolist()
    [[2.0, nan]]
    """
    if not weight:
        return rollout
    return dict(rollout, rewards=rollout["rewards"] + weight * rollout["environment_rewards"])


def add_answers(rollout: dict, examples: Sequence[PromptExample], *, pad_id: int) -> dict:
    """Adds the reference answers as right-padded completions `[B, N]` (GRAO's y)."""
    b, _, n = rollout["tokens"].shape
    tokens = np.full((b, n), pad_id, np.int32)
    mask = np.zeros((b, n), np.int32)
    for i, e in enumerate(examples):
        if not e.answer_ids:
            raise ValueError(f"prompt {e.prompt!r} has no reference answer (GRAO needs one)")
        if len(e.answer_ids) > n:
            raise ValueError(f"prompt {e.prompt!r}: the reference answer has "
                             f"{len(e.answer_ids)} tokens (EOS included), more than "
                             f"rollout.max_new_tokens={n}; raise max_new_tokens (GRAO scores and "
                             "trains on the whole answer)")
        ans = list(e.answer_ids)
        tokens[i, :len(ans)], mask[i, :len(ans)] = ans, 1
    return dict(rollout, answer_tokens=tokens, answer_mask=mask)


def dynamic_sampling_index(rewards: Sequence[np.ndarray], batch_size: int
                           ) -> tuple[list[tuple[int, int]], int]:
    """DAPO dynamic sampling (Yu et al. 2025, Eq. 11): which groups fill the batch.

    Groups whose G rewards are all equal (NaN ignored) carry no group-relative signal; the
    batch is filled with the others, in sampling order, and only if too few were found after
    the last try with flat groups (then they get zero advantage anyway).

    Args:
      rewards: per sampling try, `[B, G]` rewards.
      batch_size: groups wanted.
    Returns:
      (`(try, prompt)` pairs for `select_groups`, number of informative groups found).
    """
    informative, flat = [], []
    for i, r in enumerate(rewards):
        r = np.where(np.isnan(r), -np.inf, np.asarray(r, np.float64))
        hi = np.max(r, axis=1)
        lo = np.min(np.where(np.isinf(r), np.inf, r), axis=1)
        is_flat = ~(hi > lo)  # all equal, or fewer than two scorable rewards
        informative += [(i, b) for b in np.flatnonzero(~is_flat)]
        flat += [(i, b) for b in np.flatnonzero(is_flat)]
    return (informative + flat)[:batch_size], len(informative)


def select_groups(rollouts: Sequence[dict], index: Sequence[tuple[int, int]]) -> dict:
    """Concatenates groups `(rollout i, prompt b)` of several rollouts into one rollout.

    Object arrays keep their shape: prompts (text or chat message lists) and answers stay 1-D
    `[B]` of objects (`np.stack` would turn equal-length message lists into a 2-D array, or
    fail on unequal ones), decoded texts stay `[B, G]` strings.
    """
    out = {}
    width = max(r["prompt_ids"].shape[-1] for r in rollouts) if "prompt_ids" in rollouts[0] \
        else 0
    for k, first in rollouts[0].items():
        items = [rollouts[i][k][b] for i, b in index]
        if k in ("prompt_ids", "prompt_mask"):  # tries may differ in width: left-pad (masked)
            items = [np.pad(x, (width - x.shape[-1], 0)) for x in items]
        if first.dtype == object:
            out[k] = np.empty((len(items),) + first.shape[1:], object)
            for j, item in enumerate(items):
                out[k][j] = item
        else:
            out[k] = np.stack(items)
    return out


# ------------------------------------------------------------------------------- forward

def completion_stats(model: Transformer, input_ids, attention_mask, completion_mask, *,
                     temperature: float = 1.0, entropy: bool = False, chunk_size: int = 128):
    """The training forward over completions: per-token log-probs (and entropies).

    Args:
      model: the policy.
      input_ids, attention_mask: `[R, S]` rows from `sequences`.
      completion_mask: `[R, N]`; P = S - N.
      temperature: logits are divided by it (the sampler's; 0 means 1).
      entropy: also return the entropy of each next-token distribution.
    Returns:
      dict of `[R, N]` float32: `logps` (and `entropy`), 0 where the mask is 0.
    """
    n = completion_mask.shape[-1]
    p = input_ids.shape[-1] - n
    hidden, _ = model.hidden_states(input_ids, attention_mask)
    return logprobs.token_stats(hidden[:, p - 1:-1], model.lm_head_weight(), input_ids[:, p:],
                                completion_mask.astype(jnp.float32), entropy=entropy,
                                chunk_size=chunk_size,
                                temperature=temperature if temperature > 0 else 1.0)


def flat(x):
    """`[B, G, ...]` -> `[B * G, ...]`."""
    return x.reshape((-1,) + x.shape[2:])


def rollout_forward(graphdefs: dict, params: dict, ref_params, batch: dict, *,
                    temperature: float, chunk_size: int = 128) -> dict:
    """Old-policy log-probs, entropies, reference log-probs and values of a rollout (no grad).

    Args:
      graphdefs: {"policy": ..., "critic": ... (PPO)}. params: the same keys.
      ref_params: the reference policy's parameters, or None.
      batch: `input_ids`, `attention_mask` `[B, G, S]`, `completion_mask`, `sampler_logps`
        `[B, G, N]`.
    Returns:
      `old_logps`, `entropy` (and `ref_logps`, `values`) `[B, G, N]`, and the scalars
      `sampler/logp_gap` (max |old - sampler| over completion tokens) and
      `sampler/logp_gap_mean`.
    """
    b, g, n = batch["completion_mask"].shape
    ids, attn, mask = (flat(batch[k]) for k in ("input_ids", "attention_mask",
                                                 "completion_mask"))
    unflat = lambda x: x.reshape(b, g, n)
    policy = nnx.merge(graphdefs["policy"], params["policy"])
    stats = completion_stats(policy, ids, attn, mask, temperature=temperature, entropy=True,
                             chunk_size=chunk_size)
    out = {"old_logps": unflat(stats["logps"]), "entropy": unflat(stats["entropy"])}
    if ref_params is not None:
        ref = nnx.merge(graphdefs["policy"], ref_params)
        out["ref_logps"] = unflat(completion_stats(ref, ids, attn, mask, temperature=temperature,
                                                   chunk_size=chunk_size)["logps"])
    if "critic" in graphdefs:
        critic = nnx.merge(graphdefs["critic"], params["critic"])
        out["values"] = unflat(critic(ids, attn, n)) * mask.reshape(b, g, n)
    gap = jnp.abs(out["old_logps"] - batch["sampler_logps"]) * batch["completion_mask"]
    out["sampler/logp_gap"] = jnp.max(gap)
    out["sampler/logp_gap_mean"] = losses.reduce.token_mean(gap, batch["completion_mask"])
    return jax.tree.map(jax.lax.stop_gradient, out)


def sequence_kl(old_logps, ref_logps, mask, *, estimator: str = "k1"):
    """Summed per-token KL estimate of each sequence `[...]` (the `objective/kl` metric and
    RLOO's reward penalty)."""
    return jnp.sum(losses.KL_ESTIMATORS[estimator](old_logps, ref_logps) * mask, axis=-1)
