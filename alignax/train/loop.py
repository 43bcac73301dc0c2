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
    **{name: "alignax.train.online:run" for name in ("ppo", "grpo", "rloo", "grao")},
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

# ------------------------------------------------------------------------------- trainer kit
# Shared by this loop and the trainers of `RUNNERS` (MAH-DPO, DCKD/ADPA, online RL).

def load_rows(cfg, tokenizer, build_examples_fn, *, log=print):
    """Examples -> tokenised rows under `data.on_error` (skips counted and logged).

    `build_examples_fn(policy) -> (train_examples, eval_examples)`.
    Returns `(rows, eval_rows, eval_examples, limits)`.
    """
    policy = D.ErrorPolicy(cfg.data.get("on_error", "raise"))
    train_ex, eval_ex = build_examples_fn(policy)
    limits = D.Limits(cfg.data.max_prompt_length, cfg.data.max_completion_length)
    rows = D.tokenize_examples(train_ex, tokenizer, limits, policy)
    eval_rows = D.tokenize_examples(eval_ex, tokenizer, limits, policy)
    if policy.num_skipped:
        log(f"data: {policy.summary()}")
    return rows, eval_rows, eval_ex, limits


def batch_layout(cfg, mesh) -> tuple[int, int, int, int]:
    """`(global batch size, micro-batches, process index, process count)` for the iterators.

    Checks `train.batch_size` against the mesh and `train.grad_accum`; "process" here is this
    host's slice of the global batch (one slice per process on a multi-host mesh).
    """
    batch_size = cfg.train.batch_size
    micro = int(cfg.train.get("grad_accum", 1))
    sh.check_batch_size(batch_size, mesh=mesh, num_microbatches=micro)
    rows_slice = sh.process_batch_slice(batch_size, mesh=mesh)
    n_local = rows_slice.stop - rows_slice.start
    return batch_size, micro, rows_slice.start // n_local, batch_size // n_local


