"""Arrays computed once from frozen parameters, cached on disk under a fingerprint.

Reference log-probs (`reference.precompute=True`), a teacher's top-k distributions
(`teacher.precompute=True`) and a student's own samples (ADPA) are all "run frozen parameters
over every row once, store the result": `cached_arrays` and `cached_json` do it. The file name
carries a fingerprint of what the numbers depend on (the token ids of every row, hence the
dataset, tokenizer and length limits; every parameter value; the settings in `extra`): any
change makes a new file, and an unchanged rerun (or a resumed run) reuses the old one. Files
are written atomically, so a killed run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from alignax import distributed
from alignax.data.tokenize import bucket_for, collate
from alignax.metrics import progress_bar


def _row_tokens(row: dict) -> list:
    if "chosen" in row:
        return [row["prompt"], row["chosen"], row["rejected"]]
    return [row["prompt"], row["completion"]]


def fingerprint(rows: Sequence[dict], params, *, extra: dict | None = None) -> str:
    """A hex digest of the rows' token ids, the parameter values and `extra` settings."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(_row_tokens(row)).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        arr = np.asarray(jax.device_get(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def padded_batches(rows: Sequence[dict], *, pad_id: int, buckets: Sequence[int],
                   batch_size: int):
    """Yields `(n, batch)` over `rows` in order: collated batches of exactly `batch_size` rows.

    The last partial batch is padded with copies of its first row (`n` = how many rows are
    real; drop the rest of the outputs), so every call has the same batch size and each bucket
    compiles once.
    """
    for start in range(0, len(rows), batch_size):
        chunk = list(rows[start:start + batch_size])
        n = len(chunk)
        chunk += [chunk[0]] * (batch_size - n)
        width = bucket_for(max(len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"]))
                               for r in chunk), buckets)
        batch = collate(chunk, pad_id=pad_id, buckets=buckets, width=width)
        batch.pop("objective", None)
        yield n, batch


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` then an atomic rename to `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp" + os.path.splitext(path)[1]
    write(tmp)
    os.replace(tmp, path)


def _load_or_compute(path: str, compute, *, load, save, valid, what: str, log) -> Any:
    if os.path.exists(path):
        value = load(path)
        if value is not None and valid(value):
            log(f"{what}: reusing {path}")
            return value
    value = compute()
    if distributed.is_primary():  # one writer per shared workdir
        atomic_write(path, lambda tmp: save(value, tmp))
    log(f"{what}: computed -> {path}")
    return value


def _load_npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files} or None


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save_json(value, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def compute_arrays(fn, params, rows: Sequence[dict], *, pad_id: int, buckets: Sequence[int],
                   batch_size: int, desc: str = "", log=None) -> dict[str, np.ndarray]:
    """Runs `fn(params, batch) -> {name: [b, ...]}` over `rows` in order; `{name: [N, ...]}`
    (with a progress bar, or start / end lines in `log`)."""
    out: dict[str, list] = {}
    batches = padded_batches(rows, pad_id=pad_id, buckets=buckets, batch_size=batch_size)
    for n, batch in progress_bar(batches, total=-(-len(rows) // batch_size), desc=desc,
                                 log=log):
        for k, v in fn(params, batch).items():
            out.setdefault(k, []).append(np.asarray(jax.device_get(v))[:n])
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}


def cached_arrays(fn, params, rows: Sequence[dict], *, name: str, cache_dir: str, pad_id: int,
                  buckets: Sequence[int], batch_size: int, extra: dict | None = None,
                  what: str = "", log=print) -> dict[str, np.ndarray]:
    """`compute_arrays`, stored in / read from `cache_dir/{name}-{fingerprint}.npz`.

    The fingerprint covers the rows' token ids, every value of `params` and `extra`; a stored
    file is reused only if it holds one entry per row for every array.
    """
    key = fingerprint(rows, params, extra=extra)
    return _load_or_compute(
        os.path.join(cache_dir, f"{name}-{key}.npz"),
        lambda: compute_arrays(fn, params, rows, pad_id=pad_id, buckets=buckets,
                               batch_size=batch_size, desc=what or name, log=log),
        load=_load_npz, save=lambda v, tmp: np.savez(tmp, **v),
        valid=lambda a: all(len(v) == len(rows) for v in a.values()),
        what=what or f"{name} ({len(rows)} rows)", log=log)


def cached_json(path: str, compute: Callable[[], Any], *, valid: Callable[[Any], bool],
                what: str, log=print) -> Any:
    """The JSON value stored at `path` if there and `valid`, else `compute()`d and stored."""
    return _load_or_compute(path, compute, load=_load_json, save=_save_json, valid=valid,
                            what=what, log=log)
