"""Built-in synthetic task with a verifiable answer: two-operand arithmetic, `"12+7="` -> `"19"`.

It makes SFT data with a controllable error rate, preference pairs (the correct answer chosen,
a wrong one rejected), unpaired KTO rows, and scores completions, so that every algorithm can be
shown to move task accuracy offline, on CPU, with a byte-level tokenizer.
"""

from __future__ import annotations

import json
import re

import numpy as np

from alignax.data.formats import SFT, Pair, Unpaired

_PROMPT = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def problems(n: int, *, seed: int, max_operand: int = 50, ops: str = "+") -> list[tuple[str, str]]:
    """`n` (prompt, answer) problems, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(0, max_operand + 1, size=2))
        op = ops[int(rng.integers(len(ops)))]
        out.append((f"{a}{op}{b}=", str(_OPS[op](a, b))))
    return out


ERROR_OFFSETS = (-10, -2, -1, 1, 2, 10)


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


def is_correct(prompt: str, completion: str) -> bool:
    """True when the completion's leading integer equals the prompt's answer."""
    m = _PROMPT.match(prompt)
    if not m:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    got = re.match(r"\s*(-?\d+)", completion)
    return bool(got) and int(got.group(1)) == _OPS[op](a, b)


def accuracy(prompts, completions) -> float:
    """Fraction of completions that answer their prompt correctly."""
    if not prompts:
        return 0.0
    return float(np.mean([is_correct(p, c) for p, c in zip(prompts, completions)]))


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
