"""The engine behind `alignax train`: one `run(cfg, workdir, setup)` for every algorithm.

    setup(ctx) -> Plan           the algorithm: parameters, loss_fn, data, reference, hooks
    restore-or-init              the latest checkpoint in WORKDIR/checkpoints, else a new state
    update = make_train_step     the loss_fn's jitted, sharded update
    for each step:               the plan's step (offline: next batch -> update; online:
                                 rollout -> advantages -> updates), NaN stop, metrics.jsonl /
                                 TensorBoard / progress, eval every N steps, checkpoint every
                                 N steps (with the data position), SIGTERM save
    at the end                   final eval, extra summary entries, HF export, summary.json

The engine names no algorithm: everything that differs between them is in the `Plan` that
`alignax.algorithms` builds. Running again into the same workdir resumes from the latest
checkpoint, and the continued run is identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alignax import checkpoint, config, distributed, metrics
from alignax.models import lora
from alignax.train.context import Context
from alignax.train.evaluation import eval_fn_for, mean_eval_metrics
from alignax.train.export import export_tokenizer
from alignax.train.optim import optimizer_from_config, schedule_from_config
from alignax.train.state import TrainState, abstract_train_state, init_train_state
from alignax.train.step import make_train_step

Update = Callable[[TrainState, Any], tuple[TrainState, dict]]
Step = Callable[[TrainState], tuple[TrainState, dict[str, float], int]]


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, incompatible checkpoint): one line for the CLI."""


@dataclasses.dataclass
class Plan:
    """What an algorithm hands the engine.

    Attributes:
      params: the trainable parameters' initial values (an `nnx.State` or a dict of them).
      loss_fn: `(params, batch, rng, *, ref_params=None) -> (loss, metrics)`, the update's.
      data: the run's resumable data state: `state_dict()` / `load_state_dict(d)` (checkpointed
        every save); offline, also the iterator of training batches.
      export: `(params on the host, directory)` -> writes the HF export; None = no export.
      reference: frozen parameters in the state: "copy" (of `reference_part(params)`),
        `() -> params`, or None. A LoRA run (`lora.rank > 0`) stores no copy: its reference is
        the base model, the parameters with the adapters switched off
        (`models.lora.lora_base_params`), computed where it is used.
      reference_part: `params -> the part "copy" copies` (e.g. the policy of a policy +
        critic tree); None = all of `params`.
      ref_dtype: cast the reference's floating leaves to this dtype ("" = as they are).
      optimizer: default: the `optim` section's AdamW.
      updates_per_step: optimizer updates per training step (the schedule's length is
        `train.steps` times it).
      step: online algorithms: `make_step(update) -> step(state) -> (state, metrics, tokens)`,
        given the jitted update; None = one update on the next batch of `data`.
      eval_batches: `() -> iterator` of held-out batches for the loss-fn metrics; None = none.
      eval_weight_of: see `evaluation.mean_eval_metrics`.
      evaluate: `state -> metrics` measured besides (e.g. greedy task accuracy).
      before: `() -> summary entries` measured once before the first step.
      finish: `state -> summary entries` measured once after the last step.
      batch_metrics: offline: `host batch -> metrics` of the batch (e.g. examples seen).
      summary: entries added to `summary.json`.
    """

    params: Any
    loss_fn: Callable
    data: Any
    export: Callable[[Any, str], None] | None = None
    reference: str | Callable[[], Any] | None = None
    reference_part: Callable[[Any], Any] | None = None
    ref_dtype: str = ""
    optimizer: optax.GradientTransformation | None = None
    updates_per_step: int = 1
    step: Callable[[Update], Step] | None = None
    eval_batches: Callable[[], Iterator[dict]] | None = None
    eval_weight_of: Callable[[str], str | None] | None = None
    evaluate: Callable[[TrainState], dict[str, float]] | None = None
    before: Callable[[], dict[str, Any]] | None = None
    finish: Callable[[TrainState], dict[str, Any]] | None = None
    batch_metrics: Callable[[dict], dict[str, float]] | None = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------- files

