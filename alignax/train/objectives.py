"""Objectives: the one place where a model meets a loss.

Each builder returns `objective(params, batch, rng, *, ref_params=None) -> (loss, metrics)` for
`make_train_step`. `params` is the policy's `nnx.State`; the graph definition is closed over.
Preference batches hold `[B, 2, S]` arrays (chosen, rejected) and run as **one** concatenated
`[2B, S]` forward. Log-probs come from `models.logprobs` in chunks, so the float32
`[2B, S, V]` logits never exist. Reference log-probs come from `ref_params` (a frozen copy
evaluated inside the step) or from `batch["ref_logps"]` (precomputed and cached once).

Metric names follow TRL (`rewards/chosen`, `rewards/margins`, `logps/chosen`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.losses import reduce
from alignax.models import logprobs

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def shifted_token_logps(model, input_ids, attention_mask, completion_mask, *,
                        chunk_size: int = 128, with_sq: bool = False,
                        right_padded: bool = True):
    """Per-token log-probs of each next token, masked to completion tokens.

    Args:
      model: an NNX `Transformer` (merged from params).
      input_ids, attention_mask, completion_mask: `[N, S]`.
      right_padded: the batch pads on the right only (as `data.collate` does). Then causal
        attention alone keeps every real position from seeing padding, so the mask is not
        passed: the same numbers, and cuDNN can use its causal flash kernel.
    Returns:
      (token_logps `[N, S-1]` float32, mask `[N, S-1]` float32[, log_sum_sq_probs `[N, S-1]`]):
      position t scores token t+1; the mask is the completion mask shifted by one.
    """
    hidden, _ = model.hidden_states(input_ids, None if right_padded else attention_mask)
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].astype(jnp.float32)
    w = model.lm_head_weight()
    tok = logprobs.token_logps(hidden[:, :-1], w, targets, mask, chunk_size=chunk_size)
    if not with_sq:
        return tok, mask
    sq = logprobs.log_sum_sq_probs(hidden[:, :-1], w, mask, chunk_size=chunk_size)
    return tok, mask, sq


def _pair_forward(graphdef, params, batch, chunk_size, with_sq=False):
    """One `[2B, S]` forward over chosen + rejected; outputs reshaped to `[B, 2, S-1]`."""
    model = nnx.merge(graphdef, params)
    b, two, s = batch["input_ids"].shape
    flat = lambda x: x.reshape(b * two, s)
    out = shifted_token_logps(model, flat(batch["input_ids"]), flat(batch["attention_mask"]),
                              flat(batch["completion_mask"]), chunk_size=chunk_size,
                              with_sq=with_sq)
    return tuple(x.reshape(b, two, s - 1) for x in out)


def _ref_pair_logps(graphdef, ref_params, batch, chunk_size, ld_alpha):
    """Reference summed log-probs `[B, 2]`: precomputed in the batch or from `ref_params`."""
    if "ref_logps" in batch:
        return jax.lax.stop_gradient(batch["ref_logps"].astype(jnp.float32))
    if ref_params is None:
        raise ValueError("this objective needs a reference: pass ref_params (a frozen copy in "
                         "the train state) or batch['ref_logps'] (precomputed)")
    tok, mask = _pair_forward(graphdef, jax.lax.stop_gradient(ref_params), batch, chunk_size)
    return jax.lax.stop_gradient(_pair_sums(tok, mask, ld_alpha))


def _pair_sums(tok, mask, ld_alpha):
    if ld_alpha is None:
        return reduce.masked_sum(tok, mask)
    w, r = losses.ld_sequence_logps(tok[:, 0], mask[:, 0], tok[:, 1], mask[:, 1],
                                    ld_alpha=ld_alpha)
    return jnp.stack([w, r], axis=1)


def reference_logps_fn(graphdef, *, chunk_size: int = 128, ld_alpha: float | None = None):
    """`fn(ref_params, batch) -> [B, 2]` summed reference log-probs, for precomputing a cache."""

    def fn(ref_params, batch):
        tok, mask = _pair_forward(graphdef, ref_params, batch, chunk_size)
        return _pair_sums(tok, mask, ld_alpha)

    return fn


def dpo_objective(graphdef, *, loss_types: str | Sequence[str] = "sigmoid",
                  loss_weights: Sequence[float] | None = None, ld_alpha: float | None = None,
                  use_weighting: bool = False, chunk_size: int = 128,
                  **loss_kwargs) -> Objective:
    """DPO family objective (any `PREFERENCE_LOSSES` type or a weighted list, as TRL).

    Args:
      graphdef: the policy's NNX graph definition.
      loss_types, loss_weights: one TRL loss type or a list with weights (MPO).
      ld_alpha: LD-DPO weight of tokens past the shared length (None = plain sums).
      use_weighting: WPO pair weights.
      **loss_kwargs: the registry's common hyper-parameters (beta, label_smoothing, ...).
    """
    beta = loss_kwargs.get("beta", 0.1)

    def objective(params, batch, rng, *, ref_params=None):
        del rng
        out = _pair_forward(graphdef, params, batch, chunk_size, with_sq=use_weighting)
        tok, mask = out[0], out[1]
        logps = _pair_sums(tok, mask, ld_alpha)
        ref = _ref_pair_logps(graphdef, ref_params, batch, chunk_size, ld_alpha)
        lengths = jnp.sum(mask, axis=-1)
        pair_args = (logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1])
        types = [loss_types] if isinstance(loss_types, str) else list(loss_types)
        weights = list(loss_weights or [1.0] * len(types))
        # TRL's sft term uses the raw token sums even under LD-DPO weighting.
        raw_sft = ld_alpha is not None and "sft" in types
        rest = [(n, w) for n, w in zip(types, weights) if not (raw_sft and n == "sft")]
        per_pair = 0.0
        if rest:
            per_pair = losses.mixed_preference_loss(
                *pair_args, loss_types=[n for n, _ in rest], loss_weights=[w for _, w in rest],
                chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1], **loss_kwargs)
        if raw_sft:
            raw = reduce.masked_sum(tok[:, 0], mask[:, 0])
            per_pair = per_pair + weights[types.index("sft")] * losses.sft_pair_loss(
                raw, None, None, None, chosen_lengths=lengths[:, 0])
        if use_weighting:
            sq = out[2]
            per_pair = per_pair * losses.wpo_weights(tok[:, 0], sq[:, 0], mask[:, 0],
                                                     tok[:, 1], sq[:, 1], mask[:, 1])
        metrics = losses.preference_metrics(*pair_args, beta=beta)
        metrics["num_tokens"] = jnp.sum(batch["attention_mask"]).astype(jnp.float32)
        return jnp.mean(per_pair), metrics

    return objective


def sft_objective(graphdef, *, chunk_size: int = 128) -> Objective:
    """Supervised fine-tuning: token-mean NLL over completion tokens (TRL SFTTrainer)."""

    def objective(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        model = nnx.merge(graphdef, params)
        tok, mask = shifted_token_logps(model, batch["input_ids"], batch["attention_mask"],
                                        batch["completion_mask"], chunk_size=chunk_size)
        loss = reduce.token_mean(losses.nll_loss(tok, mask), mask)
        return loss, {"num_tokens": jnp.sum(mask)}

    return objective


def reference_free_objective(graphdef, *, loss: str = "simpo", beta: float = 2.0,
                             gamma: float = 0.5, label_smoothing: float = 0.0, alpha: float = 0.0,
                             nll_weight: float = 0.0, chunk_size: int = 128) -> Objective:
    """SimPO / CPO / ORPO objective (no reference model).

    `loss`: `simpo` (mean log-probs with margin gamma; AlphaPO with alpha != 0), `cpo`
    (summed log-probs, sigmoid) or `orpo` (odds ratio; beta is the paper's lambda).
    `nll_weight`: weight of the chosen NLL (TRL `cpo_alpha`; ORPO uses 1).
    """
    per_pair = {
        "simpo": lambda w, r, lw, lr: losses.simpo_loss(
            w, r, lw, lr, beta=beta, gamma=gamma, label_smoothing=label_smoothing, alpha=alpha),
        "cpo": lambda w, r, lw, lr: losses.cpo_loss(w, r, beta=beta,
                                                    label_smoothing=label_smoothing, alpha=alpha),
        "orpo": lambda w, r, lw, lr: losses.orpo_loss(w, r, lw, lr, beta=beta),
    }
    if loss not in per_pair:
        raise ValueError(f"loss.name must be one of {sorted(per_pair)} for a reference-free "
                         f"objective, got {loss!r}")
    fn = per_pair[loss]
    averaged = loss in ("simpo", "orpo")

    def objective(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        tok, mask = _pair_forward(graphdef, params, batch, chunk_size)
        sums, lengths = reduce.masked_sum(tok, mask), jnp.sum(mask, axis=-1)
        pair = fn(sums[:, 0], sums[:, 1], lengths[:, 0], lengths[:, 1])
        nll = reduce.token_mean(losses.nll_loss(tok[:, 0], mask[:, 0]), mask[:, 0])
        loss_value = jnp.mean(pair) + nll_weight * nll
        shown = sums / jnp.maximum(lengths, 1.0) if averaged else sums
        r_w, r_l = jax.lax.stop_gradient(beta * shown[:, 0]), jax.lax.stop_gradient(
            beta * shown[:, 1])
        metrics = {"rewards/chosen": r_w.mean(), "rewards/rejected": r_l.mean(),
                   "rewards/accuracies": (r_w > r_l).astype(jnp.float32).mean(),
                   "rewards/margins": (r_w - r_l).mean(), "logps/chosen": sums[:, 0].mean(),
                   "logps/rejected": sums[:, 1].mean(), "nll_loss": nll}
        return loss_value, metrics

    return objective


def kto_objective(graphdef, *, beta: float = 0.1, desirable_weight: float = 1.0,
                  undesirable_weight: float = 1.0, chunk_size: int = 128) -> Objective:
    """KTO on unpaired rows with the mismatched-completion KL estimate (TRL 1.16)."""

    def seq_logps(model, prefix, batch):
        tok, mask = shifted_token_logps(model, batch[prefix + "input_ids"],
                                        batch[prefix + "attention_mask"],
                                        batch[prefix + "completion_mask"], chunk_size=chunk_size)
        return reduce.masked_sum(tok, mask)

    def objective(params, batch, rng, *, ref_params=None):
        del rng
        model = nnx.merge(graphdef, params)
        logps, kl_logps = seq_logps(model, "", batch), seq_logps(model, "kl_", batch)
        if "ref_logps" in batch:
            ref, ref_kl = batch["ref_logps"], batch["ref_kl_logps"]
        else:
            if ref_params is None:
                raise ValueError("KTO needs ref_params or precomputed batch['ref_logps']")
            ref_model = nnx.merge(graphdef, jax.lax.stop_gradient(ref_params))
            ref, ref_kl = seq_logps(ref_model, "", batch), seq_logps(ref_model, "kl_", batch)
        z0 = losses.kto_kl_estimate(kl_logps, ref_kl)
        per = losses.kto_loss(logps, ref, batch["label"], z0, beta=beta,
                              desirable_weight=desirable_weight,
                              undesirable_weight=undesirable_weight)
        label = batch["label"].astype(jnp.float32)
        rewards = jax.lax.stop_gradient(beta * (logps - ref))
        n_good, n_bad = jnp.maximum(label.sum(), 1.0), jnp.maximum((1 - label).sum(), 1.0)
        metrics = {"kl": z0, "rewards/chosen": jnp.sum(rewards * label) / n_good,
                   "rewards/rejected": jnp.sum(rewards * (1 - label)) / n_bad}
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return jnp.mean(per), metrics

    return objective


def reward_objective(graphdef, *, center_rewards_coefficient: float | None = None,
                     chunk_size: int = 128) -> Objective:
    """Reward model: Bradley-Terry on the scores of chosen vs rejected (TRL RewardTrainer).

    The model is a `RewardModel` (trunk + `RewardHead`); one `[2B, S]` forward scores both.
    An optional `batch["margin"]` `[B]` is subtracted from the score difference.
    """
    del chunk_size

    def objective(params, batch, rng, *, ref_params=None):
        del rng, ref_params
        rm = nnx.merge(graphdef, params)
        b, two, s = batch["input_ids"].shape
        scores = rm(batch["input_ids"].reshape(b * two, s),
                    batch["attention_mask"].reshape(b * two, s)).reshape(b, two)
        per_pair = losses.bradley_terry_loss(
            scores[:, 0], scores[:, 1], margin=batch.get("margin"),
            center_rewards_coefficient=center_rewards_coefficient)
        return jnp.mean(per_pair), losses.reward_metrics(scores[:, 0], scores[:, 1])

    return objective


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "reward": reward_objective,
    "sft": sft_objective,
    "dpo": dpo_objective,
    "reference_free": reference_free_objective,
    "kto": kto_objective,
}


def needs_reference(algorithm: str) -> bool:
    """Whether an algorithm's objective reads reference log-probs."""
    return algorithm in ("dpo", "kto")

