"""A two-objective synthetic task for MAH-DPO: correct answers vs round answers.

Prompts are the arithmetic problems of `synthetic.py` (`"12+7="`). Two objectives score a
completion, exactly, from its leading integer:

* objective 0, `correct`: the leading integer equals the answer (`"19"` for `12+7=`);
* objective 1, `round`: the leading integer is a multiple of ten (`"20"`, a round estimate).

They are partly conflicting: they agree when the answer is itself round (`"20"` beats `"21"` on
both) and disagree otherwise (`"19"` beats `"20"` on correctness, `"20"` beats `"19"` on
roundness). A byte-level model learns either rule from one token (the last digit), so a tiny
model trained per objective shows both the specialisation of the heads and, by mixing them, a
trade-off curve.

**Vector preferences and routing.** A compared pair `(prompt, a, b)` carries one preference per
objective, `sign(score_k(a) - score_k(b))` in {-1, 0, +1} (`preference_vector`). As in the
MAH-DPO reference code (one dataset per objective; a pair labelled for several objectives
appears once per objective), `expand_vector_pair` emits one `Pair` per objective with a non-zero
preference, oriented so that the preferred completion is `chosen`, with `objective=k`; an
objective that ties is left out. `expand_records` does the same for JSONL records whose
`objective` is a list (`[0, "round"]`: chosen preferred on each) or that carry `preferences`
(a list of +1 / 0 / -1, one per objective).

Scorers come twice and agree exactly: on text (`is_correct`, `is_round`, `score`) and on
sampled token ids under `jax.jit` (`token_scores`), so a sweep over head weights can score
inside one compiled program. Text is read with ASCII rules: `\\s*(-?[0-9]+)` after decoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignax.data.errors import DataError
from alignax.data.formats import Pair
from alignax.data.synthetic import ERROR_OFFSETS, problems

OBJECTIVES = ("correct", "round")
"""Objective names, in head order."""

_PROMPT = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*$", re.ASCII)
_LEADING = re.compile(r"\s*(-?\d+)", re.ASCII)
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def answer_of(prompt: str) -> int:
    """The exact answer of an arithmetic prompt (`"12+7="` -> 19)."""
    m = _PROMPT.match(prompt)
    if not m:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return _OPS[m.group(2)](int(m.group(1)), int(m.group(3)))


def round_answer(value: int) -> int:
    """The nearest multiple of ten, halves rounded up (17 -> 20, 15 -> 20, 14 -> 10)."""
    return 10 * ((int(value) + 5) // 10)


def leading_integer(completion: str) -> int | None:
    """The completion's leading integer (`\\s*(-?[0-9]+)`, ASCII), or None."""
    m = _LEADING.match(completion)
    return int(m.group(1)) if m else None


def is_correct(prompt: str, completion: str) -> bool:
    """Objective 0: the leading integer equals the prompt's answer."""
    got = leading_integer(completion)
    return got is not None and got == answer_of(prompt)


def is_round(prompt: str, completion: str) -> bool:
    """Objective 1: the leading integer is a multiple of ten (the prompt is not needed)."""
    del prompt
    got = leading_integer(completion)
    return got is not None and got % 10 == 0


SCORERS = {"correct": is_correct, "round": is_round}
"""Objective name -> `(prompt, completion) -> bool`."""


def score(prompts: Sequence[str], completions: Sequence[str],
          objectives: Sequence[str] = OBJECTIVES) -> np.ndarray:
    """`[N, O]` float32 scores (1 = satisfied) of N completions on each objective."""
    return np.asarray([[float(SCORERS[k](p, c)) for k in objectives]
                       for p, c in zip(prompts, completions, strict=True)],
                      np.float32).reshape(len(prompts), len(objectives))


# --------------------------------------------------------------------------- vector preferences

def preference_vector(prompt: str, a: str, b: str,
                      objectives: Sequence[str] = OBJECTIVES) -> tuple[int, ...]:
    """Per objective, +1 if `a` scores higher than `b`, -1 if lower, 0 on a tie."""
    return tuple(int(np.sign(int(SCORERS[k](prompt, a)) - int(SCORERS[k](prompt, b))))
                 for k in objectives)


def expand_vector_pair(prompt, a, b, preferences: Sequence[int]) -> list[Pair]:
    """One `Pair` per objective with a non-zero preference (the reference code's routing).

    Args:
      prompt, a, b: the compared completions.
      preferences: `[O]` +1 (a preferred), -1 (b preferred) or 0 (tie: not labelled).
    Returns:
      pairs with `objective=k`, `chosen` the completion objective k prefers.
    """
    out = []
    for k, pref in enumerate(preferences):
        if pref > 0:
            out.append(Pair(prompt, a, b, objective=k))
        elif pref < 0:
            out.append(Pair(prompt, b, a, objective=k))
    return out


