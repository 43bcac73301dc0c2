"""SPA: Self-Priority Alignment (arXiv 2511.06222, AAAI 2026, Eq. 1-3).

The model samples n responses per prompt, self-scores each on a primary objective G_a
(harmlessness or honesty) and a secondary one G_b (helpfulness), writes one refined response and
re-scores it. Prompts pass a consistency filter (the refined response strictly beats every
sample on both axes) and an informativeness filter (0 < det Cov(s_a, s_b) <= tau over the
samples); pairs are built lexicographically (G_a first, G_b breaks ties) with a minimum score gap
delta. Training is SimPO with per-pair weights w_i = (Delta_i / mean Delta)^alpha, Delta_i the
absolute difference of total scores. No code was released; the readings chosen where the paper
is ambiguous are in docs/algorithms.md, SPA.

References:
  SPA (arXiv 2511.06222, §"SPA: Self-Priority Alignment", Eq. 1-3); SimPO (Meng et al. 2024,
  arXiv 2405.14734, Eq. 6).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alignax.losses._util import as_float
from alignax.losses.reference_free import simpo_loss


def spa_weights(score_gaps, *, alpha: float = 1.0) -> jax.Array:
    """Uncertainty weights w_i = (Delta_i / mean_batch Delta)^alpha (SPA Eq. 3), no gradient.

    Args:
      score_gaps: `[...]` Delta_i = |G_a(y) + G_b(y) - G_a(y-) - G_b(y-)| per pair; the mean is
        over every pair of the batch.
      alpha: alpha > 0 (0 gives weight 1, i.e. SimPO).
    Returns: `[...]` weights (all 1 if every gap is 0).
    """
    gaps = jax.lax.stop_gradient(as_float(score_gaps))
    mean = jnp.mean(gaps)
    return jnp.where(mean > 0, gaps / jnp.where(mean > 0, mean, 1.0), 1.0) ** alpha


def spa_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, score_gaps, *,
             beta: float = 2.5, gamma: float = 0.5, alpha: float = 1.0) -> jax.Array:
    """SPA's uncertainty-weighted SimPO loss per pair (SPA Eq. 3).

    w_i x -log sigma(beta/|y| log pi(y|x) - beta/|y-| log pi(y-|x) - gamma); its batch mean is
    L_SPA. No reference model. beta, gamma, alpha are not in the paper's main text; the defaults
    are SimPO-style starting points, not the paper's values.

    Args:
      chosen_logps, rejected_logps: `[...]` summed log-probs of y (preferred) and y-.
      chosen_lengths, rejected_lengths: `[...]` completion-token counts (SimPO averaging).
      score_gaps: `[...]` Delta_i (`SpaPairs.score_gap`).
      beta: SimPO beta. gamma: target margin gamma. alpha: weight exponent.
    Returns: `[...]` weighted loss per pair.
    """
    per_pair = simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths,
                          beta=beta, gamma=gamma)
    return spa_weights(score_gaps, alpha=alpha) * per_pair


class SpaPairs(NamedTuple):
    """Preference pairs of one prompt; index n (= number of samples) is the refined response."""

    chosen: np.ndarray  # [P] int, index of y
    rejected: np.ndarray  # [P] int, index of y-
    distance: np.ndarray  # [P] |dG_a| + |dG_b| (the delta filter)
    score_gap: np.ndarray  # [P] |dG_a + dG_b| (Delta_i of the loss weights)


def score_covariance_det(scores, *, ddof: int = 1) -> float:
    """det of the 2 x 2 covariance of the sampled (s_a, s_b) (SPA informativeness filter).

    Args: scores `[n, 2]`; ddof 1 (sample covariance, our choice) or 0 (population).
    """
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.linalg.det(np.atleast_2d(np.cov(scores.T, ddof=ddof))))


def spa_pairs(sample_scores, refined_score, *, delta: float = 1.0, tau: float = float("inf"),
              ddof: int = 1, drop_prompt_if_inconsistent: bool = True) -> SpaPairs:
    """Consistency + informativeness filters, then lexicographic pairs (docs/algorithms.md, SPA).

    1. Consistency: keep the refined response y~ only if s_a(y~) > max s_a and
       s_b(y~) > max s_b over the samples (strict). If it fails the prompt gives no pairs
       (`drop_prompt_if_inconsistent=True`, our reading); `False` drops only y~.
    2. Informativeness: keep the prompt only if 0 < det Cov(samples' (s_a, s_b)) <= tau
       (covariance with `ddof`, unspecified in the paper: 1 by default).
    3. Pairs: every ordered (y, y-) of the kept responses with G_a(y) > G_a(y-), or equal G_a
       and G_b(y) > G_b(y-), and |dG_a| + |dG_b| >= delta.

    Args:
      sample_scores: `[n, 2]` (s_a, s_b) of the n sampled responses.
      refined_score: `[2]` (s_a, s_b) of the refined response (index n in the output).
      delta: minimum L1 score distance. tau: maximum covariance determinant.
    Returns: `SpaPairs` (empty arrays when the prompt is filtered out).
    """
    samples = np.asarray(sample_scores, dtype=np.float64).reshape(-1, 2)
    refined = np.asarray(refined_score, dtype=np.float64).reshape(2)
    empty = SpaPairs(np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros(0))
    consistent = bool(np.all(refined > samples.max(axis=0)))
    if not consistent and drop_prompt_if_inconsistent:
        return empty
    det = score_covariance_det(samples, ddof=ddof) if len(samples) > 1 else 0.0
    if not 0.0 < det <= tau:
        return empty
    kept = np.concatenate([samples, refined[None]]) if consistent else samples
    rows = []
    for i, (a_i, b_i) in enumerate(kept):
        for j, (a_j, b_j) in enumerate(kept):
            wins = a_i > a_j or (a_i == a_j and b_i > b_j)
            distance = abs(a_i - a_j) + abs(b_i - b_j)
            if wins and distance >= delta:
                rows.append((i, j, distance, abs(a_i + b_i - a_j - b_j)))
    if not rows:
        return empty
    chosen, rejected, distance, gap = (np.asarray(c) for c in zip(*rows, strict=True))
    return SpaPairs(chosen.astype(int), rejected.astype(int), distance, gap)
