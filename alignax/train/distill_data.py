"""Teachers, student samples and the on-disk teacher cache of the DCKD / ADPA trainer.

* `load_teachers`: the DPO teacher (and, for ADPA, the reference teacher = the teacher's SFT
  model) from local HF directories, or tiny random ones for smoke runs.
* `check_vocabulary`: teacher distributions are indexed by student token ids, so teacher and
  student must share the tokenizer and the vocabulary; a mismatch is a one-line error.
* `sample_rejected`: ADPA's rejected responses, sampled from the student itself once before
  training (cached under a fingerprint of the prompts, the student weights and the settings).
* `cached_teacher_arrays`: the teacher's top-k distributions (DCKD) or top-k advantages (ADPA)
  on every row, computed once and stored in `CACHE_DIR/teacher_topk-<fingerprint>.npz`
  (fingerprint as `train/ref_cache.py`: row token ids, teacher weights, settings), reused by any
  later run on the same rows and teachers.
* `TeacherBatches`: a `BatchIterator` that adds each row's cached arrays to its batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import jax
import numpy as np

from alignax import data as D
from alignax.models import ByteTokenizer, from_hf, init_model, load_tokenizer, tiny_config
from alignax.sampling import generate
from alignax.train import ref_cache

VOCAB_ERROR = ("teacher and student must share the tokenizer and vocabulary (teacher "
               "distributions are indexed by student token ids)")


# ------------------------------------------------------------------------------- teachers

def load_teachers(tcfg, *, names: Sequence[str], log=print) -> dict:
    """`{"dpo": Transformer[, "ref": Transformer]}` from `teacher.path` / `teacher.ref_path`.

    An empty path gives a tiny random model (`teacher.name`, `teacher.overrides`, seeded
    `teacher.seed` and `+1`): only for smoke runs of the code path.
    """
    paths = {"dpo": tcfg.get("path") or "", "ref": tcfg.get("ref_path") or ""}
    dtype = tcfg.get("dtype") or None
    out = {}
    for i, name in enumerate(names):
        if paths[name]:
            out[name] = from_hf(paths[name], dtype=dtype)
        else:
            field = "teacher.path" if name == "dpo" else "teacher.ref_path"
            log(f"{field} is empty: using a random tiny {name} teacher (smoke runs only)")
            overrides = dict(tcfg.get("overrides", {}) or {})
            if dtype:
                overrides["dtype"] = dtype
            out[name] = init_model(tiny_config(tcfg.get("name", "llama"), **overrides),
                                   seed=int(tcfg.get("seed", 1)) + i)
    return out


def _tokenizer_signature(tok) -> tuple:
    if isinstance(tok, ByteTokenizer):
        return ("byte", tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()
    return ("hf", len(vocab), digest, tok.pad_id, tok.bos_id, tok.eos_id)


def teacher_tokenizer(tcfg):
    """The teacher's tokenizer: `teacher.tokenizer`, else `teacher.path`'s tokenizer.json, else
    None (only the model vocabulary sizes can then be compared)."""
    source = tcfg.get("tokenizer") or ""
    if not source and tcfg.get("path") and os.path.exists(
            os.path.join(tcfg.path, "tokenizer.json")):
        source = tcfg.path
    return load_tokenizer(source) if source else None


def check_vocabulary(student_config, student_tokenizer, teachers: dict,
                     teacher_tok=None) -> None:
    """Raises `ValueError` unless every teacher has the student's vocabulary (and tokenizer).

    Args:
      student_config: the student's `ModelConfig`.
      student_tokenizer: the tokenizer the data was encoded with.
      teachers: `{name: Transformer}`.
      teacher_tok: the teachers' tokenizer, or None when unknown.
    """
    for name, model in teachers.items():
        field = "teacher.path" if name == "dpo" else "teacher.ref_path"
        if model.config.vocab_size != student_config.vocab_size:
            raise ValueError(f"{VOCAB_ERROR}: {field} has vocab_size "
                             f"{model.config.vocab_size}, the student {student_config.vocab_size}")
    if teacher_tok is not None:
        a, b = _tokenizer_signature(student_tokenizer), _tokenizer_signature(teacher_tok)
        if a != b:
            raise ValueError(f"{VOCAB_ERROR}: the teacher's tokenizer differs from the "
                             f"student's (kind, size, ... = {b[:2]} vs {a[:2]}, special ids "
                             f"{b[-3:]} vs {a[-3:]})")


# ------------------------------------------------------------------------------- samples

def sample_completions(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                       eos_id: int, pad_id: int, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, seed: int = 0, batch_size: int = 64
                       ) -> list[list[int]]:
    """One sampled completion (token ids, stop token included) per prompt.

    Batches are padded to `batch_size` rows and one prompt width, so the sampler compiles once;
    batch i draws with seed `seed + i`.
    """
    width = max(len(p) for p in prompts)
    out = []
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        n = len(chunk)
        tokens, _, mask = generate(model, chunk + [chunk[0]] * (batch_size - n),
                                   max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                                   temperature=temperature, top_k=top_k, top_p=top_p,
                                   seed=seed + i, prompt_width=width)
        for row, m in zip(tokens[:n], mask[:n]):
            ids = [int(t) for t, keep in zip(row, m) if keep]
            out.append(ids or [eos_id])
    return out


def sample_rejected(model, params, rows: Sequence[dict], *, cache_dir: str, eos_id: int,
                    pad_id: int, max_new_tokens: int, sampling: dict, log=print) -> list[dict]:
    """Rows whose `rejected` is a completion sampled from `model` (ADPA's y_l).

    The samples are stored in `cache_dir/samples-<fingerprint>.json` (prompts, student weights,
    sampling settings), so a resumed or repeated run trains on the same responses.
    """
    settings = dict(sampling, max_new_tokens=max_new_tokens)
    key = ref_cache.fingerprint([dict(r, chosen=[], rejected=[]) for r in rows], params,
                                extra={"student_samples": settings,
                                       "model": repr(model.config)})
    path = os.path.join(cache_dir, f"samples-{key}.json")
    samples = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            samples = json.load(f)
        if len(samples) == len(rows):
            log(f"student samples: reusing {path}")
        else:
            samples = None
    if samples is None:
        samples = sample_completions(
            model, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, eos_id=eos_id,
            pad_id=pad_id, temperature=float(sampling.get("temperature", 1.0)),
            top_k=int(sampling.get("top_k", 0)), top_p=float(sampling.get("top_p", 1.0)),
            seed=int(sampling.get("seed", 0)), batch_size=int(sampling.get("batch_size", 64)))
        ref_cache.atomic_write(path, lambda tmp: _dump_json(samples, tmp))
        log(f"student samples: drew {len(rows)} -> {path}")
    return [dict(r, rejected=list(s)) for r, s in zip(rows, samples)]


def _dump_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


# ------------------------------------------------------------------------------- teacher cache

def compute_teacher_arrays(fn, teacher_params, rows: Sequence[dict], *, pad_id: int,
                           buckets: Sequence[int], batch_size: int) -> dict[str, np.ndarray]:
    """Runs `fn(teacher_params, batch) -> {name: [b, ...]}` over `rows`; `{name: [N, ...]}`."""
    out: dict[str, list] = {}
    for n, batch in ref_cache.padded_batches(rows, pad_id=pad_id, buckets=buckets,
                                             batch_size=batch_size):
        batch = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
        for k, v in fn(teacher_params, batch).items():
            out.setdefault(k, []).append(np.asarray(jax.device_get(v))[:n])
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}


def cached_teacher_arrays(fn, teacher_params, rows: Sequence[dict], *, cache_dir: str,
                          pad_id: int, buckets: Sequence[int], batch_size: int,
                          extra: dict | None = None, log=print) -> dict[str, np.ndarray]:
    """`compute_teacher_arrays`, from `cache_dir/teacher_topk-<fingerprint>.npz` when there.

    The fingerprint (`ref_cache.fingerprint`) covers the rows' token ids, every teacher
    parameter and `extra` (algorithm, k, frame width, ...): a change in any makes a new file.
    """
    key = ref_cache.fingerprint(rows, teacher_params, extra=extra)
    compute = lambda: compute_teacher_arrays(fn, teacher_params, rows, pad_id=pad_id,
                                             buckets=buckets, batch_size=batch_size)
    return ref_cache.load_or_compute(
        os.path.join(cache_dir, f"teacher_topk-{key}.npz"), compute,
        valid=lambda a: all(len(v) == len(rows) for v in a.values()),
        what=f"teacher top-k ({len(rows)} rows)", log=log)


class TeacherBatches(D.BatchIterator):
    """A `BatchIterator` whose batches also carry each row's cached teacher arrays.

    Args: those of `BatchIterator`, plus `arrays`: `{name: [N, ...]}` aligned with `rows`,
    added to every batch as `[B, ...]` (this process's rows).
    """

    def __init__(self, rows, *, arrays: dict[str, np.ndarray] | None = None, **kwargs):
        super().__init__(rows, **kwargs)
        self.arrays = dict(arrays or {})

    def _next_rows(self) -> np.ndarray:
        """The row indices the next `__next__` collates for this process (same rule)."""
        epoch, index = ((self.epoch + 1, 0) if self.index >= self.steps_per_epoch
                        else (self.epoch, self.index))
        g = self.global_batch_size
        ids = self._order(epoch)[index * g:(index + 1) * g]
        per = g // self.process_count
        return ids[self.process_index * per:(self.process_index + 1) * per]

    def __next__(self) -> dict:
        mine = self._next_rows() if self.arrays else None
        batch = super().__next__()
        for k, v in self.arrays.items():
            batch[k] = v[mine]
        return batch
