"""Verifiable reward functions over decoded text, and length / format shaping over arrays.

A reward function has TRL's signature

    fn(prompts: list, completions: list[str], **kwargs) -> list[float | None]

one value per completion, None where it cannot score one (the trainer turns None into NaN and
leaves it out of the group statistics). kwargs carry what the trainer knows about each
completion: `answers` (the dataset's reference answer, or None), `terminated` (ended with a
stop token), `lengths` (completion tokens). Functions must ignore kwargs they do not use.

Shaping terms work on arrays (no text) and are added to the weighted reward sum: a linear
length penalty, DAPO's soft over-long punishment, and TRL's missing-EOS penalty.

References: TRL 1.16 `GRPOTrainer` reward functions; DAPO (Yu et al. 2025, arXiv 2503.14476,
Eq. 13, over-long reward shaping); TRL `PPOConfig.missing_eos_penalty`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp

from alignax.data import arithmetic

RewardFn = Callable[..., list]


def arithmetic_correct(prompts, completions, **_) -> list[float | None]:
    """1.0 when the completion's leading integer answers the arithmetic prompt, else 0.0.

    None for a prompt that is not `a<op>b=` (unscorable).
    """
    out = []
    for prompt, completion in zip(prompts, completions):
        try:
            out.append(float(arithmetic.is_correct(prompt, completion)))
        except (ValueError, TypeError):
            out.append(None)
    return out


def final_answer_correct(prompts, completions, *, result_end: str = "</result>", **_
                         ) -> list[float | None]:
    """`arithmetic_correct` on the text after the episode's last tool result (multi-turn
    episodes: the answer follows the calculator's `<result>...</result>`; without a result,
    the whole completion). A completion that ends on a tool result has no answer: 0.

    >>> final_answer_correct(["12+7="], ["<tool>calc(12+7)</tool><result>19</result>19"])
    [1.0]
    """
    tails = [c.rsplit(result_end, 1)[-1] for c in completions]
    return arithmetic_correct(prompts, tails)


def _normalise(text: str) -> str:
    return " ".join(str(text).split())


def answer_match(prompts, completions, *, answers=None, **_) -> list[float | None]:
    """1.0 when the completion equals the reference answer (whitespace-normalised), else 0.0.

    A generic verifiable reward for datasets that carry an answer; None where there is none.
    """
    answers = answers if answers is not None else [None] * len(completions)
    return [None if a is None or not isinstance(a, str)
            else float(_normalise(c) == _normalise(a)) for c, a in zip(completions, answers)]


def regex_format(pattern: str) -> RewardFn:
    """A format reward: 1.0 when the whole completion matches `pattern` (`re.fullmatch`)."""
    compiled = re.compile(pattern, re.DOTALL)

    def reward(prompts, completions, **_):
        return [float(bool(compiled.fullmatch(c))) for c in completions]

    reward.__name__ = f"regex_format({pattern!r})"
    return reward


integer_format = regex_format(r"\s*-?\d+\s*")
"""1.0 when the completion is a bare integer (the arithmetic task's format)."""


def brevity(prompts, completions, **_) -> list[float]:
    """-(characters in the completion) / 10: a second objective that prefers short answers."""
    return [-len(c) / 10.0 for c in completions]


REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "arithmetic_correct": arithmetic_correct,
    "final_answer_correct": final_answer_correct,
    "answer_match": answer_match,
    "integer_format": integer_format,
    "brevity": brevity,
}
"""Config name -> reward function (config `reward.functions`)."""


def get_reward_function(name: str) -> RewardFn:
    """A reward function by config name: a built-in (`REWARD_FUNCTIONS`), `regex:PATTERN` for
    a format reward, or `package.module:function`, your own function, imported from the
    working directory or `PYTHONPATH`.

    Your function takes TRL's signature: `fn(prompts, completions, **kwargs) -> list`, one
    float per completion (or None where it cannot score one), `kwargs` as the module
    docstring lists (accept `**kwargs` for the ones you do not use).
    """
    if name.startswith("regex:"):
        return regex_format(name[len("regex:"):])
    if ":" in name:
        return _import(name)
    try:
        return REWARD_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"config field 'reward.functions': unknown reward function {name!r}; "
                         f"known: {', '.join(sorted(REWARD_FUNCTIONS))}, regex:PATTERN, or "
                         "package.module:function") from None


def _import(name: str) -> RewardFn:
    from alignax.config import import_object

    return import_object(name, "reward.functions")


# ---------------------------------------------------------------------------------------------
# Shaping on arrays.

def length_penalty(lengths, *, coef: float) -> jax.Array:
    """-coef x length per completion.

    Args: lengths `[...]` completion tokens. Returns `[...]`.
    """
    return -coef * jnp.asarray(lengths, jnp.float32)


def overlong_penalty(lengths, *, max_length: int, buffer: int) -> jax.Array:
    """DAPO soft over-long punishment (Yu et al. 2025, Eq. 13).

    0 up to `max_length - buffer` tokens, then falling linearly to -1 at `max_length`, and -1
    beyond.

    Args: lengths `[...]`; max_length L_max; buffer L_cache (> 0).
    Returns: `[...]` penalty in [-1, 0].
    """
    lengths = jnp.asarray(lengths, jnp.float32)
    start = max_length - buffer
    return jnp.clip((start - lengths) / buffer, -1.0, 0.0)


def missing_eos_penalty(terminated, *, penalty: float) -> jax.Array:
    """-penalty for completions that did not end with a stop token (TRL
    `missing_eos_penalty`), 0 otherwise.

    Args: terminated `[...]` bool. Returns `[...]`.
    """
    return jnp.where(jnp.asarray(terminated, bool), 0.0, -penalty)
