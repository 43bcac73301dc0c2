"""Multi-objective preference data: vector preferences and their routing to objectives.

A compared pair `(prompt, a, b)` carries one preference per objective, +1 / 0 / -1. As in the
MAH-DPO reference code (one dataset per objective; a pair labelled for several objectives
appears once per objective), `expand_vector_pair` emits one `Pair` per objective with a
non-zero preference, oriented so that the preferred completion is `chosen`, with
`objective=k`; an objective that ties is left out. `expand_records` does the same for JSONL
records whose `objective` is a list (`[0, "round"]`: chosen preferred on each) or that carry
`preferences` (a list of +1 / 0 / -1, one per objective).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from alignax.data.errors import DataError
from alignax.data.formats import Pair


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
