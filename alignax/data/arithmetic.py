"""The built-in task with a verifiable answer: two-operand arithmetic, `"12+7="` -> `"19"`.

It makes SFT data with a controllable error rate, preference pairs (the correct answer chosen,
a wrong one rejected), unpaired KTO rows, and scores completions, so that every algorithm can
be shown to move task accuracy offline, on CPU, with a byte-level tokenizer.

A second objective makes it a two-objective task (MAH-DPO): objective 0, `correct`, the
completion's leading integer equals the answer; objective 1, `round`, it is a multiple of ten
(`"20"` for `12+7=`, a round estimate). They agree when the answer is itself round (`"20"`
beats `"21"` on both) and conflict otherwise (`"19"` beats `"20"` on correctness, `"20"` beats
`"19"` on roundness). A byte-level model learns either rule from one token (the last digit).

Scorers come twice and agree exactly: on text (`is_correct`, `is_round`, `score`, read with
ASCII rules, `\\s*(-?[0-9]+)`) and on sampled byte-token ids under `jax.jit`
(`token_scores`), so a sweep over head weights can score inside one compiled program.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignax.data.formats import SFT, Pair, Unpaired
from alignax.data.multiobjective import expand_vector_pair

_PROMPT = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*$", re.ASCII)
_LEADING = re.compile(r"\s*(-?\d+)", re.ASCII)
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

OBJECTIVES = ("correct", "round")
"""The two-objective task's objective names, in head order."""

ERROR_OFFSETS = (-10, -2, -1, 1, 2, 10)


def problems(n: int, *, seed: int, max_operand: int = 50, ops: str = "+") -> list[tuple[str, str]]:
    """`n` (prompt, answer) problems, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(0, max_operand + 1, size=2))
        op = ops[int(rng.integers(len(ops)))]
        out.append((f"{a}{op}{b}=", str(_OPS[op](a, b))))
    return out


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
    """Objective 0 (the task's metric): the leading integer equals the prompt's answer.

    Raises ValueError for a prompt that is not arithmetic, whatever the completion (so a
    reward built on it cannot score, rather than score 0).
    """
    answer = answer_of(prompt)
    got = leading_integer(completion)
    return got is not None and got == answer


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


def preference_vector(prompt: str, a: str, b: str,
                      objectives: Sequence[str] = OBJECTIVES) -> tuple[int, ...]:
    """Per objective, +1 if `a` scores higher than `b`, -1 if lower, 0 on a tie."""
    return tuple(int(np.sign(int(SCORERS[k](prompt, a)) - int(SCORERS[k](prompt, b))))
                 for k in objectives)


def accuracy(prompts: Sequence[str], completions: Sequence[str]) -> float:
    """Fraction of completions that answer their prompt correctly (0 for no prompts)."""
    if not len(prompts):
        return 0.0
    return float(np.mean([is_correct(p, c) for p, c in zip(prompts, completions, strict=True)]))


# --------------------------------------------------------------------------- data

def _wrong(answer: str, rng, offsets=ERROR_OFFSETS) -> str:
    return str(int(answer) + int(rng.choice(offsets)))


def sft_examples(n: int, *, seed: int, error_rate: float = 0.0,
                 error_offsets=ERROR_OFFSETS, **kw) -> list[SFT]:
    """SFT rows; a fraction `error_rate` carry a wrong answer (answer + one of `error_offsets`).

    `error_offsets=(1,)` models a systematic annotator error (always one too many) that SFT
    learns and preference data can correct.
    """
    rng = np.random.default_rng([seed, 1])
    return [SFT(p, _wrong(a, rng, error_offsets) if rng.random() < error_rate else a)
            for p, a in problems(n, seed=seed, **kw)]


def preference_pairs(n: int, *, seed: int, error_offsets=ERROR_OFFSETS, **kw) -> list[Pair]:
    """Pairs with the correct answer chosen and a nearby wrong answer rejected."""
    rng = np.random.default_rng([seed, 2])
    return [Pair(p, a, _wrong(a, rng, error_offsets)) for p, a in problems(n, seed=seed, **kw)]


def unpaired_examples(n: int, *, seed: int, error_offsets=ERROR_OFFSETS,
                      **kw) -> list[Unpaired]:
    """KTO rows: half correct (desirable), half wrong (undesirable)."""
    rng = np.random.default_rng([seed, 3])
    out = []
    for i, (p, a) in enumerate(problems(n, seed=seed, **kw)):
        good = i % 2 == 0
        out.append(Unpaired(p, a if good else _wrong(a, rng, error_offsets), good))
    return out


def multiobjective_pairs(n: int, *, seed: int, max_operand: int = 20,
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
      max_operand, ops: the arithmetic problems (`problems`).
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


def write_jsonl(examples, path: str) -> None:
    """Writes examples in the record format the loaders read back."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            if isinstance(ex, Pair):
                rec = {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}
                if ex.objective is not None:
                    rec["objective"] = ex.objective
            elif isinstance(ex, Unpaired):
                rec = {"prompt": ex.prompt, "completion": ex.completion, "label": ex.label}
            else:
                rec = {"prompt": ex.prompt, "completion": ex.completion}
            f.write(json.dumps(rec) + "\n")
