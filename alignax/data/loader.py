"""Deterministic, resumable batch iterators: every iterator a trainer draws from.

The order is a pure function of `(seed, epoch)`, and the position (`epoch`, `index`) is a small
JSON-able dict that goes into checkpoints, so a resumed run sees exactly the batches an
uninterrupted run would. In multi-host runs each process collates only its own slice of every
global batch (`process_index`, `process_count`).

* `BatchIterator`: fixed-shape batches of tokenised rows, with optional per-row arrays (cached
  reference log-probs, teacher top-k) added to each batch.
* `BalancedBatchIterator`: the same with B/O rows of each of O objectives per batch (MAH-DPO).
* `PromptIterator`: shuffled batches of prompts (online RL), no collation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from alignax.data.tokenize import bucket_for, collate, default_buckets, needed_length


class BatchIterator:
    """Yields fixed-shape numpy batches of `global_batch_size` rows (this process's slice).

    Args:
      rows: tokenised rows from `tokenize_examples`.
      global_batch_size: rows per step over all processes.
      pad_id: padding token id.
      max_length: longest row allowed (sets the default buckets).
      buckets: padded lengths to choose from (default: powers of two up to max_length).
      seed: shuffling seed; `shuffle=False` keeps file order.
      process_index, process_count: this process's slice of each global batch.
      arrays: `{name: [N, ...]}` aligned with `rows`, added to every batch as `[B, ...]` (this
        process's rows), e.g. precomputed reference log-probs `ref_logps` `[N, 2]`.
    The remainder of an epoch that does not fill a batch is dropped (fixed shapes).
    """

    def __init__(self, rows: Sequence[dict], *, global_batch_size: int, pad_id: int,
                 max_length: int, buckets: Sequence[int] | None = None, seed: int = 0,
                 shuffle: bool = True, process_index: int = 0, process_count: int = 1,
                 arrays: Mapping[str, np.ndarray] | None = None):
        if global_batch_size <= 0:
            raise ValueError(f"train.batch_size must be positive, got {global_batch_size}")
        if global_batch_size % process_count:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                             f"{process_count} processes")
        if len(rows) < global_batch_size:
            raise ValueError(f"the data has {len(rows)} usable rows, fewer than one batch of "
                             f"{global_batch_size}")
        self.rows = list(rows)
        self.global_batch_size = global_batch_size
        self.pad_id = pad_id
        self.buckets = tuple(buckets) if buckets else default_buckets(max_length)
        self.seed, self.shuffle = seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.arrays = dict(arrays or {})
        for name, values in self.arrays.items():
            if len(values) != len(self.rows):
                raise ValueError(f"array {name!r} has {len(values)} entries for "
                                 f"{len(self.rows)} rows")
        self.epoch, self.index = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.rows) // self.global_batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def __iter__(self):
        return self

    def _next_ids(self) -> np.ndarray:
        """The next global batch's dataset rows (all processes), advancing the position."""
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        order = self._order(self.epoch)
        start = self.index * self.global_batch_size
        self.index += 1
        return order[start:start + self.global_batch_size]

    def __next__(self) -> dict:
        ids = self._next_ids()
        per_process = self.global_batch_size // self.process_count
        mine = ids[self.process_index * per_process:(self.process_index + 1) * per_process]
        # The bucket is chosen from the whole global batch, so all processes agree on shapes.
        width = bucket_for(needed_length([self.rows[i] for i in ids]), self.buckets)
        before = self.rows[ids[(self.process_index * per_process - 1) % len(ids)]]
        batch = collate([self.rows[i] for i in mine], pad_id=self.pad_id, buckets=self.buckets,
                        width=width, kl_previous=before.get("completion"))
        for name, values in self.arrays.items():
            batch[name] = np.asarray(values[mine])
        return batch

    def state_dict(self) -> dict:
        """The position, to store in a checkpoint."""
        return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"checkpointed data seed {state['seed']} differs from train.seed "
                             f"{self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class BalancedBatchIterator(BatchIterator):
    """Batches of B/O rows of every objective, shuffled together (the MAH-DPO reference code's
    `get_batch_iterator`); resumable like `BatchIterator` (same `state_dict`).

    An epoch is `min_k |rows of objective k| // (B/O)` batches; each epoch draws a fresh random
    subset of the larger objectives, so over several epochs every pair is seen. Rows whose
    objective is outside `[0, O)` are never drawn.

    Args:
      rows: tokenised pair rows with `objective`.
      num_objectives: O (must divide the global batch size).
      **kwargs: as `BatchIterator`.
    """

    def __init__(self, rows, *, num_objectives: int, **kwargs):
        super().__init__(rows, **kwargs)
        b = self.global_batch_size
        if b % num_objectives:
            raise ValueError(f"train.batch_size {b} must be a multiple of the {num_objectives} "
                             "objectives for balanced batches (or set data.balance=False)")
        objective = np.asarray([r["objective"] for r in self.rows])
        self._groups = [np.flatnonzero(objective == k) for k in range(num_objectives)]
        self._per = b // num_objectives
        sizes = [len(g) for g in self._groups]
        if min(sizes) < self._per:
            raise ValueError(f"pairs per objective {sizes}: every objective needs at least "
                             f"{self._per} pairs for one balanced batch of {b}")

    @property
    def steps_per_epoch(self) -> int:
        return min(len(g) for g in self._groups) // self._per

    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        perms = [rng.permutation(g) if self.shuffle else g for g in self._groups]
        p = self._per
        blocks = [np.concatenate([g[j * p:(j + 1) * p] for g in perms])
                  for j in range(self.steps_per_epoch)]
        return np.concatenate([rng.permutation(x) if self.shuffle else x for x in blocks])


class PromptIterator:
    """Shuffled epochs over prompts (any items), `batch_size` per call; resumable."""

    def __init__(self, examples: Sequence, *, batch_size: int, seed: int):
        if len(examples) < batch_size:
            raise ValueError(f"{len(examples)} prompts, fewer than one batch of {batch_size}")
        self.examples, self.batch_size, self.seed = list(examples), batch_size, seed
        self.epoch, self.index = 0, 0

    def next_batch(self) -> list:
        if (self.index + 1) * self.batch_size > len(self.examples):
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))
        ids = order[self.index * self.batch_size:(self.index + 1) * self.batch_size]
        self.index += 1
        return [self.examples[i] for i in ids]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"checkpointed prompt seed {state['seed']} differs from {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
