"""The online-RL step the engine runs for PPO, the GRPO family, RLOO and GRAO.

One step: B prompts -> the sampler, with the policy's parameters in place, draws G completions
per prompt -> rewards (`rewards.RewardScorer`: functions over decoded text, a reward model,
weighted vector + shaping) -> the rollout forward (old / reference log-probs, entropy, critic
values; jitted) -> the algorithm's advantages (pure, jitted) -> `num_epochs` x
`num_minibatches` jitted updates of the algorithm's `loss_fn`. The data state holds the
prompt iterator's position and the sampler key, so a resumed run repeats the uninterrupted
one exactly. An algorithm is an `Online` spec: its loss function, its advantages, when it
needs a reference, and whether it has a critic or trains on the dataset's answers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import data, envs, losses, rewards, sharding
from alignax.algorithms.base import task_evaluator
from alignax.algorithms.online import rollout
from alignax.algorithms.online.data_state import Rollouts
from alignax.config import ConfigError
from alignax.models import Critic, to_hf
from alignax.sampling import multiturn, sequences
from alignax.train.context import Context
from alignax.train.runner import Plan

SECTIONS = ("reference", "rollout", "reward")
MULTITURN_SECTIONS = SECTIONS + ("environment",)  # grpo, rloo, ppo
_RESAMPLE_TAG = 1 << 20  # fold_in tags of dynamic-sampling tries 1, 2, ...


@dataclasses.dataclass(frozen=True)
class Online:
    """An online algorithm, as the step below needs it.

    Attributes:
      loss_fn: `(graphdefs, cfg, *, chunk_size) -> loss_fn` of the update.
      advantages: `cfg -> ((batch, fwd, mask) -> (arrays, metrics))`, jitted; None = none.
      needs_reference: `loss section -> bool`: a frozen copy of the start in the state.
      critic: trains a value-head critic beside the policy (params `{"policy", "critic"}`).
      answers: scores and trains on the dataset's reference answers (GRAO).
      keep_nan_rewards: unscorable (NaN) rewards reach the advantages (GRPO leaves them out of
        the group statistics); otherwise they count as 0.
      min_generations: the fewest samples per prompt the advantages are defined for (group
        baselines need 2: one sample is its own group mean).
    """

    loss_fn: Callable
    advantages: Callable | None
    needs_reference: Callable
    critic: bool = False
    answers: bool = False
    keep_nan_rewards: bool = False
    min_generations: int = 1


def policy_logps(graphdefs, params, batch, temperature, chunk_size):
    """The policy's per-token log-probs `[B * G, N]` of a rollout batch and its float mask."""
    policy = nnx.merge(graphdefs["policy"], params["policy"])
    ids, attn, mask = (rollout.flat(batch[k]) for k in ("input_ids", "attention_mask",
                                                         "completion_mask"))
    return rollout.completion_stats(policy, ids, attn, mask, temperature=temperature,
                                    chunk_size=chunk_size)["logps"], mask.astype(jnp.float32)


def make_prepare(cfg, spec: Online):
    """`prepare(batch, fwd) -> (batch for the loss, metrics)`, jitted: the old (and reference)
    log-probs, `objective/kl`, and the algorithm's advantages."""
    estimator = cfg.loss.get("kl_estimator", "k1")
    advantages = spec.advantages(cfg) if spec.advantages else None

    cap = cfg.rollout.importance_cap if cfg.rollout.async_rollouts else None

    def prepare(batch, fwd):
        mask = batch["completion_mask"].astype(jnp.float32)
        out = dict(batch, old_logps=fwd["old_logps"])
        mets = {}
        if cap is not None:  # rollouts one step old: truncated importance weights (TIS)
            ratio = jnp.exp(fwd["old_logps"] - batch["sampler_logps"])
            out["is_weights"] = jnp.minimum(ratio, cap) * mask
            mets["async/is_weight_mean"] = losses.reduce.token_mean(out["is_weights"], mask)
            mets["async/is_ratio_max"] = jnp.max(jnp.where(mask > 0, ratio, 0.0))
            mets["async/is_capped_fraction"] = losses.reduce.token_mean(
                (ratio > cap).astype(jnp.float32), mask)
        if "ref_logps" in fwd:
            out["ref_logps"] = fwd["ref_logps"]
            kl = rollout.sequence_kl(fwd["old_logps"], fwd["ref_logps"], mask,
                                     estimator=estimator)
            mets["objective/kl"] = jnp.mean(kl)
        if advantages is not None:
            arrays, more = advantages(out, fwd, mask)
            out.update(arrays)
            mets.update(more)
        return out, mets

    return jax.jit(prepare)


