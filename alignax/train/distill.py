"""The DCKD / ADPA trainer (arXiv 2502.17927): a student distilled from a DPO-aligned teacher.

    alignax train --config experiments/configs/dckd.py --workdir runs/dckd \
        --config.model.path=STUDENT_SFT/hf --config.teacher.path=TEACHER_DPO/hf
    alignax train --config experiments/configs/adpa.py --workdir runs/adpa \
        --config.model.path=STUDENT_SFT/hf --config.teacher.path=TEACHER_DPO/hf \
        --config.teacher.ref_path=TEACHER_SFT/hf

config -> tokenizer, student, teacher(s) (same vocabulary, checked) -> preference rows; for
ADPA the rejected response of each row is replaced by a sample of the student itself (drawn
once, cached) -> teacher outputs either inside the step (teacher parameters in the train state
as `ref_params`, sharded like the policy) or cached on disk once (`teacher.precompute=True`:
top-k probabilities + rest mass, or top-k advantages) -> jitted step -> metrics / eval /
checkpoints / HF export / `summary.json`, exactly as the offline loop (`train/loop.py`).

ADPA+ is ADPA started from a DCKD student: run adpa.py with `--config.model.path=` the DCKD
run's `hf` export; the rejected samples are then drawn from the DCKD student.

Objectives and teacher arrays: `train/distill_objectives.py`; teachers, samples and the cache:
`train/distill_data.py`; the losses: `losses/distill.py`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from alignax import data as D
from alignax import sharding as sh
from alignax.models import to_hf
from alignax.train import distill_data as DD
from alignax.train import loop, ref_cache
from alignax.train import objectives as O
from alignax.train.distill_objectives import OBJECTIVES, teacher_outputs_fn
from alignax.train.optim import optimizer_from_config, schedule_from_config
from alignax.train.state import cast_floating
from alignax.train.step import make_train_step

TEACHERS = {"dckd": ("dpo",), "adpa": ("dpo", "ref")}
ADPA_EXTRAS = ("importance_sampling", "kl_penalty_weight", "dpo_weight")


def _loss_kwargs(cfg) -> dict:
    loss = dict(cfg.loss)
    name = loss.pop("name")
    if name != cfg.algorithm:
        raise ValueError(f"config field 'loss.name': algorithm {cfg.algorithm!r} needs "
                         f"loss.name={cfg.algorithm!r}, got {name!r}")
    return loss


def _objective(cfg, graphdef, teacher_graphdefs, *, width: int):
    kw = dict(width=width, top_k=int(cfg.teacher.top_k),
              chunk_size=int(cfg.train.get("logits_chunk", 128)), **_loss_kwargs(cfg))
    if cfg.algorithm == "dckd":
        return OBJECTIVES["dckd"](graphdef, teacher_graphdefs["dpo"], **kw)
    return OBJECTIVES["adpa"](graphdef, teacher_graphdefs,
                              advantage_beta=float(cfg.teacher.get("advantage_beta", 1.0)), **kw)


def _prepare_rows(cfg, rows, eval_rows, *, model, params0, graphdef, tokenizer, cache_dir,
                  buckets, log):
    """ADPA: rejected := a student sample; the initial student's log-probs if extras need them."""
    if cfg.algorithm != "adpa":
        return rows, eval_rows
    kw = dict(cache_dir=cache_dir, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
              max_new_tokens=cfg.data.max_completion_length, sampling=dict(cfg.sampling),
              log=log)
    rows = DD.sample_rejected(model, params0, rows, **kw)
    eval_rows = DD.sample_rejected(model, params0, eval_rows, **kw) if eval_rows else eval_rows
    if any(cfg.loss.get(k) for k in ADPA_EXTRAS):
        ref_fn = jax.jit(O.reference_logps_fn(graphdef, chunk_size=int(cfg.train.get(
            "logits_chunk", 128))))
        ckw = dict(cache_dir=cache_dir, pad_id=tokenizer.pad_id, buckets=buckets,
                   batch_size=cfg.train.batch_size, extra={"model": repr(model.config)}, log=log)
        rows = ref_cache.attach(rows, ref_cache.cached_ref_logps(ref_fn, params0, rows, **ckw))
        if eval_rows:
            eval_rows = ref_cache.attach(eval_rows, ref_cache.cached_ref_logps(
                ref_fn, params0, eval_rows, **ckw))
    return rows, eval_rows


