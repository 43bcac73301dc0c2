r"""GRPO family (TRL 1.16 loss types grpo / bnpo / dr_grpo / dapo) on the arithmetic task.

alignax train --config experiments/configs/grpo.py:smoke --workdir runs/grpo
From an SFT export: --config.model.path=runs/sft/hf. Variants: `dapo` (loss dapo, clip-higher
0.28, dynamic sampling), `kl` (beta 0.04 against the frozen start). The reward is the verifiable
answer checker; `reward.functions` / `reward.weights` add objectives (e.g. "brevity").
Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "dapo", "kl", "smoke")


def get_config(variant: str = "default"):
    # loss.name is TRL's loss_type; scale_rewards is the advantage's divisor (group/batch/none).
    c = common.online("grpo", dict(name="grpo", beta=0.0, epsilon=0.2, epsilon_high=0.2,
                                   scale_rewards="group", importance_sampling_level="token"))
    if variant == "dapo":
        c.loss.update(name="dapo", epsilon_high=0.28)
        c.rollout.dynamic_sampling = True
    if variant == "kl":
        c.loss.beta = 0.04
    if variant == "smoke":
        common.online_smoke(c)
    return c
