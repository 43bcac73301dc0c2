"""Guided decoding: ARGS, DeAL and Transfer Q* as one compiled search over the KV cache.

Every step t, each row (beam) of the decoding policy pi proposes its top-k next tokens z, each
candidate gets a value Q(s_t, z), and the search keeps the best:

    score(z) = log pi(y_<t | x) + log pi(z | x, y_<t) + w * Q(s_t, z)

* ARGS (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided Search", ICLR): Q = the reward
  of the partial text x + y_<t + z (`lookahead=0`), one beam, the argmax ("ARGS-greedy") or a
  draw from softmax(score / T) ("ARGS-stochastic", `temperature=T`). The official code adds
  raw logits; within a row that differs from log pi by a constant, so it picks the same.
  With `ImplicitGuide` the reward is a DPO policy's token-level implicit reward
  beta * sum_{i<=t} (log pi_dpo - log pi_ref) (Rafailov et al. 2024, "From r to Q*"), read off
  the two models' next-token log-probs: no forward per candidate.
* DeAL (Huang et al. 2024, "DeAL: Decoding-time Alignment for Large Language Models", arXiv
  2402.06147): a beam search (width `beams`) in which each of the beams x k candidates is
  first continued `lookahead` tokens by the policy itself (greedy) and Q is the reward of the
  text with its lookahead; the beams with the best scores survive; the answer is the beam
  with the best final score.
* Transfer Q* (Chakraborty et al. 2024, arXiv 2405.20495): the decoding policy is the SFT
  model, pi*(z | s) ∝ pi_sft(z | s) exp(alpha Q*(s, z)) over its top-k, and Q* is estimated
  through a baseline model rho_BL aligned to a baseline reward: `rollouts` continuations of
  x + y_<t + z drawn from rho_BL to the end (`lookahead` = `max_new_tokens`), scored by the
  target reward r. Direct transfer (r_BL = r): Q = mean of r over the continuations. Indirect
  transfer (`baseline_scorer` = r_BL, a different reward): the target-optimal trajectory
  distribution is rho_BL(tau) exp((r - r_BL) / beta) / C, so Q is the self-normalised
  importance-weighted mean sum_m softmax_m((r_m - r_BL,m) / beta) r_m. (Our reading of the
  paper's Eq. for indirect transfer: the normaliser C is estimated from the same samples.)

Values come from a `SequenceScorer` over prompt + text (a reward model's forward, a DPO
policy's implicit reward, or a host-side verifier through `jax.pure_callback`) or an
`ImplicitGuide`. The whole search is one jitted program: the prompt is prefilled once per
model; the candidates' continuations start from copies of the rows' caches (k x M copies per
row for that step, a shared paged prefix is the rollout engine's job); the decode loop is a
`lax.while_loop` that ends when every row has stopped.

Compute is counted in forward tokens (one token through one model), for the rows still
decoding: the prompt once per model, each decoded token of the policy (and of rho_BL or the
guide models, which follow the chosen text), every continuation token, and each scorer
forward (`cost` per real token scored: 1 for a reward model, 2 for an implicit reward, 0 for a
host verifier). Work a padded batch spends on finished rows is not counted.

Shapes: B prompts, b beams, R = B * b rows, k candidates, M rollouts, P prompt width, N new
tokens, d lookahead, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.cache import init_cache
from alignax.models.logprobs import completion_logps
from alignax.sampling.sampler import (
    cast_params,
    decode_token,
    left_pad,
    sequences,
    unstack_layers,
)


@dataclasses.dataclass(frozen=True)
class Search:
    """The static settings of a guided search (see the module docstring).

    Attributes:
      candidates: k, the policy's top-k tokens scored per row and step.
      beams: b, rows kept per prompt (1 = ARGS / TQ*; DeAL: > 1); needs k >= b.
      lookahead: d, tokens each candidate is continued before it is scored (0 = score the
        partial text).
      rollouts: M continuations per candidate (sampled at `rollout_temperature`; M > 1 needs a
        temperature > 0), their values averaged (or importance-weighted, indirect TQ*).
      weight: w, the value's weight (ARGS `w`, TQ* `alpha`, DeAL `lambda`).
      temperature: 0 = keep the best-scoring candidate; T > 0 (one beam) = draw from
        softmax(score / T).
      rollout_temperature: 0 = greedy continuations.
      indirect_beta: beta of indirect transfer's importance weights (with a baseline scorer).
    """

    candidates: int = 8
    beams: int = 1
    lookahead: int = 0
    rollouts: int = 1
    weight: float = 1.0
    temperature: float = 0.0
    rollout_temperature: float = 0.0
    indirect_beta: float = 1.0

    def check(self):
        for name, ok in (("candidates", self.candidates >= 1), ("beams", self.beams >= 1),
                         ("lookahead", self.lookahead >= 0), ("rollouts", self.rollouts >= 1),
                         ("temperature", self.temperature >= 0),
                         ("rollout_temperature", self.rollout_temperature >= 0),
                         ("indirect_beta", self.indirect_beta > 0)):
            if not ok:
                raise ValueError(f"search field {name!r}: out of range ({getattr(self, name)})")
        if self.candidates < self.beams:
            raise ValueError(f"search: candidates ({self.candidates}) must be >= beams "
                             f"({self.beams}), else the first step cannot fill the beams")
        if self.beams > 1 and self.temperature > 0:
            raise ValueError("search: a beam search keeps the best beams; temperature > 0 "
                             "needs beams=1")
        if self.rollouts > 1 and (self.lookahead == 0 or self.rollout_temperature == 0):
            raise ValueError("search: rollouts > 1 needs lookahead > 0 and "
                             "rollout_temperature > 0 (greedy continuations are identical)")


def args_search(*, candidates: int = 10, weight: float = 1.0, temperature: float = 0.0
                ) -> Search:
    """ARGS: top-k candidates, partial-text reward, one beam."""
    return Search(candidates=candidates, weight=weight, temperature=temperature)


def deal_search(*, candidates: int = 4, beams: int = 2, lookahead: int = 4,
                weight: float = 1.0) -> Search:
    """DeAL: beam search with `lookahead`-token greedy continuations scored by the reward."""
    return Search(candidates=candidates, beams=beams, lookahead=lookahead, weight=weight)


def transfer_q_search(*, max_new_tokens: int, candidates: int = 4, weight: float = 1.0,
                      rollouts: int = 1, rollout_temperature: float = 0.0,
                      indirect_beta: float = 1.0, temperature: float = 0.0) -> Search:
    """Transfer Q*: continuations to the end by the baseline model (`rollout_model`)."""
    return Search(candidates=candidates, lookahead=max_new_tokens, rollouts=rollouts,
                  weight=weight, rollout_temperature=rollout_temperature,
                  indirect_beta=indirect_beta, temperature=temperature)


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceScorer:
    """A value of whole rows, traceable inside the search.

    `fn(params, input_ids [M, S], attention_mask, completion_mask, prompt_index [M]) -> [M]`
    float32 (NaN = cannot score: never chosen); `params` a pytree passed into the program;
    `cost` forward tokens per real token scored.
    """

    fn: Callable
    params: Any
    cost: int
    name: str


def reward_model_sequence_scorer(graphdef, params) -> SequenceScorer:
    """A reward model's score of prompt + text (`rewards.load_scorer`)."""
    def fn(p, ids, attn, completion, prompt_index):
        return nnx.merge(graphdef, p)(ids, attn).astype(jnp.float32)

    return SequenceScorer(fn, params, 1, "reward_model")


