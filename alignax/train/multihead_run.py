r"""The MAH-DPO trainer behind `alignax train` with `algorithm="mah_dpo"` (`loop.RUNNERS`).

config -> tokenizer, base model (an SFT export via `model.path`, or a tiny model) -> policy
`MultiHeadLM` (H heads from the base head + noise) and the base model as frozen reference ->
routed pairs (`data.path` with an `objective` per pair, or the built-in two-objective task
`data.task="multiobjective"`) -> balanced batches -> jitted step -> metrics.jsonl (per
objective) -> eval every N steps (held-out pair metrics, and on the built-in task the greedy
score of every head and of the uniform mix on held-out prompts) -> checkpoints -> export
(`WORKDIR/hf` + `WORKDIR/hf/heads/`), a final sweep of the two-head weights, `summary.json`.

Config fields beyond the common ones (`experiments/configs/mah_dpo.py`):
`heads.num_heads` (0 = one per objective; 1 = single-head DPO on the same routed data, the
baseline), `heads.noise_std`, `heads.seed`, `heads.export_weights` (() = uniform),
`heads.trunk_lr_scale` (the trunk's learning rate relative to the heads'; 1 = the reference);
`data.objectives` (names, in head order), `data.balance` (B/O pairs per objective per batch),
`data.conflict` (built-in task); `loss.name` ("sigmoid" or "ipo"), `loss.beta`,
`loss.label_smoothing`, `loss.reference_free`; `train.sweep_points` (two heads: K weights
(1 - a, a) evaluated in one vmapped program at the end; 0 = off).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alignax import data as D
from alignax import sharding as sh
from alignax.data import multiobjective as MO
from alignax.models import ByteTokenizer
from alignax.sampling.heads import decode_completions, sweep_head_weights, weight_grid
from alignax.sampling.sampler import left_pad
from alignax.train import loop, ref_cache
from alignax.train import objectives as O
from alignax.train.loop import build_model, build_tokenizer
from alignax.train.multihead import (
    BalancedBatchIterator,
    MultiHeadLM,
    mah_dpo_objective,
    save_multihead,
)
from alignax.train.optim import optimizer_from_config, schedule_from_config
from alignax.train.step import make_train_step

TASK = "multiobjective"


# ------------------------------------------------------------------------------- building

def objective_names(cfg) -> list[str]:
    names = list(cfg.data.get("objectives", ()) or ())
    if names:
        return names
    if cfg.data.get("path"):
        raise ValueError("config field 'data.objectives': MAH-DPO on data.path needs the "
                         "objective names, in head order")
    return list(MO.OBJECTIVES)


def _read_pairs(path, cfg, names, policy):
    records = MO.expand_records(D.read_records(path, policy=policy), names, policy=policy)
    return D.parse_records(records, fmt=cfg.data.get("format", "auto"), objectives=names,
                           policy=policy)


def build_pairs(cfg, names: list[str], policy: D.ErrorPolicy):
    """(train pairs, eval pairs) with `objective` set, from `data.path` or the built-in task."""
    d = cfg.data
    if d.get("path"):
        train = _read_pairs(d.path, cfg, names, policy)
        if d.get("eval_path"):
            evals = _read_pairs(d.eval_path, cfg, names, policy)
        else:
            n_eval = int(len(train) * float(d.get("eval_fraction", 0.05)))
            train, evals = train[:len(train) - n_eval], train[len(train) - n_eval:]
    elif d.get("task", TASK) == TASK:
        kw = dict(max_operand=d.max_operand, conflict=float(d.get("conflict", 1.0)),
                  error_offsets=tuple(d.get("error_offsets", ()) or ()) or (1,))
        train = MO.preference_pairs(d.num_train, seed=cfg.train.seed, **kw)
        evals = MO.preference_pairs(d.num_eval, seed=cfg.train.seed + 10_000, **kw)
    else:
        raise ValueError(f"config field 'data.task': MAH-DPO knows task {TASK!r}, got "
                         f"{d.task!r}; or set data.path to a local file")
    for ex in train + evals:
        if not isinstance(ex, D.Pair):
            raise ValueError(f"MAH-DPO trains on preference pairs, got {type(ex).__name__} "
                             f"rows from {d.get('path') or 'the task'}")
    if _heads(cfg, names) != 1 or d.get("balance", True):
        missing = [ex for ex in train + evals if ex.objective is None]
        if missing:
            path, line = missing[0].where or (d.get("path"), None)
            raise D.DataError(f"every MAH-DPO pair names its objective ({len(missing)} pairs "
                              f"do not; known: {names})", path=path, line=line,
                              field="objective")
    return train, evals


HEADS_DEFAULTS = dict(num_heads=0, noise_std=1e-3, seed=42, export_weights=(),
                      trunk_lr_scale=1.0)


def heads_config(cfg) -> dict:
    """The `heads` section with defaults (the reference code's); unknown keys are errors."""
    given = dict(cfg.get("heads") or {})
    unknown = sorted(set(given) - set(HEADS_DEFAULTS))
    if unknown:
        raise ValueError(f"config section 'heads': unknown keys {unknown}; known keys are "
                         f"{sorted(HEADS_DEFAULTS)}")
    return {**HEADS_DEFAULTS, **given}


def _heads(cfg, names) -> int:
    h = int(heads_config(cfg)["num_heads"] or 0) or len(names)
    if h not in (1, len(names)):
        raise ValueError(f"config field 'heads.num_heads': {h} heads for objectives {names}; "
                         "use 0 (one per objective) or 1 (single-head baseline)")
    return h


# ------------------------------------------------------------------------------- evaluation

def eval_weights(num_heads: int) -> tuple[list[str], np.ndarray]:
    """Labels and `[K, H]` weights: every head alone, then the uniform mix (H > 1)."""
    eye = np.eye(num_heads, dtype=np.float32)
    if num_heads == 1:
        return ["single"], eye
    return ["head" + str(k) for k in range(num_heads)] + ["uniform"], np.concatenate(
        [eye, np.full((1, num_heads), 1.0 / num_heads, np.float32)])


def task_scores(graphdef, params, tokenizer, prompts: list[str], weights, *,
                max_new_tokens: int, objectives=MO.OBJECTIVES) -> np.ndarray:
    """`[K, O]` mean greedy scores on `prompts` of every weight vector `[K, H]`.

    One compiled program samples for all K weights (`sweep_head_weights`); with the byte
    tokenizer it also scores there (`multiobjective.token_scores`), else the completions are
    decoded and scored on the host.
    """
    ids, mask = left_pad([tokenizer.encode(p) for p in prompts], tokenizer.pad_id)
    answers = np.asarray([MO.answer_of(p) for p in prompts], np.int32)
    on_device = isinstance(tokenizer, ByteTokenizer) and tuple(objectives) == MO.OBJECTIVES
    out = sweep_head_weights(graphdef, params, ids, mask, jax.random.key(0),
                             jnp.asarray(weights, jnp.float32), (answers,),
                             score_fn=MO.token_scores if on_device else None,
                             max_new_tokens=max_new_tokens, temperature=0.0,
                             stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    if on_device:
        return np.asarray(out.scores).mean(axis=1)
    tokens, masks = np.asarray(out.samples.tokens), np.asarray(out.samples.mask)
    return np.stack([MO.score(prompts, decode_completions(tokenizer, t, m), objectives).mean(0)
                     for t, m in zip(tokens, masks)])


def scale_trunk_updates(scale: float) -> optax.GradientTransformation:
    """Multiplies the updates of the trunk (not the heads) by `scale` after the optimizer:
    the trunk's learning rate is `scale` x the heads' (0 = a frozen trunk, only heads learn).

    The reference code trains everything at one learning rate (`scale=1`, no transform).
    """
    if scale < 0:
        raise ValueError(f"config field 'heads.trunk_lr_scale' must be >= 0, got {scale}")

    def update(updates, state, params=None):
        del params

        def one(path, u):
            first = path[0]
            is_trunk = getattr(first, "key", getattr(first, "name", None)) == "trunk"
            return u * jnp.asarray(scale, u.dtype) if is_trunk else u

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def multihead_optimizer(optim: dict, *, total_steps: int,
                        trunk_lr_scale: float = 1.0) -> optax.GradientTransformation:
    """The `optim` section's optimizer with the trunk's updates scaled by `trunk_lr_scale`.

    0 freezes the trunk: its gradients are also zeroed *before* the optimizer, so they take no
    part in global-norm clipping (the heads' steps do not shrink by gradients never applied)
    and weight decay cannot move it.
    """
    tx = optimizer_from_config(optim, total_steps=total_steps)
    if trunk_lr_scale == 0.0:
        return optax.chain(scale_trunk_updates(0.0), tx, scale_trunk_updates(0.0))
    if trunk_lr_scale != 1.0:
        return optax.chain(tx, scale_trunk_updates(trunk_lr_scale))
    return tx


# ------------------------------------------------------------------------------- the loop

def run(cfg, workdir: str, *, log=print) -> dict[str, Any]:
    """Trains MAH-DPO as `cfg` says, in `workdir` (resuming there if it holds checkpoints).

    Returns the summary written to `workdir/summary.json`.
    """
    loop.write_config(cfg, workdir)
    names = objective_names(cfg)
    num_heads = _heads(cfg, names)
    mesh = sh.make_mesh(dict(cfg.mesh))
    tokenizer = build_tokenizer(cfg)
    rows, eval_rows, eval_ex, limits = loop.load_rows(
        cfg, tokenizer, lambda policy: build_pairs(cfg, names, policy), log=log)
    batch_size, micro, proc_index, proc_count = loop.batch_layout(cfg, mesh)
    buckets = tuple(cfg.data.get("buckets", ()) or ()) or None
    chunk = int(cfg.train.get("logits_chunk", 128))

    base = build_model(cfg)
    ref_graphdef, ref_params0 = nnx.split(base)
    heads_cfg = heads_config(cfg)
    model = MultiHeadLM.from_base(base, num_heads, noise_std=float(heads_cfg["noise_std"]),
                                  seed=int(heads_cfg["seed"]))
    graphdef, params0 = nnx.split(model)
    precompute = bool(cfg.reference.get("precompute", False))
    reference_free = bool(cfg.loss.get("reference_free", False))
    if precompute and not reference_free:
        ref_fn = jax.jit(O.reference_logps_fn(ref_graphdef, chunk_size=chunk))
        width = buckets or D.default_buckets(limits.max_length)
        cache_kw = dict(cache_dir=cfg.reference.get("cache_dir") or os.path.join(
            workdir, "ref_cache"), pad_id=tokenizer.pad_id, buckets=width,
            batch_size=batch_size, extra={"model": repr(base.config)}, log=log)
        rows = ref_cache.attach(rows, ref_cache.cached_ref_logps(ref_fn, ref_params0, rows,
                                                                 **cache_kw))
        if eval_rows:
            eval_rows = ref_cache.attach(eval_rows, ref_cache.cached_ref_logps(
                ref_fn, ref_params0, eval_rows, **cache_kw))
    it_kw = dict(global_batch_size=batch_size, pad_id=tokenizer.pad_id,
                 max_length=limits.max_length, buckets=buckets, seed=cfg.train.seed,
                 process_index=proc_index, process_count=proc_count)
    if cfg.data.get("balance", True):
        it = BalancedBatchIterator(rows, num_objectives=len(names), **it_kw)
    else:
        it = D.BatchIterator(rows, **it_kw)

    steps = cfg.train.steps
    optim = dict(cfg.optim)
    tx = multihead_optimizer(optim, total_steps=steps,
                             trunk_lr_scale=float(heads_cfg["trunk_lr_scale"]))
    lr_fn = schedule_from_config(optim, total_steps=steps)
    ref_dtype = cfg.reference.get("dtype") or None
    needs_ref = not precompute and not reference_free
    manager = loop.checkpoint_manager_for(cfg, workdir)
    state, shardings, start, data_state = loop.restore_or_init(
        manager, params0, tx, seed=cfg.train.seed, workdir=workdir, log=log, mesh=mesh,
        reference=(lambda: ref_params0) if needs_ref else None,
        ref_dtype=jnp.dtype(ref_dtype) if ref_dtype else None)
    seen = {k: 0 for k in names}
    if data_state is not None:
        it.load_state_dict(data_state)
        seen.update(data_state.get("examples_seen", {}))

    loss_cfg = dict(cfg.loss)
    objective = mah_dpo_objective(
        graphdef, objectives=names, ref_graphdef=ref_graphdef, beta=loss_cfg.get("beta", 0.1),
        label_smoothing=loss_cfg.get("label_smoothing", 0.0), loss_type=loss_cfg["name"],
        reference_free=reference_free, chunk_size=chunk)
    step_fn = make_train_step(objective, tx, mesh=mesh, state_shardings=shardings,
                              num_microbatches=micro, learning_rate_fn=lr_fn)
    eval_fn = loop.eval_fn_for(objective)
    eval_every = int(cfg.train.get("eval_every", 0) or 0)
    task_eval = not cfg.data.get("path")
    prompts = MO.eval_prompts(int(cfg.train.get("eval_prompts", 128)),
                              seed=cfg.train.seed + 20_000, max_operand=cfg.data.max_operand)
    labels, weights = eval_weights(num_heads)
    if num_heads == len(names) and num_heads > 1:
        labels = [f"{n}_head" for n in names] + labels[num_heads:]

    def per_objective_weight(key: str) -> str | None:
        name, _, metric = key.partition("/")
        return f"{name}/examples" if name in names and metric != "examples" else None

    def evaluate(st) -> dict[str, float]:
        res = loop.mean_eval_metrics(cfg, eval_fn, st, eval_rows, lambda: D.BatchIterator(
            eval_rows, global_batch_size=batch_size, pad_id=tokenizer.pad_id,
            max_length=limits.max_length, buckets=buckets, shuffle=False), mesh=mesh,
            weight_of=per_objective_weight)
        if task_eval:
            scores = task_scores(graphdef, st.params, tokenizer, prompts, weights,
                                 max_new_tokens=cfg.data.max_completion_length)
            for label, row in zip(labels, scores):
                res.update({f"{label}/{name}": float(v) for name, v in zip(names, row)})
        return res

    history = loop.before_training(
        workdir, start, lambda: {"eval_before": evaluate(state)} if eval_every else {})

    def count_objectives(batch) -> dict[str, int]:
        counts = np.bincount(batch["objective"][batch["objective"] >= 0],
                             minlength=len(names))
        for name, c in zip(names, counts):  # process-local counts (one process: exact)
            seen[name] += int(c) * proc_count
        return {f"{name}/examples_seen": seen[name] for name in names}

    result = loop.train_steps(
        cfg, workdir, mesh=mesh, state=state, start=start, step_fn=step_fn, it=it,
        manager=manager, evaluate=evaluate, eval_every=eval_every,
        tokens_scale=proc_count, log=log, batch_metrics=count_objectives,
        data_state=lambda: dict(it.state_dict(), examples_seen=dict(seen)))
    if "preempted_at" in result:
        return result
    state, last_eval = result.pop("state"), result.pop("last_eval")
    summary = {"algorithm": cfg.algorithm, "steps": steps, "final_loss": result["final_loss"],
               "num_heads": num_heads, "objectives": names,
               "wall_seconds": result["wall_seconds"], **history}
    if eval_every:
        summary["eval_after"] = last_eval if start < steps else evaluate(state)
    points = int(cfg.train.get("sweep_points", 0) or 0)
    if task_eval and points and num_heads == 2:
        grid = weight_grid(points)
        scores = task_scores(graphdef, state.params, tokenizer, prompts, grid,
                             max_new_tokens=cfg.data.max_completion_length)
        summary["sweep"] = {"weights": grid.tolist(),
                            **{name: scores[:, k].tolist() for k, name in enumerate(names)}}
    if cfg.train.get("export_hf", True):
        export = os.path.join(workdir, "hf")
        trained = nnx.merge(graphdef, jax.device_get(state.params))
        w = tuple(heads_cfg["export_weights"] or ()) or None
        save_multihead(trained, export, objectives=names, weights=w)
        loop.export_tokenizer(cfg, export)
        summary["hf_export"] = export
    return loop.write_summary(summary, workdir)


# ------------------------------------------------------------------------------- report

def _load(workdir: str) -> dict:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run `alignax train` there first")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def report(mah: list[str], single: list[str], *, out: str | None = None) -> str:
    """Markdown tables (mean +- std over the given runs, e.g. seeds) and the trade-off plot.

    Args:
      mah: workdirs of two-head runs (with `train.sweep_points`).
      single: workdirs of `:single` runs (the single-head DPO baseline on the same data).
      out: PNG path for the (correct, round) plane: the sweep curve of every MAH run, the
        SFT start and the single-head baseline; None = no plot.
    Returns:
      the markdown text.
    """
    ms, ss = [_load(w) for w in mah], [_load(w) for w in single]
    names = ms[0]["objectives"]

    def stat(values):
        v = np.asarray(values, np.float64)
        return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    rows = [("SFT start (both runs' reference)", [s["eval_before"] for s in ms], "correct_head"),
            ("single-head DPO, mixed data", [s["eval_after"] for s in ss], "single")]
    rows += [(f"MAH-DPO, {n} head alone", [s["eval_after"] for s in ms], f"{n}_head")
             for n in names]
    rows += [("MAH-DPO, uniform mix (the HF export)", [s["eval_after"] for s in ms], "uniform")]
    lines = ["| policy (greedy, held-out prompts) | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for label, evals, key in rows:
        lines.append(f"| {label} | " + " | ".join(stat([e[f"{key}/{n}"] for e in evals])
                                                   for n in names) + " |")
    weights = np.asarray(ms[0]["sweep"]["weights"])
    sweep = {n: np.asarray([s["sweep"][n] for s in ms]) for n in names}
    lines += ["", f"| weights ({', '.join(names)}) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for i, w in enumerate(weights):
        lines.append(f"| {w[0]:.1f}, {w[1]:.1f} | " + " | ".join(stat(sweep[n][:, i])
                                                                 for n in names) + " |")
    if out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 4.2), dpi=100)
        x, y = sweep[names[0]], sweep[names[1]]
        for k in range(len(ms)):
            ax.plot(x[k], y[k], "-", color="tab:blue", alpha=0.25, lw=1)
        ax.plot(x.mean(0), y.mean(0), "o-", color="tab:blue", label="MAH-DPO weight sweep")
        for i in (0, len(weights) // 2, len(weights) - 1):
            ax.annotate(f"w={weights[i][1]:.1f}", (x.mean(0)[i], y.mean(0)[i]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
        sft = [[s["eval_before"][f"correct_head/{n}"] for n in names] for s in ms]
        one = [[s["eval_after"][f"single/{n}"] for n in names] for s in ss]
        ax.plot(*np.mean(sft, 0), "s", color="gray", label="SFT start")
        ax.plot(*np.mean(one, 0), "D", color="tab:red", label="single-head DPO")
        ax.set_xlabel(f"{names[0]} (greedy accuracy)")
        ax.set_ylabel(f"{names[1]} (greedy rate)")
        ax.set_title(f"MAH-DPO trade-off, mean of {len(ms)} runs; w = weight of "
                     f"{names[1]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m alignax.train.multihead_run report --mah DIR... --single DIR... [--out PNG]`"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m alignax.train.multihead_run report")
    parser.add_argument("command", choices=["report"])
    parser.add_argument("--mah", nargs="+", required=True, help="two-head run workdirs")
    parser.add_argument("--single", nargs="+", required=True, help=":single run workdirs")
    parser.add_argument("--out", default=None, help="PNG path for the trade-off plot")
    args = parser.parse_args(argv)
    print(report(args.mah, args.single, out=args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