def write_config(cfg, workdir: str) -> None:
    """Creates `workdir` and writes the resolved config as `config.json`."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(cfg.to_json(indent=2))


def export_tokenizer(cfg, export: str) -> None:
    """Copies the run's HF tokenizer files (`model.tokenizer`, else `model.path`) into the
    export, so the export alone can be sampled, evaluated or trained from. Byte: nothing."""
    import shutil

    src = cfg.model.get("tokenizer") or cfg.model.get("path") or "byte"
    if src == "byte" or not os.path.isdir(src) or os.path.abspath(src) == os.path.abspath(export):
        return
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(export, name))


def before_training(workdir: str, start: int, compute) -> dict[str, Any]:
    """The summary entries measured before the first step (`compute() -> dict`, e.g.
    `{"eval_before": ...}`): computed on a fresh run and kept in `WORKDIR/before.json`, read
    back on a resumed one, so a resumed run's summary equals an uninterrupted one's."""
    path = os.path.join(workdir, "before.json")
    if start == 0:
        out = compute()
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
        os.replace(path + ".tmp", path)
        return out
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


def write_summary(summary: dict[str, Any], workdir: str) -> dict[str, Any]:
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def checkpoint_manager_for(cfg, workdir: str):
    return ckpt.checkpoint_manager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                   every_steps=cfg.checkpoint.every_steps,
                                   keep=cfg.checkpoint.keep)


def restore_or_init(manager, params0, tx, *, seed: int, workdir: str, log=print, **state_kw):
    """The latest checkpoint in `manager` restored onto the mesh, else a fresh train state.

    Returns `(state, shardings, start_step, data_state)`; `data_state` is the saved iterator
    state (None for a fresh state).
    """
    if manager.latest_step() is None:
        state, shardings = init_train_state(lambda: params0, tx, seed=seed, **state_kw)
        return state, shardings, 0, None
    target, shardings = abstract_train_state(lambda: params0, tx, **state_kw)
    try:
        restored = ckpt.restore_checkpoint(manager, target=target)
    except ValueError as e:
        raise TrainingError(f"{workdir}/checkpoints: {e}") from None
    log(f"resumed from step {restored.step} in {workdir}")
    return restored.state, shardings, restored.step, restored.data_state


def eval_fn_for(objective):
    """The objective jitted as `(state, batch) -> (loss, metrics)` for evaluation."""
    return jax.jit(lambda st, b: objective(st.params, b, jax.random.PRNGKey(0),
                                           **({"ref_params": st.ref_params}
                                              if st.ref_params is not None else {})))


def mean_eval_metrics(cfg, eval_fn, state, eval_rows, make_batches, *, mesh,
                      weight_of=None) -> dict[str, float]:
    """Mean loss and metrics of `eval_fn` over up to `train.eval_batches` batches of the
    unshuffled iterator `make_batches()` over `eval_rows` ({} if they fill no batch).

    `weight_of(key)` may name another metric that counts the examples behind `key` in each
    batch (e.g. a per-objective metric and that objective's `examples`): such metrics are
    averaged weighted by it, so a batch without those examples (metric 0) does not dilute them.
    """
    if len(eval_rows) < cfg.train.batch_size:
        return {}
    batches = make_batches()
    out: dict[str, list] = {}
    for _ in range(max(1, min(len(eval_rows) // cfg.train.batch_size,
                              int(cfg.train.get("eval_batches", 4))))):
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


def check_finite(loss: float, step: int, *, manager, workdir: str) -> None:
    """Raises `TrainingError` naming the last good checkpoint when `loss` is NaN or inf."""
    if math.isfinite(loss):
        return
    manager.wait_until_finished()
    good = manager.latest_step()
    raise TrainingError(f"loss is {loss} at step {step}; stopped, last good checkpoint: "
                        f"{'none' if good is None else f'step {good}'} in {workdir}/checkpoints")


def save_step(manager, guard, *, step: int, state, data_state: dict, config: dict,
              final: bool, writer, log=print) -> bool:
    """Checkpoints `step` (every N steps and the `final` one); on SIGTERM saves at once, closes
    `writer` and returns True (the caller returns `{"preempted_at": step}`)."""
    ckpt.save_checkpoint(manager, step=step, state=state, data_state=data_state,
                         config=config, force=final)
    if not guard.should_stop(step):
        return False
    ckpt.save_checkpoint(manager, step=step, state=state, data_state=data_state,
                         config=config, force=True)
    manager.wait_until_finished()
    log(f"preempted: saved step {step}; rerun the same command to resume")
    writer.close()
    return True


def train_steps(cfg, workdir: str, *, mesh, state, start: int, step_fn, it, manager,
                evaluate=None, eval_every: int = 0, tokens_scale: int = 1, log=print,
                batch_metrics=None, data_state=None) -> dict[str, Any]:
    """Steps `start + 1 .. cfg.train.steps` of an offline trainer.

    Each step: next batch -> (multi-host) global batch -> `step_fn` -> NaN stop -> metrics row
    (+ `batch_metrics(host_batch)`, + `eval/...` every `eval_every` steps and at the end) ->
    metrics.jsonl -> checkpoint (data position from `data_state()`, default `it.state_dict()`)
    -> preemption save. Returns `{"preempted_at": step}` after a SIGTERM save, else
    `{"state", "steps", "final_loss", "wall_seconds", "last_eval"}`.
    """
    steps = cfg.train.steps
    data_state = data_state or it.state_dict
    data_cfg = json.loads(cfg.to_json())
    writer = M.MetricsWriter(workdir, resume_step=start)
    progress = M.Progress(steps, every=int(cfg.train.get("log_every", 10)))
    t0 = time.perf_counter()
    last_loss, row = float("nan"), {}
    with ckpt.PreemptionGuard() as guard:
        for s in range(start + 1, steps + 1):
            batch = next(it)
            tokens = int(np.sum(batch["attention_mask"])) * tokens_scale
            extra = batch_metrics(batch) if batch_metrics else {}
            if jax.process_count() > 1:
                batch = sh.host_local_to_global(batch, mesh=mesh)
            state, mets = step_fn(state, batch)
            loss = float(mets["loss"])
            check_finite(loss, s, manager=manager, workdir=workdir)
            last_loss = loss
            row = {**{k: float(v) for k, v in mets.items()}, **extra}
            row["tokens_per_second"] = progress.update(s, loss=loss, tokens=tokens)
            if evaluate is not None and eval_every and (s % eval_every == 0 or s == steps):
                row.update({f"eval/{k}": v for k, v in evaluate(state).items()})
            writer.write(s, row)
            if save_step(manager, guard, step=s, state=state, data_state=data_state(),
                         config=data_cfg, final=s == steps, writer=writer, log=log):
                return {"preempted_at": s}
    manager.wait_until_finished()
    writer.close()
    return {"state": state, "steps": steps, "final_loss": last_loss,
            "wall_seconds": time.perf_counter() - t0,
            "last_eval": {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}}


def run(cfg, workdir: str, *, log=print) -> dict[str, Any]:
    """Trains as `cfg` says, in `workdir` (resuming there if it holds checkpoints).

    Returns the summary written to `workdir/summary.json`.
    """
    if cfg.algorithm in RUNNERS:  # algorithms with a trainer of their own
        module, _, fn = RUNNERS[cfg.algorithm].partition(":")
        return getattr(importlib.import_module(module), fn)(cfg, workdir, log=log)
    alg = algorithm_of(cfg)
    write_config(cfg, workdir)

    mesh = sh.make_mesh(dict(cfg.mesh))
    tokenizer = build_tokenizer(cfg)
    rows, eval_rows, eval_ex, limits = load_rows(
        cfg, tokenizer, lambda policy: build_examples(cfg, alg.data_kind, policy), log=log)
    batch_size, micro, proc_index, proc_count = batch_layout(cfg, mesh)
    buckets = tuple(cfg.data.get("buckets", ()) or ()) or None
    it = D.BatchIterator(rows, global_batch_size=batch_size, pad_id=tokenizer.pad_id,
                         max_length=limits.max_length, buckets=buckets, seed=cfg.train.seed,
                         process_index=proc_index,
                         process_count=proc_count)

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
                        extra={"ld_alpha": cfg.loss.get("ld_alpha"),
                               "model": repr(model.config)}, log=log)
        rows = ref_cache.attach(rows, ref_cache.cached_ref_logps(ref_fn, params0, rows,
                                                                 **cache_kw))
        eval_rows = ref_cache.attach(eval_rows, ref_cache.cached_ref_logps(
            ref_fn, params0, eval_rows, **cache_kw)) if eval_rows else eval_rows
        it.rows = rows
    manager = checkpoint_manager_for(cfg, workdir)
    state, shardings, start, data_state = restore_or_init(
        manager, params0, tx, seed=cfg.train.seed, workdir=workdir, log=log, mesh=mesh,
        reference="copy" if alg.reference and not precompute else None,
        ref_dtype=jnp.dtype(ref_dtype) if ref_dtype else None)
    if data_state is not None:
        it.load_state_dict(data_state)

    objective = _objective(cfg, alg, graphdef)
    step_fn = make_train_step(objective, tx, mesh=mesh, state_shardings=shardings,
                              num_microbatches=micro, learning_rate_fn=lr_fn)
    eval_fn = eval_fn_for(objective)
    eval_every = int(cfg.train.get("eval_every", 0) or 0)
    task_eval = (not cfg.data.get("path") and not alg.reward_model
                 and alg.data_kind in ("sft", "pairs", "unpaired"))

    def evaluate(st) -> dict[str, float]:
        res = mean_eval_metrics(cfg, eval_fn, st, eval_rows, lambda: D.BatchIterator(
            eval_rows, global_batch_size=batch_size, pad_id=tokenizer.pad_id,
            max_length=limits.max_length, buckets=buckets, shuffle=False), mesh=mesh)
        if task_eval:
            model_now = nnx.merge(graphdef, st.params)
            res["task_accuracy"] = task_accuracy(
                model_now, tokenizer, _eval_prompts(eval_ex)[:int(cfg.train.get(
                    "eval_prompts", 128))], max_new_tokens=cfg.data.max_completion_length)
        return res

    summary: dict[str, Any] = {"algorithm": cfg.algorithm, **before_training(
        workdir, start, lambda: {"eval_before": evaluate(state)} if eval_every else {})}
    result = train_steps(cfg, workdir, mesh=mesh, state=state, start=start, step_fn=step_fn,
                         it=it, manager=manager, evaluate=evaluate, eval_every=eval_every,
                         tokens_scale=proc_count, log=log)
    if "preempted_at" in result:
        return result
    state, last_eval = result.pop("state"), result.pop("last_eval")
    summary = {"algorithm": cfg.algorithm, "steps": result["steps"],
               "final_loss": result["final_loss"], "wall_seconds": result["wall_seconds"],
               **{k: v for k, v in summary.items() if k != "algorithm"}}
    if eval_every:
        summary["eval_after"] = last_eval if start < steps else evaluate(state)
    if cfg.train.get("export_hf", True):
        export = os.path.join(workdir, "hf")
        trained = nnx.merge(graphdef, jax.device_get(state.params))
        (save_reward_model if alg.reward_model else to_hf)(trained, export)
        export_tokenizer(cfg, export)
        summary["hf_export"] = export
    return write_summary(summary, workdir)
