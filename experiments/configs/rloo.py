r"""RLOO (REINFORCE leave-one-out, Ahmadian et al. 2024) on the arithmetic task.

alignax train --config experiments/configs/rloo.py:smoke --workdir runs/rloo
From an SFT export: --config.model.path=runs/sft/hf. The advantage of sample i is its reward
minus the mean of the other G - 1 samples' rewards, the reward being the verifiable score minus
kl_coef x the sequence KL to the frozen start (k1, TRL RLOO); the loss is the PPO-clipped
surrogate with `loss.name` aggregation (TRL's loss_type). Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    # loss.name is TRL's loss_type (the token aggregation), as for grpo.py.
    c = common.online("rloo", dict(name="grpo", kl_coef=0.05, kl_estimator="k1", epsilon=0.2,
                                   normalize_advantages=False))
    if variant == "smoke":
        common.online_smoke(c)
    return c
