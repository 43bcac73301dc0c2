"""KTO: Kahneman-Tversky Optimization on unpaired desirable / undesirable examples.

References: Ethayarajh et al. 2024 (arXiv 2402.01306), Eq. 8; TRL 1.16.0 `KTOTrainer._compute_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float


def kto_kl_estimate(kl_logps, ref_kl_logps) -> jax.Array:
    """The reference point z0 = max(0, mean[l(x_i, y'_i) - l_ref(x_i, y'_i)]), under stop-gradient.

    y'_i is a mismatched completion (TRL: row i-1's completion, cycled within the batch). Average
    over every example of the global batch (all hosts) before calling `kto_loss`.

    Args:
      kl_logps: `[...]` summed policy log-probs of the mismatched pairs.
      ref_kl_logps: `[...]` the same under the reference.
    Returns: scalar z0.
    """
    kl_logps, ref_kl_logps = as_float(kl_logps, ref_kl_logps)
    return jax.lax.stop_gradient(jnp.maximum(jnp.mean(kl_logps - ref_kl_logps), 0.0))


def kto_loss(policy_logps, ref_logps, desirable, kl, *, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> jax.Array:
    """KTO loss per example (Ethayarajh et al. 2024, Eq. 8, TRL 1.16 `loss_type="kto"`).

    rho = l - l_ref. Desirable: lambda_D (1 - sigma(beta (rho - z0))); undesirable:
    lambda_U (1 - sigma(beta (z0 - rho))). TRL averages over all examples of the batch.

    Args:
      policy_logps: `[...]` summed log pi(y|x) over completion tokens.
      ref_logps: `[...]` the same under the reference (no gradient flows into it).
      desirable: `[...]` bool, True for desirable (chosen) examples.
      kl: scalar (or broadcastable) z0 from `kto_kl_estimate`, already detached.
      beta, desirable_weight, undesirable_weight: the paper's beta, lambda_D, lambda_U.
    Returns: `[...]` loss per example.
    """
    policy_logps, ref_logps = as_float(policy_logps, ref_logps)
    rho = policy_logps - jax.lax.stop_gradient(ref_logps)
    kl = jax.lax.stop_gradient(jnp.asarray(kl, rho.dtype))
    good = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (rho - kl)))
    bad = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (kl - rho)))
    return jnp.where(jnp.asarray(desirable, bool), good, bad)


def apo_zero_unpaired_loss(policy_logps, ref_logps, desirable, *, beta: float = 0.1,
                           desirable_weight: float = 1.0,
                           undesirable_weight: float = 1.0) -> jax.Array:
    """APO-zero on unpaired data (TRL KTO `apo_zero_unpaired`): no KL reference point.

    Desirable: lambda_D (1 - sigma(beta rho)); undesirable: lambda_U sigma(beta rho).
    Args as `kto_loss` without `kl`. Returns: `[...]` loss per example.
    """
    policy_logps, ref_logps = as_float(policy_logps, ref_logps)
    rho = policy_logps - jax.lax.stop_gradient(ref_logps)
    good = desirable_weight * (1.0 - jax.nn.sigmoid(beta * rho))
    bad = undesirable_weight * jax.nn.sigmoid(beta * rho)
    return jnp.where(jnp.asarray(desirable, bool), good, bad)