def run(cfg, workdir: str, *, log=print) -> dict[str, Any]:
    """Trains a DCKD or ADPA student as `cfg` says, in `workdir` (resuming there if it can).

    ADPA with `dckd_stage.steps > 0` is ADPA+ (`run_plus`). Returns the summary written to
    `workdir/summary.json`.
    """
    if cfg.algorithm not in OBJECTIVES:
        raise ValueError(f"config field 'algorithm': the distillation trainer runs "
                         f"{sorted(OBJECTIVES)}, got {cfg.algorithm!r}")
    if "teacher" not in cfg:
        raise ValueError("config section 'teacher' is missing (teacher.path, teacher.ref_path)")
    if cfg.algorithm == "adpa" and int((cfg.get("dckd_stage") or {}).get("steps", 0) or 0) > 0:
        return run_plus(cfg, workdir, log=log)
    return _run(cfg, workdir, log=log)


def stage_configs(cfg):
    """ADPA+ as two configs: (the DCKD stage, the ADPA stage without its model path).

    The DCKD stage is `cfg` with `algorithm="dckd"`, `loss=dckd_stage.loss`,
    `train.steps=dckd_stage.steps` and `optim.learning_rate=dckd_stage.learning_rate`; the
    ADPA stage is `cfg` with `dckd_stage.steps=0` (its `model.path` is set to the DCKD export).
    """
    st = cfg.dckd_stage
    dckd = cfg.copy_and_resolve_references()
    dckd.algorithm = "dckd"
    dckd.loss = dict(st.loss)
    if dckd.loss.get("name") != "dckd":
        raise ValueError(f"config field 'dckd_stage.loss.name': must be 'dckd', got "
                         f"{dckd.loss.get('name')!r}")
    dckd.train.steps = int(st.steps)
    dckd.optim.learning_rate = float(st.learning_rate)
    dckd.dckd_stage.steps = 0
    adpa = cfg.copy_and_resolve_references()
    adpa.dckd_stage.steps = 0
    return dckd, adpa


def run_plus(cfg, workdir: str, *, log=print) -> dict[str, Any]:
    """ADPA+ (arXiv 2502.17927): DCKD from the student, then ADPA from the DCKD student.

    The DCKD stage runs in `workdir/dckd_stage` (resumable; skipped once it has finished); the
    ADPA stage starts from its HF export, so its rejected responses are sampled from the DCKD
    student, and runs in `workdir` itself. The summary holds the stage's under `dckd_stage`.
    """
    dckd_cfg, adpa_cfg = stage_configs(cfg)
    stage_dir = os.path.join(workdir, "dckd_stage")
    done = os.path.join(stage_dir, "summary.json")
    if os.path.exists(done) and os.path.exists(os.path.join(stage_dir, "hf", "config.json")):
        with open(done, encoding="utf-8") as f:
            stage = json.load(f)
        log(f"ADPA+: DCKD stage already done in {stage_dir}")
    else:
        log(f"ADPA+: DCKD stage ({dckd_cfg.train.steps} steps) in {stage_dir}")
        dckd_cfg.train.export_hf = True
        stage = _run(dckd_cfg, stage_dir, log=log)
        if "preempted_at" in stage:
            return stage
    adpa_cfg.model.path = os.path.join(stage_dir, "hf")
    log(f"ADPA+: ADPA stage from {adpa_cfg.model.path}")
    summary = _run(adpa_cfg, workdir, log=log, extra={"dckd_stage": stage})
    return summary


