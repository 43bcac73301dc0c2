"""What every algorithm's setup reads: the resolved config turned into a mesh, a tokenizer, a
model, examples, tokenised rows and batch iterators.

`Context(cfg, workdir)` is built once by the runner and handed to the algorithm's `setup`;
each helper reads the config sections it names and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from alignax import data, distributed, sharding
from alignax.models import from_hf, init_model, load_tokenizer, tiny_config

# The built-in task's example makers, by data kind.
_TASK_EXAMPLES = {
    "sft": lambda n, seed, d, offsets: data.arithmetic.sft_examples(
        n, seed=seed, error_rate=d.error_rate, max_operand=d.max_operand,
        error_offsets=offsets),
    "pairs": lambda n, seed, d, offsets: data.arithmetic.preference_pairs(
        n, seed=seed, max_operand=d.max_operand, error_offsets=offsets),
    "unpaired": lambda n, seed, d, offsets: data.arithmetic.unpaired_examples(
        n, seed=seed, max_operand=d.max_operand, error_offsets=offsets),
}


def tokenizer_source(model_cfg) -> str:
    """`model.tokenizer`, else `model.path` when it holds a tokenizer.json, else "byte"."""
    if model_cfg.tokenizer:
        return model_cfg.tokenizer
    if model_cfg.path and os.path.exists(os.path.join(model_cfg.path, "tokenizer.json")):
        return model_cfg.path
    return "byte"


def build_model(model_cfg, *, seed: int):
    """The `model` section's transformer: `path` (HF directory) or a tiny `name` + overrides."""
    if model_cfg.path:
        return from_hf(model_cfg.path, dtype=model_cfg.dtype or None,
                       param_dtype=model_cfg.param_dtype or None, remat=model_cfg.remat)
    overrides = dict(model_cfg.overrides or {})
    for key in ("dtype", "param_dtype", "remat"):
        if model_cfg[key]:
            overrides[key] = model_cfg[key]
    return init_model(tiny_config(model_cfg.name, **overrides), seed=seed)


@dataclasses.dataclass
class Rows:
    """Tokenised training and evaluation rows, and the evaluation examples they came from."""

    train: list[dict]
    eval: list[dict]
    eval_examples: list


class Context:
    """The run's mesh, tokenizer, data limits and batch layout, and builders over the config.

    Attributes:
      cfg: the resolved config. workdir: the run's directory. log: `print`-like.
      mesh: from `cfg.mesh`. tokenizer: from `model.tokenizer` / `model.path`.
      limits: `data.max_prompt_length` / `max_completion_length`.
      batch_size: `train.batch_size`, checked against the mesh and `train.grad_accum`.
      micro: `train.grad_accum`. process_index, process_count: this process's slice of every
        global batch (one slice per process on a multi-host mesh).
      buckets: padded lengths batches are drawn to (`data.buckets`, default powers of two).
    """

    def __init__(self, cfg, workdir: str, *, log: Callable = print):
        self.cfg, self.workdir, self.log = cfg, workdir, log
        self.mesh = sharding.make_mesh(dict(cfg.mesh))
        self.tokenizer = load_tokenizer(tokenizer_source(cfg.model))
        self.limits = data.Limits(cfg.data.max_prompt_length, cfg.data.max_completion_length)
        self.buckets = tuple(cfg.data.buckets) or data.default_buckets(self.limits.max_length)
        self.batch_size = cfg.train.batch_size
        self.micro = cfg.train.grad_accum
        self.chunk = cfg.train.logits_chunk

    def check_batch(self, batch_size: int) -> None:
        """Raises unless `batch_size` rows split over the mesh and the micro-batches."""
        sharding.check_batch_size(batch_size, mesh=self.mesh, num_microbatches=self.micro)

    @property
    def process_slice(self) -> tuple[int, int]:
        """`(process index, process count)` of this host's slice of each global batch."""
        self.check_batch(self.batch_size)
        rows = distributed.process_batch_slice(self.batch_size, mesh=self.mesh)
        n_local = rows.stop - rows.start
        return rows.start // n_local, self.batch_size // n_local

    def model(self):
        """The policy's transformer (`model` section), seeded by `train.seed`."""
        return build_model(self.cfg.model, seed=self.cfg.train.seed)

    # ------------------------------------------------------------------------- data
    def read_examples(self, path: str, policy: data.ErrorPolicy, *, objectives=None,
                      expand: Callable | None = None) -> list:
        """Parsed examples of a local source (`expand` rewrites records first)."""
        records = data.read_records(path, policy=policy)
        if expand is not None:
            records = expand(records)
        return data.parse_records(records, fmt=self.cfg.data.format, objectives=objectives,
                                  policy=policy)

    def examples(self, kind: str, policy: data.ErrorPolicy, *, objectives=None,
                 expand: Callable | None = None, task: Callable | None = None):
        """`(train, eval)` examples from `data.path` (+ `eval_path` or the last
        `eval_fraction`), or from the built-in task (`task(n, seed)`, default the arithmetic
        task's examples of `kind`: "sft", "pairs" or "unpaired")."""
        d = self.cfg.data
        if d.path:
            train = self.read_examples(d.path, policy, objectives=objectives, expand=expand)
            if d.eval_path:
                return train, self.read_examples(d.eval_path, policy, objectives=objectives,
                                                 expand=expand)
            n_eval = int(len(train) * d.eval_fraction)
            return train[:len(train) - n_eval], train[len(train) - n_eval:]
        if task is None:
            if d.task != "arithmetic":
                raise ValueError(f"config field 'data.task': unknown task {d.task!r}; set "
                                 "data.path to a local file or use task='arithmetic'")
            offsets = tuple(d.error_offsets) or data.arithmetic.ERROR_OFFSETS
            task = lambda n, seed: _TASK_EXAMPLES[kind](n, seed, d, offsets)
        seed = self.cfg.train.seed
        return task(d.num_train, seed), task(d.num_eval, seed + 10_000)

    def rows(self, examples: Callable[[data.ErrorPolicy], tuple[list, list]]) -> Rows:
        """Examples -> tokenised rows under `data.on_error` (skips counted and logged).

        `examples(policy) -> (train examples, eval examples)`, e.g. `partial(ctx.examples,
        "pairs")`.
        """
        policy = data.ErrorPolicy(self.cfg.data.on_error)
        train_ex, eval_ex = examples(policy)
        rows = data.tokenize_examples(train_ex, self.tokenizer, self.limits, policy)
        eval_rows = data.tokenize_examples(eval_ex, self.tokenizer, self.limits, policy)
        if policy.num_skipped:
            self.log(f"data: {policy.summary()}")
        return Rows(rows, eval_rows, list(eval_ex))

    def batches(self, rows: Sequence[dict], *, shuffle: bool = True,
                iterator: type = data.BatchIterator, **kwargs) -> data.BatchIterator:
        """A batch iterator over `rows` with the run's batch size, buckets and seed; training
        batches (`shuffle=True`) are this process's slice, evaluation batches whole."""
        index, count = self.process_slice if shuffle else (0, 1)
        return iterator(rows, global_batch_size=self.batch_size, pad_id=self.tokenizer.pad_id,
                        max_length=self.limits.max_length, buckets=self.buckets,
                        seed=self.cfg.train.seed, shuffle=shuffle, process_index=index,
                        process_count=count, **kwargs)

    def eval_prompts(self, examples: Sequence) -> list[str]:
        """The text prompts of `examples`, at most `train.eval_prompts` of them."""
        prompts = [e.prompt for e in examples if isinstance(e.prompt, str)]
        return prompts[:self.cfg.train.eval_prompts]
