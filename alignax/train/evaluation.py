r"""Evaluation: during training (mean loss-fn metrics over held-out batches, greedy task
accuracy) and of exported models (`alignax eval`).

* `mean_eval_metrics`: the loss function's loss and metrics averaged over evaluation batches.
* `task_accuracy`: greedy accuracy on the built-in arithmetic task (the metric of every table
  in `experiments/README.md`).
* `task_scores`, `pair_scores`, `reward_scores`: `alignax eval` of HF exports: task accuracy
  on held-out draws, or preference-pair metrics on a local pairs file (summed log-probs of
  chosen and rejected, the fraction where chosen is more likely, and, given the reference,
  DPO's implicit rewards `beta * (log pi - log pi_ref)` with TRL's names), or a reward model's
  accuracy and margins on the pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from alignax import data, losses
from alignax.metrics import progress_bar
from alignax.models import from_hf, load_reward_model, load_tokenizer, pair_logps
from alignax.sampling import decode_completions, generate
from alignax.train.caches import compute_arrays


def eval_fn_for(loss_fn, reference_fn=None) -> Callable:
    """The loss function jitted as `(state, batch) -> (loss, metrics)` for evaluation;
    `reference_fn(params)`, if given, computes the reference instead of `state.ref_params`
    (LoRA: the base model)."""

    def fn(st, b):
        ref = st.ref_params if reference_fn is None else reference_fn(st.params)
        return loss_fn(st.params, b, None,  # no key: deterministic (no LoRA dropout)
                       **({"ref_params": ref} if ref is not None else {}))

    return jax.jit(fn)


def mean_eval_metrics(eval_fn, state, batches: Iterator[dict], *, num_batches: int, mesh,
                      weight_of: Callable[[str], str | None] | None = None
                      ) -> dict[str, float]:
    """Mean loss and metrics of `eval_fn(state, batch)` over `num_batches` of `batches`.

    `weight_of(key)` may name another metric that counts the examples behind `key` in each
    batch (e.g. a per-objective metric and that objective's `examples`): such metrics are
    averaged weighted by it, so a batch without those examples (metric 0) does not dilute them.
    """
    out: dict[str, list] = {}
    for _ in progress_bar(range(num_batches), total=num_batches, desc="eval"):
        with jax.set_mesh(mesh):
            loss, mets = eval_fn(state, next(batches))
        for k, v in dict(mets, loss=loss).items():
            out.setdefault(k, []).append(float(v))
    res = {}
    for k, v in out.items():
        w = out.get(weight_of(k)) if weight_of is not None and weight_of(k) else None
        res[k] = (float(np.dot(v, w) / np.sum(w)) if np.sum(w) > 0 else 0.0) if w else float(
            np.mean(v))
    return res


def task_accuracy(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                  batch_size: int = 64) -> float:
    """Greedy accuracy on the built-in arithmetic task (`data.arithmetic.accuracy`)."""
    ids = [tokenizer.encode(p) for p in prompts]
    out = generate(model, ids, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                   pad_id=tokenizer.pad_id, batch_size=batch_size)
    return data.arithmetic.accuracy(prompts, decode_completions(tokenizer, out.tokens,
                                                                out.mask))


# ------------------------------------------------------------------------------- alignax eval

def tokenizer_for(model_dir: str, tokenizer: str | None = None):
    """`tokenizer` if given, else the model directory's tokenizer.json, else the byte one."""
    if tokenizer:
        return load_tokenizer(tokenizer)
    return load_tokenizer(model_dir if os.path.exists(os.path.join(model_dir, "tokenizer.json"))
                          else "byte")


def task_scores(model_dirs: Sequence[str], *, num_prompts: int = 256, seed: int = 10_000,
                max_operand: int = 20, max_new_tokens: int = 6,
                tokenizer: str | None = None) -> dict[str, float]:
    """Greedy task accuracy of each HF export on `num_prompts` arithmetic prompts.

    The prompts are `data.arithmetic.preference_pairs(num_prompts, seed=seed)`'s: with the
    default seed, the held-out draws the trainers evaluate on (`train.seed + 10000`, seed 0).
    """
    pairs = data.arithmetic.preference_pairs(num_prompts, seed=seed, max_operand=max_operand,
                                             error_offsets=(1,))
    prompts = [p.prompt for p in pairs]
    return {path: task_accuracy(from_hf(path), tokenizer_for(path, tokenizer), prompts,
                                max_new_tokens=max_new_tokens) for path in model_dirs}


def summed_pair_logps_fn(graphdef, *, chunk_size: int = 128):
    """`fn(params, batch) -> {"logps": [B, 2]}` summed completion log-probs of a pair batch."""

    def fn(params, batch):
        tok, mask = pair_logps(nnx.merge(graphdef, params), batch, chunk_size=chunk_size)
        return {"logps": losses.reduce.masked_sum(tok, mask)}

    return jax.jit(fn)


def _pair_rows(tok, data_path: str, *, max_prompt_length: int, max_completion_length: int,
               on_error: str):
    policy = data.ErrorPolicy(on_error)
    examples = data.parse_records(data.read_records(data_path, policy=policy), policy=policy)
    if not examples or not all(isinstance(e, data.Pair) for e in examples):
        raise ValueError(f"{data_path}: expected preference pairs (prompt/chosen/rejected or a "
                         "dialogue pair format)")
    limits = data.Limits(max_prompt_length, max_completion_length)
    return data.tokenize_examples(examples, tok, limits, policy), limits, policy


def reward_scores(model_dir: str, data_path: str, *, batch_size: int = 16,
                  max_prompt_length: int = 256, max_completion_length: int = 256,
                  tokenizer: str | None = None, on_error: str = "raise") -> dict[str, float]:
    """TRL's reward-model metrics (`accuracy`, `margin`, min / mean / max reward) of the reward
    model export in `model_dir` (trunk + reward head) on the pairs of `data_path`."""
    tok = tokenizer_for(model_dir, tokenizer)
    rows, limits, policy = _pair_rows(tok, data_path, max_prompt_length=max_prompt_length,
                                      max_completion_length=max_completion_length,
                                      on_error=on_error)
    graphdef, params = nnx.split(load_reward_model(model_dir))

    @jax.jit
    def fn(p, batch):
        b, two, s = batch["input_ids"].shape
        rm = nnx.merge(graphdef, p)
        return {"scores": rm(batch["input_ids"].reshape(b * two, s),
                             batch["attention_mask"].reshape(b * two, s)).reshape(b, two)}

    scores = compute_arrays(fn, params, rows, pad_id=tok.pad_id,
                            buckets=data.default_buckets(limits.max_length),
                            batch_size=batch_size)["scores"]
    res = {"num_pairs": float(len(rows)),
           **{k: float(v) for k, v in losses.reward_metrics(scores[:, 0], scores[:, 1]).items()}}
    if policy.num_skipped:
        res["skipped"] = float(policy.num_skipped)
    return res


def pair_scores(model_dir: str, data_path: str, *, reference_dir: str | None = None,
                beta: float = 0.1, batch_size: int = 16, max_prompt_length: int = 256,
                max_completion_length: int = 256, tokenizer: str | None = None,
                on_error: str = "raise") -> dict[str, float]:
    """Preference metrics of the policy in `model_dir` on the pairs of `data_path`."""
    tok = tokenizer_for(model_dir, tokenizer)
    rows, limits, policy = _pair_rows(tok, data_path, max_prompt_length=max_prompt_length,
                                      max_completion_length=max_completion_length,
                                      on_error=on_error)
    models = {"policy": model_dir, **({"ref": reference_dir} if reference_dir else {})}
    sums = {}
    for name, path in models.items():
        graphdef, params = nnx.split(from_hf(path))
        sums[name] = compute_arrays(summed_pair_logps_fn(graphdef), params, rows,
                                    pad_id=tok.pad_id,
                                    buckets=data.default_buckets(limits.max_length),
                                    batch_size=batch_size)["logps"]
    logps = sums["policy"]
    res = {"num_pairs": float(len(rows)),
           "logps/chosen": float(logps[:, 0].mean()),
           "logps/rejected": float(logps[:, 1].mean()),
           "logps/accuracy": float(np.mean(logps[:, 0] > logps[:, 1]))}
    if policy.num_skipped:
        res["skipped"] = float(policy.num_skipped)
    if reference_dir:
        # Host-side summary of float32 log-probs: averaged in float64 (as numpy would).
        with jax.enable_x64(True):
            logps, ref = np.float64(logps), np.float64(sums["ref"])
            metrics = losses.preference_metrics(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1],
                                                beta=beta)
            res.update({k: float(v) for k, v in metrics.items() if k.startswith("rewards/")})
    return res
