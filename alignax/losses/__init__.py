"""Pure loss maths: functions of arrays, no model, no config, explicit reductions."""

from alignax.losses import reduce
from alignax.losses.kto import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss
from alignax.losses.preference import (
    F_DIVERGENCES,
    PREFERENCE_LOSSES,
    aot_loss,
    aot_unpaired_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    discopop_loss,
    dpo_loss,
    exo_pair_loss,
    f_divergence_score,
    get_preference_loss,
    hinge_loss,
    ipo_loss,
    ld_sequence_logps,
    mixed_preference_loss,
    nca_pair_loss,
    preference_metrics,
    register_preference_loss,
    robust_loss,
    sft_pair_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
    sppo_hard_loss,
    wpo_weights,
)
from alignax.losses.reference_free import (
    alphapo_reward,
    cpo_hinge_loss,
    cpo_ipo_loss,
    cpo_loss,
    cpo_rewards,
    log1mexp,
    orpo_log_odds,
    orpo_loss,
    simpo_loss,
)
from alignax.losses.reward import bradley_terry_loss, reward_metrics
from alignax.losses.sft import nll_loss

__all__ = [
    "F_DIVERGENCES", "PREFERENCE_LOSSES", "alphapo_reward", "aot_loss", "aot_unpaired_loss",
    "apo_down_loss", "apo_zero_loss", "apo_zero_unpaired_loss", "bco_pair_loss",
    "bradley_terry_loss", "cpo_hinge_loss", "cpo_ipo_loss", "cpo_loss", "cpo_rewards",
    "discopop_loss", "dpo_loss", "exo_pair_loss", "f_divergence_score", "get_preference_loss",
    "hinge_loss", "ipo_loss", "kto_kl_estimate", "kto_loss", "ld_sequence_logps", "log1mexp",
    "mixed_preference_loss", "nca_pair_loss", "nll_loss", "orpo_log_odds", "orpo_loss",
    "preference_metrics", "reduce", "register_preference_loss", "reward_metrics", "robust_loss",
    "sft_pair_loss", "sigmoid_loss", "sigmoid_norm_loss", "simpo_loss", "sppo_hard_loss",
    "wpo_weights",
]
