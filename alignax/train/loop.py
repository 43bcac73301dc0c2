"""The offline training loop behind `alignax train`: SFT, RM, DPO family, SimPO/CPO/ORPO, KTO.

config -> tokenizer, model, data -> sharded train state (resumed from the latest checkpoint in
the workdir if any) -> jitted step -> metrics.jsonl / TensorBoard / progress -> eval every N
steps -> checkpoints every N steps -> final checkpoint, HF export and `summary.json`.

The loop reads the config; everything it calls takes keyword arguments.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import checkpoint as ckpt
from alignax import data as D
from alignax import metrics as M
from alignax import sharding as sh
from alignax.models import from_hf, init_model, load_tokenizer, tiny_config, to_hf
from alignax.models.reward_model import RewardModel, save_reward_model
from alignax.sampling import completions_text, generate
from alignax.train import objectives as O
from alignax.train import ref_cache
from alignax.train.optim import optimizer_from_config, schedule_from_config
from alignax.train.state import abstract_train_state, init_train_state
from alignax.train.step import make_train_step


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, incompatible checkpoint): one line for the CLI."""


@dataclasses.dataclass(frozen=True)
class Algorithm:
    objective: str          # key of objectives.OBJECTIVES
    data_kind: str          # "sft", "pairs" or "unpaired"
    reference: bool         # needs a frozen reference
    reward_model: bool = False  # trains a trunk + reward head instead of an LM


ALGORITHMS = {
    "sft": Algorithm("sft", "sft", False),
    "dpo": Algorithm("dpo", "pairs", True),
    "simpo": Algorithm("reference_free", "pairs", False),
    "cpo": Algorithm("reference_free", "pairs", False),
    "orpo": Algorithm("reference_free", "pairs", False),
    "kto": Algorithm("kto", "unpaired", True),
    "reward_model": Algorithm("reward", "pairs", False, reward_model=True),
}

def _task_kwargs(c) -> dict:
    offsets = tuple(c.get("error_offsets", ()) or ()) or D.synthetic.ERROR_OFFSETS
    return dict(max_operand=c.max_operand, error_offsets=offsets)


_SYNTHETIC = {
    "sft": lambda n, seed, c: D.synthetic.sft_examples(n, seed=seed, error_rate=c.error_rate,
                                                       **_task_kwargs(c)),
    "pairs": lambda n, seed, c: D.synthetic.preference_pairs(n, seed=seed, **_task_kwargs(c)),
    "unpaired": lambda n, seed, c: D.synthetic.unpaired_examples(n, seed=seed,
                                                                 **_task_kwargs(c)),
}


# Algorithms whose trainer lives in its own module: name -> "module:function", the function
# taking (cfg, workdir, *, log) like `run`.
RUNNERS: dict[str, str] = {
    "mah_dpo": "alignax.train.multihead:run",
    "dckd": "alignax.train.distill:run",
    "adpa": "alignax.train.distill:run",
}


def algorithm_of(cfg) -> Algorithm:
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"config field 'algorithm': unknown {cfg.algorithm!r}; known: "
                         f"{sorted(set(ALGORITHMS) | set(RUNNERS))}")
    return ALGORITHMS[cfg.algorithm]


# ------------------------------------------------------------------------------- building

def build_tokenizer(cfg):
    path = cfg.model.get("tokenizer") or cfg.model.get("path") or "byte"
    return load_tokenizer(path)


def build_model(cfg):
    m = cfg.model
    if m.get("path"):
        return from_hf(m.path, dtype=m.get("dtype") or None,
                       param_dtype=m.get("param_dtype") or None, remat=m.get("remat", "none"))
    overrides = dict(m.get("overrides", {}) or {})
    for key in ("dtype", "param_dtype", "remat"):
        if m.get(key):
            overrides[key] = m[key]
    return init_model(tiny_config(m.get("name", "llama"), **overrides), seed=cfg.train.seed)