def _run(cfg, workdir: str, *, log=print, extra: dict | None = None) -> dict[str, Any]:
    loop.write_config(cfg, workdir)
    tcfg = cfg.teacher

    mesh = sh.make_mesh(dict(cfg.mesh))
    tokenizer = loop.build_tokenizer(cfg)
    model = loop.build_model(cfg)
    teachers = DD.load_teachers(tcfg, names=TEACHERS[cfg.algorithm], log=log)
    DD.check_vocabulary(model.config, tokenizer, teachers, DD.teacher_tokenizer(tcfg))
    graphdef, params0 = nnx.split(model)
    t_graphdefs = {k: nnx.split(m)[0] for k, m in teachers.items()}
    t_params = {k: nnx.split(m)[1] for k, m in teachers.items()}
    ref_dtype = jnp.dtype(tcfg.dtype) if tcfg.get("dtype") else None

    rows, eval_rows, eval_ex, limits = loop.load_rows(
        cfg, tokenizer, lambda policy: loop.build_examples(cfg, "pairs", policy), log=log)
    batch_size, micro, proc_index, proc_count = loop.batch_layout(cfg, mesh)
    buckets = tuple(cfg.data.get("buckets", ()) or ()) or D.default_buckets(limits.max_length)
    cache_dir = tcfg.get("cache_dir") or os.path.join(workdir, "teacher_cache")
    rows, eval_rows = _prepare_rows(cfg, rows, eval_rows, model=model, params0=params0,
                                    graphdef=graphdef, tokenizer=tokenizer, cache_dir=cache_dir,
                                    buckets=buckets, log=log)
    iter_kw = dict(global_batch_size=batch_size, pad_id=tokenizer.pad_id,
                   max_length=limits.max_length, buckets=buckets)
    it = DD.TeacherBatches(rows, seed=cfg.train.seed, process_index=proc_index,
                           process_count=proc_count, **iter_kw)

    width = limits.max_completion_length
    eval_arrays = None
    precompute = bool(tcfg.get("precompute", False))
    if precompute:
        fn = jax.jit(teacher_outputs_fn(
            cfg.algorithm, t_graphdefs, width=width, top_k=int(tcfg.top_k),
            advantage_beta=float(tcfg.get("advantage_beta", 1.0)),
            chunk_size=int(cfg.train.get("logits_chunk", 128))))
        cached_params = cast_floating(t_params, ref_dtype)
        ckw = dict(cache_dir=cache_dir, pad_id=tokenizer.pad_id, buckets=buckets,
                   batch_size=batch_size, log=log,
                   extra={"algorithm": cfg.algorithm, "top_k": int(tcfg.top_k), "width": width,
                          "advantage_beta": float(tcfg.get("advantage_beta", 1.0)),
                          "teachers": repr({k: m.config for k, m in sorted(teachers.items())})})
        it.arrays = DD.cached_teacher_arrays(fn, cached_params, rows, **ckw)
        if eval_rows:
            eval_arrays = DD.cached_teacher_arrays(fn, cached_params, eval_rows, **ckw)

    steps = cfg.train.steps
    optim = dict(cfg.optim)
    tx = optimizer_from_config(optim, total_steps=steps)
    lr_fn = schedule_from_config(optim, total_steps=steps)
    manager = loop.checkpoint_manager_for(cfg, workdir)
    state, shardings, start, data_state = loop.restore_or_init(
        manager, params0, tx, seed=cfg.train.seed, workdir=workdir, log=log, mesh=mesh,
        reference=None if precompute else (lambda: t_params), ref_dtype=ref_dtype)
    if data_state is not None:
        it.load_state_dict(data_state)

    objective = _objective(cfg, graphdef, t_graphdefs, width=width)
    step_fn = make_train_step(objective, tx, mesh=mesh, state_shardings=shardings,
                              num_microbatches=micro, learning_rate_fn=lr_fn)
    eval_fn = loop.eval_fn_for(objective)
    task_eval = not cfg.data.get("path")
    eval_prompts = [e.prompt for e in eval_ex if isinstance(e.prompt, str)][
        :int(cfg.train.get("eval_prompts", 128))]

    def evaluate(st) -> dict[str, float]:
        res = loop.mean_eval_metrics(cfg, eval_fn, st, eval_rows, lambda: DD.TeacherBatches(
            eval_rows, arrays=eval_arrays, shuffle=False, **iter_kw), mesh=mesh)
        if task_eval:
            res["task_accuracy"] = loop.task_accuracy(
                nnx.merge(graphdef, st.params), tokenizer, eval_prompts,
                max_new_tokens=cfg.data.max_completion_length)
        return res

    eval_every = int(cfg.train.get("eval_every", 0) or 0)

    def before(teacher=teachers["dpo"]) -> dict[str, Any]:
        out = {"eval_before": evaluate(state)} if eval_every else {}
        if eval_every and task_eval:
            out["teacher_task_accuracy"] = loop.task_accuracy(
                teacher, tokenizer, eval_prompts,
                max_new_tokens=cfg.data.max_completion_length)
        return out

    summary: dict[str, Any] = {"algorithm": cfg.algorithm, **(extra or {}),
                               **loop.before_training(workdir, start, before)}
    del teachers, before
    result = loop.train_steps(cfg, workdir, mesh=mesh, state=state, start=start,
                              step_fn=step_fn, it=it, manager=manager, evaluate=evaluate,
                              eval_every=eval_every, tokens_scale=proc_count, log=log)
    if "preempted_at" in result:
        return result
    state, last_eval = result.pop("state"), result.pop("last_eval")
    summary.update(result)
    if eval_every:
        summary["eval_after"] = last_eval if start < steps else evaluate(state)
    if cfg.train.get("export_hf", True):
        export = os.path.join(workdir, "hf")
        to_hf(nnx.merge(graphdef, jax.device_get(state.params)), export)
        loop.export_tokenizer(cfg, export)
        summary["hf_export"] = export
    return loop.write_summary(summary, workdir)