def implicit_sequence_scorer(policy, reference, beta: float, *, chunk_size: int = 128
                             ) -> SequenceScorer:
    """DPO's implicit reward beta * sum_t (log pi - log pi_ref) over the text's tokens."""
    graphdefs = (nnx.graphdef(policy), nnx.graphdef(reference))

    def fn(p, ids, attn, completion, prompt_index):
        sums = []
        for graphdef, params in zip(graphdefs, p):
            tok, m = completion_logps(nnx.merge(graphdef, params), ids, attn, completion,
                                      chunk_size=chunk_size, right_padded=False)
            sums.append(jnp.sum(tok * m, axis=-1))
        return beta * (sums[0] - sums[1])

    return SequenceScorer(fn, (nnx.state(policy), nnx.state(reference)), 2, "implicit_reward")


def verifier_sequence_scorer(fn, prompts: Sequence, tokenizer,
                             stop_ids: tuple[int, ...] | None = None) -> SequenceScorer:
    """A TRL-signature reward function (`fn(prompts, completions) -> list[float | None]`) run
    on the host through `jax.pure_callback`; `prompts` are the texts of the call's prompts
    (row i of the search carries the index of its prompt)."""
    stops = set(stop_ids if stop_ids is not None else (int(tokenizer.eos_id),))

    def host(ids, completion, prompt_index):
        texts = [tokenizer.decode([int(t) for t, c in zip(row, m) if c and int(t) not in stops])
                 for row, m in zip(np.asarray(ids), np.asarray(completion))]
        out = fn([prompts[int(i)] for i in np.asarray(prompt_index)], texts)
        return np.array([np.nan if v is None else float(v) for v in out], np.float32)

    def traced(p, ids, attn, completion, prompt_index):
        return jax.pure_callback(host, jax.ShapeDtypeStruct(ids.shape[:1], jnp.float32),
                                 ids, completion, prompt_index)

    return SequenceScorer(traced, None, 0, "verifier")


