"""Precomputed reference log-probs, cached on disk under a fingerprint.

DPO-family runs that set `reference.precompute=True` score every training and eval pair with
the frozen reference **once**, store the `[N, 2]` summed log-probs in
`CACHE_DIR/ref_logps-<fingerprint>.npz`, and train without a reference copy in memory. The
fingerprint hashes what the numbers depend on: the token ids of every row (dataset, tokenizer
and length limits), the reference weights, and the LD-DPO weighting; any change makes a new
file, and an unchanged rerun reuses the old one.

`fingerprint`, `padded_batches` and `load_or_compute` are shared with the teacher cache of the
distillation trainer (`train/distill_data.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import jax
import numpy as np

from alignax.data.tokenize import bucket_for, collate


def fingerprint(rows: Sequence[dict], params, *, extra: dict | None = None) -> str:
    """A hex digest of the rows' token ids, the parameter values and `extra` settings."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row["prompt"], row["chosen"], row["rejected"]]).encode())
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
    compiles once. Precomputing passes over the data (reference log-probs, teacher top-k)
    share it.
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


def atomic_write(path: str, write) -> None:
    """`write(tmp)` then an atomic rename to `path`: a killed run never leaves half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp" + os.path.splitext(path)[1]
    write(tmp)
    os.replace(tmp, path)


def load_or_compute(path: str, compute, *, valid, what: str, log=print) -> dict[str, np.ndarray]:
    """The arrays stored at `path` (`.npz`) if there and `valid(arrays)`, else `compute()`d
    and stored (atomically). Logs "`what`: reusing PATH" or "`what`: computed -> PATH".

    Args:
      path: the cache file, named by a `fingerprint` of everything the arrays depend on.
      compute: `() -> {name: np.ndarray}`.
      valid: `(arrays) -> bool`, e.g. the row count matches (else the file is recomputed).
    """
    if os.path.exists(path):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        if arrays and valid(arrays):
            log(f"{what}: reusing {path}")
            return arrays
    arrays = compute()
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    log(f"{what}: computed -> {path}")
    return arrays


def compute_ref_logps(ref_fn, ref_params, rows: Sequence[dict], *, pad_id: int,
                      buckets: Sequence[int], batch_size: int) -> np.ndarray:
    """Scores every row with `ref_fn(ref_params, batch) -> [b, 2]`; returns `[N, 2]` float32."""
    out = [np.asarray(ref_fn(ref_params, batch), np.float32)[:n] for n, batch in
           padded_batches(rows, pad_id=pad_id, buckets=buckets, batch_size=batch_size)]
    return np.concatenate(out, axis=0)


def cached_ref_logps(ref_fn, ref_params, rows: Sequence[dict], *, cache_dir: str, pad_id: int,
                     buckets: Sequence[int], batch_size: int, extra: dict | None = None,
                     log=print) -> np.ndarray:
    """`[N, 2]` reference log-probs of `rows`, from the cache or computed and stored."""
    key = fingerprint(rows, ref_params, extra=extra)
    compute = lambda: {"ref_logps": compute_ref_logps(
        ref_fn, ref_params, rows, pad_id=pad_id, buckets=buckets, batch_size=batch_size)}
    arrays = load_or_compute(os.path.join(cache_dir, f"ref_logps-{key}.npz"), compute,
                             valid=lambda a: a.get("ref_logps", np.zeros(0)).shape == (
                                 len(rows), 2),
                             what=f"reference log-probs ({len(rows)} pairs)", log=log)
    return arrays["ref_logps"]


def attach(rows: Sequence[dict], values: np.ndarray) -> list[dict]:
    """Rows with a `ref_logps` `[2]` entry each (collated into `batch["ref_logps"]` `[B, 2]`)."""
    return [dict(row, ref_logps=values[i]) for i, row in enumerate(rows)]
