"""Exact sequence packing: several tokenised rows per batch row, for SFT and preference pairs.

A packed batch holds **the same examples** as `BatchIterator`'s batch at the same step (same
seed, same shuffled order, `train.batch_size` examples), laid out in fewer, fuller rows. Every
example is one or two *segments* of a row; tokens attend only within their segment and
positions restart at 0 in each, so per-example log-probs, and hence every loss that is a
function of them, equal the unpacked batch's (up to float summation order).

Layouts (numpy int32; B examples (pairs / rows) per batch, R packed rows of W tokens, K
example slots per row; this process's slice on a multi-host run):

* per token `[R, W]`: `input_ids`, `attention_mask` (1 = real token), `completion_mask` (1 on
  completion tokens incl. EOS), `segment_ids` (1, 2, ... within each row, 0 = padding) and
  `positions` (0, 1, ... restarting at every segment).
* per slot `[R, K]`: `slot_example`, the batch position (0..B-1 over the global batch) of the
  example in slot k of the row, -1 for an empty slot. SFT: slot k is segment k+1. Pairs: slot
  k is segments 2k+1 = prompt + chosen and 2k+2 = prompt + rejected, so **the chosen and
  rejected sequences of one pair are two adjacent segments of the same row** (the prompt is
  repeated in both, as in the unpacked `[B, 2, S]` layout).
* per example `[B]`: `example_index` (the batch positions, ascending), pairs `objective`,
  and every per-row array (`arrays=`, e.g. `ref_logps` `[B, 2]`) in the unpacked order.

`models.logprobs.example_sums` turns per-token values `[R, W-1]` into per-example sums `[B]` /
`[B, 2]` in batch order: segment sums per row, then the slots sorted by `slot_example` (the
micro-batch split keeps rows whole, so this works on any micro-batch too).

Packing: the examples of a batch are placed **first-fit in the shuffled order** (each goes
into the first row with room, else a new row). Examples are packed per micro-batch group
(batch positions m, m + M, ... go to rows m, m + M, ... for `num_microbatches=M`), so the
engine's strided micro-batch split sees exactly the unpacked micro-batches' examples and
gradient accumulation also matches. R is the most rows any process's group needs, rounded up
to a multiple of the data-parallel size (per micro-batch) and then to a value with at most
three significant bits (1-8, 10, 12, 14, 16, 20, ... x that multiple): the jitted step
compiles once per distinct R, a handful per run, with at most 25% extra empty rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from alignax.data.loader import BatchIterator


def example_tokens(row: dict) -> int:
    """Tokens `row` takes in a packed row: prompt + completion, for a pair both sequences."""
    if "chosen" in row:
        return 2 * len(row["prompt"]) + len(row["chosen"]) + len(row["rejected"])
    return len(row["prompt"]) + len(row["completion"])


def first_fit(sizes: Sequence[int], width: int) -> np.ndarray:
    """Row of each item under first-fit in the given order (each item goes into the first row
    with `width - used >= size`, else a new row). Returns `[len(sizes)]` int row indices."""
    free = np.zeros(0, np.int64)
    rows = np.empty(len(sizes), np.int64)
    for i, size in enumerate(sizes):
        fits = np.flatnonzero(free >= size)
        if len(fits):
            rows[i] = fits[0]
            free[fits[0]] -= size
        else:
            rows[i] = len(free)
            free = np.append(free, width - size)
    return rows


def round_rows(need: int, multiple: int, cap: int) -> int:
    """The row count for `need` rows: a multiple of `multiple` whose quotient has at most three
    significant bits (1-8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...), at most `cap` rounded up
    to the multiple."""
    k = -(-need // multiple)
    if k > 8:
        shift = k.bit_length() - 3
        k = -(-k >> shift) << shift
    return min(k, -(-cap // multiple)) * multiple


class PackedBatchIterator(BatchIterator):
    """`BatchIterator`'s batches packed (see the module docstring for the layout).

    Deterministic and resumable with the same `state_dict` (the position in the same shuffled
    order); a batch is the same `global_batch_size` examples as `BatchIterator`'s at that
    position, so `train.batch_size` still counts examples (pairs / rows), not packed rows.

    Args:
      rows: tokenised SFT rows or preference pairs (not unpaired KTO rows).
      pack_width: W, tokens per packed row; 0 = the longest example the limits allow
        (`max_length`, twice that for pairs, whose two sequences share a row).
      num_microbatches: M, micro-batches per step (`train.grad_accum`).
      data_parallel: devices each micro-batch's rows are split over (the global row count R
        is a multiple of it times M).
      **kwargs: as `BatchIterator` (`global_batch_size`, `pad_id`, `max_length`, `seed`,
        `shuffle`, `process_index`, `process_count`, `arrays`; `buckets` is unused).
    """

    def __init__(self, rows: Sequence[dict], *, global_batch_size: int, max_length: int,
                 pack_width: int = 0, num_microbatches: int = 1, data_parallel: int = 1,
                 **kwargs):
        super().__init__(rows, global_batch_size=global_batch_size, max_length=max_length,
                         **kwargs)
        first = self.rows[0]
        if "label" in first or not ("chosen" in first or "completion" in first):
            raise ValueError("packing supports SFT rows and preference pairs only")
        self.pairs = "chosen" in first
        self.width = int(pack_width) or (2 if self.pairs else 1) * max_length
        self.sizes = np.asarray([example_tokens(r) for r in self.rows], np.int64)
        longest = int(self.sizes.max())
        if longest > self.width:
            what = "pair (both sequences)" if self.pairs else "row"
            raise ValueError(f"data.pack_width={self.width} is shorter than the longest "
                             f"{what} ({longest} tokens); raise it or set it to 0")
        per_process = global_batch_size // self.process_count
        if per_process % num_microbatches:
            raise ValueError(f"{per_process} examples per process do not split into "
                             f"{num_microbatches} micro-batches")
        self.num_microbatches = num_microbatches
        self.group_size = per_process // num_microbatches
        # Rows per (process, micro-batch) group: P * M * rows must split over the devices.
        self.row_multiple = data_parallel // math.gcd(data_parallel, self.process_count)
        self.slots = max(1, min(self.group_size, self.width // max(1, int(self.sizes.min()))))

    def _groups(self, process: int) -> list[np.ndarray]:
        """Batch positions of each micro-batch group of `process`'s slice."""
        b = self.group_size * self.num_microbatches
        return [np.arange(process * b + m, (process + 1) * b, self.num_microbatches)
                for m in range(self.num_microbatches)]

    def __next__(self) -> dict:
        return self._pack(self._next_ids())

    def _pack(self, ids: np.ndarray) -> dict:
        """The packed batch of the global batch `ids` (dataset rows), this process's slice."""
        sizes = self.sizes[ids]
        # Every process packs every group (cheap: lengths only), so all agree on R.
        placed = {(p, m): first_fit(sizes[pos], self.width)
                  for p in range(self.process_count)
                  for m, pos in enumerate(self._groups(p))}
        need = max(int(r.max()) + 1 for r in placed.values())
        per_group = round_rows(need, self.row_multiple, self.group_size)
        m_count = self.num_microbatches
        n_rows, w = per_group * m_count, self.width
        out = {k: np.zeros((n_rows, w), np.int32) for k in
               ("input_ids", "attention_mask", "completion_mask", "segment_ids", "positions")}
        out["input_ids"][:] = self.pad_id
        out["slot_example"] = np.full((n_rows, self.slots), -1, np.int32)
        used = np.zeros(n_rows, np.int64)
        count = np.zeros(n_rows, np.int64)
        keys = ("chosen", "rejected") if self.pairs else ("completion",)
        for m, pos in enumerate(self._groups(self.process_index)):
            for e, group_row in zip(pos, placed[(self.process_index, m)]):
                r = int(group_row) * m_count + m  # group m owns rows m, m + M, ...
                row, slot = self.rows[ids[e]], int(count[r])
                out["slot_example"][r, slot] = e
                for j, key in enumerate(keys):
                    tokens = list(row["prompt"]) + list(row[key])
                    a, n = int(used[r]), len(tokens)
                    out["input_ids"][r, a:a + n] = tokens
                    out["attention_mask"][r, a:a + n] = 1
                    out["completion_mask"][r, a + len(row["prompt"]):a + n] = 1
                    out["segment_ids"][r, a:a + n] = slot * len(keys) + j + 1
                    out["positions"][r, a:a + n] = np.arange(n)
                    used[r] += n
                count[r] += 1
        b = self.group_size * m_count
        mine = ids[self.process_index * b:(self.process_index + 1) * b]
        out["example_index"] = np.arange(self.process_index * b, (self.process_index + 1) * b,
                                         dtype=np.int32)
        if self.pairs:
            out["objective"] = np.asarray([self.rows[i]["objective"] for i in mine], np.int32)
        for name, values in self.arrays.items():
            out[name] = np.asarray(values[mine])
        return out