@dataclasses.dataclass(frozen=True, eq=False)
class ImplicitGuide:
    """ARGS with a DPO policy's token-level implicit reward (no forward per candidate):
    Q(s_t, z) = beta * (sum_{i<t} [log pi(y_i) - log pi_ref(y_i)] + log pi(z) - log pi_ref(z)),
    both models decoding the chosen text alongside the policy (2 forward tokens per step)."""

    policy: Any
    reference: Any
    beta: float


class Guided(NamedTuple):
    """Attributes: `tokens`, `mask` `[B, N]` of the chosen text; `score` `[B]` its final
    score (log-prob + w * value); `value` `[B]` its value; `forward_tokens`; and
    `forward_tokens_per_output_token`."""

    tokens: np.ndarray
    mask: np.ndarray
    score: np.ndarray
    value: np.ndarray
    forward_tokens: int
    forward_tokens_per_output_token: float


class _Stream(NamedTuple):
    """A model decoding the search's rows: per-layer caches and its next-token log-probs."""

    kv: list
    valid: jax.Array
    next_position: jax.Array
    logp: jax.Array


class _Decoder:
    """A single-head model prepared for decoding inside the program (weights cast once to
    the compute dtype, layers unstacked: as `sampling.sample_tokens`)."""

    def __init__(self, graphdef, params):
        model = nnx.merge(graphdef, params)
        if hasattr(model, "heads"):
            raise ValueError("guided decoding: single-head models only")
        gd, p = nnx.split(model)
        self.trunk = nnx.merge(gd, cast_params(p, model.config.dtype))
        self.layers = unstack_layers(self.trunk)

    def logp(self, hidden):
        return jax.nn.log_softmax(self.trunk.logits(hidden)[:, 0].astype(jnp.float32), -1)

    def start(self, prompt_ids, prompt_mask, slots: int, repeat: int) -> _Stream:
        b, p = prompt_ids.shape
        cache = init_cache(self.trunk.config, b, p + slots)
        hidden, cache = self.trunk.hidden_states(prompt_ids, prompt_mask, cache=cache)
        kv = [(cache.k[i], cache.v[i]) for i in range(len(self.layers))]
        stream = _Stream(kv, cache.valid, cache.next_position, self.logp(hidden[:, -1:]))
        return take(stream, jnp.repeat(jnp.arange(b), repeat))

    def advance(self, stream: _Stream, token, live, slot) -> _Stream:
        h, kv, valid, nxt = decode_token(self.trunk, self.layers, token, live, stream.kv,
                                         stream.valid, stream.next_position, slot)
        return _Stream(kv, valid, nxt, self.logp(h))


