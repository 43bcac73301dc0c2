"""The DPO family: every TRL 1.16 `loss_type` (`alignax.losses.PREFERENCE_LOSSES`), weighted
lists of them (MPO, RPO = `sigmoid,sft`), LD-DPO length weighting and WPO pair weights.

    alignax train --config experiments/configs/dpo.py --config.loss.name=ipo

Pairs are `[B, 2, S]` batches (chosen, rejected) run as **one** concatenated `[2B, S]` forward;
summed log-probs come from the chunked `models.pair_logps`. The reference is a frozen copy of
the starting policy inside the train state, or (`reference.precompute=True`) its `[N, 2]`
summed log-probs computed once, cached on disk and added to each batch as `ref_logps`.

With `data.packing=True` the batches are packed (`alignax.data.packing`): the chosen and
rejected sequences of a pair are two adjacent segments of one packed row, per-pair sums come
from a segment sum (`models.logprobs.example_sums`), and from there the loss is the unpacked
one on the same pairs (every loss type, LD-DPO and WPO included); the frozen reference runs
the same packed forward, a precomputed `ref_logps` `[B, 2]` follows its pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.algorithms.base import (
    PACKING,
    Algorithm,
    lm_plan,
    lm_skeleton,
    loss_kwargs,
    packing_plan,
    precompute_arrays,
    save_lm,
)
from alignax.losses import reduce
from alignax.losses.preference import COMMON_KWARGS
from alignax.models import pair_logps
from alignax.models.logprobs import example_sums, packed_completion_logps, segment_sums
from alignax.train.context import Context
from alignax.train.runner import Plan


def loss_types_of(name: str | Sequence[str]) -> list[str]:
    """`loss.name` as a list of loss types ("sigmoid,sft" on a command line is a list)."""
    if isinstance(name, str):
        return [t.strip() for t in name.split(",")]
    return list(name)


def loss_variants(name) -> dict:
    """The `loss` keywords of DPO with `loss.name=name` (one type or a list of types)."""
    for t in loss_types_of(name):
        losses.get_preference_loss(t)  # ValueError for an unknown type
    defaults = {k: v for k, v in COMMON_KWARGS.items() if not k.endswith("_lengths")}
    return dict(defaults, loss_weights=None, ld_alpha=None, use_weighting=False)


def _variants(name):
    try:
        return loss_variants(name)
    except ValueError:
        raise KeyError(name) from None


def summed_logps(tok, mask, ld_alpha):
    """`[B, 2]` sequence log-probs: plain sums, or LD-DPO's with `ld_alpha`."""
    if ld_alpha is None:
        return reduce.masked_sum(tok, mask)
    w, r = losses.ld_sequence_logps(tok[:, 0], mask[:, 0], tok[:, 1], mask[:, 1],
                                    ld_alpha=ld_alpha)
    return jnp.stack([w, r], axis=1)


def _take(table, segments):
    """`table[r, segments[r, t] - 1]` (`[R, K]`, `[R, T]` ids 1..K; padding reads column 0)."""
    return jnp.take_along_axis(table, jnp.maximum(segments - 1, 0), axis=1)


def ld_token_weights(mask, segments, num_segments: int, ld_alpha: float):
    """LD-DPO's per-token weights on packed rows (`losses.ld_sequence_logps` per segment).

    Args:
      mask: `[R, T]` completion mask (`packed_completion_logps`).
      segments: `[R, T]` segment ids of the scored tokens (2k+1 chosen, 2k+2 rejected).
      num_segments: segments per row (twice the pair slots).
      ld_alpha: weight of the tokens past the pair's shared length.
    Returns:
      `[R, T]`: 1 on the first min(|y_w|, |y_l|) completion tokens of each sequence, ld_alpha
      on the rest, 0 off the mask.
    """
    totals = segment_sums(mask, segments, num_segments)  # [R, K] completion lengths
    r = totals.shape[0]
    shared = jnp.repeat(jnp.min(totals.reshape(r, -1, 2), axis=-1), 2, axis=-1)
    before = jnp.cumsum(totals, axis=-1) - totals  # completion tokens in earlier segments
    pos = jnp.cumsum(mask, axis=-1) - _take(before, segments)  # 1-based in its sequence
    return jnp.where(pos <= _take(shared, segments), 1.0, ld_alpha) * mask


