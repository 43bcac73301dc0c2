"""Online trainers behind `alignax train`: PPO (RLHF), the GRPO family, RLOO and GRAO.

One step: B prompts -> the sampler, with the policy's parameters in place, draws G completions
per prompt -> rewards (functions over decoded text, a reward model, weighted vector + shaping)
-> the rollout forward (old / reference log-probs, entropy, critic values; jitted) ->
advantages (pure, jitted) -> `num_epochs` x `num_minibatches` jitted update steps
(`make_train_step` with the algorithm's objective) -> metrics.jsonl -> checkpoint. The
checkpoint's data state holds the prompt iterator's position and the sampler key, so a resumed
run repeats the uninterrupted one exactly.

| algorithm | advantages | objective | reference | critic |
|---|---|---|---|---|
| `ppo` | KL-penalised rewards, GAE, whitening | clipped surrogate + value loss | yes | yes |
| `grpo` | group z-score (`scale_rewards`) | `grpo_loss`, `loss_type` reduction | if beta | no |
| `rloo` | leave-one-out on reward - kl_coef KL | the same clipped surrogate | if kl_coef | no |
| `grao` | in `grao_loss` (G samples + answer) | exploration + imitation + alignment | no | no |

PPO's reward model comes from `experiments/configs/reward_model.py` (`reward.model_path`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import checkpoint as ckpt
from alignax import data as D
from alignax import losses
from alignax import metrics as M
from alignax import rewards as R
from alignax import sharding as sh
from alignax.models import to_hf
from alignax.train import loop
from alignax.train import rollout as RO
from alignax.train.optim import optimizer_from_config, schedule_from_config
from alignax.train.step import make_train_step

flat = RO.flat
sg = jax.lax.stop_gradient

# ------------------------------------------------------------------------------- objectives


def _policy_stats(graphdefs, params, batch, temperature, chunk_size, keys=("input_ids",
                  "attention_mask", "completion_mask")):
    policy = nnx.merge(graphdefs["policy"], params["policy"])
    ids, attn, mask = (flat(batch[k]) for k in keys)
    return RO.completion_stats(policy, ids, attn, mask, temperature=temperature,
                               chunk_size=chunk_size)["logps"], mask.astype(jnp.float32)


def clipped_objective(graphdefs, *, loss_type: str = "dapo", temperature: float = 1.0,
                      epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                      importance_sampling_level: str = "token", delta: float | None = None,
                      use_bias_correction_kl: bool = True, chunk_size: int = 128):
    """GRPO / DAPO / Dr. GRPO / RLOO objective: `losses.grpo_loss` on sequence advantages,
    reduced by `losses.grpo_aggregate(loss_type)` (TRL 1.16 `GRPOTrainer._compute_loss`).

    Batch: `input_ids`, `attention_mask` `[B, G, S]`; `completion_mask`, `old_logps` (and
    `ref_logps` if beta) `[B, G, N]`; `advantages` `[B, G]`; `normalizer` `[B]` (dapo's
    token count, the same in every row).
    """

    def objective(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        logps, mask = _policy_stats(graphdefs, params, batch, temperature, chunk_size)
        per_token, mets = losses.grpo_loss(
            logps, flat(batch["old_logps"]), flat(batch["advantages"]), mask,
            ref_logps=flat(batch["ref_logps"]) if beta else None, epsilon=epsilon,
            epsilon_high=epsilon_high, beta=beta,
            importance_sampling_level=importance_sampling_level,
            use_bias_correction_kl=use_bias_correction_kl, delta=delta)
        loss = losses.grpo_aggregate(per_token, mask, loss_type=loss_type,
                                     max_completion_length=mask.shape[-1],
                                     normalizer=batch["normalizer"][0])
        return loss, mets

    return objective


def ppo_objective(graphdefs, *, temperature: float = 1.0, epsilon: float = 0.2,
                  epsilon_value: float = 0.2, vf_coef: float = 0.1, dual_clip: float | None = None,
                  chunk_size: int = 128):
    """PPO-RLHF objective (TRL PPOTrainer): token-mean clipped surrogate + vf_coef x clipped
    value loss. Params `{"policy", "critic"}`.

    Batch: `input_ids`, `attention_mask` `[B, G, S]`; `completion_mask`, `old_logps`,
    `old_values`, `returns`, `advantages` `[B, G, N]`.
    """

    def objective(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        logps, mask = _policy_stats(graphdefs, params, batch, temperature, chunk_size)
        pg, pg_m = losses.ppo_policy_loss(logps, flat(batch["old_logps"]),
                                          flat(batch["advantages"]), mask, epsilon=epsilon,
                                          dual_clip=dual_clip)
        critic = nnx.merge(graphdefs["critic"], params["critic"])
        values = critic(flat(batch["input_ids"]), flat(batch["attention_mask"]), mask.shape[-1])
        vl, vl_m = losses.ppo_value_loss(values, flat(batch["old_values"]),
                                         flat(batch["returns"]), mask,
                                         epsilon_value=epsilon_value)
        pg_loss, v_loss = losses.reduce.token_mean(pg, mask), losses.reduce.token_mean(vl, mask)
        ratio = sg(jnp.exp(logps - flat(batch["old_logps"])))
        return pg_loss + vf_coef * v_loss, {
            "loss/policy_avg": sg(pg_loss), "loss/value_avg": sg(v_loss),
            "policy/clipfrac_avg": pg_m["policy/clipfrac"],
            "policy/approxkl_avg": pg_m["policy/approx_kl"],
            "val/clipfrac_avg": vl_m["value/clipfrac"],
            "val/ratio": losses.reduce.token_mean(ratio, mask)}

    return objective


def grao_objective(graphdefs, *, temperature: float = 1.0, beta: float = 0.5, lam: float = 0.6,
                   pooled: bool = True, chunk_size: int = 128):
    """GRAO objective (arXiv 2508.07750 Eq. 3): the G samples and the reference answer of each
    prompt in one `[B * (G + 1), S]` forward, then `losses.grao_loss`, batch mean.

    Batch: the samples' `input_ids`, `attention_mask` `[B, G, S]`, `completion_mask`
    `[B, G, N]`, `rewards` `[B, G]`; the answer's `answer_ids`, `answer_attention` `[B, S]`,
    `answer_mask` `[B, N]`, `answer_reward` `[B]`.
    """

    def objective(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        b, g, n = batch["completion_mask"].shape
        both = {k: jnp.concatenate([flat(batch[k]), batch[a]], axis=0) for k, a in (
            ("input_ids", "answer_ids"), ("attention_mask", "answer_attention"),
            ("completion_mask", "answer_mask"))}
        logps, mask = _policy_stats(graphdefs, params, {k: v[:, None] for k, v in both.items()},
                                    temperature, chunk_size)
        loss, mets = losses.grao_loss(
            logps[:b * g].reshape(b, g, n), mask[:b * g].reshape(b, g, n), logps[b * g:],
            mask[b * g:], batch["rewards"], batch["answer_reward"], beta=beta, lam=lam,
            pooled=pooled)
        return jnp.mean(loss), mets

    return objective


# ------------------------------------------------------------------------------- algorithms

@dataclasses.dataclass(frozen=True)
class OnlineAlgorithm:
    objective: Callable          # builder(graphdefs, temperature=, chunk_size=, **loss kwargs)
    estimator: str               # "grpo", "rloo", "ppo" or "grao"
    critic: bool = False
    answers: bool = False        # needs the dataset's reference answers


ALGORITHMS = {
    "ppo": OnlineAlgorithm(ppo_objective, "ppo", critic=True),
    "grpo": OnlineAlgorithm(clipped_objective, "grpo"),
    "rloo": OnlineAlgorithm(clipped_objective, "rloo"),
    "grao": OnlineAlgorithm(grao_objective, "grao", answers=True),
}
"""Online algorithm name -> how it is trained (`loop.RUNNERS` sends these to `run`)."""

# Loss-config keys consumed by each advantage estimator, not by the objective (GRAO's `lam`
# is its objective's alignment weight, PPO's the GAE lambda).
_ADVANTAGE_KEYS = {
    "ppo": {"kl_coef", "kl_estimator", "gamma", "lam", "whiten"},
    "grpo": {"scale_rewards", "normalize_advantages"},
    "rloo": {"scale_rewards", "normalize_advantages", "kl_coef", "kl_estimator"},
    "grao": set(),
}


def _needs_reference(cfg) -> bool:
    loss = cfg.loss
    if cfg.algorithm == "ppo":
        return True
    if cfg.algorithm == "grpo":
        return bool(loss.get("beta", 0.0))
    return cfg.algorithm == "rloo" and bool(loss.get("kl_coef", 0.0))


def build_objective(cfg, alg: OnlineAlgorithm, graphdefs):
    skip = _ADVANTAGE_KEYS[alg.estimator] | {"name"}
    kw = {k: v for k, v in dict(cfg.loss).items() if k not in skip}
    if alg.estimator in ("grpo", "rloo"):
        kw.setdefault("loss_type", cfg.loss.name if alg.estimator == "grpo" else "grpo")
        if kw["loss_type"] not in losses.GRPO_LOSS_TYPES:
            field = "name" if alg.estimator == "grpo" else "loss_type"
            raise ValueError(f"config field 'loss.{field}': unknown GRPO loss type "
                             f"{kw['loss_type']!r}; known: {sorted(losses.GRPO_LOSS_TYPES)}")
    params = inspect.signature(alg.objective).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise ValueError(f"config field 'loss': {cfg.algorithm} does not take {unknown}; it "
                         f"takes {sorted(set(params) - {'graphdefs', 'temperature', 'chunk_size'})}"
                         f" and {sorted(_ADVANTAGE_KEYS[alg.estimator])}")
    return alg.objective(graphdefs, temperature=float(cfg.rollout.temperature),
                         chunk_size=int(cfg.train.get("logits_chunk", 128)), **kw)


def make_prepare(cfg, alg: OnlineAlgorithm):
    """`prepare(batch, fwd) -> (batch for the objective, metrics)`, jitted: the advantages.

    `fwd` is `rollout.rollout_forward`'s output. dapo's normaliser is the generation batch's
    completion-token count over the updates of one epoch (and gradient-accumulation steps), so
    each minibatch step is a token mean over its share of the batch (TRL 1.16).
    """
    loss = cfg.loss
    kl_coef = float(loss.get("kl_coef", 0.0))
    est = loss.get("kl_estimator", "k1")
    splits = int(cfg.rollout.get("num_minibatches", 1)) * int(cfg.train.get("grad_accum", 1))

    def prepare(batch, fwd):
        mask = batch["completion_mask"].astype(jnp.float32)
        out = dict(batch, old_logps=fwd["old_logps"])
        mets = {}
        if "ref_logps" in fwd:
            out["ref_logps"] = fwd["ref_logps"]
            kl = RO.sequence_kl(fwd["old_logps"], fwd["ref_logps"], mask, estimator=est)
            mets["objective/kl"] = jnp.mean(kl)
        if alg.estimator == "ppo":
            scores = batch["rewards"]
            adv, returns, rewards = RO.ppo_advantages(
                fwd["old_logps"], fwd["ref_logps"], fwd["values"], scores, mask,
                kl_coef=kl_coef, kl_estimator=est, gamma=float(loss.get("gamma", 1.0)),
                lam=float(loss.get("lam", 0.95)), whiten=bool(loss.get("whiten", True)))
            out.update(advantages=adv, returns=returns, old_values=fwd["values"])
            non_score = jnp.mean(jnp.sum(rewards, -1) - scores)
            mets.update({"objective/scores": jnp.mean(scores),
                         "objective/non_score_reward": non_score,
                         "objective/rlhf_reward": jnp.mean(scores) + non_score,
                         "val/mean": losses.reduce.token_mean(fwd["values"], mask)})
        elif alg.estimator in ("grpo", "rloo"):
            rewards = batch["rewards"]
            if alg.estimator == "rloo" and kl_coef:
                rewards = rewards - kl_coef * kl
            adv = RO.group_advantages(rewards, estimator=alg.estimator,
                                      scale_rewards=loss.get("scale_rewards", "group"))
            if loss.get("normalize_advantages", False):
                adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)
            norm = jnp.maximum(jnp.sum(mask), 1.0) / splits
            out.update(advantages=adv,
                       normalizer=jnp.full(rewards.shape[:1], norm, jnp.float32))
        return out, mets

    return jax.jit(prepare)


# ------------------------------------------------------------------------------- set-up

def _examples(cfg, tokenizer, limits):
    policy = D.ErrorPolicy(cfg.data.get("on_error", "raise"))
    train_ex, eval_ex = loop.build_examples(cfg, "pairs", policy)
    prompts = RO.prompt_examples(train_ex, tokenizer, limits)
    eval_prompts = [e.prompt for e in eval_ex if isinstance(e.prompt, str)]
    return prompts, eval_prompts[:int(cfg.train.get("eval_prompts", 128))]


def _reward_model(cfg):
    """(graphdef, params) of the reward model in `reward.model_path`, or None."""
    path = cfg.reward.get("model_path") or ""
    return R.load_scorer(path) if path else None


def _critic(reward_model, policy, seed):
    """TRL's value model: the reward model's trunk and head (else the policy's trunk)."""
    if reward_model is not None:
        rm = nnx.merge(*reward_model)
        critic = RO.Critic(rm.trunk, rngs=nnx.Rngs(seed))
        critic.head.weight.set_value(rm.head.value.weight.get_value())
        critic.head.bias.set_value(rm.head.value.bias.get_value())
        return critic
    graphdef, state = nnx.split(policy)
    trunk = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
    return RO.Critic(trunk, rngs=nnx.Rngs(seed))


def _scorer(cfg, reward_model) -> RO.RewardScorer:
    rc = cfg.reward
    names = list(rc.get("functions", ()) or ())
    weights = list(rc.get("weights", ()) or ())
    if reward_model is not None and len(weights) == len(names):
        weights.append(float(rc.get("model_weight", 1.0)))
    return RO.RewardScorer([(n, R.get_reward_function(n)) for n in names], weights,
                           reward_model=reward_model,
                           length_penalty=float(rc.get("length_penalty", 0.0)),
                           missing_eos_penalty=float(rc.get("missing_eos_penalty", 0.0)),
                           overlong_buffer=int(rc.get("overlong_buffer", 0)))


# ------------------------------------------------------------------------------- metrics

def rollout_metrics(rollout: dict, names, *, task: bool) -> dict[str, float]:
    """TRL-named reward and completion metrics of a rollout (host side)."""
    r = rollout["rewards"].astype(np.float64)
    lengths, term = rollout["lengths"], rollout["terminated"]
    g = r.shape[1]
    group_std = np.nanstd(r, axis=1, ddof=1) if g > 1 else np.zeros(r.shape[0])
    out = {"reward": float(np.nanmean(r)), "reward_std": float(np.nanmean(group_std)),
           "frac_reward_zero_std": float(np.mean(np.nan_to_num(group_std) == 0.0)),
           "completions/mean_length": float(lengths.mean()),
           "completions/min_length": float(lengths.min()),
           "completions/max_length": float(lengths.max()),
           "completions/clipped_ratio": float(1.0 - term.mean()),
           "completions/mean_terminated_length": float(lengths[term].mean()) if term.any()
           else float("nan")}
    out.update(R.vector_metrics(rollout["reward_vector"].reshape(-1, len(names)), names))
    if task:
        prompts = np.repeat(rollout["prompts"], g)
        out["task_accuracy"] = float(np.nanmean(np.asarray(R.arithmetic_correct(
            list(prompts), list(rollout["texts"].reshape(-1))), dtype=float)))
    return out


# ------------------------------------------------------------------------------- the loop

def sampling_options(ro, tokenizer, *, prompt_width: int) -> RO.SamplingOptions:
    """The sampler's settings from the `rollout` section. `stop_tokens` end a row in addition
    to the tokenizer's EOS, never instead of it (as vLLM's stop_token_ids)."""
    return RO.SamplingOptions(
        num_samples=int(ro.num_generations), max_new_tokens=int(ro.max_new_tokens),
        temperature=float(ro.temperature), top_k=int(ro.get("top_k", 0)),
        top_p=float(ro.get("top_p", 1.0)),
        stop_ids=tuple(dict.fromkeys((tokenizer.eos_id, *(ro.get("stop_tokens", ()) or ())))),
        pad_id=tokenizer.pad_id, prompt_width=prompt_width)


_RESAMPLE_TAG = 1 << 20  # fold_in tags of dynamic-sampling tries 1, 2, ...

def run(cfg, workdir: str, *, log=print) -> dict[str, Any]:
    """Trains the online algorithm `cfg.algorithm` in `workdir` (resuming there if it holds
    checkpoints). Returns the summary written to `workdir/summary.json`."""
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"config field 'algorithm': unknown online algorithm {cfg.algorithm!r}")
    if jax.process_count() > 1:
        raise ValueError("online training runs on one process (multi-host rollouts: not yet)")
    alg = ALGORITHMS[cfg.algorithm]
    loop.write_config(cfg, workdir)
    ro, tc = cfg.rollout, cfg.train
    mesh = sh.make_mesh(dict(cfg.mesh))
    tokenizer = loop.build_tokenizer(cfg)
    limits = D.Limits(cfg.data.max_prompt_length, cfg.data.max_completion_length)
    examples, eval_prompts = _examples(cfg, tokenizer, limits)
    b = tc.batch_size
    epochs, minibatches = int(ro.get("num_epochs", 1)), int(ro.get("num_minibatches", 1))
    if b % minibatches:
        raise ValueError(f"train.batch_size={b} prompts do not split into "
                         f"rollout.num_minibatches={minibatches}")
    micro = int(tc.get("grad_accum", 1))
    sh.check_batch_size(b // minibatches, mesh=mesh, num_microbatches=micro)
    it = RO.PromptIterator(examples, batch_size=b, seed=tc.seed)
    opts = sampling_options(ro, tokenizer, prompt_width=limits.max_prompt_length)

    policy = loop.build_model(cfg)
    graphdefs, params0 = {}, {}
    graphdefs["policy"], params0["policy"] = nnx.split(policy)
    reward_model = _reward_model(cfg)
    if alg.critic:
        graphdefs["critic"], params0["critic"] = nnx.split(_critic(reward_model, policy,
                                                                   tc.seed))
    scorer = _scorer(cfg, reward_model)
    total = tc.steps * epochs * minibatches
    tx = optimizer_from_config(dict(cfg.optim), total_steps=total)
    lr_fn = schedule_from_config(dict(cfg.optim), total_steps=total)
    ref_dtype = cfg.get("reference", {}).get("dtype") or None
    manager = loop.checkpoint_manager_for(cfg, workdir)
    state, shardings, start, data_state = loop.restore_or_init(
        manager, params0, tx, seed=tc.seed, workdir=workdir, log=log, mesh=mesh,
        reference=(lambda: params0["policy"]) if _needs_reference(cfg) else None,
        ref_dtype=jnp.dtype(ref_dtype) if ref_dtype else None)
    key = jax.random.key(tc.seed + 1)
    if data_state is not None:
        it.load_state_dict(data_state["prompts"])
        key = jax.random.wrap_key_data(np.asarray(data_state["rng"], np.uint32))

    step_fn = make_train_step(build_objective(cfg, alg, graphdefs), tx, mesh=mesh,
                              state_shardings=shardings, num_microbatches=micro,
                              learning_rate_fn=lr_fn)
    forward = jax.jit(lambda p, r, bt: RO.rollout_forward(
        graphdefs, p, r, bt, temperature=opts.temperature,
        chunk_size=int(tc.get("logits_chunk", 128))))
    prepare = make_prepare(cfg, alg)
    dp = sh.data_parallel_size(mesh)
    batch_sharding = sh.batch_sharding(mesh) if b % dp == 0 else None
    step_sharding = sh.batch_sharding(mesh)
    task = not cfg.data.get("path")
    dynamic = bool(ro.get("dynamic_sampling", False))
    max_tries = int(ro.get("max_resample", 4)) if dynamic else 1

    to_sampler = RO.sampler_params_fn(params0["policy"], mesh=mesh, dtype=policy.config.dtype)

    def collect(params, step_key):
        """Samples and scores B groups; DAPO dynamic sampling drops all-equal groups.

        Also returns the sampler's own totals over every try: wall seconds (generation and
        decoding to text, not reward scoring), rows and generated tokens."""
        rollouts, sampled = [], {"seconds": 0.0, "rows": 0, "tokens": 0}
        policy_params = to_sampler(params["policy"])  # once per rollout, device to device
        for attempt in range(max_tries):
            batch = it.next_batch()
            # Try 0 draws with fold_in(key, 0); later tries use tags no epoch shuffle uses.
            t0 = time.perf_counter()
            r = RO.sample(graphdefs["policy"], policy_params, batch,
                          jax.random.fold_in(step_key, attempt and _RESAMPLE_TAG + attempt),
                          opts, tokenizer=tokenizer, sharding=batch_sharding)
            sampled["seconds"] += time.perf_counter() - t0
            sampled["rows"] += int(r["lengths"].size)
            sampled["tokens"] += int(r["lengths"].sum())
            if alg.answers:
                r = scorer.answer_rewards(RO.add_answers(scorer(r), batch,
                                                         pad_id=tokenizer.pad_id))
            else:
                r = scorer(r)
            rollouts.append(r)
            if not dynamic:
                return r, {}, sampled
            index, num_informative = RO.dynamic_sampling_index(
                [x["rewards"] for x in rollouts], b)
            if num_informative >= b:
                break
        return RO.select_groups(rollouts, index), {
            "dynamic_sampling/batches": float(len(rollouts)),
            "dynamic_sampling/flat_groups_kept": float(max(0, b - num_informative))}, sampled

    def evaluate(st) -> dict[str, float]:
        if not task:
            return {}
        model_now = nnx.merge(graphdefs["policy"], st.params["policy"])
        return {"task_accuracy": loop.task_accuracy(model_now, tokenizer, eval_prompts,
                                                    max_new_tokens=opts.max_new_tokens)}

    writer = M.MetricsWriter(workdir, resume_step=start)
    progress = M.Progress(tc.steps, every=int(tc.get("log_every", 10)))
    eval_every = int(tc.get("eval_every", 0) or 0)
    config_json = json.loads(cfg.to_json())
    history = loop.before_training(
        workdir, start, lambda: {"eval_before": evaluate(state)} if eval_every else {})
    if start == 0 and "eval_before" in history:
        log(f"before training: {history['eval_before']}")
    t_run = time.perf_counter()
    last_loss, row = float("nan"), {}
    with ckpt.PreemptionGuard() as guard:
        for s in range(start + 1, tc.steps + 1):
            t0 = time.perf_counter()
            key, step_key = jax.random.split(key)
            rollout, row, sampled = collect(state.params, step_key)
            t_sample = time.perf_counter() - t0
            row.update(rollout_metrics(rollout, scorer.names, task=task))
            batch = _device_batch(rollout, alg, batch_sharding)
            fwd = forward(state.params, state.ref_params, batch)
            batch, prep_mets = prepare(batch, fwd)
            row["entropy"] = float(losses.reduce.token_mean(fwd["entropy"],
                                                            batch["completion_mask"]))
            row.update({k: float(v) for k, v in fwd.items() if k.startswith("sampler/")})
            row.update({k: float(v) for k, v in prep_mets.items()})
            upd: dict[str, list] = {}
            for e in range(epochs):
                # Each epoch visits the prompts (whole groups) in a fresh order.
                order = np.asarray(jax.random.permutation(jax.random.fold_in(step_key, 1 + e), b))
                for m in np.split(order, minibatches):
                    mb = batch if epochs * minibatches == 1 else jax.tree.map(
                        lambda x, i=m: x[i], batch)
                    # Device-to-device reshard to the step's row sharding (no host copy).
                    state, mets = step_fn(state, jax.device_put(mb, step_sharding))
                    for k, v in mets.items():
                        upd.setdefault(k, []).append(float(v))
            row.update({k: float(np.mean(v)) for k, v in upd.items()})
            row["learning_rate"] = upd["learning_rate"][-1]
            last_loss = row["loss"]
            loop.check_finite(last_loss, s, manager=manager, workdir=workdir)
            dt = time.perf_counter() - t0
            # Rates count every sampled row and token (dynamic sampling: all tries);
            # time/rollout also includes reward scoring, sampler/* only the sampler.
            row.update({"time/rollout": t_sample, "time/step": dt,
                        "samples_per_second": sampled["rows"] / dt,
                        "tokens_per_second": sampled["tokens"] / dt,
                        "sampler/tokens_per_second": sampled["tokens"] / sampled["seconds"],
                        "sampler/seconds": sampled["seconds"]})
            progress.update(s, loss=last_loss, tokens=sampled["tokens"])
            if eval_every and (s % eval_every == 0 or s == tc.steps):
                row.update({f"eval/{k}": v for k, v in evaluate(state).items()})
            writer.write(s, row)
            data_state = {"prompts": it.state_dict(),
                          "rng": [int(x) for x in np.asarray(jax.random.key_data(key))]}
            if loop.save_step(manager, guard, step=s, state=state, data_state=data_state,
                              config=config_json, final=s == tc.steps, writer=writer, log=log):
                return {"preempted_at": s}
    manager.wait_until_finished()
    writer.close()
    summary = {"algorithm": cfg.algorithm, "steps": tc.steps, "final_loss": last_loss,
               "wall_seconds": time.perf_counter() - t_run, **history}
    if eval_every and task:
        summary["eval_after"] = ({k[len("eval/"):]: v for k, v in row.items()
                                  if k.startswith("eval/")} if start < tc.steps
                                 else evaluate(state))
    if tc.get("export_hf", True):
        export = os.path.join(workdir, "hf")
        to_hf(nnx.merge(graphdefs["policy"], jax.device_get(state.params["policy"])), export)
        loop.export_tokenizer(cfg, export)
        summary["hf_export"] = export
    return loop.write_summary(summary, workdir)


def _device_batch(rollout: dict, alg: OnlineAlgorithm, sharding) -> dict:
    """The arrays the jitted functions read, on the devices (`[B, ...]` sharded by rows)."""
    ids, attn = RO.sequences(rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                             rollout["mask"])
    rewards = rollout["rewards"].astype(np.float32)
    if alg.estimator != "grpo":  # NaN (unscorable) stays only where grpo_advantages drops it
        rewards = np.nan_to_num(rewards)
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": rollout["mask"],
             "sampler_logps": rollout["sampler_logps"], "rewards": rewards}
    if alg.answers:
        a_ids, a_attn = RO.sequences(rollout["prompt_ids"], rollout["prompt_mask"],
                                     rollout["answer_tokens"], rollout["answer_mask"])
        batch.update(answer_ids=a_ids, answer_attention=a_attn,
                     answer_mask=rollout["answer_mask"],
                     answer_reward=np.nan_to_num(rollout["answer_reward"]).astype(np.float32))
    return jax.device_put(batch, sharding) if sharding is not None else jax.device_put(batch)
