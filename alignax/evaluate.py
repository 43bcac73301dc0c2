r"""Evaluation of exported models, behind `alignax eval`.

* `task_scores`: greedy accuracy of HF exports on held-out draws of the built-in arithmetic
  task (the metric of every table in `experiments/README.md`).
* `pair_scores`: preference-pair metrics of a policy on a local pairs file (JSONL / Parquet /
  TFDS, any pair format): summed log-probs of chosen and rejected, the fraction of pairs where
  chosen is more likely, and, given the reference, DPO's implicit rewards
  `beta * (log pi - log pi_ref)` with TRL's names (`rewards/accuracies`, `rewards/margins`).

Both take keyword arguments only and return plain dicts of floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from alignax import data as D
from alignax.models import from_hf, load_tokenizer
from alignax.train import objectives as O
from alignax.train import ref_cache
from alignax.train.loop import task_accuracy


def _tokenizer_for(model_dir: str, tokenizer: str | None):
    import os

    if tokenizer:
        return load_tokenizer(tokenizer)
    return load_tokenizer(model_dir if os.path.exists(os.path.join(model_dir, "tokenizer.json"))
                          else "byte")


def task_scores(model_dirs: Sequence[str], *, num_prompts: int = 256, seed: int = 10_000,
                max_operand: int = 20, max_new_tokens: int = 6,
                tokenizer: str | None = None) -> dict[str, float]:
    """Greedy task accuracy of each HF export on `num_prompts` arithmetic prompts.

    The prompts are `data.synthetic.preference_pairs(num_prompts, seed=seed)`'s: with the
    default seed, the held-out draws the trainers evaluate on (`train.seed + 10000`, seed 0).
    """
    pairs = D.synthetic.preference_pairs(num_prompts, seed=seed, max_operand=max_operand,
                                         error_offsets=(1,))
    prompts = [p.prompt for p in pairs]
    out = {}
    for path in model_dirs:
        tok = _tokenizer_for(path, tokenizer)
        out[path] = task_accuracy(from_hf(path), tok, prompts, max_new_tokens=max_new_tokens)
    return out


def pair_scores(model_dir: str, data_path: str, *, reference_dir: str | None = None,
                beta: float = 0.1, batch_size: int = 16, max_prompt_length: int = 256,
                max_completion_length: int = 256, tokenizer: str | None = None,
                on_error: str = "raise") -> dict[str, float]:
    """Preference metrics of the policy in `model_dir` on the pairs of `data_path`."""
    tok = _tokenizer_for(model_dir, tokenizer)
    policy = D.ErrorPolicy(on_error)
    examples = D.parse_records(D.read_records(data_path, policy=policy), policy=policy)
    if not examples or not all(isinstance(e, D.Pair) for e in examples):
        raise ValueError(f"{data_path}: expected preference pairs (prompt/chosen/rejected or a "
                         "dialogue pair format)")
    limits = D.Limits(max_prompt_length, max_completion_length)
    rows = D.tokenize_examples(examples, tok, limits, policy)
    models = {"policy": model_dir, **({"ref": reference_dir} if reference_dir else {})}
    sums: dict[str, np.ndarray] = {}
    for name, path in models.items():
        graphdef, params = nnx.split(from_hf(path))
        fn = jax.jit(O.reference_logps_fn(graphdef))
        out = [np.asarray(fn(params, batch))[:n] for n, batch in ref_cache.padded_batches(
            rows, pad_id=tok.pad_id, buckets=D.default_buckets(limits.max_length),
            batch_size=batch_size)]
        sums[name] = np.concatenate(out)
    logps = sums["policy"]
    res = {"num_pairs": float(len(rows)),
           "logps/chosen": float(logps[:, 0].mean()),
           "logps/rejected": float(logps[:, 1].mean()),
           "logps/accuracy": float(np.mean(logps[:, 0] > logps[:, 1]))}
    if policy.num_skipped:
        res["skipped"] = float(policy.num_skipped)
    if reference_dir:
        r = beta * (logps - sums["ref"])
        res.update({"rewards/chosen": float(r[:, 0].mean()),
                    "rewards/rejected": float(r[:, 1].mean()),
                    "rewards/accuracies": float(np.mean(r[:, 0] > r[:, 1])),
                    "rewards/margins": float(np.mean(r[:, 0] - r[:, 1]))})
    return res
