"""Record sources: local JSONL and Parquet files (TFDS array_record in `tfds.py`).

A source yields `(where, record)`: `where` is `(path, line)` (1-based line for JSONL, row
number for Parquet) so that every later error can name the file and line. Nothing is fetched
from the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from alignax.data.errors import DataError, ErrorPolicy

Where = tuple[str, int]


def read_jsonl(path: str, *, policy: ErrorPolicy | None = None) -> Iterator[tuple[Where, dict]]:
    """Yields `((path, line), record)` for each non-blank line of a JSON-lines file.

    Truncated or invalid JSON, and lines that are not JSON objects, raise `DataError` naming
    the file and line (or are skipped and counted under `policy.on_error == "skip"`).
    """
    policy = policy or ErrorPolicy()
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror}", path=path) from None
    with f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                policy.handle(DataError(f"invalid JSON: {e.msg} (column {e.colno})",
                                        path=path, line=line_no))
                continue
            if not isinstance(record, dict):
                policy.handle(DataError(f"expected a JSON object, got {type(record).__name__}",
                                        path=path, line=line_no))
                continue
            yield (path, line_no), record


def read_parquet(path: str) -> Iterator[tuple[Where, dict]]:
    """Yields `((path, row), record)` for each row of a Parquet file (needs pyarrow)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'alignax[parquet]'",
                        path=path) from None
    try:
        table = parquet.read_table(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read Parquet file: {e}", path=path) from None
    for row_no, record in enumerate(table.to_pylist(), start=1):
        yield (path, row_no), record


SOURCES = {".jsonl": read_jsonl, ".json": read_jsonl, ".parquet": read_parquet}


def read_records(path: str, *, policy: ErrorPolicy | None = None) -> list[tuple[Where, dict]]:
    """All records of a local file, chosen by extension (`.jsonl`, `.json`, `.parquet`), or of
    a TFDS array_record dataset written as `tfds:NAME[/SPLIT]@DATA_DIR`."""
    if path.startswith("tfds:"):
        from alignax.data import tfds

        return list(tfds.records_from(path))
    if not os.path.exists(path):
        raise DataError("no such file", path=path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in SOURCES:
        raise DataError(f"unknown data file type {ext!r}; expected one of {sorted(SOURCES)}",
                        path=path)
    reader = SOURCES[ext]
    if reader is read_jsonl:
        return list(read_jsonl(path, policy=policy))
    return list(reader(path))
