"""Rollouts for online training: prompts -> sampler -> completions -> rewards -> the rollout
forward (old / reference log-probs, entropy, values) -> advantages.

A rollout is a dict of numpy arrays with a leading prompt axis B; samples add a G axis:

* `prompt_ids`, `prompt_mask` `[B, P]` (left-padded); `tokens`, `mask`, `sampler_logps`
  `[B, G, N]` (right-padded completions, mask 1 on the stop token); `lengths`, `terminated`,
  `rewards` `[B, G]`; `reward_vector` `[B, G, K]`; `texts` `[B, G]` (object);
  `prompts`, `answers` `[B]` (object); for GRAO `answer_tokens`, `answer_mask` `[B, N]` and
  `answer_reward` `[B]`.

The training rows are `[pad.. prompt | completion ..pad]`, `S = P + N`: the exact slots the
sampler used, so the training forward reproduces the sampler's log-probs (checked every step as
`sampler/logp_gap`). Hidden state `P - 1 + t` predicts completion token `t`.

Shapes: B prompts, G samples per prompt, P prompt width, N new tokens, S = P + N, K objectives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import data as D
from alignax import losses
from alignax import rewards as R
from alignax import sharding as sh
from alignax.models import Transformer, ValueHead, logprobs
from alignax.sampling import completions_text, left_pad, sample_tokens
from alignax.sampling.sampler import cast_params

# ------------------------------------------------------------------------------- prompts


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One prompt: as given to reward functions, as token ids, and its reference answer."""

    prompt: Any                    # text, or chat messages
    prompt_ids: tuple[int, ...]
    answer: str | None = None      # the dataset's reference answer (GRAO's y), if any
    answer_ids: tuple[int, ...] = ()  # its tokens + EOS


def _answer_of(ex) -> Any:
    if isinstance(ex, D.Pair):
        return ex.chosen
    if isinstance(ex, D.Unpaired):
        return ex.completion if ex.label else None
    return ex.completion


def prompt_examples(examples: Sequence, tokenizer, limits: D.Limits) -> list[PromptExample]:
    """`PromptExample`s from parsed examples (`Pair` -> chosen, `SFT` -> completion as the
    answer; an undesirable `Unpaired` row has none). Chat prompts are rendered by the
    tokenizer's chat template; truncation follows `limits`."""
    out = []
    for ex in examples:
        answer = _answer_of(ex)
        row = D.tokenize_examples([D.SFT(ex.prompt, answer if answer is not None else " ")],
                                  tokenizer, limits)[0]
        out.append(PromptExample(ex.prompt, tuple(row["prompt"]),
                                 answer if isinstance(answer, str) else None,
                                 tuple(row["completion"]) if answer is not None else ()))
    return out


class PromptIterator:
    """Shuffled epochs over prompts, `batch_size` per call; resumable (`state_dict`)."""

    def __init__(self, examples: Sequence[PromptExample], *, batch_size: int, seed: int):
        if len(examples) < batch_size:
            raise ValueError(f"{len(examples)} prompts, fewer than one batch of {batch_size}")
        self.examples, self.batch_size, self.seed = list(examples), batch_size, seed
        self.epoch, self.index = 0, 0

    def next_batch(self) -> list[PromptExample]:
        if (self.index + 1) * self.batch_size > len(self.examples):
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))
        ids = order[self.index * self.batch_size:(self.index + 1) * self.batch_size]
        self.index += 1
        return [self.examples[i] for i in ids]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"checkpointed prompt seed {state['seed']} differs from {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


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


def sampler_params_fn(params_like, *, mesh, dtype):
    """A jitted `params -> params` for the sampler: floating leaves cast to the compute `dtype`
    and resharded on device to `sharding.decode_rules()` (weights not split over `fsdp`), so
    the decode loop neither re-casts float32 master weights nor all-gathers FSDP shards at
    every token. `params_like`: the policy's parameters (arrays or abstract, with NNX
    logical-axis metadata)."""
    shardings = sh.tree_shardings(params_like, mesh=mesh, rules=sh.decode_rules())
    return jax.jit(lambda p: cast_params(p, dtype), out_shardings=shardings)