def _objective_index(value, objectives: Sequence[str] | None, where, field: str) -> int:
    path, line = where
    if isinstance(value, str):
        if not objectives or value not in objectives:
            raise DataError(f"unknown objective {value!r}; known: {list(objectives or [])}",
                            path=path, line=line, field=field)
        return list(objectives).index(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"expected an objective index or name, got {type(value).__name__}",
                        path=path, line=line, field=field)
    if value < 0 or (objectives and value >= len(objectives)):
        raise DataError(f"index {value} out of range for objectives {list(objectives or [])}",
                        path=path, line=line, field=field)
    return value


def _labels(rec: dict, where, objectives: Sequence[str] | None) -> list[tuple[int, int]]:
    """`[(objective index, +1 / -1)]` of a vector-labelled record (see `expand_records`)."""
    path, line = where
    prefs, objective = rec["preferences"] if "preferences" in rec else None, rec.get("objective")
    if prefs is None:
        if not objective:
            raise DataError("empty objective list", path=path, line=line, field="objective")
        ks = [_objective_index(o, objectives, where, f"objective[{i}]")
              for i, o in enumerate(objective)]
        if len(set(ks)) != len(ks):
            raise DataError(f"objective listed twice in {objective!r}", path=path, line=line,
                            field="objective")
        return [(k, 1) for k in ks]
    if objective is not None:
        raise DataError("give either 'objective' or 'preferences', not both", path=path,
                        line=line, field="preferences")
    if not isinstance(prefs, list) or not all(
            not isinstance(p, bool) and p in (-1, 0, 1) for p in prefs):
        raise DataError(f"expected a list of -1 / 0 / 1, got {prefs!r}", path=path, line=line,
                        field="preferences")
    if objectives and len(prefs) != len(objectives):
        raise DataError(f"{len(prefs)} preferences for {len(objectives)} objectives "
                        f"{list(objectives)}", path=path, line=line, field="preferences")
    return [(k, int(p)) for k, p in enumerate(prefs) if p]


def expand_records(records: Iterable[tuple[tuple[str, int], dict]],
                   objectives: Sequence[str] | None = None, *, policy=None):
    """Yields `(where, record)` with vector-labelled records expanded once per objective.

    A record whose `objective` is a list (every listed objective prefers `chosen`) or that has
    `preferences` (`[O]` of +1 / 0 / -1: +1 = `chosen` preferred, -1 = `rejected` preferred,
    0 = a tie, not labelled) becomes one record per labelled objective with a scalar
    `objective`, chosen and rejected swapped where the preference is -1. Other records pass
    through unchanged, so the output feeds `formats.parse_records` (which checks the rest).

    Raises:
      DataError (file, line, field) on an unknown objective name, an index out of range, a
      preference other than -1 / 0 / 1, a preference vector of the wrong length; with
      `policy` (a `data.ErrorPolicy`) the error goes to `policy.handle` (raise, or skip).
    """
    for where, rec in records:
        if "preferences" not in rec and not isinstance(rec.get("objective"), list):
            yield where, rec
            continue
        try:
            labels = _labels(rec, where, objectives)
        except DataError as e:
            if policy is None:
                raise
            policy.handle(e)
            continue
        for k, p in labels:
            out = {key: v for key, v in rec.items() if key != "preferences"}
            if p < 0:
                if "chosen" not in rec or "rejected" not in rec:
                    raise DataError("a preference of -1 needs 'chosen' and 'rejected'",
                                    path=where[0], line=where[1], field="preferences")
                out["chosen"], out["rejected"] = rec["rejected"], rec["chosen"]
            out["objective"] = k
            yield where, out


# --------------------------------------------------------------------------- data