def packed_pair_stats(model, batch, *, chunk_size: int = 128, ld_alpha=None,
                      with_sq: bool = False, dropout_rng=None) -> dict:
    """Per-pair numbers of a packed batch, in batch order, each `[P, 2]` (chosen, rejected).

    Returns:
      "logps" (plain sums, or LD-DPO's with `ld_alpha`), "raw" (plain sums), "lengths"
      (completion tokens) and, with `with_sq`, "aligned" (WPO's mean of log p - log sum p^2).
    """
    out = packed_completion_logps(model, batch, chunk_size=chunk_size, with_sq=with_sq,
                                  dropout_rng=dropout_rng)
    tok, mask = out[0], out[1]
    sums = lambda v: example_sums(v, batch, per_example=2)
    stats = {"raw": sums(tok), "lengths": sums(mask)}
    stats["logps"] = stats["raw"]
    if ld_alpha is not None:
        weights = ld_token_weights(mask, batch["segment_ids"][:, 1:],
                                   2 * batch["slot_example"].shape[1], ld_alpha)
        stats["logps"] = sums(tok * weights)
    if with_sq:
        stats["aligned"] = sums((tok - out[2]) * mask) / jnp.maximum(stats["lengths"], 1.0)
    return stats


def reference_logps_fn(graphdef, *, chunk_size: int = 128, ld_alpha: float | None = None):
    """`fn(ref_params, batch) -> {"ref_logps": [B, 2]}`: what a reference cache stores."""

    def fn(ref_params, batch):
        tok, mask = pair_logps(nnx.merge(graphdef, ref_params), batch, chunk_size=chunk_size)
        return {"ref_logps": summed_logps(tok, mask, ld_alpha)}

    return jax.jit(fn)


def reference_logps(graphdef, ref_params, batch, *, chunk_size: int, ld_alpha=None):
    """`[B, 2]` reference log-probs: precomputed in the batch or from `ref_params`."""
    if "ref_logps" in batch:
        return jax.lax.stop_gradient(batch["ref_logps"].astype(jnp.float32))
    if ref_params is None:
        raise ValueError("this loss needs a reference: ref_params (a frozen copy in the train "
                         "state) or batch['ref_logps'] (precomputed)")
    model = nnx.merge(graphdef, jax.lax.stop_gradient(ref_params))
    if "segment_ids" in batch:
        stats = packed_pair_stats(model, batch, chunk_size=chunk_size, ld_alpha=ld_alpha)
        return jax.lax.stop_gradient(stats["logps"])
    tok, mask = pair_logps(model, batch, chunk_size=chunk_size)
    return jax.lax.stop_gradient(summed_logps(tok, mask, ld_alpha))


