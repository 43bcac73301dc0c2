"""Data kinds: the examples an algorithm trains on ("sft", "pairs", "unpaired"), made from
what a file holds where the conversion is well defined (pairs -> SFT on the chosen answers,
pairs -> KTO's desirable / undesirable rows), else a `DataError` naming the file and line."""

from __future__ import annotations

from collections.abc import Sequence

from alignax.data.errors import DataError
from alignax.data.formats import SFT, Pair, Unpaired


# What each data kind can be made from: a conversion, or None (an error).
def _to_sft(ex):
    if isinstance(ex, SFT):
        return ex
    if isinstance(ex, Pair):  # SFT on the preferred answers (e.g. HH's chosen text)
        return SFT(ex.prompt, ex.chosen, ex.where)
    return SFT(ex.prompt, ex.completion, ex.where) if ex.label else None


def _to_unpaired(ex):
    if isinstance(ex, Unpaired):
        return [ex]
    if isinstance(ex, Pair):  # TRL's unpairing: chosen desirable, rejected undesirable
        return [Unpaired(ex.prompt, ex.chosen, True, ex.where),
                Unpaired(ex.prompt, ex.rejected, False, ex.where)]
    raise _kind_error(ex, "unpaired")


def _kind_error(ex, kind):
    path, line = ex.where or (None, None)
    have = {SFT: "prompt/completion (SFT)", Unpaired: "prompt/completion/label",
            Pair: "preference pairs"}[type(ex)]
    need = {"pairs": "preference pairs (prompt/chosen/rejected, HH dialogues or conversations)",
            "unpaired": "prompt/completion/label rows or preference pairs",
            "sft": "prompt/completion, chat messages or preference pairs"}[kind]
    return DataError(f"this algorithm trains on {need}; the data holds {have}", path=path,
                          line=line, skippable=False)


def as_kind(examples: Sequence, kind: str) -> list:
    """Examples as the data kind an algorithm trains on ("sft", "pairs", "unpaired"), converted
    where that is well defined (pairs -> SFT on chosen, pairs -> KTO rows), else a DataError
    naming the file and line."""
    if kind == "sft":
        return [y for y in map(_to_sft, examples) if y is not None]
    if kind == "unpaired":
        return [y for ex in examples for y in _to_unpaired(ex)]
    for ex in examples:
        if not isinstance(ex, Pair):
            raise _kind_error(ex, kind)
    return list(examples)