def sampling_options(ro, tokenizer, *, prompt_width: int) -> rollout.SamplingOptions:
    """The sampler's settings from the `rollout` section. `stop_tokens` end a row in addition
    to the tokenizer's EOS, never instead of it (as vLLM's stop_token_ids)."""
    return rollout.SamplingOptions(
        num_samples=ro.num_generations, max_new_tokens=ro.max_new_tokens,
        temperature=ro.temperature, top_k=ro.top_k, top_p=ro.top_p,
        stop_ids=tuple(dict.fromkeys((tokenizer.eos_id, *ro.stop_tokens))),
        pad_id=tokenizer.pad_id, prompt_width=prompt_width, slots=ro.slots)


def rollout_metrics(r: dict, names, *, task: bool,
                    failures: dict[str, int] | None = None) -> dict[str, float]:
    """TRL-named reward and completion metrics of a rollout (host side)."""
    reward = r["rewards"].astype(np.float64)
    lengths, term = r["lengths"], r["terminated"]
    g = reward.shape[1]
    group_std = np.nanstd(reward, axis=1, ddof=1) if g > 1 else np.zeros(reward.shape[0])
    out = {"reward": float(np.nanmean(reward)), "reward_std": float(np.nanmean(group_std)),
           "frac_reward_zero_std": float(np.mean(np.nan_to_num(group_std) == 0.0)),
           "completions/mean_length": float(lengths.mean()),
           "completions/min_length": float(lengths.min()),
           "completions/max_length": float(lengths.max()),
           "completions/clipped_ratio": float(1.0 - term.mean()),
           "completions/mean_terminated_length": float(lengths[term].mean()) if term.any()
           else float("nan")}
    out.update(rewards.vector_metrics(r["reward_vector"].reshape(-1, len(names)), names))
    out.update({f"rewards/{name}/failures": float(n) for name, n in (failures or {}).items()})
    if task:  # prompts the checker cannot read (None) are left out
        out["task_accuracy"] = float(np.nanmean(np.asarray(rewards.arithmetic_correct(
            list(np.repeat(r["prompts"], g)), list(r["texts"].reshape(-1))), dtype=float)))
    return out


def device_batch(r: dict, spec: Online, shard) -> dict:
    """The arrays the jitted functions read, on the devices (`[B, ...]` sharded by rows).
    Multi-turn episodes attend to their observations (`attention`) but train on the policy's
    tokens only (`mask`)."""
    ids, attn = sequences(r["prompt_ids"], r["prompt_mask"], r["tokens"],
                          r.get("attention", r["mask"]))
    reward = r["rewards"].astype(np.float32)
    if not spec.keep_nan_rewards:
        reward = np.nan_to_num(reward)
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": r["mask"],
             "sampler_logps": r["sampler_logps"], "rewards": reward}
    if spec.answers:
        a_ids, a_attn = sequences(r["prompt_ids"], r["prompt_mask"],
                                          r["answer_tokens"], r["answer_mask"])
        batch.update(answer_ids=a_ids, answer_attention=a_attn, answer_mask=r["answer_mask"],
                     answer_reward=np.nan_to_num(r["answer_reward"]).astype(np.float32))
    return jax.device_put(batch, shard) if shard is not None else jax.device_put(batch)


def scorer_for(cfg, reward_model, *, log=print) -> rewards.RewardScorer:
    """The `reward` section's scorer (functions, then the reward model if any)."""
    rc = cfg.reward
    names, weights = list(rc.functions), list(rc.weights)
    if reward_model is not None and len(weights) == len(names):
        weights.append(rc.model_weight)
    try:
        functions = [(n, rewards.get_reward_function(n)) for n in names]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return rewards.RewardScorer(functions, weights, reward_model=reward_model,
                                length_penalty=rc.length_penalty,
                                missing_eos_penalty=rc.missing_eos_penalty,
                                overlong_buffer=rc.overlong_buffer, timeout=rc.timeout_seconds,
                                log=log)