def write_config(cfg, workdir: str) -> None:
    """Creates `workdir` and writes the resolved config as `config.json`.

    A workdir that already holds checkpoints was trained with the `config.json` there: a
    config that differs is a `ConfigError` listing the differences, unless
    `resume.allow_changes` (e.g. more steps); the new config is then written.
    """
    path = os.path.join(workdir, "config.json")
    ckpts = os.path.join(workdir, "checkpoints")
    if (os.path.exists(path) and os.path.isdir(ckpts)
            and any(name.isdigit() for name in os.listdir(ckpts))):
        with open(path, encoding="utf-8") as f:
            changes = config.diff(json.load(f), json.loads(cfg.to_json()))
        if changes and not cfg.resume.allow_changes:
            raise config.ConfigError(
                f"{workdir} holds checkpoints of a run with another config ({len(changes)} "
                f"changes: {'; '.join(changes[:8])}{'; ...' if len(changes) > 8 else ''}); "
                "resume with the same config, use another workdir, or set "
                "--config.resume.allow_changes=True")
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_primary():
        with open(path, "w", encoding="utf-8") as f:
            f.write(cfg.to_json(indent=2))


def write_summary(summary: dict[str, Any], workdir: str) -> dict[str, Any]:
    if distributed.is_primary():
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return summary


def before_training(workdir: str, start: int, compute) -> dict[str, Any]:
    """The summary entries measured before the first step (`compute() -> dict`): computed on a
    fresh run and kept in `WORKDIR/before.json`, read back on a resumed one, so a resumed run's
    summary equals an uninterrupted one's."""
    path = os.path.join(workdir, "before.json")
    if start == 0:
        out = compute()
        if distributed.is_primary():
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(out, f, indent=2)
            os.replace(path + ".tmp", path)
        return out
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


# ------------------------------------------------------------------------------- state

def restore_or_init(manager, params0, tx, *, seed: int, workdir: str, log=print, **state_kw):
    """The latest checkpoint in `manager` restored onto the mesh, else a fresh train state.

    Returns `(state, shardings, start_step, data_state)`; `data_state` is the saved data
    position (None for a fresh state).
    """
    if manager.latest_step() is None:
        state, shardings = init_train_state(lambda: params0, tx, seed=seed, **state_kw)
        return state, shardings, 0, None
    target, shardings = abstract_train_state(lambda: params0, tx, **state_kw)
    try:
        restored = checkpoint.restore_checkpoint(manager, target=target)
    except ValueError as e:
        raise TrainingError(f"{workdir}/checkpoints: {e}") from None
    log(f"resumed from step {restored.step} in {workdir}")
    return restored.state, shardings, restored.step, restored.data_state


def _reference_and_trainable(plan: Plan):
    """`(trainable, reference, reference_fn)` for the state and the step: with LoRA adapters
    in `plan.params`, only they (and small heads) train, and a "copy" reference becomes the
    base model computed from the parameters (no stored copy)."""
    trainable = lora.lora_trainable(plan.params)
    if all(jax.tree.leaves(trainable)):
        return None, plan.reference, None
    if plan.reference != "copy":
        return trainable, plan.reference, None
    part = plan.reference_part or (lambda p: p)
    return trainable, None, lambda params: lora.lora_base_params(part(params))


def check_finite(loss: float, step: int, *, manager, workdir: str) -> None:
    """Raises `TrainingError` naming the last good checkpoint when `loss` is NaN or inf."""
    if math.isfinite(loss):
        return
    manager.wait_until_finished()
    good = manager.latest_step()
    raise TrainingError(f"loss is {loss} at step {step}; stopped, last good checkpoint: "
                        f"{'none' if good is None else f'step {good}'} in {workdir}/checkpoints")


