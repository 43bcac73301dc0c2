"""Pure loss maths: functions of arrays, no model, no config, explicit reductions."""

from alignax.losses import reduce
from alignax.losses.distill import (
    adpa_advantage,
    adpa_loss,
    adpa_token_loss,
    collapse_topk,
    dckd_full_kl,
    dckd_loss,
    dckd_topk_kl,
    gather_topk_logps,
)
from alignax.losses.grao import grao_advantages, grao_loss
from alignax.losses.kl import (
    KL_ESTIMATORS,
    entropy_from_logits,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_bias_corrected,
)
from alignax.losses.kto import apo_zero_unpaired_loss, kto_kl_estimate, kto_loss
from alignax.losses.metrics import pair_metrics, preference_metrics
from alignax.losses.multihead import (
    MAH_DPO_LOSSES,
    head_routes,
    mah_dpo_loss,
    mah_dpo_rewards,
)
from alignax.losses.policy_gradient import (
    GRPO_LOSS_TYPES,
    dapo_normalizer,
    gae,
    grpo_advantages,
    grpo_aggregate,
    grpo_loss,
    kl_penalized_rewards,
    masked_whiten,
    nanstd,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)
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
    mixed_preference_loss,
    nca_pair_loss,
    register_preference_loss,
    robust_loss,
    sft_pair_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
    sppo_hard_loss,
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
from alignax.losses.spa import SpaPairs, score_covariance_det, spa_loss, spa_pairs, spa_weights
from alignax.losses.weighting import ld_sequence_logps, wpo_weights

__all__ = [
    "F_DIVERGENCES", "GRPO_LOSS_TYPES", "KL_ESTIMATORS", "MAH_DPO_LOSSES", "PREFERENCE_LOSSES",
    "SpaPairs", "adpa_advantage", "adpa_loss", "adpa_token_loss", "alphapo_reward", "aot_loss",
    "aot_unpaired_loss", "apo_down_loss", "apo_zero_loss", "apo_zero_unpaired_loss",
    "bco_pair_loss", "bradley_terry_loss", "collapse_topk", "cpo_hinge_loss", "cpo_ipo_loss",
    "cpo_loss", "cpo_rewards", "dapo_normalizer", "dckd_full_kl", "dckd_loss", "dckd_topk_kl",
    "discopop_loss", "dpo_loss", "entropy_from_logits", "exo_pair_loss", "f_divergence_score",
    "gae", "gather_topk_logps", "get_preference_loss", "grao_advantages", "grao_loss",
    "grpo_advantages", "grpo_aggregate", "grpo_loss", "head_routes", "hinge_loss", "ipo_loss",
    "kl_k1", "kl_k2", "kl_k3", "kl_k3_bias_corrected", "kl_penalized_rewards", "kto_kl_estimate",
    "kto_loss", "ld_sequence_logps", "log1mexp", "mah_dpo_loss", "mah_dpo_rewards",
    "masked_whiten", "mixed_preference_loss", "nanstd", "nca_pair_loss", "nll_loss",
    "orpo_log_odds", "orpo_loss", "pair_metrics", "ppo_policy_loss", "ppo_value_loss",
    "preference_metrics", "reduce", "register_preference_loss", "reward_metrics",
    "rloo_advantages", "robust_loss", "score_covariance_det", "sft_pair_loss", "sigmoid_loss",
    "sigmoid_norm_loss", "simpo_loss", "spa_loss", "spa_pairs", "spa_weights", "sppo_hard_loss",
    "wpo_weights",
]