def preference_pairs(n: int, *, seed: int, max_operand: int = 20,
                     error_offsets: Sequence[int] = ERROR_OFFSETS, conflict: float = 1.0,
                     ops: str = "+") -> list[Pair]:
    """Routed preference pairs on `n` problems, labelled by the scorers.

    Each problem with exact answer e gives two compared pairs, labelled per objective with
    `preference_vector` and expanded with `expand_vector_pair`:

    * `(e, e + offset)` (an annotator's error): correctness prefers e; roundness labels it only
      when one side is round (both objectives then agree, or disagree at e.g. `(19, 20)`);
    * with probability `conflict`, and when e is not round, `(round(e), e)`: roundness prefers
      `round(e)` and correctness prefers e, so the pair appears once per objective with
      opposite orientations.

    Args:
      n: problems. seed: deterministic in it.
      max_operand, ops: the arithmetic problems (`synthetic.problems`).
      error_offsets: offsets of the wrong answers (`(1,)`: a systematic annotator error).
      conflict: fraction of problems with the conflicting `(round, exact)` comparison.
    Returns:
      `Pair`s with `objective` set (0 = correct, 1 = round), in problem order.
    """
    rng = np.random.default_rng([seed, 7])
    out = []
    for prompt, answer in problems(n, seed=seed, max_operand=max_operand, ops=ops):
        e = int(answer)
        wrong = str(e + int(rng.choice(np.asarray(error_offsets))))
        compared = [(answer, wrong)]
        r = round_answer(e)
        if rng.random() < conflict and r != e:
            compared.append((str(r), answer))
        for a, b in compared:
            out += expand_vector_pair(prompt, a, b, preference_vector(prompt, a, b))
    return out


def eval_prompts(n: int, *, seed: int, max_operand: int = 20, ops: str = "+") -> list[str]:
    """Held-out prompts (use a seed the training data does not)."""
    return [p for p, _ in problems(n, seed=seed, max_operand=max_operand, ops=ops)]


# --------------------------------------------------------------------------- token scorers

_WHITESPACE = (9, 10, 11, 12, 13, 32)  # ASCII \s: \t \n \v \f \r and space
_MINUS, _ZERO, _NINE = 45, 48, 57
_BYTES = 256  # byte ids; larger ids are specials the byte tokenizer's decode drops
_CAP = 10 ** 8  # leading integers beyond this are "too large" (no answer is)


def token_leading_integer(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array,
                                                                        jax.Array]:
    """The leading integer of byte-token completions, as `leading_integer` reads the text.

    Tokens with mask 0 and ids >= 256 are skipped (`ByteTokenizer.decode` drops them); any
    byte other than ASCII whitespace, '-' and digits ends the number (a non-ASCII byte decodes
    to a non-ASCII character, which ASCII `\\s`/`\\d` do not match).

    Args:
      tokens: `[R, N]` int sampled ids. mask: `[R, N]` 1 = generated token.
    Returns:
      (value `[R]` int32 clipped to +-1e8, found `[R]` bool, last_digit `[R]` int32).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    keep = (jnp.asarray(mask) > 0) & (tokens < _BYTES)
    is_ws = jnp.isin(tokens, jnp.asarray(_WHITESPACE, jnp.int32))
    is_digit = (tokens >= _ZERO) & (tokens <= _NINE)
    is_minus = tokens == _MINUS
    # States: 0 leading whitespace, 1 after '-', 2 in digits, 3 done.
    def step(carry, xs):
        state, value, neg, last, seen = carry
        k, ws, dg, mn, tok = xs
        nxt = jnp.where(state == 0, jnp.where(ws, 0, jnp.where(mn, 1, jnp.where(dg, 2, 3))),
                        jnp.where((state == 1) | (state == 2), jnp.where(dg, 2, 3), 3))
        take = k & dg & (nxt == 2)
        value = jnp.where(take, jnp.minimum(value * 10 + (tok - _ZERO), _CAP), value)
        last = jnp.where(take, tok - _ZERO, last)
        neg = neg | (k & (state == 0) & mn)
        return (jnp.where(k, nxt, state), value, neg, last, seen | take), None

    r = tokens.shape[0]
    zeros = jnp.zeros(r, jnp.int32)
    init = (zeros, zeros, jnp.zeros(r, bool), zeros, jnp.zeros(r, bool))
    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (keep, is_ws, is_digit, is_minus, tokens))
    (_, value, neg, last, seen), _ = jax.lax.scan(step, init, xs)
    return jnp.where(neg, -value, value), seen, last


def token_scores(tokens: jax.Array, mask: jax.Array, answers: jax.Array) -> jax.Array:
    """`[R, 2]` float32 (correct, round) scores of byte-token completions (jittable).

    Equals `score(prompts, completions_text(ByteTokenizer(), tokens, mask))` for the byte
    tokenizer (stop tokens are ids >= 256, skipped like the text decoding drops them).

    Args:
      tokens, mask: `[R, N]` from the sampler. answers: `[R]` int exact answers.
    """
    value, found, last = token_leading_integer(tokens, mask)
    correct = found & (value == jnp.asarray(answers, jnp.int32))
    rounded = found & (last == 0)
    return jnp.stack([correct, rounded], axis=-1).astype(jnp.float32)
