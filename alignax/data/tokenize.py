"""Tokenise examples, truncate, and pad into a few fixed length buckets.

Batch layouts (numpy int32, right-padded; `completion_mask` is 1 on completion tokens including
the appended EOS, 0 on prompt and padding; logits at position t predict token t+1):

* pairs: `input_ids`, `attention_mask`, `completion_mask` `[B, 2, S]` (index 0 = chosen,
  1 = rejected, so a data-parallel shard holds whole pairs), `objective` `[B]` (-1 if none).
* sft: `input_ids`, `attention_mask`, `completion_mask` `[B, S]`.
* unpaired (KTO): the sft arrays plus `label` `[B]` and `kl_*` `[B, S]`, where row i pairs
  prompt i with completion i-1 (cycled within the batch), as TRL builds its KL estimate.

`S` is the smallest bucket that fits the longest row, so a run compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from alignax.data.errors import DataError, ErrorPolicy
from alignax.data.formats import SFT, Pair, Unpaired


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    eos_id: int
    pad_id: int

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...


def render_chat(tokenizer, messages: list, *, add_generation_prompt: bool) -> str:
    """Renders chat messages with the tokenizer's chat template, or a plain default one."""
    template = getattr(tokenizer, "apply_chat_template", None)
    if template is not None:
        return template(messages, add_generation_prompt=add_generation_prompt)
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


def _prompt_and_completion(tokenizer, prompt, completion, where, field) -> tuple[str, str]:
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    if not isinstance(prompt, list):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(completion, list):
        completion = [{"role": "assistant", "content": completion}]
    prompt_text = render_chat(tokenizer, prompt, add_generation_prompt=True)
    full = render_chat(tokenizer, prompt + completion, add_generation_prompt=False)
    if not full.startswith(prompt_text):
        path, line = where or (None, None)
        raise DataError("the chat template does not render the prompt as a prefix of the full "
                        "conversation", path=path, line=line, field=field)
    return prompt_text, full[len(prompt_text):]


@dataclasses.dataclass(frozen=True)
class Limits:
    """Token limits (TRL-style truncation: a prompt keeps its end, a completion its start)."""

    max_prompt_length: int = 256
    max_completion_length: int = 256

    @property
    def max_length(self) -> int:
        return self.max_prompt_length + self.max_completion_length


@dataclasses.dataclass
class TokenStats:
    """What tokenisation did to the data: lengths seen, and how many sequences were cut.

    Prompts longer than `max_prompt_length` keep their end, completions longer than
    `max_completion_length` keep their start (TRL's truncation); every cut is counted here
    and reported, never silent.
    """

    sequences: int = 0
    prompts_truncated: int = 0
    completions_truncated: int = 0
    longest_prompt: int = 0
    longest_completion: int = 0

    def record(self, prompt: int, completion: int, limits: Limits) -> None:
        self.sequences += 1
        self.longest_prompt = max(self.longest_prompt, prompt)
        self.longest_completion = max(self.longest_completion, completion)
        self.prompts_truncated += prompt > limits.max_prompt_length
        self.completions_truncated += completion > limits.max_completion_length

    def summary(self, limits: Limits) -> str:
        cut = []
        if self.prompts_truncated:
            cut.append(f"{self.prompts_truncated} prompts cut to data.max_prompt_length="
                       f"{limits.max_prompt_length} (longest {self.longest_prompt})")
        if self.completions_truncated:
            cut.append(f"{self.completions_truncated} completions cut to "
                       f"data.max_completion_length={limits.max_completion_length} (longest "
                       f"{self.longest_completion})")
        return (f"{self.sequences} sequences; " + ("; ".join(cut) if cut else
                "none truncated") + f" (longest prompt {self.longest_prompt}, completion "
                f"{self.longest_completion} tokens)")