def build_examples(cfg, kind: str, policy: D.ErrorPolicy):
    """(train examples, eval examples) from `data.path` or the built-in synthetic task."""
    d = cfg.data
    objectives = list(d.get("objectives", ()) or ()) or None
    if d.get("path"):
        records = D.read_records(d.path, policy=policy)
        train = D.parse_records(records, fmt=d.get("format", "auto"), objectives=objectives,
                                policy=policy)
        if d.get("eval_path"):
            records = D.read_records(d.eval_path, policy=policy)
            evals = D.parse_records(records, fmt=d.get("format", "auto"),
                                    objectives=objectives, policy=policy)
        else:
            n_eval = int(len(train) * float(d.get("eval_fraction", 0.05)))
            train, evals = train[:len(train) - n_eval], train[len(train) - n_eval:]
        return train, evals
    if d.get("task", "arithmetic") != "arithmetic":
        raise ValueError(f"config field 'data.task': unknown task {d.task!r}; set data.path to "
                         "a local file or use task='arithmetic'")
    make = _SYNTHETIC[kind]
    return (make(d.num_train, cfg.train.seed, d),
            make(d.num_eval, cfg.train.seed + 10_000, d))


def _objective(cfg, alg: Algorithm, graphdef):
    loss = dict(cfg.loss)
    name = loss.pop("name")
    chunk = int(cfg.train.get("logits_chunk", 128))
    if alg.objective == "dpo":
        # A weighted list of types (MPO / RPO) may be written "sigmoid,sft" on the command line.
        types = [t.strip() for t in name.split(",")] if isinstance(name, str) else list(name)
        return O.dpo_objective(graphdef, loss_types=types, chunk_size=chunk, **loss)
    if alg.objective == "reference_free":
        return O.reference_free_objective(graphdef, loss=name, chunk_size=chunk, **loss)
    if alg.objective == "reward":
        return O.reward_objective(graphdef, **loss)
    if alg.objective == "kto":
        if name != "kto":
            raise ValueError(f"config field 'loss.name': KTO supports 'kto', got {name!r}")
        return O.kto_objective(graphdef, chunk_size=chunk, **loss)
    return O.sft_objective(graphdef, chunk_size=chunk)


# ------------------------------------------------------------------------------- evaluation

def task_accuracy(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                  batch_size: int = 64) -> float:
    """Greedy accuracy on the synthetic arithmetic task."""
    correct = []
    width = max(len(tokenizer.encode(p)) for p in prompts)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        ids = [tokenizer.encode(p) for p in chunk]
        pad = batch_size - len(ids)
        tokens, _, mask = generate(model, ids + [ids[0]] * pad, max_new_tokens=max_new_tokens,
                                   eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                   prompt_width=width)
        texts = completions_text(tokenizer, tokens[:len(chunk)], mask[:len(chunk)])
        correct += [D.synthetic.is_correct(p, t) for p, t in zip(chunk, texts)]
    return float(np.mean(correct))


def _eval_prompts(examples) -> list[str]:
    return [e.prompt for e in examples if isinstance(e.prompt, str)]


# ------------------------------------------------------------------------------- the loop

