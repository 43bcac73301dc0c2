"""Record formats -> canonical examples, auto-detected or chosen by name.

| format        | fields                                                     | example type |
|---------------|------------------------------------------------------------|--------------|
| `pairs`       | `prompt`, `chosen`, `rejected` (strings or chat messages)  | `Pair`       |
| `hh`          | `chosen`, `rejected` full dialogues (Anthropic-HH text, or  | `Pair`       |
|               | message lists as UltraFeedback): shared prefix = prompt     |              |
| `chat`        | `messages` (list of `{role, content}`), last one assistant  | `SFT`        |
| `sft`         | `prompt`, `completion`                                     | `SFT`        |
| `unpaired`    | `prompt`, `completion`, `label` (bool)                      | `Unpaired`   |

Any pair may carry `objective` (an int index, or a name listed in `objectives`) for MAH-DPO.
Chat-message prompts and completions are kept as message lists and rendered by the tokenizer's
chat template when tokenised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from alignax.data.errors import DataError, ErrorPolicy

Text = str | list  # a string, or a list of chat messages


@dataclasses.dataclass(frozen=True)
class Pair:
    prompt: Text
    chosen: Text
    rejected: Text
    objective: int | None = None
    where: tuple[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class SFT:
    prompt: Text
    completion: Text
    where: tuple[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class Unpaired:
    prompt: Text
    completion: Text
    label: bool
    where: tuple[str, int] | None = None


def _err(where, field, message):
    path, line = where if where else (None, None)
    return DataError(message, path=path, line=line, field=field)


def _text(record: dict, field: str, where, *, allow_messages: bool = True,
          allow_empty: bool = False) -> Text:
    if field not in record:
        raise _err(where, field, "missing field")
    value = record[field]
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise _err(where, field, "empty text")
        return value
    if allow_messages and isinstance(value, list):
        _check_messages(value, where, field)
        return value
    kind = "a string or a list of chat messages" if allow_messages else "a string"
    raise _err(where, field, f"expected {kind}, got {type(value).__name__}")


def _check_messages(messages: list, where, field: str) -> None:
    if not messages:
        raise _err(where, field, "empty message list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _err(where, f"{field}[{i}]", "a chat message needs 'role' and 'content'")
        if not isinstance(m["content"], str):
            raise _err(where, f"{field}[{i}].content",
                       f"expected a string, got {type(m['content']).__name__}")


def _objective(record: dict, where, objectives: Sequence[str] | None) -> int | None:
    if "objective" not in record or record["objective"] is None:
        return None
    value = record["objective"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _err(where, "objective", f"expected an int or a name, got {type(value).__name__}")
    if isinstance(value, str):
        if not objectives or value not in objectives:
            raise _err(where, "objective", f"unknown objective {value!r}; "
                       f"known: {list(objectives or [])}")
        return list(objectives).index(value)
    if objectives and not 0 <= value < len(objectives):
        raise _err(where, "objective", f"index {value} out of range for {len(objectives)} "
                   "objectives")
    return value


def parse_pairs(record, where, objectives=None) -> Pair:
    prompt = _text(record, "prompt", where, allow_empty=True)
    return Pair(prompt, _text(record, "chosen", where), _text(record, "rejected", where),
                _objective(record, where, objectives), where)


HH_ASSISTANT = "\n\nAssistant:"


def _conversation_pair(record, where, objectives) -> Pair:
    """Chosen and rejected conversations (message lists): the prompt is the shared messages
    before the final assistant turn, which is the completion (UltraFeedback-style rows)."""
    chosen, rejected = _text(record, "chosen", where), _text(record, "rejected", where)
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise _err(where, "rejected" if isinstance(chosen, list) else "chosen",
                   "chosen and rejected must both be message lists or both be text")
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant" or not conv[-1]["content"].strip():
            raise _err(where, field, "the last message must be a non-empty assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise _err(where, "rejected", "chosen and rejected conversations differ before their "
                   "last assistant turn (the shared prompt)")
    return Pair(chosen[:-1], chosen[-1:], rejected[-1:], _objective(record, where, objectives),
                where)


def parse_hh(record, where, objectives=None) -> Pair:
    """Dialogue pairs: Anthropic-HH text (the prompt is the shared prefix up to the last
    `Assistant:`), or conversations as message lists (the prompt is the shared messages)."""
    if isinstance(record.get("chosen"), list) or isinstance(record.get("rejected"), list):
        return _conversation_pair(record, where, objectives)
    chosen = _text(record, "chosen", where, allow_messages=False)
    rejected = _text(record, "rejected", where, allow_messages=False)
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise _err(where, "chosen", f"no {HH_ASSISTANT.strip()!r} turn in the dialogue")
    cut += len(HH_ASSISTANT)
    if rejected[:cut] != chosen[:cut]:
        raise _err(where, "rejected", "chosen and rejected dialogues do not share the prompt "
                   "up to the last 'Assistant:' turn")
    if not chosen[cut:].strip() or not rejected[cut:].strip():
        raise _err(where, "chosen" if not chosen[cut:].strip() else "rejected",
                   "empty completion after the last 'Assistant:' turn")
    return Pair(chosen[:cut], chosen[cut:], rejected[cut:], _objective(record, where, objectives),
                where)


def parse_chat(record, where, objectives=None) -> SFT:
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise _err(where, "messages", "expected a list of chat messages")
    _check_messages(messages, where, "messages")
    if messages[-1]["role"] != "assistant":
        raise _err(where, "messages", "the last message must be the assistant's (the target)")
    if not messages[-1]["content"].strip():
        raise _err(where, "messages", "empty assistant completion")
    return SFT(messages[:-1], [messages[-1]], where)


def parse_sft(record, where, objectives=None) -> SFT:
    return SFT(_text(record, "prompt", where, allow_empty=True),
               _text(record, "completion", where), where)


def parse_unpaired(record, where, objectives=None) -> Unpaired:
    label = record.get("label")
    if "label" not in record:
        raise _err(where, "label", "missing field")
    if not isinstance(label, bool):
        raise _err(where, "label", f"expected true/false, got {type(label).__name__}")
    return Unpaired(_text(record, "prompt", where, allow_empty=True),
                    _text(record, "completion", where), label, where)


FORMATS: dict[str, Callable[..., Any]] = {
    "pairs": parse_pairs,
    "hh": parse_hh,
    "chat": parse_chat,
    "sft": parse_sft,
    "unpaired": parse_unpaired,
}


def detect_format(record: dict, where=None) -> str:
    """Names the format a record is in, from its fields."""
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        return "pairs" if "prompt" in keys else "hh"
    if "messages" in keys:
        return "chat"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if {"prompt", "completion"} <= keys:
        return "sft"
    raise _err(where, None, f"cannot tell the format from fields {sorted(keys)}; expected one "
               "of: prompt/chosen/rejected, chosen/rejected (HH), messages, "
               "prompt/completion[/label]")


def parse_records(records: Iterable[tuple[tuple[str, int], dict]], *, fmt: str = "auto",
                  objectives: Sequence[str] | None = None,
                  policy: ErrorPolicy | None = None) -> list:
    """Parses `(where, record)` rows into examples; the format is detected from the first row.

    Every row must be in the same format. Malformed rows raise `DataError` naming file, line and
    field, or are skipped and counted when `policy.on_error == "skip"`.
    """
    policy = policy or ErrorPolicy()
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"data.format must be 'auto' or one of {sorted(FORMATS)}, got {fmt!r}")
    out = []
    for where, record in records:
        try:
            if fmt == "auto":
                fmt = detect_format(record, where)
            out.append(FORMATS[fmt](record, where, objectives))
        except DataError as e:
            policy.handle(e)
    return out