def packed_iterator(*, pack_width: int = 0, num_microbatches: int = 1,
                    data_parallel: int = 1):
    """`PackedBatchIterator` with these settings bound: a class-like callable for
    `Context.batches(rows, iterator=...)` / `lm_plan(..., iterator=...)`."""
    return functools.partial(PackedBatchIterator, pack_width=pack_width,
                             num_microbatches=num_microbatches, data_parallel=data_parallel)


def unpack(batch: dict) -> list[dict]:
    """The tokenised examples of a packed batch, in batch order (`example_index`).

    Returns `{"prompt", "completion"}` / `{"prompt", "chosen", "rejected"}` token lists (the
    inverse of the packing, for tests and debugging).
    """
    ids, comp, seg = batch["input_ids"], batch["completion_mask"], batch["segment_ids"]
    per = 2 if "objective" in batch else 1
    found = {}
    for r, slots in enumerate(batch["slot_example"]):
        for k, e in enumerate(slots):
            if e < 0:
                continue
            parts = []
            for j in range(per):
                where = seg[r] == k * per + j + 1
                tok, c = ids[r][where].tolist(), comp[r][where].astype(bool)
                parts.append((tok[:int(np.argmax(c))] if c.any() else tok,
                              [t for t, x in zip(tok, c) if x]))
            keys = ("chosen", "rejected") if per == 2 else ("completion",)
            found[int(e)] = {"prompt": parts[0][0], **{key: p[1] for key, p in zip(keys,
                                                                                      parts)}}
    return [found[int(e)] for e in batch["example_index"]]


def fill(batch: dict) -> float:
    """Real tokens / token slots of a batch (packed or not): `attention_mask`'s mean."""
    return float(np.mean(batch["attention_mask"]))