def dpo_loss_fn(graphdef, *, loss_types: str | Sequence[str] = "sigmoid",
                loss_weights: Sequence[float] | None = None, ld_alpha: float | None = None,
                use_weighting: bool = False, chunk_size: int = 128, **hyper):
    """DPO family `loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)`.

    Args:
      graphdef: the policy's NNX graph definition.
      loss_types, loss_weights: one TRL loss type or a list with weights (MPO).
      ld_alpha: LD-DPO weight of tokens past the shared length (None = plain sums).
      use_weighting: WPO pair weights.
      chunk_size: tokens per logits chunk.
      **hyper: the registry's common hyper-parameters (beta, label_smoothing, ...).
    Returns:
      the loss function; batch `[B, 2, S]` or packed (`data.PackedBatchIterator`, the same
      pairs) (+ `ref_logps` `[B, 2]` when precomputed); metrics with TRL's names
      (`rewards/margins`, `logps/chosen`, ...) and `num_tokens`.
    """
    types = loss_types_of(loss_types)
    weights = list(loss_weights or [1.0] * len(types))
    # TRL's sft term uses the raw token sums even under LD-DPO weighting.
    raw_sft = ld_alpha is not None and "sft" in types
    rest = [(n, w) for n, w in zip(types, weights) if not (raw_sft and n == "sft")]
    beta = hyper.get("beta", 0.1)

    def objective(logps, ref, lengths, raw_chosen, wpo):
        """`[P, 2]` logps, ref, lengths; `raw_chosen() -> [P]`, `wpo() -> [P]` (thunks: only
        computed when used) -> (mean loss, metrics)."""
        pair_args = (logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1])
        per_pair = 0.0
        if rest:
            per_pair = losses.mixed_preference_loss(
                *pair_args, loss_types=[n for n, _ in rest], loss_weights=[w for _, w in rest],
                chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1], **hyper)
        if raw_sft:
            per_pair = per_pair + weights[types.index("sft")] * losses.sft_pair_loss(
                raw_chosen(), None, None, None, chosen_lengths=lengths[:, 0])
        if use_weighting:
            per_pair = per_pair * wpo()
        return jnp.mean(per_pair), losses.preference_metrics(*pair_args, beta=beta)

    def loss_fn(params, batch, rng, *, ref_params=None):
        model = nnx.merge(graphdef, params)
        ref_kw = dict(chunk_size=chunk_size, ld_alpha=ld_alpha)
        if "segment_ids" in batch:
            st = packed_pair_stats(model, batch, with_sq=use_weighting, dropout_rng=rng,
                                   **ref_kw)
            ref = reference_logps(graphdef, ref_params, batch, **ref_kw)
            wpo = lambda: jax.lax.stop_gradient(jnp.exp(st["aligned"][:, 0]
                                                        + st["aligned"][:, 1]))
            loss, metrics = objective(st["logps"], ref, st["lengths"],
                                      lambda: st["raw"][:, 0], wpo)
        else:
            out = pair_logps(model, batch, chunk_size=chunk_size, with_sq=use_weighting,
                             dropout_rng=rng)
            tok, mask = out[0], out[1]
            logps = summed_logps(tok, mask, ld_alpha)
            ref = reference_logps(graphdef, ref_params, batch, **ref_kw)
            lengths = jnp.sum(mask, axis=-1)
            raw = lambda: reduce.masked_sum(tok[:, 0], mask[:, 0])
            wpo = lambda: losses.wpo_weights(tok[:, 0], out[2][:, 0], mask[:, 0], tok[:, 1],
                                             out[2][:, 1], mask[:, 1])
            loss, metrics = objective(logps, ref, lengths, raw, wpo)
        metrics["num_tokens"] = jnp.sum(batch["attention_mask"]).astype(jnp.float32)
        return loss, metrics

    return loss_fn


def setup(ctx: Context) -> Plan:
    cfg = ctx.cfg
    kw = loss_kwargs(cfg)
    precompute = cfg.reference.precompute

    def loss_fn_for(graphdef):
        return dpo_loss_fn(graphdef, loss_types=cfg.loss.name, chunk_size=ctx.chunk, **kw)

    def cached_reference(graphdef, params, rows):
        fn = reference_logps_fn(graphdef, chunk_size=ctx.chunk, ld_alpha=kw["ld_alpha"])
        model = nnx.merge(graphdef, params)
        cache = dict(cache_dir=cfg.reference.cache_dir or f"{ctx.workdir}/ref_cache",
                     extra={"ld_alpha": kw["ld_alpha"], "model": repr(model.config)})
        return tuple(precompute_arrays(ctx, fn, params, r, name="ref_logps",
                                       what=f"reference log-probs ({len(r)} pairs)", **cache)
                     if r else None for r in (rows.train, rows.eval))

    return lm_plan(ctx, kind="pairs", loss_fn_for=loss_fn_for,
                   reference=None if precompute else "copy",
                   arrays=cached_reference if precompute else None, **packing_plan(ctx))


DPO = Algorithm("dpo", data="pairs", variants=_variants, setup=setup, reference="policy",
                sections=("reference",), skeleton=lm_skeleton, save=save_lm,
                claims=(*PACKING, "lora.dropout"))
