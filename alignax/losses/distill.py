"""Preference distillation: DCKD and ADPA (Gao et al., ICLR 2025, arXiv 2502.17927).

DCKD (dual-constrained knowledge distillation) adds a forward KL(teacher || student) on every
completion token of **both** the chosen and the rejected response to the SFT loss on the chosen
one; the teacher is the DPO-aligned teacher. ADPA (advantage-guided distillation) trains on
student samples with a distribution-level reward: the student's expected token advantage of the
aligned teacher over the reference teacher, A_t(v) = log pi_dpo^T(v|s_t) - log pi_ref^T(v|s_t).

Teacher distributions are usually stored compressed: the top-k (k = 50) probabilities, their ids
and the remaining mass. The official code then compares **(k+1)-bin collapsed distributions**
(top-k plus a "rest" bucket), clamped to [1e-8, 1 - 1e-8] (`prob_stabilize=True`), with the
student floored at 1e-7. Both the collapsed and the full-vocabulary forms are here. Token
functions return `[..., T]`; `dckd_loss` / `adpa_loss` reduce as the code does (token mean over
the flattened batch) and combine with the SFT term by weights.

References:
  ADPA / DCKD (arXiv 2502.17927, §3); official code `gaoshiping/ADPA` @ a95c32f
  (`scripts/run_distill_dpo.py::get_kl_loss, get_reverse_ce, get_batch_loss_metrics`,
  `utils/compress_logits.py::load_input_and_target_probs_fast`); full-vocabulary oracle: TRL
  `GKDTrainer.generalized_jsd_loss(beta=0)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from alignax.losses import reduce
from alignax.losses._util import as_float

PROB_CLAMP = 1e-8  # `prob_stabilize` clamp of both collapsed vectors
STUDENT_FLOOR = 1e-7  # `get_kl_loss` floor on the student probabilities

sg = jax.lax.stop_gradient


def gather_topk_logps(logits, ids, *, temperature: float = 1.0) -> jax.Array:
    """log_softmax(logits / temperature) at the given ids (the student side of a top-k KL).

    Args: logits `[..., V]`; ids `[..., K]` integer token ids. Returns: `[..., K]`.
    """
    logps = jax.nn.log_softmax(as_float(logits) / temperature, axis=-1)
    return jnp.take_along_axis(logps, jnp.asarray(ids), axis=-1)


def collapse_topk(topk_probs, rest=None, *, prob_stabilize: bool = True) -> jax.Array:
    """Top-k probabilities plus a rest bucket: `[..., K]` -> `[..., K + 1]`.

    Args:
      topk_probs: `[..., K]` probabilities at the top-k ids.
      rest: `[...]` stored remaining mass, or None for 1 - sum(topk_probs).
      prob_stabilize: clamp every bin to [1e-8, 1 - 1e-8] (the official default).
    Returns: `[..., K + 1]`.
    """
    topk_probs = as_float(topk_probs)
    rest = 1.0 - jnp.sum(topk_probs, axis=-1) if rest is None else as_float(rest)
    out = jnp.concatenate([topk_probs, rest[..., None]], axis=-1)
    return jnp.clip(out, PROB_CLAMP, 1.0 - PROB_CLAMP) if prob_stabilize else out


def dckd_topk_kl(student_topk_logps, teacher_topk_probs, teacher_rest=None, *,
                 prob_stabilize: bool = True) -> jax.Array:
    """Per-token forward KL(teacher || student) between (k+1)-bin collapsed distributions.

    sum_j P_j (log P_j - log Q_j) over the teacher's top-k ids and the rest bucket, with the
    student Q gathered at the teacher's ids, its rest 1 - sum, clamped, then floored at 1e-7
    (official `get_kl_loss`). The gradient flows into the student through Q, rest included.

    Args:
      student_topk_logps: `[..., T, K]` student log-probs at the teacher's top-k ids
        (`gather_topk_logps`).
      teacher_topk_probs: `[..., T, K]` the DPO teacher's top-k probabilities.
      teacher_rest: `[..., T]` the teacher's stored remaining mass (default 1 - sum).
      prob_stabilize: the official clamp of both vectors to [1e-8, 1 - 1e-8].
    Returns: `[..., T]` per-token KL (mask and reduce with `dckd_loss` / `reduce.token_mean`).
    """
    p = sg(collapse_topk(teacher_topk_probs, teacher_rest, prob_stabilize=prob_stabilize))
    q = collapse_topk(jnp.exp(as_float(student_topk_logps)), prob_stabilize=prob_stabilize)
    q = jnp.maximum(q, STUDENT_FLOOR)
    # xlogy: a bin with P = 0 contributes 0, as torch's kl_div does.
    return jnp.sum(xlogy(p, p) - p * jnp.log(q), axis=-1)


def dckd_full_kl(student_logits, teacher_logits, *, temperature: float = 1.0) -> jax.Array:
    """Per-token forward KL(teacher || student) over the full vocabulary.

    sum_v p_T(v) (log p_T(v) - log p_S(v)) with both softmaxes at `temperature`; the token mean
    over valid tokens equals TRL's `GKDTrainer.generalized_jsd_loss(beta=0)`.

    Args:
      student_logits: `[..., T, V]`. teacher_logits: `[..., T, V]` (no gradient).
      temperature: softmax temperature of both (TRL default 1).
    Returns: `[..., T]`.
    """
    log_s = jax.nn.log_softmax(as_float(student_logits) / temperature, axis=-1)
    log_t = sg(jax.nn.log_softmax(as_float(teacher_logits) / temperature, axis=-1))
    return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)


def dckd_loss(chosen_token_logps, chosen_mask, chosen_kl, rejected_kl, rejected_mask, *,
              sft_weight: float = 1.0, distill_weight: float = 1.0, chosen_weight: float = 0.1,
              rejected_weight: float = 0.1):
    """DCKD: w_sft NLL(y_w) + w_d (w_c KL_tok(y_w) + w_r KL_tok(y_l)) (arXiv 2502.17927, §3.1).

    Each term is a token mean over the flattened batch (the official code), the KL over the
    chosen and over the rejected tokens separately. Recipe `student_dckd.yaml`: `sft_on_chosen`
    = w_sft = 1, `distillation_weight` = w_d = 1, `chosen_distil_weight` = w_c = 0.1,
    `rejected_distil_weight` = w_r = 0.1.

    Args:
      chosen_token_logps: `[..., T]` student log pi(y_t|.) of the chosen tokens.
      chosen_mask: `[..., T]` completion mask of the chosen responses.
      chosen_kl: `[..., T]` per-token KL on y_w (`dckd_topk_kl` or `dckd_full_kl`).
      rejected_kl: `[..., T']` per-token KL on y_l. rejected_mask: `[..., T']`.
    Returns:
      (loss scalar, metrics `loss/chosen-sft`, `loss/chosen-fkl`, `loss/rejected-fkl`).
    """
    nll = reduce.token_mean(-as_float(chosen_token_logps), chosen_mask)
    kl_w = reduce.token_mean(chosen_kl, chosen_mask)
    kl_l = reduce.token_mean(rejected_kl, rejected_mask)
    loss = sft_weight * nll + distill_weight * (chosen_weight * kl_w + rejected_weight * kl_l)
    metrics = {"loss/chosen-sft": sg(nll), "loss/chosen-fkl": sg(kl_w),
               "loss/rejected-fkl": sg(kl_l)}
    return loss, metrics


def adpa_advantage(dpo_teacher_logps, ref_teacher_logps, *, beta: float = 1.0) -> jax.Array:
    """Token-level teacher advantage A_t(v) = beta (log pi_dpo^T(v|s_t) - log pi_ref^T(v|s_t)).

    The official code stores the plain log-ratio (beta = 1); the DPO implicit reward would carry
    the teacher's beta, which `adpa_weight` absorbs in the unclamped form.

    Args: dpo_teacher_logps, ref_teacher_logps: `[..., T, K]` at the DPO teacher's top-k ids.
    Returns: `[..., T, K]` (a constant: under stop-gradient).
    """
    dpo_teacher_logps, ref_teacher_logps = as_float(dpo_teacher_logps, ref_teacher_logps)
    return sg(beta * (dpo_teacher_logps - ref_teacher_logps))


def adpa_token_loss(student_topk_logps, advantages, *, clamp_advantage: bool = True) -> jax.Array:
    """ADPA distribution-level reward per token: -sum_v pi_theta(v|s_t) A_t(v) (arXiv 2502.17927).

    `clamp_advantage=False` is the paper form over the top-k ids. `True` reproduces the official
    run (`prob_stabilize=True`): the (k+1)-bin student vector and the targets
    (A, 0 for the rest bucket) are both clamped to [1e-8, 1 - 1e-8], so negative advantages
    become ~0, those above 1 become ~1 and the rest bucket pulls with weight 1e-8. No
    stop-gradient on pi_theta: the gradient flows through the student probabilities.

    Args:
      student_topk_logps: `[..., T, K]` student log-probs at the advantage's ids.
      advantages: `[..., T, K]` A_t(v) (`adpa_advantage`).
      clamp_advantage: see above.
    Returns: `[..., T]` per-token loss.
    """
    q = jnp.exp(as_float(student_topk_logps))
    adv = sg(as_float(advantages))
    if clamp_advantage:
        q = collapse_topk(q)
        adv = collapse_topk(adv, jnp.zeros_like(adv[..., 0]))
    return -jnp.sum(q * adv, axis=-1)


def adpa_loss(chosen_token_logps, chosen_mask, adpa_token_losses, rejected_mask, *,
              sft_weight: float = 1.0, adpa_weight: float = 1.6, rejected_logps=None,
              ref_rejected_logps=None, importance_sampling: bool = False,
              kl_penalty_weight: float = 0.0):
    """ADPA: w_sft NLL(y_w) + w_adv L_adv (arXiv 2502.17927, §3.2; recipe `student_adpa.yaml`).

    L_adv is the token mean of `adpa_token_loss` over the student samples' valid tokens
    (`rejected` in the official data). Optional extras, off by default as in the code:
    `importance_sampling` multiplies L_adv by the batch mean of exp(l_theta(y_l) - l_ref(y_l))
    (with gradient); `kl_penalty_weight` adds mean(l_ref(y_l) - l_theta(y_l)).

    Args:
      chosen_token_logps: `[..., T]` student log-probs of the dataset's chosen tokens.
      chosen_mask: `[..., T]`.
      adpa_token_losses: `[..., T']` per-token loss on the student samples.
      rejected_mask: `[..., T']` their completion mask.
      sft_weight: `sft_on_chosen` (1). adpa_weight: `adpa_weight` (1.6).
      rejected_logps, ref_rejected_logps: `[...]` summed log-probs of the samples under the
        student and its reference; needed by the two extras.
    Returns: (loss scalar, metrics `loss/chosen-sft`, `loss/adpa` and, when on,
      `loss/importance_weight`, `loss/kl-penalty`).
    """
    nll = reduce.token_mean(-as_float(chosen_token_logps), chosen_mask)
    adv_loss = reduce.token_mean(adpa_token_losses, rejected_mask)
    metrics = {"loss/chosen-sft": sg(nll), "loss/adpa": sg(adv_loss)}
    if importance_sampling or kl_penalty_weight:
        if rejected_logps is None or ref_rejected_logps is None:
            raise ValueError("importance_sampling / kl_penalty need rejected_logps and "
                             "ref_rejected_logps")
        rejected_logps = as_float(rejected_logps)
        ref_rejected_logps = sg(as_float(ref_rejected_logps))
    loss = sft_weight * nll
    if importance_sampling:
        weight = jnp.mean(jnp.exp(rejected_logps - ref_rejected_logps))
        adv_loss = adv_loss * weight
        metrics["loss/importance_weight"] = sg(weight)
    loss = loss + adpa_weight * adv_loss
    if kl_penalty_weight:
        penalty = jnp.mean(ref_rejected_logps - rejected_logps)
        loss = loss + kl_penalty_weight * penalty
        metrics["loss/kl-penalty"] = sg(penalty)
    return loss, metrics
