"""DCKD / ADPA / ADPA+ (arXiv 2502.17927): a student distilled from a DPO-aligned teacher.

    alignax train --config experiments/configs/dckd.py --workdir runs/dckd \
        --config.model.path=STUDENT_SFT/hf --config.teacher.path=TEACHER_DPO/hf
    alignax train --config experiments/configs/adpa.py --workdir runs/adpa \
        --config.model.path=STUDENT_SFT/hf --config.teacher.path=TEACHER_DPO/hf \
        --config.teacher.ref_path=TEACHER_SFT/hf

config -> tokenizer, student, teacher(s) (same vocabulary, checked) -> preference rows; for
ADPA the rejected response of each row is replaced by a sample of the student itself (drawn
once, cached) -> teacher outputs either inside the step (teacher parameters in the train state
as `ref_params`) or cached on disk once (`teacher.precompute=True`: top-k probabilities + rest
mass, or top-k advantages) -> the engine's loop. ADPA+ (`dckd_stage.steps > 0`) runs DCKD in
`WORKDIR/dckd_stage` first (resumable; skipped once finished), then ADPA from its export, so
the rejected responses are the DCKD student's. Loss functions: `distill_loss.py`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence

import jax
from flax import nnx

from alignax.algorithms.base import (
    Algorithm,
    lm_skeleton,
    loss_kwargs,
    precompute_arrays,
    save_lm,
    task_evaluator,
)
from alignax.algorithms.distill_loss import adpa_loss_fn, dckd_loss_fn, teacher_outputs_fn
from alignax.algorithms.dpo import reference_logps_fn
from alignax.config import ConfigError
from alignax.models import ByteTokenizer, from_hf, init_model, load_tokenizer, tiny_config
from alignax.sampling import generate
from alignax.train import caches, runner
from alignax.train.context import Context
from alignax.train.evaluation import task_accuracy
from alignax.train.state import cast_floating

TEACHERS = {"dckd": ("dpo",), "adpa": ("dpo", "ref")}
ADPA_EXTRAS = ("importance_sampling", "kl_penalty_weight", "dpo_weight")
VOCAB_ERROR = ("teacher and student must share the tokenizer and vocabulary (teacher "
               "distributions are indexed by student token ids)")
VARIANTS = {
    # The paper's recipe student_dckd.yaml: sft_on_chosen 1, distillation_weight 1, chosen /
    # rejected distil weights 0.1, prob_stabilize on.
    "dckd": {"dckd": dict(sft_weight=1.0, distill_weight=1.0, chosen_weight=0.1,
                          rejected_weight=0.1, prob_stabilize=True)},
    # student_adpa.yaml: sft_on_chosen 1, adpa_weight 1.6, clamped targets; extras off.
    "adpa": {"adpa": dict(sft_weight=1.0, adpa_weight=1.6, clamp_advantage=True,
                          importance_sampling=False, kl_penalty_weight=0.0, dpo_weight=0.0,
                          beta=0.1)},
}


# ------------------------------------------------------------------------------- teachers

def load_teachers(tcfg, *, names: Sequence[str], log=print) -> dict:
    """`{"dpo": Transformer[, "ref": Transformer]}` from `teacher.path` / `teacher.ref_path`.

    An empty path gives a tiny random model (`teacher.name`, `teacher.overrides`, seeded
    `teacher.seed` and `+1`): only for smoke runs of the code path.
    """
    paths = {"dpo": tcfg.path, "ref": tcfg.ref_path}
    out = {}
    for i, name in enumerate(names):
        if paths[name]:
            out[name] = from_hf(paths[name], dtype=tcfg.dtype or None)
        else:
            field = "teacher.path" if name == "dpo" else "teacher.ref_path"
            log(f"{field} is empty: using a random tiny {name} teacher (smoke runs only)")
            overrides = dict(tcfg.overrides or {})
            if tcfg.dtype:
                overrides["dtype"] = tcfg.dtype
            out[name] = init_model(tiny_config(tcfg.name, **overrides), seed=tcfg.seed + i)
    return out


def _tokenizer_signature(tok) -> tuple:
    if isinstance(tok, ByteTokenizer):
        return ("byte", tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()
    return ("hf", len(vocab), digest, tok.pad_id, tok.bos_id, tok.eos_id)


def teacher_tokenizer(tcfg):
    """`teacher.tokenizer`, else `teacher.path`'s tokenizer.json, else None (only the model
    vocabulary sizes can then be compared)."""
    source = tcfg.tokenizer
    if not source and tcfg.path and os.path.exists(os.path.join(tcfg.path, "tokenizer.json")):
        source = tcfg.path
    return load_tokenizer(source) if source else None


def check_vocabulary(student_config, student_tokenizer, teachers: dict,
                     teacher_tok=None) -> None:
    """Raises `ValueError` unless every teacher has the student's vocabulary (and tokenizer)."""
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