def run(cfg, workdir: str, *, log=print) -> dict[str, Any]:
    """Trains as `cfg` says, in `workdir` (resuming there if it holds checkpoints).

    Returns the summary written to `workdir/summary.json`.
    """
    if cfg.algorithm in RUNNERS:  # algorithms with a trainer of their own
        module, _, fn = RUNNERS[cfg.algorithm].partition(":")
        return getattr(importlib.import_module(module), fn)(cfg, workdir, log=log)
    alg = algorithm_of(cfg)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(cfg.to_json(indent=2))

    mesh = sh.make_mesh(dict(cfg.mesh))
    tokenizer = build_tokenizer(cfg)
    policy = D.ErrorPolicy(cfg.data.get("on_error", "raise"))
    train_ex, eval_ex = build_examples(cfg, alg.data_kind, policy)
    limits = D.Limits(cfg.data.max_prompt_length, cfg.data.max_completion_length)
    rows = D.tokenize_examples(train_ex, tokenizer, limits, policy)
    eval_rows = D.tokenize_examples(eval_ex, tokenizer, limits, policy)
    if policy.num_skipped:
        log(f"data: {policy.summary()}")
    batch_size = cfg.train.batch_size
    micro = int(cfg.train.get("grad_accum", 1))
    sh.check_batch_size(batch_size, mesh=mesh, num_microbatches=micro)
    rows_slice = sh.process_batch_slice(batch_size, mesh=mesh)
    n_local = rows_slice.stop - rows_slice.start
    buckets = tuple(cfg.data.get("buckets", ()) or ()) or None
    it = D.BatchIterator(rows, global_batch_size=batch_size, pad_id=tokenizer.pad_id,
                         max_length=limits.max_length, buckets=buckets, seed=cfg.train.seed,
                         process_index=rows_slice.start // n_local,
                         process_count=batch_size // n_local)

    model = build_model(cfg)
    if alg.reward_model:
        model = RewardModel(model, rngs=nnx.Rngs(cfg.train.seed))
    graphdef, params0 = nnx.split(model)
    steps = cfg.train.steps
    optim = dict(cfg.optim)
    tx = optimizer_from_config(optim, total_steps=steps)
    lr_fn = schedule_from_config(optim, total_steps=steps)
    ref_cfg = dict(cfg.get("reference", {}) or {})
    ref_dtype = ref_cfg.get("dtype") or None
    precompute = alg.reference and bool(ref_cfg.get("precompute", False))
    if precompute:
        if alg.objective != "dpo":
            raise ValueError("config field 'reference.precompute': only the DPO family can "
                             f"precompute reference log-probs, not {cfg.algorithm!r}")
        ref_fn = jax.jit(O.reference_logps_fn(graphdef, chunk_size=int(cfg.train.get(
            "logits_chunk", 128)), ld_alpha=cfg.loss.get("ld_alpha")))
        cache_kw = dict(cache_dir=ref_cfg.get("cache_dir") or os.path.join(workdir, "ref_cache"),
                        pad_id=tokenizer.pad_id, buckets=it.buckets, batch_size=batch_size,
                        extra={"ld_alpha": cfg.loss.get("ld_alpha")}, log=log)
        rows = ref_cache.attach(rows, ref_cache.cached_ref_logps(ref_fn, params0, rows,
                                                                 **cache_kw))
        eval_rows = ref_cache.attach(eval_rows, ref_cache.cached_ref_logps(
            ref_fn, params0, eval_rows, **cache_kw)) if eval_rows else eval_rows
        it.rows = rows
    state_kw = dict(mesh=mesh, reference="copy" if alg.reference and not precompute else None,
                    ref_dtype=jnp.dtype(ref_dtype) if ref_dtype else None)
    manager = ckpt.checkpoint_manager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                      every_steps=cfg.checkpoint.every_steps,
                                      keep=cfg.checkpoint.keep)
    start = 0
    if manager.latest_step() is not None:
        target, shardings = abstract_train_state(lambda: params0, tx, **state_kw)
        try:
            restored = ckpt.restore_checkpoint(manager, target=target)
        except ValueError as e:
            raise TrainingError(f"{workdir}/checkpoints: {e}") from None
        state, start = restored.state, restored.step
        it.load_state_dict(restored.data_state)
        log(f"resumed from step {start} in {workdir}")
    else:
        state, shardings = init_train_state(lambda: params0, tx, seed=cfg.train.seed, **state_kw)

    objective = _objective(cfg, alg, graphdef)
    step_fn = make_train_step(objective, tx, mesh=mesh, state_shardings=shardings,
                              num_microbatches=micro, learning_rate_fn=lr_fn)
    eval_fn = jax.jit(lambda st, b: objective(st.params, b, jax.random.PRNGKey(0),
                                              **({"ref_params": st.ref_params}
                                                 if st.ref_params is not None else {})))
    writer = M.MetricsWriter(workdir, resume_step=start)
    progress = M.Progress(steps, every=int(cfg.train.get("log_every", 10)))
    eval_every = int(cfg.train.get("eval_every", 0) or 0)
    task_eval = (not cfg.data.get("path") and not alg.reward_model
                 and alg.data_kind in ("sft", "pairs", "unpaired"))

    def evaluate(st) -> dict[str, float]:
        out: dict[str, list] = {}
        n = max(1, min(len(eval_rows) // batch_size, int(cfg.train.get("eval_batches", 4))))
        if len(eval_rows) >= batch_size:
            ev = D.BatchIterator(eval_rows, global_batch_size=batch_size,
                                 pad_id=tokenizer.pad_id, max_length=limits.max_length,
                                 buckets=buckets, shuffle=False)
            for _ in range(n):
                with jax.set_mesh(mesh):
                    loss, mets = eval_fn(st, next(ev))
                for k, v in dict(mets, loss=loss).items():
                    out.setdefault(k, []).append(float(v))
        res = {k: float(np.mean(v)) for k, v in out.items()}
        if task_eval:
            model_now = nnx.merge(graphdef, st.params)
            res["task_accuracy"] = task_accuracy(
                model_now, tokenizer, _eval_prompts(eval_ex)[:int(cfg.train.get(
                    "eval_prompts", 128))], max_new_tokens=cfg.data.max_completion_length)
        return res

    data_cfg = json.loads(cfg.to_json())
    history: dict[str, Any] = {}
    if start == 0 and eval_every:
        history["eval_before"] = evaluate(state)
    t0 = time.perf_counter()
    last_loss = float("nan")
    with ckpt.PreemptionGuard() as guard:
        for s in range(start + 1, steps + 1):
            batch = next(it)
            tokens = int(np.sum(batch["attention_mask"])) * (batch_size // n_local)
            if jax.process_count() > 1:
                batch = sh.host_local_to_global(batch, mesh=mesh)
            state, mets = step_fn(state, batch)
            loss = float(mets["loss"])
            if not math.isfinite(loss):
                manager.wait_until_finished()
                good = manager.latest_step()
                raise TrainingError(f"loss is {loss} at step {s}; stopped, last good checkpoint: "
                                    f"{'none' if good is None else f'step {good}'} in "
                                    f"{workdir}/checkpoints")
            last_loss = loss
            row = {k: float(v) for k, v in mets.items()}
            row["tokens_per_second"] = progress.update(s, loss=loss, tokens=tokens)
            if eval_every and (s % eval_every == 0 or s == steps):
                row.update({f"eval/{k}": v for k, v in evaluate(state).items()})
            writer.write(s, row)
            ckpt.save_checkpoint(manager, step=s, state=state, data_state=it.state_dict(),
                                 config=data_cfg, force=s == steps)
            if guard.should_stop(s):
                ckpt.save_checkpoint(manager, step=s, state=state, data_state=it.state_dict(),
                                     config=data_cfg, force=True)
                manager.wait_until_finished()
                log(f"preempted: saved step {s}; rerun the same command to resume")
                writer.close()
                return {"preempted_at": s}
    manager.wait_until_finished()
    writer.close()
    summary = {"algorithm": cfg.algorithm, "steps": steps, "final_loss": last_loss,
               "wall_seconds": time.perf_counter() - t0, **history}
    if eval_every:
        summary["eval_after"] = {k[len("eval/"):]: v for k, v in row.items()
                                 if k.startswith("eval/")} if start < steps else evaluate(state)
    if cfg.train.get("export_hf", True):
        export = os.path.join(workdir, "hf")
        trained = nnx.merge(graphdef, jax.device_get(state.params))
        (save_reward_model if alg.reward_model else to_hf)(trained, export)
        summary["hf_export"] = export
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary
