r"""MAH-DPO (MAHALO, arXiv 2510.01167): a shared trunk with one LM head per objective.

    alignax train --config experiments/configs/mah_dpo.py --config.model.path=runs/sft/hf

* **Model.** `models.MultiHeadLM`: the base (SFT) model's trunk and H heads, each the base head
  plus N(0, `heads.noise_std`^2) noise.
* **Reference.** The reference's heads are the unperturbed base head, so the reference *is*
  the base model: a frozen copy in the train state, or its `[N, 2]` log-probs precomputed
  and cached on disk (`reference.precompute=True`, as DPO).
* **Data.** Every pair names its objective k (`objective` field, an index or a name from
  `data.objectives`); pair k trains head k only, the trunk learns from all heads. A pair
  labelled for several objectives (`objective: [0, 1]` or `preferences: [1, -1]`) appears once
  per objective (`data.multiobjective.expand_records`). Batches are balanced
  (`data.balance`): B/O pairs of every objective (`data.BalancedBatchIterator`). Without
  `data.path`: the built-in two-objective task (`data.arithmetic.multiobjective_pairs`).
* **Loss.** `losses.mah_dpo_loss` (`loss.name`: sigmoid | ipo): mean over the heads present in
  the batch of each head's mean DPO loss. With one head it is exactly DPO.
* **Metrics** per objective as the reference code names them (`{objective}/loss`,
  `{objective}/rewards/...`, `{objective}/examples`, `{objective}/examples_seen`) with the
  TRL-named batch totals. On the built-in task, `eval/{objective}_head/{objective}` is the
  greedy score of each head alone and `eval/uniform/{objective}` of the uniform mix, from one
  vmapped sampling program (`sampling.sweep_head_weights`); `train.sweep_points` weight
  vectors are decoded at the end (two heads).
* **Export.** `WORKDIR/hf` is a plain HF directory whose LM head is the mixture `sum_k w_k W_k`
  (`heads.export_weights`, default uniform), with the H heads beside it
  (`models.save_multihead`); `alignax sample --head-weights 0.7,0.3` samples any mixture.
* **Departures from the reference code.** The noise of all H heads comes from one key
  (`heads.seed`). `heads.trunk_lr_scale` (1 = the reference) scales the trunk's updates
  relative to the heads' (0 = frozen trunk).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alignax import data, distributed, losses
from alignax.algorithms.base import Algorithm, loss_kwargs, precompute_arrays
from alignax.algorithms.dpo import reference_logps, reference_logps_fn
from alignax.config import ConfigError
from alignax.models import ByteTokenizer, MultiHeadLM, multi_head_token_logps, save_multihead
from alignax.sampling import decode_completions, left_pad, sweep_head_weights, weight_grid
from alignax.train.context import Context, build_model
from alignax.train.optim import optimizer_from_config
from alignax.train.runner import Plan

TASK = "multiobjective"
_LOSS = dict(beta=0.1, label_smoothing=0.0, reference_free=False)
VARIANTS = {"sigmoid": _LOSS, "ipo": _LOSS}


def objective_names(cfg) -> list[str]:
    """`data.objectives`, or the built-in task's (`data.arithmetic.OBJECTIVES`)."""
    if cfg.data.objectives:
        return list(cfg.data.objectives)
    if cfg.data.path:
        raise ConfigError("config field 'data.objectives': MAH-DPO on data.path needs the "
                          "objective names, in head order")
    return list(data.arithmetic.OBJECTIVES)


def num_heads(cfg, names) -> int:
    """`heads.num_heads`: 0 = one per objective; 1 = the single-head baseline."""
    h = cfg.heads.num_heads or len(names)
    if h not in (1, len(names)):
        raise ConfigError(f"config field 'heads.num_heads': {h} heads for objectives {names}; "
                          "use 0 (one per objective) or 1 (single-head baseline)")
    return h


# ------------------------------------------------------------------------------ loss

def pair_head_logps(graphdef, params, batch, *, chunk_size: int = 128) -> jax.Array:
    """Summed log-probs of chosen and rejected under every head, one `[2B, S]` trunk forward.

    Args:
      graphdef, params: a `MultiHeadLM`.
      batch: `input_ids`, `attention_mask`, `completion_mask` `[B, 2, S]` (right-padded, so
        causal attention alone keeps real positions off the padding).
    Returns:
      `[B, 2, H]` float32 summed completion log-probs (index 1: chosen, rejected).
    """
    model = nnx.merge(graphdef, params)
    b, two, s = batch["input_ids"].shape
    ids = batch["input_ids"].reshape(b * two, s)
    hidden, _ = model.hidden_states(ids, None)
    mask = batch["completion_mask"].reshape(b * two, s)[:, 1:].astype(jnp.float32)
    tok = multi_head_token_logps(hidden[:, :-1], model.heads.weight[...], ids[:, 1:], mask,
                                 chunk_size=chunk_size)  # [H, 2B, S-1]
    sums = jnp.sum(tok, axis=-1).reshape(-1, b, two)
    return jnp.transpose(sums, (1, 2, 0))


_PER_OBJECTIVE = ("loss/heads", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                  "rewards/margins", "logps/chosen", "logps/rejected", "examples")


def mah_dpo_loss_fn(graphdef, *, objectives: Sequence[str], ref_graphdef=None,
                    name: str = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
                    reference_free: bool = False, chunk_size: int = 128):
    """MAH-DPO `loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)`.

    Pair i (objective `batch["objective"][i]` = k) is scored by head k; with a single head
    every pair goes to head 0 (single-head DPO on the mixed data, exactly DPO's loss).

    Args:
      graphdef: the policy `MultiHeadLM`'s graph definition (H heads: H = O, or 1).
      objectives: O objective names (metric prefixes).
      ref_graphdef: the base `Transformer`'s graph definition; the reference's parameters come
        as `ref_params`, or its log-probs as `batch["ref_logps"]` `[B, 2]` (precomputed).
      name, beta, label_smoothing, reference_free: `losses.mah_dpo_loss` (`loss_type=name`).
    Returns:
      the loss function. Batch: `input_ids`, `attention_mask`, `completion_mask` `[B, 2, S]`
      and `objective` `[B]` int. Metrics: `{objective}/{loss, rewards/..., logps/...,
      examples}` plus batch totals `rewards/*`, `logps/*`, `num_tokens`.
    """
    names = tuple(objectives)
    kw = dict(beta=beta, label_smoothing=label_smoothing, loss_type=name,
              reference_free=reference_free)

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng
        logps = pair_head_logps(graphdef, params, batch, chunk_size=chunk_size)  # [B, 2, H]
        heads = logps.shape[-1]
        if heads not in (1, len(names)):
            raise ValueError(f"{heads} heads for {len(names)} objectives: use one head "
                             "per objective, or one head for all")
        ref = (jnp.zeros(batch["input_ids"].shape[:2], jnp.float32) if reference_free
               else reference_logps(ref_graphdef, ref_params, batch, chunk_size=chunk_size))
        obj = batch["objective"].astype(jnp.int32)
        head = jnp.zeros_like(obj) if heads == 1 else obj  # -1 (no objective): no head
        loss, _ = losses.mah_dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], head,
                                      **kw)
        # Per-objective metrics: each objective's pairs under the head it is routed to.
        by_obj = lambda x: jnp.broadcast_to(x, x.shape[:-1] + (len(names),))
        _, per = losses.mah_dpo_loss(by_obj(logps[:, 0]), by_obj(logps[:, 1]), ref[:, 0],
                                     ref[:, 1], obj, **kw)
        metrics = {f"{n}/{'loss' if key == 'loss/heads' else key}": per[key][k]
                   for key in _PER_OBJECTIVE for k, n in enumerate(names)}
        # Batch totals over routed pairs, TRL names.
        routed = jnp.take_along_axis(logps, jnp.clip(head, 0)[:, None, None], axis=-1)[..., 0]
        metrics.update(losses.pair_metrics(
            beta * (routed[:, 0] - ref[:, 0]), beta * (routed[:, 1] - ref[:, 1]),
            routed[:, 0], routed[:, 1], weights=(head >= 0).astype(jnp.float32)))
        metrics["num_tokens"] = jnp.sum(batch["attention_mask"]).astype(jnp.float32)
        return loss, metrics

    return loss_fn


def scale_trunk_updates(scale: float) -> optax.GradientTransformation:
    """Multiplies the updates of the trunk (not the heads) by `scale`: the trunk's learning
    rate is `scale` x the heads' (0 = a frozen trunk). The reference code: `scale=1`."""
    if scale < 0:
        raise ConfigError(f"config field 'heads.trunk_lr_scale' must be >= 0, got {scale}")

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


# ------------------------------------------------------------------------------ data

def _pairs(ctx: Context, names: list[str], policy: data.ErrorPolicy):
    """(train pairs, eval pairs) with `objective` set, from `data.path` or the built-in task."""
    d = ctx.cfg.data
    if not d.path and d.task != TASK:
        raise ConfigError(f"config field 'data.task': MAH-DPO knows task {TASK!r}, got "
                          f"{d.task!r}; or set data.path to a local file")
    task = functools.partial(data.arithmetic.multiobjective_pairs, max_operand=d.max_operand,
                             conflict=d.conflict, error_offsets=tuple(d.error_offsets) or (1,))
    train, evals = ctx.examples(
        "pairs", policy, objectives=names, task=lambda n, seed: task(n, seed=seed),
        expand=lambda records: data.multiobjective.expand_records(records, names,
                                                                  policy=policy))
    for ex in train + evals:
        if not isinstance(ex, data.Pair):
            raise ValueError(f"MAH-DPO trains on preference pairs, got {type(ex).__name__} "
                             f"rows from {d.path or 'the task'}")
    if num_heads(ctx.cfg, names) != 1 or d.balance:
        missing = [ex for ex in train + evals if ex.objective is None]
        if missing:
            path, line = missing[0].where or (d.path, None)
            raise data.DataError(f"every MAH-DPO pair names its objective ({len(missing)} pairs "
                                 f"do not; known: {names})", path=path, line=line,
                                 field="objective")
    return train, evals


class ObjectiveCounts:
    """The training batches, counting the pairs seen per objective (resumable with them)."""

    def __init__(self, batches, names: Sequence[str]):
        self.batches, self.names = batches, list(names)
        self.seen = {n: 0 for n in self.names}

    def __next__(self) -> dict:
        return next(self.batches)

    def metrics(self, batch) -> dict[str, int]:
        counts = np.bincount(batch["objective"][batch["objective"] >= 0],
                             minlength=len(self.names))
        for name, c in zip(self.names, counts):  # each process holds its rows: sum them all
            self.seen[name] += distributed.process_sum(int(c))
        return {f"{name}/examples_seen": self.seen[name] for name in self.names}

    def state_dict(self) -> dict:
        return dict(self.batches.state_dict(), examples_seen=dict(self.seen))

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)
        self.seen.update(state.get("examples_seen", {}))


# ------------------------------------------------------------------------------ evaluation

def eval_weights(heads: int, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Labels and `[K, H]` weights: every head alone, then the uniform mix (H > 1)."""
    eye = np.eye(heads, dtype=np.float32)
    if heads == 1:
        return ["single"], eye
    return [f"{n}_head" for n in names] + ["uniform"], np.concatenate(
        [eye, np.full((1, heads), 1.0 / heads, np.float32)])


def task_scores(graphdef, params, tokenizer, prompts: list[str], weights, *,
                max_new_tokens: int, objectives=data.arithmetic.OBJECTIVES) -> np.ndarray:
    """`[K, O]` mean greedy scores on the task's `prompts` of every weight vector `[K, H]`.

    One compiled program samples for all K weights (`sweep_head_weights`); with the byte
    tokenizer it also scores there (`data.arithmetic.token_scores`), else the completions are
    decoded and scored on the host.
    """
    ids, mask = left_pad([tokenizer.encode(p) for p in prompts], tokenizer.pad_id)
    answers = np.asarray([data.arithmetic.answer_of(p) for p in prompts], np.int32)
    on_device = (isinstance(tokenizer, ByteTokenizer)
                 and tuple(objectives) == data.arithmetic.OBJECTIVES)
    out = sweep_head_weights(graphdef, params, ids, mask, jax.random.key(0),
                             jnp.asarray(weights, jnp.float32), (answers,),
                             score_fn=data.arithmetic.token_scores if on_device else None,
                             max_new_tokens=max_new_tokens, temperature=0.0,
                             stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    if on_device:
        return np.asarray(out.scores).mean(axis=1)
    tokens, masks = np.asarray(out.samples.tokens), np.asarray(out.samples.mask)
    return np.stack([data.arithmetic.score(prompts, decode_completions(tokenizer, t, m),
                                           objectives).mean(0) for t, m in zip(tokens, masks)])


# ------------------------------------------------------------------------------ the plan

def setup(ctx: Context) -> Plan:
    cfg = ctx.cfg
    names = objective_names(cfg)
    heads = num_heads(cfg, names)
    rows = ctx.rows(functools.partial(_pairs, ctx, names))
    base = ctx.model()
    ref_graphdef, ref_params = nnx.split(base)
    model = MultiHeadLM.from_base(base, heads, noise_std=cfg.heads.noise_std,
                                  seed=cfg.heads.seed)
    graphdef, params = nnx.split(model)
    kw = loss_kwargs(cfg)
    precompute = cfg.reference.precompute and not kw["reference_free"]
    arrays = [None, None]
    if precompute:
        fn = reference_logps_fn(ref_graphdef, chunk_size=ctx.chunk)
        cache_dir = cfg.reference.cache_dir or f"{ctx.workdir}/ref_cache"
        arrays = [precompute_arrays(ctx, fn, ref_params, r, name="ref_logps",
                                    what=f"reference log-probs ({len(r)} pairs)",
                                    cache_dir=cache_dir, extra={"model": repr(base.config)})
                  if r else None for r in (rows.train, rows.eval)]
    iterator = (functools.partial(data.BalancedBatchIterator, num_objectives=len(names))
                if cfg.data.balance else data.BatchIterator)
    counts = ObjectiveCounts(ctx.batches(rows.train, iterator=iterator, arrays=arrays[0]),
                             names)
    labels, weights = eval_weights(heads, names)
    task = not cfg.data.path
    prompts = data.arithmetic.eval_prompts(cfg.train.eval_prompts, seed=cfg.train.seed + 20_000,
                                           max_operand=cfg.data.max_operand)
    scores = functools.partial(task_scores, graphdef, tokenizer=ctx.tokenizer, prompts=prompts,
                               max_new_tokens=cfg.data.max_completion_length)

    def evaluate(state) -> dict[str, float]:
        if not task:
            return {}
        out = {}
        for label, row in zip(labels, scores(state.params, weights=weights)):
            out.update({f"{label}/{name}": float(v) for name, v in zip(names, row)})
        return out

    def finish(state) -> dict:
        if not (task and cfg.train.sweep_points and heads == 2):
            return {}
        grid = weight_grid(cfg.train.sweep_points)
        s = scores(state.params, weights=grid)
        return {"sweep": {"weights": grid.tolist(),
                          **{name: s[:, k].tolist() for k, name in enumerate(names)}}}

    def weight_of(key: str) -> str | None:
        name, _, metric = key.partition("/")
        return f"{name}/examples" if name in names and metric != "examples" else None

    export_weights = tuple(cfg.heads.export_weights) or None
    return Plan(
        params=params, data=counts, batch_metrics=counts.metrics,
        loss_fn=mah_dpo_loss_fn(graphdef, objectives=names, ref_graphdef=ref_graphdef,
                                name=cfg.loss.name, chunk_size=ctx.chunk, **kw),
        reference=None if precompute or kw["reference_free"] else (lambda: ref_params),
        ref_dtype=cfg.reference.dtype,
        optimizer=multihead_optimizer(dict(cfg.optim), total_steps=cfg.train.steps,
                                      trunk_lr_scale=cfg.heads.trunk_lr_scale),
        eval_batches=(lambda: ctx.batches(rows.eval, shuffle=False, arrays=arrays[1]))
        if rows.eval else None,
        eval_weight_of=weight_of, evaluate=evaluate, finish=finish,
        summary={"num_heads": heads, "objectives": names},
        export=lambda p, out: save_multihead(nnx.merge(graphdef, p), out, objectives=names,
                                             weights=export_weights))


def skeleton(cfg) -> MultiHeadLM:
    """The policy `config.json` describes, heads uninitialised (for `alignax convert`)."""
    names = objective_names(cfg)
    return MultiHeadLM.from_base(build_model(cfg.model, seed=0, lora=cfg.lora),
                                 num_heads(cfg, names),
                                 noise_std=0.0, seed=0)


def save(module, out: str, cfg) -> None:
    save_multihead(module, out, objectives=objective_names(cfg),
                   weights=tuple(cfg.heads.export_weights) or None)


MAH_DPO = Algorithm(
    "mah_dpo", data="pairs", variants=VARIANTS, setup=setup, reference="policy",
    sections=("reference", "heads"),
    claims=("data.objectives", "data.balance", "data.conflict", "train.sweep_points"),
    skeleton=skeleton, save=save)