def sample(graphdef, params, examples: Sequence[PromptExample], key, opts: SamplingOptions, *,
           tokenizer, sharding=None) -> dict[str, np.ndarray]:
    """Samples G completions per prompt with the policy's parameters and decodes them.

    Args:
      graphdef, params: the policy (`params` used in place).
      examples: B prompts. key: the sampling key. opts: `SamplingOptions`.
      tokenizer: decodes completions. sharding: optional sharding for the `[B, P]` prompts.
    Returns:
      the sampling part of a rollout (see the module docstring).
    """
    b, g, n = len(examples), opts.num_samples, opts.max_new_tokens
    ids, pmask = left_pad([list(e.prompt_ids) for e in examples], opts.pad_id, opts.prompt_width)
    dev_ids, dev_mask = (ids, pmask) if sharding is None else jax.device_put((ids, pmask),
                                                                               sharding)
    out = sample_tokens(graphdef, params, dev_ids, dev_mask, key, num_samples=g,
                        max_new_tokens=n, temperature=opts.temperature, top_k=opts.top_k,
                        top_p=opts.top_p, stop_ids=opts.stop_ids, pad_id=opts.pad_id)
    tokens, logps, mask = (np.asarray(x) for x in out)
    texts = completions_text(tokenizer, tokens, mask, stop_ids=opts.stop_ids)
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

    Object arrays (prompts: text or chat message lists; answers) stay 1-D `[B]` of objects;
    `np.stack` would turn equal-length message lists into a 2-D array, or fail on unequal ones.
    """
    out = {}
    for k in rollouts[0]:
        items = [rollouts[i][k][b] for i, b in index]
        if rollouts[0][k].dtype == object:
            out[k] = np.empty(len(items), object)
            out[k][:] = items
        else:
            out[k] = np.stack(items)
    return out


# ------------------------------------------------------------------------------- rewards

class RewardScorer:
    """Rewards of a rollout: reward functions and/or a reward model, weighted, plus shaping.

    Args:
      functions: `(name, fn)` verifiable reward functions (see `rewards.functions`).
      weights: one weight per objective: the functions, then the reward model if any.
      reward_model: `(graphdef, params)` of a `rewards.RewardModel`, or None.
      length_penalty, missing_eos_penalty: shaping coefficients (0 = off).
      overlong_buffer: DAPO soft over-long buffer in tokens (0 = off), against N.
    """

    def __init__(self, functions: Sequence[tuple[str, R.RewardFn]], weights: Sequence[float],
                 *, reward_model=None, length_penalty: float = 0.0,
                 missing_eos_penalty: float = 0.0, overlong_buffer: int = 0):
        self.functions = list(functions)
        self.names = [n for n, _ in self.functions] + (["reward_model"] if reward_model else [])
        if not self.names:
            raise ValueError("no rewards: set reward.functions and/or reward.model_path")
        if len(weights) != len(self.names):
            raise ValueError(f"reward.weights has {len(weights)} entries for the objectives "
                             f"{self.names}")
        self.weights = np.asarray(weights, np.float32)
        self.reward_model = reward_model
        self.length_penalty, self.missing_eos = length_penalty, missing_eos_penalty
        self.overlong_buffer = overlong_buffer

    def vector(self, prompts, texts, **kwargs) -> np.ndarray:
        """`[N, K]` per-objective rewards of N completions; kwargs as `rewards.reward_vector`
        plus `input_ids`, `attention_mask` `[N, S]` for the reward model."""
        ids, attn = kwargs.pop("input_ids", None), kwargs.pop("attention_mask", None)
        vec = R.reward_vector(self.functions, prompts, texts, **kwargs)
        if self.reward_model is not None:
            scores = np.asarray(R.score_sequences(*self.reward_model, ids, attn), np.float32)
            vec = np.concatenate([vec, scores[:, None]], axis=1)
        return vec

    def __call__(self, rollout: dict) -> dict:
        """Adds `reward_vector` `[B, G, K]` and `rewards` `[B, G]` (weighted + shaping)."""
        b, g, n = rollout["tokens"].shape
        ids, attn = sequences(rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                              rollout["mask"])
        lengths, terminated = rollout["lengths"].reshape(-1), rollout["terminated"].reshape(-1)
        vec = self.vector(np.repeat(rollout["prompts"], g), list(rollout["texts"].reshape(-1)),
                          answers=list(np.repeat(rollout["answers"], g)),
                          terminated=list(terminated), lengths=list(lengths),
                          input_ids=ids.reshape(b * g, -1), attention_mask=attn.reshape(b * g, -1))
        total = np.asarray(R.combine_rewards(vec, self.weights))
        if self.length_penalty:
            total = total + np.asarray(R.length_penalty(lengths, coef=self.length_penalty))
        if self.overlong_buffer:
            total = total + np.asarray(R.overlong_penalty(lengths, max_length=n,
                                                          buffer=self.overlong_buffer))
        if self.missing_eos:
            total = total + np.asarray(R.missing_eos_penalty(terminated,
                                                             penalty=self.missing_eos))
        return dict(rollout, reward_vector=vec.reshape(b, g, -1), rewards=total.reshape(b, g))

    def answer_rewards(self, rollout: dict) -> dict:
        """Adds `answer_reward` `[B]`: R(y, y), the reference answer scored like a sample."""
        one = {k: rollout[k][:, None] for k in ("answer_tokens", "answer_mask")}
        ans = np.array([a if a is not None else "" for a in rollout["answers"]], dtype=object)
        sub = dict(rollout, tokens=one["answer_tokens"], mask=one["answer_mask"],
                   texts=ans[:, None], lengths=one["answer_mask"].sum(-1),
                   terminated=np.ones_like(one["answer_mask"][..., 0], bool))
        return dict(rollout, answer_reward=self(sub)["rewards"][:, 0])


# ------------------------------------------------------------------------------- forward

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


class Critic(nnx.Module):
    """PPO critic: a `Transformer` trunk + `ValueHead`; `critic(ids, mask, n)` -> `[R, N]`
    values V(s_t) of the states that emit each of the last N tokens."""

    def __init__(self, trunk: Transformer, *, rngs: nnx.Rngs):
        self.trunk = trunk
        self.head = ValueHead(trunk.config, rngs=rngs)

    def __call__(self, input_ids, attention_mask, num_completion_tokens: int) -> jax.Array:
        hidden, _ = self.trunk.hidden_states(input_ids, attention_mask)
        p = input_ids.shape[-1] - num_completion_tokens
        return self.head(hidden[:, p - 1:-1])


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


# ------------------------------------------------------------------------------- advantages

def group_advantages(rewards, *, estimator: str = "grpo", scale_rewards: str = "group"):
    """Sequence advantages `[B, G]` from rewards `[B, G]`: GRPO (`losses.grpo_advantages`)
    or RLOO (`losses.rloo_advantages`)."""
    if estimator == "rloo":
        return losses.rloo_advantages(rewards)
    return losses.grpo_advantages(rewards, scale_rewards=scale_rewards)


def sequence_kl(old_logps, ref_logps, mask, *, estimator: str = "k1"):
    """Summed per-token KL estimate of each sequence `[...]` (RLOO's reward penalty)."""
    return jnp.sum(losses.KL_ESTIMATORS[estimator](old_logps, ref_logps) * mask, axis=-1)


def ppo_advantages(old_logps, ref_logps, values, scores, mask, *, kl_coef: float,
                   kl_estimator: str = "k1", gamma: float = 1.0, lam: float = 0.95,
                   whiten: bool = True):
    """TRL PPO advantages: KL-penalised per-token rewards, GAE, whitening over the batch.

    Args:
      old_logps, ref_logps, values, mask: `[..., N]`. scores: `[...]` sequence scores.
    Returns:
      (advantages `[..., N]`, returns `[..., N]`, per-token rewards `[..., N]`).
    """
    mask = mask.astype(jnp.float32)
    rewards = losses.kl_penalized_rewards(old_logps, ref_logps, scores, mask, kl_coef=kl_coef,
                                          kl_estimator=kl_estimator)
    adv, returns = losses.gae(rewards, values, mask, gamma=gamma, lam=lam)
    if whiten:
        adv = losses.masked_whiten(adv, mask)
    return adv, returns, rewards