def offline_step(ctx: Context, plan: Plan) -> Callable[[Update], Step]:
    """One update on the next batch of `plan.data` (a multi-host global batch on a pod)."""
    def make(update: Update) -> Step:
        def step(state):
            batch = next(plan.data)
            tokens = distributed.process_sum(int(np.sum(batch["attention_mask"])))
            extra = plan.batch_metrics(batch) if plan.batch_metrics else {}
            if jax.process_count() > 1:
                batch = distributed.host_local_to_global(batch, mesh=ctx.mesh)
            state, mets = update(state, batch)
            return state, {**{k: float(v) for k, v in mets.items()}, **extra}, tokens

        return step

    return make


def _evaluator(ctx: Context, plan: Plan, reference_fn=None):
    """`state -> eval metrics`: loss-fn metrics over held-out batches plus `plan.evaluate`."""
    eval_fn = eval_fn_for(plan.loss_fn, reference_fn)

    def evaluate(state) -> dict[str, float]:
        res = {}
        if plan.eval_batches is not None:
            batches = plan.eval_batches()
            num = min(len(batches.rows) // ctx.batch_size, ctx.cfg.train.eval_batches)
            if num > 0:
                res = mean_eval_metrics(eval_fn, state, batches, num_batches=num,
                                        mesh=ctx.mesh, weight_of=plan.eval_weight_of)
        if plan.evaluate is not None:
            res.update(plan.evaluate(state))
        return res

    return evaluate


# ------------------------------------------------------------------------------- the loop

def train_steps(ctx: Context, *, state, start: int, step: Step, data, manager,
                evaluate) -> dict[str, Any]:
    """Steps `start + 1 .. train.steps`: step -> NaN stop -> metrics row (+ `eval/...` every
    `train.eval_every` steps and at the end) -> metrics.jsonl -> checkpoint -> SIGTERM save.

    Returns `{"preempted_at": step}` after a SIGTERM save, else `{"state", "steps",
    "final_loss", "wall_seconds", "last_eval"}`.
    """
    cfg = ctx.cfg
    steps, eval_every = cfg.train.steps, cfg.train.eval_every
    config_json = json.loads(cfg.to_json())
    wandb = (dict(project=cfg.logging.wandb_project, name=cfg.logging.wandb_name,
                  config=config_json) if cfg.logging.wandb else None)
    writer = metrics.MetricsWriter(ctx.workdir, resume_step=start, wandb=wandb,
                                   enabled=distributed.is_primary())
    seen = writer.last_row().get("num_tokens") or 0 if start else 0
    progress = metrics.Progress(steps, every=cfg.train.log_every, start=start)
    t0 = time.perf_counter()
    last_loss, row = float("nan"), {}
    with checkpoint.PreemptionGuard() as guard:
        for s in range(start + 1, steps + 1):
            state, row, tokens = step(state)
            last_loss = row["loss"]
            check_finite(last_loss, s, manager=manager, workdir=ctx.workdir)
            rate = progress.update(s, loss=last_loss, tokens=tokens,
                                   extra={k: row[k] for k in ("reward",) if k in row})
            row.setdefault("tokens_per_second", rate)
            seen += tokens
            row["num_tokens"] = seen  # cumulative, as TRL logs it
            if eval_every and (s % eval_every == 0 or s == steps):
                res = evaluate(state)
                if res:
                    ctx.log(f"eval at step {s}: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                                              sorted(res.items())))
                row.update({f"eval/{k}": v for k, v in res.items()})
            writer.write(s, row)
            final = s == steps
            saved = checkpoint.save_checkpoint(manager, step=s, state=state,
                                               data_state=data.state_dict(),
                                               config=config_json, force=final)
            if guard.should_stop(s):
                if not saved:  # (on several processes orbax saves at the sync point itself)
                    checkpoint.save_checkpoint(manager, step=s, state=state,
                                               data_state=data.state_dict(),
                                               config=config_json, force=True)
                manager.wait_until_finished()
                ctx.log(f"preempted: saved step {s}; rerun the same command to resume")
                writer.close()
                return {"preempted_at": s}
    manager.wait_until_finished()
    writer.close()
    return {"state": state, "steps": steps, "final_loss": last_loss,
            "wall_seconds": time.perf_counter() - t0,
            "last_eval": {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}}


def run(cfg, workdir: str, setup: Callable[[Context], Plan], *, log=print,
        extra_summary: dict | None = None) -> dict[str, Any]:
    """Trains as `cfg` (resolved) says, in `workdir` (resuming there if it holds checkpoints),
    with the plan `setup(ctx)` builds. Returns the summary written to `workdir/summary.json`
    (or `{"preempted_at": step}` after a SIGTERM save)."""
    write_config(cfg, workdir)
    ctx = Context(cfg, workdir, log=log)
    plan = setup(ctx)
    steps = cfg.train.steps
    total = steps * plan.updates_per_step
    tx = plan.optimizer or optimizer_from_config(dict(cfg.optim), total_steps=total)
    lr_fn = schedule_from_config(dict(cfg.optim), total_steps=total)
    manager = checkpoint.checkpoint_manager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep)
    trainable, reference, reference_fn = _reference_and_trainable(plan)
    ctx.reference_of = ((lambda st: st.ref_params) if reference_fn is None
                        else (lambda st: reference_fn(st.params)))
    state, shardings, start, data_state = restore_or_init(
        manager, plan.params, tx, seed=cfg.train.seed, workdir=workdir, log=log,
        mesh=ctx.mesh, reference=reference, reference_part=plan.reference_part,
        trainable=trainable, ref_dtype=jnp.dtype(plan.ref_dtype) if plan.ref_dtype else None)
    summary_path = os.path.join(workdir, "summary.json")
    if start >= steps and os.path.exists(summary_path):
        log(f"{workdir} already holds all {steps} steps; nothing to do (summary.json kept)")
        with open(summary_path, encoding="utf-8") as f:
            return json.load(f)
    if data_state is not None:
        plan.data.load_state_dict(data_state)
    update = make_train_step(plan.loss_fn, tx, mesh=ctx.mesh, state_shardings=shardings,
                             num_microbatches=ctx.micro, learning_rate_fn=lr_fn,
                             trainable=trainable, reference_fn=reference_fn)
    step = (plan.step or offline_step(ctx, plan))(update)
    evaluate = _evaluator(ctx, plan, reference_fn)
    eval_every = cfg.train.eval_every

    def before() -> dict[str, Any]:
        out = {"eval_before": evaluate(state)} if eval_every else {}
        if plan.before is not None:
            out.update(plan.before())
        return out

    history = before_training(workdir, start, before)
    if start == 0 and history.get("eval_before"):
        log("eval before training: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                                   sorted(history["eval_before"].items())))
    result = train_steps(ctx, state=state, start=start, step=step, data=plan.data,
                         manager=manager, evaluate=evaluate)
    if "preempted_at" in result:
        return result
    state, last_eval = result.pop("state"), result.pop("last_eval")
    summary = {"algorithm": cfg.algorithm, **result, **plan.summary, **(extra_summary or {}),
               **history, **({"data": ctx.data_report} if ctx.data_report else {})}
    if eval_every:
        summary["eval_after"] = last_eval if start < steps else evaluate(state)
    if plan.finish is not None:
        summary.update(plan.finish(state))
    if cfg.train.export_hf and plan.export is not None:
        export = os.path.join(workdir, "hf")
        params = distributed.host_tree(state.params)  # every process takes part
        if distributed.is_primary():
            plan.export(params, export)
            export_tokenizer(cfg, export)
        summary["hf_export"] = export
    return write_summary(summary, workdir)