def take(tree, rows):
    """Rows `rows` of every array in `tree` (beam reordering, candidate copies)."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), tree)


def _draw(logp, key, temperature):
    if temperature <= 0:
        return jnp.argmax(logp, -1).astype(jnp.int32)
    return jax.random.categorical(key, logp / temperature).astype(jnp.int32)


def _program(params, prompt_ids, prompt_mask, prompt_index, key, *, graphdefs, search,
             scorer, baseline, max_new_tokens, stop_ids, pad_id):
    """The search (see the module docstring); returns the `Guided` arrays and, per prompt,
    the forward tokens spent after the prefill."""
    s = search
    n, d, k, m, nb = max_new_tokens, s.lookahead, s.candidates, s.rollouts, s.beams
    b, p = prompt_ids.shape
    r = b * nb
    stops = jnp.asarray(stop_ids, jnp.int32)
    pol = _Decoder(graphdefs["policy"], params["policy"])
    separate = "rollout" in graphdefs
    roll = _Decoder(graphdefs["rollout"], params["rollout"]) if separate else pol
    guide = ({name: _Decoder(graphdefs[name], params[name]) for name in ("gpol", "gref")}
             if "gpol" in graphdefs else None)
    st = {"policy": pol.start(prompt_ids, prompt_mask, n + d, nb)}
    if separate:
        st["rollout"] = roll.start(prompt_ids, prompt_mask, n + d, nb)
    if guide:
        st.update({name: g.start(prompt_ids, prompt_mask, n, nb) for name, g in guide.items()})
    beam = jnp.tile(jnp.arange(nb), b)
    row_prompt = jnp.repeat(jnp.arange(b), nb)

    def values(i, tokens, mask, done, cand, valid, cum_r, streams, step_key):
        """Q `[R, k]` of every candidate and the forward tokens it cost."""
        if guide:
            gp = jnp.take_along_axis(streams["gpol"].logp, cand, -1)
            gr = jnp.take_along_axis(streams["gref"].logp, cand, -1)
            step = jnp.where(done[:, None], 0.0, gp - gr)
            return scorer.beta * (cum_r[:, None] + step), jnp.zeros(b, jnp.int32)
        rows = r * k * m
        parent = jnp.repeat(jnp.arange(r), k * m)
        ctok = jnp.repeat(cand.reshape(-1), m)
        counted = jnp.repeat((valid & ~done[:, None]).reshape(-1), m)
        pad_cols = lambda x, fill: jnp.concatenate([x, jnp.full((x.shape[0], d), fill,
                                                                x.dtype)], -1)
        ctoks = take(pad_cols(tokens, pad_id), parent).at[:, i].set(ctok)
        cmask = take(pad_cols(mask, 0), parent).at[:, i].set(counted.astype(jnp.int32))
        per_prompt = lambda x: jnp.sum(x.reshape(b, -1), -1).astype(jnp.int32)
        spent = jnp.zeros(b, jnp.int32)
        if d:
            live = counted & ~jnp.isin(ctok, stops)
            rs = roll.advance(take(streams["rollout" if separate else "policy"], parent), ctok,
                              counted, p + i)
            spent += per_prompt(counted)

            def cond(c):
                j, live, *_ = c
                return (j < d) & jnp.any(live)

            def body(c):
                j, live, rs, ctoks, cmask, spent = c
                tok = _draw(rs.logp, jax.random.fold_in(step_key, j + 1), s.rollout_temperature)
                tok = jnp.where(live, tok, pad_id)
                ctoks = jax.lax.dynamic_update_slice(ctoks, tok[:, None], (0, i + 1 + j))
                cmask = jax.lax.dynamic_update_slice(cmask, live[:, None].astype(jnp.int32),
                                                     (0, i + 1 + j))
                rs = roll.advance(rs, tok, live, p + i + 1 + j)
                spent += per_prompt(live)
                return j + 1, live & ~jnp.isin(tok, stops), rs, ctoks, cmask, spent

            _, _, _, ctoks, cmask, spent = jax.lax.while_loop(
                cond, body, (jnp.zeros((), jnp.int32), live, rs, ctoks, cmask, spent))
        rp = row_prompt[parent]
        ids, attn = sequences(take(prompt_ids, rp), take(prompt_mask, rp), ctoks, cmask)
        completion = jnp.concatenate([jnp.zeros((rows, p), jnp.int32), cmask], -1)
        scored = per_prompt(jnp.where(counted[:, None], attn, 0))
        val = scorer.fn(params["scorer"], ids, attn, completion, prompt_index[rp])
        spent += scorer.cost * scored
        val = val.reshape(r, k, m)
        if baseline is not None:
            bl = baseline.fn(params["baseline"], ids, attn, completion, prompt_index[rp])
            spent += baseline.cost * scored
            w = jax.nn.softmax((val - bl.reshape(r, k, m)) / s.indirect_beta, axis=-1)
            q = jnp.sum(w * val, axis=-1)
        else:
            q = jnp.mean(val, axis=-1)
        return q, spent

    def cond(c):
        i, done = c[0], c[1]
        return (i < n) & ~jnp.all(done)

    def body(c):
        i, done, tokens, mask, cum, value, cum_r, streams, spent = c
        step_key = jax.random.fold_in(key, i)
        cand_lp, cand = jax.lax.top_k(streams["policy"].logp, k)
        cand = jnp.where(done[:, None], pad_id, cand.astype(jnp.int32))
        cand_lp = jnp.where(done[:, None], 0.0, cand_lp)
        first = jnp.arange(k)[None, :] == 0
        valid = jnp.where(done[:, None], first, True)
        if nb > 1:
            valid &= ~((i == 0) & (beam[:, None] > 0))
        q, cost = values(i, tokens, mask, done, cand, valid, cum_r, streams,
                         jax.random.fold_in(step_key, 1))
        total = cum[:, None] + cand_lp + s.weight * q
        total = jnp.where(valid & ~jnp.isnan(total), total, -jnp.inf)
        if nb == 1:
            if s.temperature > 0:
                choice = jax.random.categorical(jax.random.fold_in(step_key, 0),
                                                total / s.temperature).astype(jnp.int32)
            else:
                choice = jnp.argmax(total, -1).astype(jnp.int32)
            parent = jnp.arange(r)
        else:
            _, idx = jax.lax.top_k(total.reshape(b, nb * k), nb)
            parent = (jnp.arange(b)[:, None] * nb + idx // k).reshape(-1)
            choice = (idx % k).reshape(-1)
        pick = lambda x: x[parent, choice]
        token, lp, q_chosen = pick(cand), pick(cand_lp), pick(q)
        done, tokens, mask = done[parent], take(tokens, parent), take(mask, parent)
        streams = take(streams, parent)
        live = ~done
        token = jnp.where(live, token, pad_id)
        tokens = tokens.at[:, i].set(token)
        mask = mask.at[:, i].set(live.astype(jnp.int32))
        cum = cum[parent] + lp
        cum_r = cum_r[parent]
        if guide:
            cum_r += jnp.where(live, _token_logp(streams["gpol"], token)
                               - _token_logp(streams["gref"], token), 0.0)
        new = {"policy": pol.advance(streams["policy"], token, live, p + i)}
        if separate:
            new["rollout"] = roll.advance(streams["rollout"], token, live, p + i)
        if guide:
            new.update({name: g.advance(streams[name], token, live, p + i)
                        for name, g in guide.items()})
        spent += cost + len(new) * jnp.sum(live.reshape(b, nb), -1).astype(jnp.int32)
        done = done | jnp.isin(token, stops)
        return i + 1, done, tokens, mask, cum, q_chosen, cum_r, new, spent

    init = (jnp.zeros((), jnp.int32), jnp.zeros(r, bool), jnp.full((r, n), pad_id, jnp.int32),
            jnp.zeros((r, n), jnp.int32), jnp.zeros(r, jnp.float32),
            jnp.zeros(r, jnp.float32), jnp.zeros(r, jnp.float32), st,
            jnp.zeros(b, jnp.int32))
    _, _, tokens, mask, cum, value, _, _, spent = jax.lax.while_loop(cond, body, init)
    final = cum + s.weight * value
    best = jnp.argmax(final.reshape(b, nb), -1)
    rows = jnp.arange(b) * nb + best
    return tokens[rows], mask[rows], final[rows], value[rows], spent


def _token_logp(stream: _Stream, token):
    return jnp.take_along_axis(stream.logp, token[:, None], -1)[:, 0]


def guided_decode(model, prompts: Sequence[Sequence[int]], *, search: Search, scorer,
                  tokenizer, max_new_tokens: int, rollout_model=None, baseline_scorer=None,
                  seed: int = 0, batch_size: int | None = None,
                  stop_ids: tuple[int, ...] | None = None) -> Guided:
    """Guided decoding of token-id prompts (ARGS / DeAL / Transfer Q*: module docstring).

    Args:
      model: the decoding policy (an NNX `Transformer`; TQ*: the SFT model).
      prompts: B lists of prompt token ids.
      search: `Search` (`args_search`, `deal_search`, `transfer_q_search`).
      scorer: a `SequenceScorer` (the value of prompt + text) or an `ImplicitGuide`.
      tokenizer: has `eos_id`, `pad_id` (and `decode` for verifiers).
      max_new_tokens: N.
      rollout_model: the model that continues candidates (TQ*: rho_BL); default the policy.
      baseline_scorer: r_BL for indirect transfer (a `SequenceScorer`).
      seed: PRNG seed (sampled selection / continuations); batch i uses `seed + i`.
      batch_size: prompts per program call (the last call padded with copies of its first
        prompt, so the program compiles once).
      stop_ids: tokens that end a row; default `(eos_id,)`.
    Returns:
      `Guided` with numpy arrays (one row per prompt).
    """
    search.check()
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    guide = isinstance(scorer, ImplicitGuide)
    if guide and (search.lookahead or rollout_model is not None or baseline_scorer is not None):
        raise ValueError("an ImplicitGuide values the partial text token by token (ARGS): "
                         "use lookahead=0, no rollout_model and no baseline_scorer, or an "
                         "implicit_sequence_scorer for continuations")
    if not guide and not isinstance(scorer, SequenceScorer):
        raise TypeError(f"scorer: a SequenceScorer or an ImplicitGuide, got {type(scorer)}")
    if rollout_model is not None and search.lookahead == 0:
        raise ValueError("rollout_model continues candidates: it needs lookahead > 0")
    if baseline_scorer is not None and search.lookahead == 0:
        raise ValueError("baseline_scorer (indirect transfer) needs lookahead > 0")
    models = {"policy": model}
    if rollout_model is not None:
        models["rollout"] = rollout_model
    if guide:
        models.update(gpol=scorer.policy, gref=scorer.reference)
    vocab = model.config.vocab_size
    for name, mdl in models.items():
        if mdl.config.vocab_size != vocab:
            raise ValueError(f"guided decoding: the {name} model's vocabulary "
                             f"({mdl.config.vocab_size}) differs from the policy's ({vocab}); "
                             "every model must share the tokenizer")
    graphdefs = {name: nnx.graphdef(mdl) for name, mdl in models.items()}
    params = {name: nnx.state(mdl) for name, mdl in models.items()}
    if not guide:
        params["scorer"] = scorer.params
    if baseline_scorer is not None:
        params["baseline"] = baseline_scorer.params
    eos, pad = int(tokenizer.eos_id), int(tokenizer.pad_id)
    stops = tuple(int(x) for x in (stop_ids or (eos,)))
    program = jax.jit(functools.partial(
        _program, graphdefs=graphdefs, search=search, scorer=scorer, baseline=baseline_scorer,
        max_new_tokens=int(max_new_tokens), stop_ids=stops, pad_id=pad))
    prompts = [list(x) for x in prompts]
    width = max(len(x) for x in prompts)
    size = batch_size or len(prompts)
    parts, spent = [], 0
    for i, start in enumerate(range(0, len(prompts), size)):
        chunk = prompts[start:start + size]
        count = len(chunk)
        ids, pmask = left_pad(chunk + [chunk[0]] * (size - count), pad, width)
        index = np.array([start + j if j < count else start for j in range(size)], np.int32)
        out = program(params, ids, pmask, index, jax.random.key(seed + i))
        out = [np.asarray(x)[:count] for x in out]
        spent += int(out[-1].sum())
        parts.append(out[:-1])
    tokens, mask, score, value = (np.concatenate(x) for x in zip(*parts))
    spent += len(models) * sum(len(x) for x in prompts)  # the prompt, once per model
    return Guided(tokens, mask, score, value, spent, spent / max(int(mask.sum()), 1))