def _ids(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def _encode(tokenizer, prompt, completion, limits: Limits, where, field, stats):
    """Prompt and completion ids. Plain-text prompts get the tokenizer's own special tokens
    (e.g. Llama's BOS); a chat-rendered prompt already holds them (the template writes them).
    Completions never get them (no BOS in mid-sequence) and end with one EOS: appended, unless
    a chat template already ended the turn with it (then anything after it is dropped)."""
    chat = not (isinstance(prompt, str) and isinstance(completion, str))
    prompt_text, completion_text = _prompt_and_completion(tokenizer, prompt, completion, where,
                                                          field)
    p = _ids(tokenizer, prompt_text, special=not chat) if prompt_text else []
    c = _ids(tokenizer, completion_text, special=False)
    eos = tokenizer.eos_id
    if chat and eos in c:
        c = c[:len(c) - c[::-1].index(eos)]
    else:
        c = c + [eos]
    if len(c) <= 1 and not completion_text.strip():
        path, line = where or (None, None)
        raise DataError("empty completion", path=path, line=line, field=field)
    if stats is not None:
        stats.record(len(p), len(c), limits)
    return p[len(p) - min(len(p), limits.max_prompt_length):], c[:limits.max_completion_length]


def tokenize_examples(examples: Sequence, tokenizer, limits: Limits,
                      policy: ErrorPolicy | None = None,
                      stats: TokenStats | None = None) -> list[dict]:
    """Token ids per example: `{"prompt", "chosen", "rejected"}` / `{"prompt", "completion"}`.

    `stats` (a `TokenStats`) counts lengths and truncations, one entry per sequence.
    """
    policy = policy or ErrorPolicy()
    out = []
    for ex in examples:
        try:
            if isinstance(ex, Pair):
                p, c = _encode(tokenizer, ex.prompt, ex.chosen, limits, ex.where, "chosen",
                               stats)
                _, r = _encode(tokenizer, ex.prompt, ex.rejected, limits, ex.where, "rejected",
                               stats)
                out.append({"prompt": p, "chosen": c, "rejected": r,
                            "objective": -1 if ex.objective is None else ex.objective})
            elif isinstance(ex, SFT | Unpaired):
                p, c = _encode(tokenizer, ex.prompt, ex.completion, limits, ex.where,
                               "completion", stats)
                row = {"prompt": p, "completion": c}
                if isinstance(ex, Unpaired):
                    row["label"] = ex.label
                out.append(row)
            else:
                raise TypeError(f"unknown example type {type(ex).__name__}")
        except DataError as e:
            policy.handle(e)
    return out


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `max_length`, plus `max_length` itself."""
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        b *= 2
    return tuple(out) + (max_length,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"sequence of {length} tokens is longer than the largest bucket "
                     f"{max(buckets)}")


def _rows(prompt_ids, completion_ids, width, pad_id):
    ids = np.full(width, pad_id, np.int32)
    attn = np.zeros(width, np.int32)
    comp = np.zeros(width, np.int32)
    n_p, n_c = len(prompt_ids), len(completion_ids)
    ids[:n_p + n_c] = list(prompt_ids) + list(completion_ids)
    attn[:n_p + n_c] = 1
    comp[n_p:n_p + n_c] = 1
    return ids, attn, comp


def needed_length(rows: Sequence[dict]) -> int:
    """Tokens the longest row of a batch needs (for KTO, an upper bound over the KL rows too)."""
    if "chosen" in rows[0]:
        return max(len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) for r in rows)
    need = max(len(r["prompt"]) + len(r["completion"]) for r in rows)
    if "label" in rows[0]:
        need = max(need, max(len(r["prompt"]) for r in rows)
                   + max(len(r["completion"]) for r in rows))
    return need


def collate(rows: Sequence[dict], *, pad_id: int, buckets: Sequence[int],
            width: int | None = None, kl_previous: Sequence[int] | None = None) -> dict:
    """Pads tokenised rows into one fixed-shape batch (see the module docstring for layouts).

    `width` (a bucket chosen from the global batch) overrides the choice from these rows.
    `kl_previous`: unpaired (KTO) rows pair prompt i with completion i-1 for the KL reference
    point, cycled within the batch; on several processes each holds a slice of the global
    batch, and `kl_previous` is the completion of the global row before its slice, so every
    process pairs as one process would.
    """
    width = width or bucket_for(needed_length(rows), buckets)
    if "chosen" in rows[0]:
        arrays = [[_rows(r["prompt"], r[k], width, pad_id) for k in ("chosen", "rejected")]
                  for r in rows]
        stack = lambda i: np.stack([np.stack([pair[0][i], pair[1][i]]) for pair in arrays])
        batch = {"input_ids": stack(0), "attention_mask": stack(1), "completion_mask": stack(2),
                 "objective": np.asarray([r["objective"] for r in rows], np.int32)}
        return batch
    built = [_rows(r["prompt"], r["completion"], width, pad_id) for r in rows]
    batch = {k: np.stack([b[i] for b in built])
             for i, k in enumerate(("input_ids", "attention_mask", "completion_mask"))}
    if "label" in rows[0]:
        # KL pairs: prompt i with completion i-1, cycled within the batch.
        shifted = [rows[i - 1]["completion"] for i in range(len(rows))]
        if kl_previous is not None:
            shifted[0] = kl_previous
        batch["label"] = np.asarray([r["label"] for r in rows], bool)
        kl = [_rows(r["prompt"], c, width, pad_id) for r, c in zip(rows, shifted)]
        for i, k in enumerate(("kl_input_ids", "kl_attention_mask", "kl_completion_mask")):
            batch[k] = np.stack([b[i] for b in kl])
    return batch
