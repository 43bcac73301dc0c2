"""Reference-free preference losses: CPO, SimPO, AlphaPO (TRL `CPOTrainer`) and ORPO.

They need no reference model. Inputs are summed completion log-probs `[...]` plus completion
lengths where the loss averages per token; outputs are per-pair losses `[...]`. The NLL term
that CPO (`cpo_alpha`) and ORPO add on the chosen completions is token-level and lives with the
objective: `alignax.losses.reduce.token_mean(-chosen_token_logps, chosen_mask)`.

References:
  CPO (Xu et al. 2024, arXiv 2401.08417), SimPO (Meng et al. 2024, arXiv 2405.14734),
  AlphaPO (Gupta et al. 2025, arXiv 2501.03884), ORPO (Hong et al. 2024, arXiv 2403.07691).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float


def alphapo_reward(logps, *, alpha: float) -> jax.Array:
    """AlphaPO reward transform r = (1 - p^-alpha) / alpha with p = exp(logps); alpha=0 gives logps.

    Args: logps `[...]`. Returns: `[...]`.
    """
    logps = as_float(logps)
    if alpha == 0.0:
        return logps
    # p^-alpha = exp(-alpha logp); -expm1 keeps small alpha accurate.
    return -jnp.expm1(-alpha * logps) / alpha


def _margin(chosen, rejected, alpha):
    return alphapo_reward(chosen, alpha=alpha) - alphapo_reward(rejected, alpha=alpha)


def _smoothed_sigmoid(z, label_smoothing):
    return -((1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
             + label_smoothing * jax.nn.log_sigmoid(-z))


def cpo_loss(chosen_logps, rejected_logps, *, beta: float = 0.1, label_smoothing: float = 0.0,
             alpha: float = 0.0) -> jax.Array:
    """CPO preference term (Xu et al. 2024, Eq. 3), TRL `loss_type="sigmoid"`.

    -(1 - eps) log sigma(beta z) - eps log sigma(-beta z), z = s_w - s_l on summed log-probs
    (AlphaPO-transformed when alpha != 0).

    Args:
      chosen_logps: `[...]` summed log pi(y_w|x); rejected_logps: `[...]` summed log pi(y_l|x).
    Returns: `[...]` loss per pair (add cpo_alpha x NLL(y_w) in the objective).
    """
    return _smoothed_sigmoid(beta * _margin(chosen_logps, rejected_logps, alpha), label_smoothing)


def cpo_hinge_loss(chosen_logps, rejected_logps, *, beta: float = 0.1,
                   alpha: float = 0.0) -> jax.Array:
    """TRL CPO `hinge`: max(0, 1 - beta z) on summed log-probs. Shapes as `cpo_loss`."""
    return jax.nn.relu(1.0 - beta * _margin(chosen_logps, rejected_logps, alpha))


def cpo_ipo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, *,
                 beta: float = 0.1, alpha: float = 0.0) -> jax.Array:
    """TRL CPO `ipo`: (z - 1/(2 beta))^2 on per-token **averaged** log-probs.

    Args: summed log-probs `[...]` and completion lengths `[...]`. Returns: `[...]`.
    """
    chosen_logps, rejected_logps, chosen_lengths, rejected_lengths = as_float(
        chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    z = _margin(chosen_logps / chosen_lengths, rejected_logps / rejected_lengths, alpha)
    return (z - 1.0 / (2.0 * beta)) ** 2


def simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, *,
               beta: float = 2.0, gamma: float = 1.0, label_smoothing: float = 0.0,
               alpha: float = 0.0) -> jax.Array:
    """SimPO (Meng et al. 2024, Eq. 6): -log sigma(beta/|y_w| l_w - beta/|y_l| l_l - gamma).

    TRL's CPO `simpo` form: z = mean log-prob margin - gamma / beta, then the smoothed sigmoid.
    AlphaPO (Gupta et al. 2025) is `alpha != 0` (TRL `loss_type="alphapo"`, with cpo_alpha=0).
    TRL's argument `simpo_gamma` (default 0.5) is `gamma` here; the paper uses beta 2-2.5,
    gamma / beta about 0.5.

    Args:
      chosen_logps, rejected_logps: `[...]` summed log-probs.
      chosen_lengths, rejected_lengths: `[...]` completion-token counts (averaging divisor).
    Returns: `[...]` loss per pair.
    """
    chosen_logps, rejected_logps, chosen_lengths, rejected_lengths = as_float(
        chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    z = _margin(chosen_logps / chosen_lengths, rejected_logps / rejected_lengths, alpha)
    return _smoothed_sigmoid(beta * (z - gamma / beta), label_smoothing)


def cpo_rewards(chosen_logps, rejected_logps, *, beta: float, alpha: float = 0.0):
    """Implicit rewards logged by TRL's CPO trainer: beta x (AlphaPO-transformed) log-probs.

    Pass summed log-probs for sigmoid / hinge and averaged ones for ipo / simpo, as TRL does.
    Returns: (chosen `[...]`, rejected `[...]`), under stop-gradient.
    """
    return (jax.lax.stop_gradient(beta * alphapo_reward(chosen_logps, alpha=alpha)),
            jax.lax.stop_gradient(beta * alphapo_reward(rejected_logps, alpha=alpha)))


def log1mexp(x) -> jax.Array:
    """log(1 - exp(x)) for x < 0, stable: branches at -ln 2 (Maechler 2012)."""
    x = as_float(x)
    # Both branches are evaluated; feed each a safe value so neither makes NaN gradients.
    lo = jnp.where(x < -math.log(2.0), x, -1.0)
    hi = jnp.where(x < -math.log(2.0), -1.0, x)
    return jnp.where(x < -math.log(2.0), jnp.log1p(-jnp.exp(lo)), jnp.log(-jnp.expm1(hi)))


def orpo_log_odds(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths) -> jax.Array:
    """ORPO log odds ratio (Hong et al. 2024, Eq. 4-7) from **mean** log-probs.

    log odds(y_w) - log odds(y_l), odds(y) = P / (1 - P) with log P the mean token log-prob.

    Args: summed log-probs `[...]` and completion lengths `[...]`. Returns: `[...]`.
    """
    chosen_logps, rejected_logps, chosen_lengths, rejected_lengths = as_float(
        chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    mean_w, mean_l = chosen_logps / chosen_lengths, rejected_logps / rejected_lengths
    return (mean_w - mean_l) - (log1mexp(mean_w) - log1mexp(mean_l))


def orpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, *,
              beta: float = 0.1) -> jax.Array:
    """ORPO odds-ratio term per pair: -beta log sigma(log odds) (beta is the paper's lambda).

    TRL's total is NLL(y_w) + mean of this. Args as `orpo_log_odds`. Returns: `[...]`.
    """
    return -beta * jax.nn.log_sigmoid(
        orpo_log_odds(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths))
