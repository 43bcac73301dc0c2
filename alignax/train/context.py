"""What every algorithm's setup reads: the resolved config turned into a mesh, a tokenizer, a
model, examples, tokenised rows and batch iterators.

`Context(cfg, workdir)` is built once by the runner and handed to the algorithm's `setup`;
each helper reads the config sections it names and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from alignax import data, distributed, metrics, sharding
from alignax.config import ConfigError
from alignax.data.tokenize import TokenStats
from alignax.models import add_lora, from_hf, init_model, load_tokenizer, tiny_config

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


def check_paths(cfg) -> None:
    """ConfigError naming the field for a model / tokenizer directory that is not there (before
    any data is read, so the error is the real one)."""
    fields = [("model.path", cfg.model.path), ("model.tokenizer", cfg.model.tokenizer)]
    fields += [(f"teacher.{k}", cfg.teacher[k]) for k in ("path", "ref_path", "tokenizer")
               if "teacher" in cfg]
    fields += [("reward.model_path", cfg.reward.model_path)] if "reward" in cfg else []
    for field, path in fields:
        if path and path != "byte" and not os.path.isdir(path):
            raise ConfigError(f"config field {field!r}: {path} is not a directory")
        if path and field.endswith("path") and not os.path.exists(
                os.path.join(path, "config.json")):
            raise ConfigError(f"config field {field!r}: {path} has no config.json (not an HF "
                              "model directory; a train workdir's export is WORKDIR/hf)")


def build_model(model_cfg, *, seed: int, lora=None):
    """The `model` section's transformer: `path` (HF directory) or a tiny `name` + overrides;
    with LoRA adapters on it when `lora.rank > 0` (the `lora` section; seeded by `seed`)."""
    if model_cfg.path:
        model = from_hf(model_cfg.path, dtype=model_cfg.dtype or None,
                        param_dtype=model_cfg.param_dtype or None, remat=model_cfg.remat)
    else:
        overrides = dict(model_cfg.overrides or {})
        for key in ("dtype", "param_dtype", "remat"):
            if model_cfg[key]:
                overrides[key] = model_cfg[key]
        model = init_model(tiny_config(model_cfg.name, **overrides), seed=seed)
    if lora is not None and lora.rank:
        try:
            add_lora(model, rank=lora.rank, alpha=lora.alpha, targets=tuple(lora.targets),
                     dropout=lora.dropout, seed=seed)
        except ValueError as e:
            raise ConfigError(f"config section 'lora': {e}") from None
    return model


@dataclasses.dataclass
class Rows:
    """Tokenised training and evaluation rows, and the evaluation examples they came from."""

    train: list[dict]
    eval: list[dict]
    eval_examples: list
    report: dict = dataclasses.field(default_factory=dict)


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
      reference_of: `train state -> reference parameters` (set by the engine once the state
        is built: `state.ref_params`, or with LoRA the base model computed from the params).
    """

    def __init__(self, cfg, workdir: str, *, log: Callable = print):
        self.cfg, self.workdir, self.log = cfg, workdir, log
        check_paths(cfg)
        self.mesh = sharding.make_mesh(dict(cfg.mesh))
        self.tokenizer = load_tokenizer(tokenizer_source(cfg.model))
        self.limits = data.Limits(cfg.data.max_prompt_length, cfg.data.max_completion_length)
        self.buckets = tuple(cfg.data.buckets) or data.default_buckets(self.limits.max_length)
        self.batch_size = cfg.train.batch_size
        self.data_report: dict = {}
        self.micro = cfg.train.grad_accum
        self.chunk = cfg.train.logits_chunk
        self.reference_of: Callable = lambda state: state.ref_params

    def check_batch(self, batch_size: int) -> None:
        """ConfigError unless `batch_size` rows split over the mesh and the micro-batches."""
        try:
            sharding.check_batch_size(batch_size, mesh=self.mesh, num_microbatches=self.micro)
        except ValueError as e:
            raise ConfigError(f"config field 'train.batch_size': {e}") from None

    @property
    def process_slice(self) -> tuple[int, int]:
        """`(process index, process count)` of this host's slice of each global batch."""
        self.check_batch(self.batch_size)
        rows = distributed.process_batch_slice(self.batch_size, mesh=self.mesh)
        n_local = rows.stop - rows.start
        return rows.start // n_local, self.batch_size // n_local

    def model(self):
        """The policy's transformer (`model` section, with `lora` adapters when asked for),
        seeded by `train.seed`; its positions must hold the longest row the data limits
        allow."""
        model = build_model(self.cfg.model, seed=self.cfg.train.seed, lora=self.cfg.lora)
        positions = model.config.max_position_embeddings
        if self.limits.max_length > positions:
            raise ConfigError(
                f"config fields 'data.max_prompt_length' + 'data.max_completion_length' = "
                f"{self.limits.max_length} tokens, more than the model's "
                f"max_position_embeddings={positions}; lower them")
        return model

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
        """`(train, eval)` examples of `kind` ("sft", "pairs", "unpaired", or "prompts": any)
        from `data.path` (+ `eval_path`, or a random `eval_fraction` of it), converted to the
        kind where that is well defined (`data.as_kind`), or from the built-in task (`task(n,
        seed)`, default the arithmetic task's examples of `kind`)."""
        d = self.cfg.data
        if d.path:
            train = self.read_examples(d.path, policy, objectives=objectives, expand=expand)
            if d.eval_path:
                evals = self.read_examples(d.eval_path, policy, objectives=objectives,
                                           expand=expand)
            else:  # a random held-out share (seed train.seed), not the file's tail
                n_eval = int(len(train) * d.eval_fraction)
                order = np.random.default_rng([self.cfg.train.seed, 7]).permutation(len(train))
                held = set(order[:n_eval].tolist())
                train, evals = ([x for i, x in enumerate(train) if i not in held],
                                [train[i] for i in sorted(held)])
            if kind in ("sft", "pairs", "unpaired"):
                train, evals = data.as_kind(train, kind), data.as_kind(evals, kind)
            return train, evals
        if task is None:
            if d.task != "arithmetic":
                raise ValueError(f"config field 'data.task': unknown task {d.task!r}; set "
                                 "data.path to a local file or use task='arithmetic'")
            offsets = tuple(d.error_offsets) or data.arithmetic.ERROR_OFFSETS
            make = _TASK_EXAMPLES.get(kind, _TASK_EXAMPLES["pairs"])  # prompts: the pairs'
            task = lambda n, seed: make(n, seed, d, offsets)
        seed = self.cfg.train.seed
        return task(d.num_train, seed), task(d.num_eval, seed + 10_000)

    def rows(self, examples: Callable[[data.ErrorPolicy], tuple[list, list]]) -> Rows:
        """Examples -> tokenised rows under `data.on_error` (skips counted and logged).

        `examples(policy) -> (train examples, eval examples)`, e.g. `partial(ctx.examples,
        "pairs")`.
        """
        policy = data.ErrorPolicy(self.cfg.data.on_error)
        train_ex, eval_ex = examples(policy)
        stats = TokenStats()
        self.log(f"data: tokenising {len(train_ex)} training and {len(eval_ex)} evaluation "
                 "examples")
        bar = lambda ex: metrics.progress_bar(ex, total=len(ex), desc="tokenising",
                                              unit="examples")  # a bar on a terminal only
        rows = data.tokenize_examples(bar(train_ex), self.tokenizer, self.limits, policy,
                                      stats)
        eval_rows = data.tokenize_examples(eval_ex, self.tokenizer, self.limits, policy, stats)
        report = {"train_rows": len(rows), "eval_rows": len(eval_rows),
                  "sequences": stats.sequences, "prompts_truncated": stats.prompts_truncated,
                  "completions_truncated": stats.completions_truncated,
                  "longest_prompt": stats.longest_prompt,
                  "longest_completion": stats.longest_completion,
                  "rows_skipped": policy.num_skipped}
        self.log(f"data: {stats.summary(self.limits)}")
        if policy.num_skipped:
            self.log(f"data: {policy.summary()}")
        self.data_report = report
        return Rows(rows, eval_rows, list(eval_ex), report)

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
