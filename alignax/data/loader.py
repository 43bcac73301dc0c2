"""A deterministic, resumable batch iterator over tokenised rows.

The order is a pure function of `(seed, epoch)`, and the position (`epoch`, `index`) is a small
JSON-able dict that goes into checkpoints, so a resumed run sees exactly the batches an
uninterrupted run would. In multi-host runs each process collates only its own slice of every
global batch (`process_index`, `process_count`).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    The remainder of an epoch that does not fill a batch is dropped (fixed shapes).
    """

    def __init__(self, rows: Sequence[dict], *, global_batch_size: int, pad_id: int,
                 max_length: int, buckets: Sequence[int] | None = None, seed: int = 0,
                 shuffle: bool = True, process_index: int = 0, process_count: int = 1):
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

    def __next__(self) -> dict:
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        order = self._order(self.epoch)
        start = self.index * self.global_batch_size
        ids = order[start:start + self.global_batch_size]
        per_process = self.global_batch_size // self.process_count
        mine = ids[self.process_index * per_process:(self.process_index + 1) * per_process]
        self.index += 1
        # The bucket is chosen from the whole global batch, so all processes agree on shapes.
        width = bucket_for(needed_length([self.rows[i] for i in ids]), self.buckets)
        return collate([self.rows[i] for i in mine], pad_id=self.pad_id, buckets=self.buckets,
                       width=width)

    def state_dict(self) -> dict:
        """The position, to store in a checkpoint."""
        return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"checkpointed data seed {state['seed']} differs from train.seed "
                             f"{self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