def sample_rejected(model, params, rows: Sequence[dict], *, cache_dir: str, eos_id: int,
                    pad_id: int, max_new_tokens: int, sampling: dict, log=print) -> list[dict]:
    """Rows whose `rejected` is a completion sampled from `model` (ADPA's y_l), one per row.

    The samples are stored in `cache_dir/samples-<fingerprint>.json` (prompts, student weights,
    sampling settings), so a resumed or repeated run trains on the same responses. Batches of
    `sampling.batch_size` prompts, batch i drawing with seed `sampling.seed + i`; or, with
    `sampling.slots` > 0, every prompt through the continuous-batching engine.
    """
    # (slots = 0, the default, is left out: caches written before it existed stay valid)
    settings = {k: v for k, v in dict(sampling, max_new_tokens=max_new_tokens).items()
                if k != "slots" or v}
    key = caches.fingerprint([dict(r, chosen=[], rejected=[]) for r in rows], params,
                             extra={"student_samples": settings, "model": repr(model.config)})

    def draw():
        out = generate(model, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens,
                       eos_id=eos_id, pad_id=pad_id, temperature=sampling["temperature"],
                       top_k=sampling["top_k"], top_p=sampling["top_p"], seed=sampling["seed"],
                       batch_size=sampling["batch_size"], slots=sampling.get("slots", 0))
        return [[int(t) for t, keep in zip(row, m) if keep] or [eos_id]
                for row, m in zip(out.tokens, out.mask)]

    samples = caches.cached_json(os.path.join(cache_dir, f"samples-{key}.json"), draw,
                                 valid=lambda s: len(s) == len(rows),
                                 what=f"student samples ({len(rows)})", log=log)
    return [dict(r, rejected=list(s)) for r, s in zip(rows, samples)]


# ------------------------------------------------------------------------------- the plan

def _loss_fn(cfg, graphdef, teacher_graphdefs, *, width: int, chunk_size: int):
    kw = dict(width=width, top_k=cfg.teacher.top_k, chunk_size=chunk_size, **loss_kwargs(cfg))
    if cfg.algorithm == "dckd":
        return dckd_loss_fn(graphdef, teacher_graphdefs["dpo"], **kw)
    return adpa_loss_fn(graphdef, teacher_graphdefs, advantage_beta=cfg.teacher.advantage_beta,
                        **kw)


def setup(ctx: Context) -> runner.Plan:
    cfg, tcfg = ctx.cfg, ctx.cfg.teacher
    model = ctx.model()
    teachers = load_teachers(tcfg, names=TEACHERS[cfg.algorithm], log=ctx.log)
    check_vocabulary(model.config, ctx.tokenizer, teachers, teacher_tokenizer(tcfg))
    graphdef, params = nnx.split(model)
    t_graphdefs = {k: nnx.split(m)[0] for k, m in teachers.items()}
    t_params = {k: nnx.split(m)[1] for k, m in teachers.items()}
    rows = ctx.rows(functools.partial(ctx.examples, "pairs"))
    cache_dir = tcfg.cache_dir or os.path.join(ctx.workdir, "teacher_cache")
    train, evals = rows.train, rows.eval
    arrays = [{}, {}]
    if cfg.algorithm == "adpa":
        if cfg.sampling.get("slots", 0) < 0:
            raise ConfigError(f"config field 'sampling.slots': 0 (batches of "
                              f"sampling.batch_size) or a slot count > 0, got "
                              f"{cfg.sampling.slots}")
        kw = dict(cache_dir=cache_dir, eos_id=ctx.tokenizer.eos_id, pad_id=ctx.tokenizer.pad_id,
                  max_new_tokens=cfg.data.max_completion_length, sampling=dict(cfg.sampling),
                  log=ctx.log)
        train = sample_rejected(model, params, train, **kw)
        evals = sample_rejected(model, params, evals, **kw) if evals else evals
        if any(cfg.loss[k] for k in ADPA_EXTRAS):  # the starting student's log-probs
            fn = reference_logps_fn(graphdef, chunk_size=ctx.chunk)
            for i, r in enumerate((train, evals)):
                if r:
                    arrays[i].update(precompute_arrays(
                        ctx, fn, params, r, name="ref_logps", cache_dir=cache_dir,
                        what=f"reference log-probs ({len(r)} pairs)",
                        extra={"model": repr(model.config)}))
    width = ctx.limits.max_completion_length
    if tcfg.precompute:
        fn = jax.jit(teacher_outputs_fn(cfg.algorithm, t_graphdefs, width=width,
                                        top_k=tcfg.top_k, advantage_beta=tcfg.advantage_beta,
                                        chunk_size=ctx.chunk))
        extra = {"algorithm": cfg.algorithm, "top_k": tcfg.top_k, "width": width,
                 "advantage_beta": tcfg.advantage_beta,
                 "teachers": repr({k: m.config for k, m in sorted(teachers.items())})}
        cached = cast_floating(t_params, jax.numpy.dtype(tcfg.dtype) if tcfg.dtype else None)
        for i, r in enumerate((train, evals)):
            if r:
                arrays[i].update(precompute_arrays(
                    ctx, fn, cached, r, name="teacher_topk", cache_dir=cache_dir, extra=extra,
                    what=f"teacher top-k ({len(r)} rows)"))
    prompts = ctx.eval_prompts(rows.eval_examples)
    kept = {"teacher": teachers["dpo"]}  # released after the measurement before training

    def before() -> dict:
        teacher = kept.pop("teacher")
        if not (cfg.train.eval_every and not cfg.data.path):
            return {}
        return {"teacher_task_accuracy": task_accuracy(
            teacher, ctx.tokenizer, prompts, max_new_tokens=cfg.data.max_completion_length)}

    return runner.Plan(
        params=params, data=ctx.batches(train, arrays=arrays[0]),
        loss_fn=_loss_fn(cfg, graphdef, t_graphdefs, width=width, chunk_size=ctx.chunk),
        reference=None if tcfg.precompute else (lambda: t_params), ref_dtype=tcfg.dtype,
        eval_batches=(lambda: ctx.batches(evals, shuffle=False, arrays=arrays[1]))
        if evals else None,
        evaluate=task_evaluator(ctx, graphdef, prompts), before=before,
        export=lambda p, out: save_lm(nnx.merge(graphdef, p), out, cfg))