def setup_for(spec: Online):
    """The engine's `setup(ctx) -> Plan` for the online algorithm `spec`."""

    def setup(ctx: Context) -> Plan:
        cfg, ro = ctx.cfg, ctx.cfg.rollout
        if ro.num_generations < spec.min_generations:
            raise ValueError(
                f"config field 'rollout.num_generations': {cfg.algorithm} needs at least "
                f"{spec.min_generations} samples per prompt, got {ro.num_generations} (the "
                "group baseline of one sample is itself: every advantage would be 0, or 0/0 "
                "for RLOO's leave-one-out mean)")
        b = cfg.train.batch_size
        if b % ro.num_minibatches:
            raise ValueError(f"train.batch_size={b} prompts do not split into "
                             f"rollout.num_minibatches={ro.num_minibatches}")
        ctx.check_batch(b // ro.num_minibatches)
        policy = data.ErrorPolicy(cfg.data.on_error)
        train_ex, eval_ex = ctx.examples("prompts", policy)
        prompts = data.PromptIterator(
            rollout.prompt_examples(train_ex, ctx.tokenizer, ctx.limits), batch_size=b,
            seed=cfg.train.seed)
        state = Rollouts(prompts, cfg.train.seed)
        model = ctx.model()
        graphdefs, params = {}, {}
        graphdefs["policy"], params["policy"] = nnx.split(model)
        reward_model = rewards.load_scorer(cfg.reward.model_path) if cfg.reward.model_path \
            else None
        if spec.critic:
            critic = (Critic.from_reward_model(nnx.merge(*reward_model), seed=cfg.train.seed)
                      if reward_model is not None
                      else Critic.from_policy(model, seed=cfg.train.seed))
            graphdefs["critic"], params["critic"] = nnx.split(critic)
        return Plan(
            params=params, data=state,
            loss_fn=spec.loss_fn(graphdefs, cfg, chunk_size=ctx.chunk),
            reference="copy" if spec.needs_reference(cfg.loss) else None,
            reference_part=lambda p: p["policy"],
            ref_dtype=cfg.reference.dtype, updates_per_step=ro.num_epochs * ro.num_minibatches,
            step=_step_maker(ctx, spec, graphdefs, params, state,
                             scorer_for(cfg, reward_model, log=ctx.log),
                             model.config.dtype),
            evaluate=task_evaluator(ctx, graphdefs["policy"], ctx.eval_prompts(eval_ex),
                                    key=lambda p: p["policy"]),
            export=lambda p, out: to_hf(nnx.merge(graphdefs["policy"], p["policy"]), out))

    return setup


def _check_scored(r: dict, names) -> None:
    """ConfigError when no completion of a rollout could be scored (every reward NaN): the
    run would otherwise train on nothing, with a zero loss."""
    if np.isfinite(r["rewards"]).any():
        return
    raise ConfigError(
        f"config field 'reward.functions': none of the {r['rewards'].size} completions could be "
        f"scored by {names} (every reward is None / NaN), e.g. prompt {r['prompts'][0]!r} -> "
        f"{r['texts'].reshape(-1)[0]!r}; use reward functions that read this data (your own: "
        "reward.functions=['package.module:function']) or a reward model (reward.model_path)")


def episode_options(ctx: Context) -> rollout.EpisodeOptions | None:
    """The `environment` section resolved (None: single-turn rollouts)."""
    ec, ro = ctx.cfg.get("environment"), ctx.cfg.rollout
    if ec is None or not ec.name:
        return None
    parser = envs.ToolCallParser(ec.tool_start, ec.tool_end, ec.result_start, ec.result_end)
    try:
        make_env = envs.environment_factory(ec.name, parser=parser,
                                            max_observation_chars=ec.max_observation_chars)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    turn = ec.max_turn_tokens or ro.max_new_tokens
    observation = len(ctx.tokenizer.encode(parser.wrap("x" * ec.max_observation_chars)))
    total = ec.max_total_tokens or ec.max_turns * (turn + observation)
    if ec.max_turns < 1 or turn > total:
        raise ConfigError(f"environment: need max_turns >= 1 and max_turn_tokens <= "
                          f"max_total_tokens (got {ec.max_turns}, {turn}, {total})")
    stop = tuple(multiturn.encode_text(ctx.tokenizer, ec.tool_end))
    return rollout.EpisodeOptions(make_env, ec.max_turns, turn, total, stop,
                                  float(ec.get("reward_weight", 0.0)))


def _collector(ctx: Context, spec: Online, graphdef, state: Rollouts, scorer, opts, shard,
               to_sampler):
    """`collect(params, key) -> (rollout, metrics, sampler totals)`: samples and scores B
    groups; DAPO dynamic sampling drops all-equal groups. The totals count every try: wall
    seconds (generation and decoding to text, not reward scoring), rows and tokens.
    `collect(params, key, defer=True)` queues the sampling and returns `() -> (...)`."""
    ro, b = ctx.cfg.rollout, ctx.cfg.train.batch_size
    max_tries = ro.max_resample if ro.dynamic_sampling else 1
    episodes = episode_options(ctx)

    def collect(params, step_key, defer: bool = False):
        rollouts, sampled = [], {"seconds": 0.0, "rows": 0, "tokens": 0}
        policy_params = to_sampler(params["policy"])  # once per rollout, device to device
        if defer:  # async rollouts: single-turn, one try (checked in _step_maker)
            prompts = state.prompts.next_batch()
            finish = rollout.sample(graphdef, policy_params, prompts,
                                    jax.random.fold_in(step_key, 0), opts,
                                    tokenizer=ctx.tokenizer, shard=shard, mesh=ctx.mesh,
                                    stats=sampled, defer=True)

            def done():
                t0 = time.perf_counter()
                r = finish()
                sampled["seconds"] += time.perf_counter() - t0
                sampled["rows"] += int(r["lengths"].size)
                sampled["tokens"] += int(r["lengths"].sum())
                r = scorer(r)
                _check_scored(r, scorer.names)
                if spec.answers:
                    r = scorer.answer_rewards(rollout.add_answers(r, prompts,
                                                                  pad_id=ctx.tokenizer.pad_id))
                return r, {}, sampled

            return done
        for attempt in range(max_tries):
            prompts = state.prompts.next_batch()
            # Try 0 draws with fold_in(key, 0); later tries use tags no epoch shuffle uses.
            t0 = time.perf_counter()
            key = jax.random.fold_in(step_key, attempt and _RESAMPLE_TAG + attempt)
            if episodes is None:
                r = rollout.sample(graphdef, policy_params, prompts, key, opts,
                                   tokenizer=ctx.tokenizer, shard=shard, mesh=ctx.mesh,
                                   stats=sampled)
            else:
                r, episode_metrics = rollout.sample_episodes(
                    graphdef, policy_params, prompts, key, opts, episodes,
                    tokenizer=ctx.tokenizer, shard=shard)
            sampled["seconds"] += time.perf_counter() - t0
            sampled["rows"] += int(r["lengths"].size)
            sampled["tokens"] += int(r["lengths"].sum())
            r = scorer(r)
            if episodes is not None:
                r = rollout.add_environment_rewards(r, episodes.reward_weight)
            _check_scored(r, scorer.names)
            if spec.answers:
                r = scorer.answer_rewards(rollout.add_answers(r, prompts,
                                                              pad_id=ctx.tokenizer.pad_id))
            rollouts.append(r)
            if not ro.dynamic_sampling:
                return r, ({} if episodes is None else episode_metrics), sampled
            index, informative = rollout.dynamic_sampling_index(
                [x["rewards"] for x in rollouts], b)
            if informative >= b:
                break
        return rollout.select_groups(rollouts, index), {
            **({} if episodes is None else episode_metrics),
            "dynamic_sampling/batches": float(len(rollouts)),
            "dynamic_sampling/flat_groups_kept": float(max(0, b - informative))}, sampled

    return collect


def _step_maker(ctx: Context, spec: Online, graphdefs, params0, state: Rollouts, scorer,
                dtype):
    """`make_step(update) -> step(train_state) -> (train_state, metrics, tokens)`."""
    cfg, ro = ctx.cfg, ctx.cfg.rollout
    b, epochs, minibatches = cfg.train.batch_size, ro.num_epochs, ro.num_minibatches
    opts = sampling_options(ro, ctx.tokenizer, prompt_width=ctx.limits.max_prompt_length)
    if ro.slots < 0 or (ro.slots and episode_options(ctx)):
        raise ConfigError("config field 'rollout.slots': continuous batching takes a slot "
                          "count >= 0 and runs single-turn rollouts")
    if ro.async_rollouts and (cfg.algorithm not in ("grpo", "rloo", "ppo", "grao")
                              or ro.dynamic_sampling or episode_options(ctx)
                              or ro.importance_cap < 1):
        raise ConfigError("config field 'rollout.async_rollouts': one-step off-policy rollouts "
                          "run with grpo / rloo / ppo / grao, single-turn, without dynamic "
                          "sampling, and rollout.importance_cap >= 1")
    last_update = (cfg.train.steps - 1) * epochs * minibatches  # no rollout after the last
    forward = jax.jit(lambda p, r, bt: rollout.rollout_forward(
        graphdefs, p, r, bt, temperature=opts.temperature, chunk_size=ctx.chunk))
    prepare = make_prepare(cfg, spec)
    shard = (sharding.batch_sharding(ctx.mesh)
             if b % sharding.data_parallel_size(ctx.mesh) == 0 else None)
    step_shard = sharding.batch_sharding(ctx.mesh)
    task = not cfg.data.path
    to_sampler = rollout.sampler_params_fn(params0["policy"], mesh=ctx.mesh, dtype=dtype)
    collect = _collector(ctx, spec, graphdefs["policy"], state, scorer, opts, shard,
                         to_sampler)

    def make_step(update):
        def step(train_state):
            t0 = time.perf_counter()
            staleness = 0
            pending = state.take_pending()
            if pending is not None and ro.async_rollouts:  # sampled before the last update
                r, row, sampled, step_key = pending
                staleness = 1
            else:  # (a pending batch restored into a run without async rollouts: dropped)
                step_key = state.split()
                r, row, sampled = collect(train_state.params, step_key)
            t_sample = time.perf_counter() - t0
            row.update(rollout_metrics(r, scorer.names, task=task, failures=scorer.failures))
            batch = device_batch(r, spec, shard)
            fwd = forward(train_state.params, ctx.reference_of(train_state), batch)
            batch, prep_mets = prepare(batch, fwd)
            row["entropy"] = float(losses.reduce.token_mean(fwd["entropy"],
                                                            batch["completion_mask"]))
            row.update({k: float(v) for k, v in fwd.items() if k.startswith("sampler/")})
            row.update({k: float(v) for k, v in prep_mets.items()})  # (waits for the forward)
            t_forward = time.perf_counter() - t0 - t_sample
            finish = None
            if ro.async_rollouts and int(train_state.step) < last_update:
                # The next batch from these parameters, queued before this step's updates:
                # the host decodes and scores it while the devices update.
                state.mark()
                next_key = state.split()
                finish = collect(train_state.params, next_key, defer=True)
            upd: dict[str, list] = {}
            for e in range(epochs):
                # Each epoch visits the prompts (whole groups) in a fresh order.
                order = np.asarray(jax.random.permutation(jax.random.fold_in(step_key, 1 + e),
                                                          b))
                for m in np.split(order, minibatches):
                    mb = batch if epochs * minibatches == 1 else jax.tree.map(
                        lambda x, i=m: x[i], batch)
                    # Device-to-device reshard to the step's row sharding (no host copy).
                    train_state, mets = update(train_state, jax.device_put(mb, step_shard))
                    for k, v in mets.items():
                        upd.setdefault(k, []).append(v)
            t_overlap = 0.0
            if finish is not None:
                t1 = time.perf_counter()
                state.pending = (*finish(), next_key)
                t_overlap = time.perf_counter() - t1
            row.update({k: float(np.mean([float(x) for x in v])) for k, v in upd.items()})
            row["learning_rate"] = float(upd["learning_rate"][-1])
            dt = time.perf_counter() - t0
            # Rates count every sampled row and token (dynamic sampling: all tries);
            # time/rollout also includes reward scoring, sampler/* only the sampler.
            row.update({"time/rollout": t_sample, "time/step": dt, "time/forward": t_forward,
                        "time/update": dt - t_sample - t_forward,
                        "samples_per_second": sampled["rows"] / dt,
                        "tokens_per_second": sampled["tokens"] / dt,
                        "sampler/tokens_per_second": sampled["tokens"] / sampled["seconds"],
                        "sampler/seconds": sampled["seconds"]})
            if ro.async_rollouts:  # the batch's age in updates, the next one's overlap
                row["async/staleness"] = float(staleness)
                row["async/next_rollout_seconds"] = t_overlap
            if sampled.get("slot_steps"):  # continuous batching: useful share of the slots
                row["sampler/slot_efficiency"] = sampled["slot_tokens"] / sampled["slot_steps"]
            return train_state, row, sampled["tokens"]

        return step

    return make_step
