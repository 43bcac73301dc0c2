"""Record sources: local JSONL / JSON / Parquet files, gzipped or not, one file or a directory
of shards (TFDS array_record in `tfds.py`).

A source yields `(where, record)`: `where` is `(path, line)` (1-based line for JSONL, record
number for a JSON array, row number for Parquet) so that every later error can name the file
and line. Nothing is fetched from the network.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator

from alignax.data.errors import DataError, ErrorPolicy

Where = tuple[str, int]


def _open(path: str):
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror}", path=path) from None


def read_jsonl(path: str, *, policy: ErrorPolicy | None = None) -> Iterator[tuple[Where, dict]]:
    """Yields `((path, line), record)` for each non-blank line of a JSON-lines file (`.gz`
    too), or for each element of a file holding one JSON array of objects (`.json`).

    Truncated or invalid JSON, and lines that are not JSON objects, raise `DataError` naming
    the file and line (or are skipped and counted under `policy.on_error == "skip"`).
    """
    policy = policy or ErrorPolicy()
    with _open(path) as f:
        try:
            head = f.read(4096).lstrip()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read file: {e}", path=path) from None
        f.seek(0)
        if head.startswith("["):
            yield from _json_array(path, f, policy)
            return
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


def _json_array(path: str, f, policy: ErrorPolicy) -> Iterator[tuple[Where, dict]]:
    try:
        records = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                        path=path) from None
    for i, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            policy.handle(DataError(f"expected a JSON object, got {type(record).__name__}",
                                    path=path, line=i))
            continue
        yield (path, i), record


SOURCES = {".jsonl": read_jsonl, ".json": read_jsonl, ".parquet": read_parquet}


def _extension(path: str) -> str:
    base = path[:-3] if path.endswith(".gz") else path
    return os.path.splitext(base)[1].lower()


def read_records(path: str, *, policy: ErrorPolicy | None = None) -> list[tuple[Where, dict]]:
    """All records of a local file, chosen by extension (`.jsonl`, `.json`, `.parquet`, the
    first two also gzipped, `.jsonl.gz`), of every such file in a directory (shards, in name
    order), or of a TFDS array_record dataset written as `tfds:NAME[/SPLIT]@DATA_DIR`."""
    if path.startswith("tfds:"):
        from alignax.data import tfds

        return list(tfds.records_from(path))
    if os.path.isdir(path):
        shards = sorted(os.path.join(path, n) for n in os.listdir(path)
                        if _extension(n) in SOURCES and not n.startswith("."))
        if not shards:
            raise DataError(f"no data files ({', '.join(sorted(SOURCES))}, optionally .gz) in "
                            "the directory", path=path)
        return [r for shard in shards for r in read_records(shard, policy=policy)]
    if not os.path.exists(path):
        raise DataError("no such file", path=path)
    ext = _extension(path)
    if ext not in SOURCES or (ext == ".parquet" and path.endswith(".gz")):
        raise DataError(f"unknown data file type {os.path.basename(path)!r}; expected .jsonl, "
                        ".json (optionally .gz) or .parquet", path=path)
    reader = SOURCES[ext]
    if reader is read_jsonl:
        return list(read_jsonl(path, policy=policy))
    return list(reader(path))
