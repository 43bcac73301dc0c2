"""DCKD and ADPA loss functions: where the student, the teacher(s) and `losses.distill` meet.

Every distillation term lives on completion tokens only, so each sequence is first cut to its
**completion frame**: the `T` positions (T = the data's `max_completion_length`) whose hidden
states predict the completion tokens, gathered from the `[N, S]` forward. The teacher's top-k
distribution is computed (or was cached) in the same frame, so a cache entry does not depend on
the padded width of the batch it was made in. Logits are built chunk by chunk over `T`
(`models.scan_chunks`, the log-probs' chunked-logits engine): the float32 `[N, T, V]`
tensor never exists, in the forward or the backward pass.

Teacher outputs come from `ref_params` (teacher parameters held in the train state: `{"dpo":
...}` for DCKD, `{"dpo": ..., "ref": ...}` for ADPA) or from the batch (precomputed once and
cached on disk once, `algorithms/distill.py`):

* DCKD: `teacher_topk_ids` int32 `[B, 2, T, K]`, `teacher_topk_probs` `[B, 2, T, K]`,
  `teacher_rest` `[B, 2, T]` (index 1 of axis 1: chosen, rejected).
* ADPA: `teacher_topk_ids` `[B, T, K]` and `teacher_advantage` `[B, T, K]` on the rejected
  (student-sampled) response.

References: arXiv 2502.17927 (DCKD §3.1, ADPA §3.2); official code `gaoshiping/ADPA` @ a95c32f.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from alignax import losses
from alignax.losses import distill as dist
from alignax.losses import reduce
from alignax.models import scan_chunks

sg = jax.lax.stop_gradient
ADV_FLOOR = math.log(1e-7)  # `get_margin_logp_token` floors both teachers' probs at 1e-7


def _logits(h, w):
    # float32 logits from bf16 states; float64 states (x64 tests) stay float64.
    out = jnp.promote_types(h.dtype, jnp.float32)
    return jnp.einsum("nce,ev->ncv", h, w.astype(h.dtype), preferred_element_type=out)


def completion_frame(model, input_ids, completion_mask, *, width: int):
    """One forward; the hidden states that predict each completion token, left-aligned.

    Args:
      model: an NNX `Transformer`.
      input_ids, completion_mask: `[N, S]` right-padded rows (`data.collate`: causal attention
        alone keeps real positions off the padding), completion tokens contiguous.
      width: T, the frame width (the longest completion the data allows).
    Returns:
      (hidden `[N, T, E]`, targets `[N, T]` int32, mask `[N, T]` float32): position t holds
      the state that predicts completion token t; the mask is 0 past the completion's end.
    """
    hidden, _ = model.hidden_states(input_ids)
    m = completion_mask[:, 1:].astype(jnp.int32)
    start = jnp.argmax(m, axis=-1)
    length = jnp.sum(m, axis=-1)
    steps = jnp.arange(width)
    pos = jnp.minimum(start[:, None] + steps[None], m.shape[1] - 1)
    h = jnp.take_along_axis(hidden[:, :-1], pos[..., None], axis=1)
    targets = jnp.take_along_axis(input_ids[:, 1:], pos, axis=1)
    mask = (steps[None] < length[:, None]).astype(jnp.float32)
    return h, targets, mask


def student_stats(hidden, lm_head_weight, targets, ids=None, *, chunk_size: int = 128):
    """Student per-token log-probs, log-probs at given ids, and the mean logit, in chunks.

    Args:
      hidden: `[N, T, E]`; lm_head_weight: `[E, V]`; targets: `[N, T]`.
      ids: `[N, T, K]` ids to gather (the teacher's top-k) or None.
    Returns:
      {"logps": `[N, T]`, "mean_logit": `[N, T]`[, "topk_logps": `[N, T, K]`]}.
    """

    def fn(h, y, i):
        logits = _logits(h, lm_head_weight)
        lse = jax.nn.logsumexp(logits, axis=-1)
        out = {"logps": jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - lse,
               "mean_logit": sg(jnp.mean(logits, axis=-1))}
        if i is not None:
            out["topk_logps"] = jnp.take_along_axis(logits, i, axis=-1) - lse[..., None]
        return out

    return scan_chunks(fn, (hidden, targets, ids), chunk_size)


def teacher_topk(hidden, lm_head_weight, *, top_k: int, chunk_size: int = 128):
    """The teacher's compressed next-token distribution (official `compress_probs`), in chunks.

    Args:
      hidden: `[N, T, E]` teacher states; lm_head_weight: `[E, V]`.
      top_k: K.
    Returns:
      {"ids": int32 `[N, T, K]`, "probs": `[N, T, K]`, "rest": `[N, T]` = 1 - sum(probs)}.
    """

    def fn(h):
        logits = _logits(h, lm_head_weight)
        vals, ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_k)
        probs = jnp.exp(vals)
        return {"ids": ids.astype(jnp.int32), "probs": probs,
                "rest": jnp.maximum(1.0 - jnp.sum(probs, axis=-1), 0.0)}

    return jax.tree.map(sg, scan_chunks(fn, (hidden,), chunk_size))


def teacher_advantage(dpo_hidden, dpo_head, ref_hidden, ref_head, *, top_k: int,
                      beta: float = 1.0, chunk_size: int = 128):
    """A_t(v) = beta (log pi_dpo^T - log pi_ref^T) at the DPO teacher's top-k ids, in chunks.

    Both probabilities are floored at 1e-7 as in `get_margin_logp_token`; the reference
    teacher's value is exact at every id (the official merge of two top-50 lists defaults a
    missing one to the smallest listed probability, a storage artefact not copied here).

    Args:
      dpo_hidden, ref_hidden: `[N, T, E]`; dpo_head, ref_head: `[E, V]`.
      top_k: K. beta: scale of the log-ratio (the official code: 1).
    Returns:
      {"ids": int32 `[N, T, K]`, "advantage": `[N, T, K]`}.
    """

    def fn(hd, hr):
        lp_dpo = jax.nn.log_softmax(_logits(hd, dpo_head), axis=-1)
        lp_ref = jax.nn.log_softmax(_logits(hr, ref_head), axis=-1)
        vals, ids = jax.lax.top_k(lp_dpo, top_k)
        ref_at = jnp.take_along_axis(lp_ref, ids, axis=-1)
        adv = dist.adpa_advantage(jnp.maximum(vals, ADV_FLOOR), jnp.maximum(ref_at, ADV_FLOOR),
                               beta=beta)
        return {"ids": ids.astype(jnp.int32), "advantage": adv}

    return jax.tree.map(sg, scan_chunks(fn, (dpo_hidden, ref_hidden), chunk_size))


def full_kl_stats(hidden, lm_head_weight, targets, teacher_hidden, teacher_head, *,
                  chunk_size: int = 128):
    """Student log-probs plus the full-vocabulary KL(teacher || student) per token, in chunks.

    Args: as `student_stats`, plus the teacher's `[N, T, E]` states and `[E, V]` head.
    Returns: {"logps", "mean_logit", "kl"}, each `[N, T]`.
    """

    def fn(h, y, ht):
        logits = _logits(h, lm_head_weight)
        lse = jax.nn.logsumexp(logits, axis=-1)
        return {"logps": jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - lse,
                "mean_logit": sg(jnp.mean(logits, axis=-1)),
                "kl": dist.dckd_full_kl(logits, sg(_logits(ht, teacher_head)))}

    return scan_chunks(fn, (hidden, targets, teacher_hidden), chunk_size)


def pair_frame(graphdef, params, batch, rows, width: int):
    """`completion_frame` of a `[B, 2, S]` batch's `rows` (a slice of the pair axis), flattened.

    Returns: (hidden `[B * n, T, E]`, targets, mask `[B * n, T]`, lm head `[E, V]`).
    """
    model = nnx.merge(graphdef, params)
    get = lambda k: batch[k][:, rows]
    b, n, s = get("input_ids").shape
    flat = lambda x: x.reshape(b * n, s)
    h, y, m = completion_frame(model, flat(get("input_ids")),
                               flat(get("completion_mask")), width=width)
    return h, y, m, model.lm_head_weight()


def _seq_metrics(stats, mask, b):
    """`logps/{chosen,rejected}` (summed) and `logits/{chosen,rejected}` (mean over tokens)."""
    tok = stats["logps"].reshape(b, 2, -1)
    logit = stats["mean_logit"].reshape(b, 2, -1)
    m = mask.reshape(b, 2, -1)
    sums = sg(reduce.masked_sum(tok, m))
    return {"logps/chosen": sums[:, 0].mean(), "logps/rejected": sums[:, 1].mean(),
            "logits/chosen": reduce.token_mean(logit[:, 0], m[:, 0]),
            "logits/rejected": reduce.token_mean(logit[:, 1], m[:, 1])}


def _need_teacher(ref_params, what):
    if ref_params is None:
        raise ValueError(f"this loss needs {what}: teacher parameters in the train state "
                         "(ref_params) or precomputed teacher arrays in the batch")
    return sg(ref_params)


def dckd_loss_fn(graphdef, teacher_graphdef, *, width: int, top_k: int = 50,
                   sft_weight: float = 1.0, distill_weight: float = 1.0,
                   chosen_weight: float = 0.1, rejected_weight: float = 0.1,
                   prob_stabilize: bool = True, chunk_size: int = 128):
    """DCKD: SFT on y_w + forward KL to the DPO teacher on y_w and y_l (arXiv 2502.17927).

    Args:
      graphdef, teacher_graphdef: NNX graph definitions of the student and the teacher.
      width: T, the completion frame width.
      top_k: K bins kept of the teacher (official 50); 0 = exact full-vocabulary KL
        (in-step teacher only).
      sft_weight, distill_weight, chosen_weight, rejected_weight, prob_stabilize: see
        `losses.distill.dckd_loss` / `dckd_topk_kl`.
    Returns:
      `loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)`, batch `[B, 2, S]`.
    """

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng
        b = batch["input_ids"].shape[0]
        h, y, mask, head = pair_frame(graphdef, params, batch, slice(None), width)
        teacher = None
        if "teacher_topk_ids" not in batch or not top_k:
            t_params = _need_teacher(ref_params, "the DPO teacher")["dpo"]
            teacher = pair_frame(teacher_graphdef, t_params, batch, slice(None), width)
        if not top_k:
            stats = full_kl_stats(h, head, y, teacher[0], teacher[3], chunk_size=chunk_size)
            kl = stats["kl"]
        else:
            if teacher is None:
                flat = lambda x: x.reshape(b * 2, *x.shape[2:])
                tk = {"ids": flat(batch["teacher_topk_ids"]),
                      "probs": flat(batch["teacher_topk_probs"]),
                      "rest": flat(batch["teacher_rest"])}
            else:
                tk = teacher_topk(teacher[0], teacher[3], top_k=top_k, chunk_size=chunk_size)
            stats = student_stats(h, head, y, tk["ids"], chunk_size=chunk_size)
            kl = dist.dckd_topk_kl(stats["topk_logps"], tk["probs"], tk["rest"],
                                prob_stabilize=prob_stabilize)
        tok, kl, m = (x.reshape(b, 2, -1) for x in (stats["logps"], kl, mask))
        loss, metrics = dist.dckd_loss(tok[:, 0], m[:, 0], kl[:, 0], kl[:, 1], m[:, 1],
                                    sft_weight=sft_weight, distill_weight=distill_weight,
                                    chosen_weight=chosen_weight, rejected_weight=rejected_weight)
        metrics.update(_seq_metrics(stats, mask, b))
        metrics["num_tokens"] = jnp.sum(mask)
        return loss, metrics

    return loss_fn


def adpa_loss_fn(graphdef, teacher_graphdefs, *, width: int, top_k: int = 50,
                   sft_weight: float = 1.0, adpa_weight: float = 1.6,
                   clamp_advantage: bool = True, advantage_beta: float = 1.0,
                   importance_sampling: bool = False, kl_penalty_weight: float = 0.0,
                   dpo_weight: float = 0.0, beta: float = 0.1, chunk_size: int = 128):
    """ADPA: SFT on y_w + the teacher advantage as a distribution-level reward on y_l.

    y_l is a response sampled from the student before training (the run makes it). The extras
    (`importance_sampling`, `kl_penalty_weight`, `dpo_weight`) read the initial student's
    summed log-probs from `batch["ref_logps"]` `[B, 2]` (precomputed once).

    Args:
      graphdef: the student's graph definition.
      teacher_graphdefs: `{"dpo": ..., "ref": ...}` graph definitions of the two teachers.
      width: T. top_k: K of the DPO teacher's ids scored (official 50).
      sft_weight, adpa_weight, clamp_advantage, importance_sampling, kl_penalty_weight: see
        `losses.distill.adpa_loss` / `adpa_token_loss`.
      advantage_beta: beta of `adpa_advantage` (official 1).
      dpo_weight, beta: adds `dpo_weight * dpo_loss(beta)` against the initial student.
    Returns:
      `loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics)`, batch `[B, 2, S]`.
    """
    if top_k < 1:
        raise ValueError(f"ADPA scores the DPO teacher's top-k ids: top_k must be >= 1, got "
                         f"{top_k}")

    def loss_fn(params, batch, rng, *, ref_params=None):
        del rng
        b = batch["input_ids"].shape[0]
        h, y, mask, head = pair_frame(graphdef, params, batch, slice(None), width)
        h, y, m2 = (x.reshape(b, 2, *x.shape[1:]) for x in (h, y, mask))
        if "teacher_topk_ids" in batch:
            adv = {"ids": batch["teacher_topk_ids"], "advantage": batch["teacher_advantage"]}
        else:
            teachers = _need_teacher(ref_params, "the DPO and reference teachers")
            adv = _advantage(teacher_graphdefs, teachers, batch, width=width, top_k=top_k,
                             beta=advantage_beta, chunk_size=chunk_size)
        chosen = student_stats(h[:, 0], head, y[:, 0], chunk_size=chunk_size)
        rejected = student_stats(h[:, 1], head, y[:, 1], adv["ids"], chunk_size=chunk_size)
        per_token = dist.adpa_token_loss(rejected["topk_logps"], adv["advantage"],
                                      clamp_advantage=clamp_advantage)
        sums = reduce.masked_sum(jnp.stack([chosen["logps"], rejected["logps"]], 1), m2)
        ref = sg(batch["ref_logps"].astype(jnp.float32)) if "ref_logps" in batch else None
        if (importance_sampling or kl_penalty_weight or dpo_weight) and ref is None:
            raise ValueError("ADPA extras need batch['ref_logps'] (the initial student's "
                             "summed log-probs, precomputed)")
        loss, metrics = dist.adpa_loss(
            chosen["logps"], m2[:, 0], per_token, m2[:, 1], sft_weight=sft_weight,
            adpa_weight=adpa_weight, rejected_logps=sums[:, 1],
            ref_rejected_logps=None if ref is None else ref[:, 1],
            importance_sampling=importance_sampling, kl_penalty_weight=kl_penalty_weight)
        if dpo_weight:
            pair = (sums[:, 0], sums[:, 1], ref[:, 0], ref[:, 1])
            dpo = jnp.mean(losses.dpo_loss(*pair, beta=beta))
            loss = loss + dpo_weight * dpo
            metrics.update(losses.preference_metrics(*pair, beta=beta), **{"loss/dpo": sg(dpo)})
        stats = {k: jnp.stack([chosen[k], rejected[k]], 1).reshape(2 * b, -1)
                 for k in ("logps", "mean_logit")}
        metrics.update(_seq_metrics(stats, mask, b))
        metrics["num_tokens"] = jnp.sum(mask)
        return loss, metrics

    return loss_fn


def _advantage(graphdefs, teachers, batch, *, width, top_k, beta, chunk_size):
    """Teacher advantage on the rejected (sampled) responses: ids, advantage `[B, T, K]`."""
    rej = slice(1, 2)
    hd, _, _, wd = pair_frame(graphdefs["dpo"], teachers["dpo"], batch, rej, width)
    hr, _, _, wr = pair_frame(graphdefs["ref"], teachers["ref"], batch, rej, width)
    return teacher_advantage(hd, wd, hr, wr, top_k=top_k, beta=beta, chunk_size=chunk_size)


def teacher_outputs_fn(algorithm: str, teacher_graphdefs, *, width: int, top_k: int,
                       advantage_beta: float = 1.0, chunk_size: int = 128):
    """`fn(teacher_params, batch) -> {name: array}`: what the cache stores, per batch row.

    The arrays the loss functions read from the batch (module docstring): for "dckd" the DPO
    teacher's top-k on chosen and rejected, for "adpa" the advantage on the rejected response.
    Computed by the same functions as the in-step path, so the two agree to float rounding.
    """
    if top_k < 1:
        raise ValueError(f"the teacher cache stores the top-k distribution: top_k must be >= 1, "
                         f"got {top_k}")

    def dckd(teachers, batch):
        b = batch["input_ids"].shape[0]
        h, _, _, w = pair_frame(teacher_graphdefs["dpo"], teachers["dpo"], batch, slice(None),
                                width)
        tk = teacher_topk(h, w, top_k=top_k, chunk_size=chunk_size)
        return {"teacher_topk_ids": tk["ids"].reshape(b, 2, width, top_k),
                "teacher_topk_probs": tk["probs"].reshape(b, 2, width, top_k),
                "teacher_rest": tk["rest"].reshape(b, 2, width)}

    def adpa(teachers, batch):
        adv = _advantage(teacher_graphdefs, teachers, batch, width=width, top_k=top_k,
                         beta=advantage_beta, chunk_size=chunk_size)
        return {"teacher_topk_ids": adv["ids"], "teacher_advantage": adv["advantage"]}

    return {"dckd": dckd, "adpa": adpa}[algorithm]