# ------------------------------------------------------------------------------- ADPA+

def stage_configs(cfg):
    """ADPA+ as two configs: (the DCKD stage, the ADPA stage without its model path).

    The DCKD stage is `cfg` with `algorithm="dckd"`, `loss=dckd_stage.loss`,
    `train.steps=dckd_stage.steps`, `optim.learning_rate=dckd_stage.learning_rate` and no
    ADPA sections; the ADPA stage is `cfg` with `dckd_stage.steps=0`.
    """
    st = cfg.dckd_stage
    dckd = cfg.copy_and_resolve_references()
    dckd.algorithm = "dckd"
    dckd.loss = dict(st.loss)
    dckd.train.steps = int(st.steps)
    dckd.train.export_hf = True
    dckd.optim.learning_rate = float(st.learning_rate)
    del dckd["dckd_stage"], dckd["sampling"]
    adpa = cfg.copy_and_resolve_references()
    adpa.dckd_stage.steps = 0
    return dckd, adpa


def run_adpa(cfg, workdir: str, *, log=print, resolve=None) -> dict:
    """ADPA, or ADPA+ when `dckd_stage.steps > 0`: DCKD from the student in
    `workdir/dckd_stage`, then ADPA from its export in `workdir` itself (the summary holds the
    stage's under `dckd_stage`). `resolve` resolves the stage configs."""
    if cfg.dckd_stage.steps <= 0:
        return runner.run(cfg, workdir, setup, log=log)
    dckd_cfg, adpa_cfg = stage_configs(cfg)
    dckd_cfg = resolve(dckd_cfg, source="config (dckd_stage)")
    stage_dir = os.path.join(workdir, "dckd_stage")
    done = os.path.join(stage_dir, "summary.json")
    if os.path.exists(done) and os.path.exists(os.path.join(stage_dir, "hf", "config.json")):
        with open(done, encoding="utf-8") as f:
            stage = json.load(f)
        log(f"ADPA+: DCKD stage already done in {stage_dir}")
    else:
        log(f"ADPA+: DCKD stage ({dckd_cfg.train.steps} steps) in {stage_dir}")
        stage = runner.run(dckd_cfg, stage_dir, setup, log=log)
        if "preempted_at" in stage:
            return stage
    adpa_cfg.model.path = os.path.join(stage_dir, "hf")
    log(f"ADPA+: ADPA stage from {adpa_cfg.model.path}")
    return runner.run(adpa_cfg, workdir, setup, log=log, extra_summary={"dckd_stage": stage})


DCKD = Algorithm("dckd", data="pairs", variants=VARIANTS["dckd"], setup=setup,
                 reference="teachers", sections=("teacher",), skeleton=lm_skeleton,
                 save=save_lm)
ADPA = Algorithm("adpa", data="pairs", variants=VARIANTS["adpa"], setup=setup,
                 reference="teachers", sections=("teacher", "sampling", "dckd_stage"),
                 skeleton=lm_skeleton, save=save_lm, run=run_adpa)
