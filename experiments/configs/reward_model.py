r"""Bradley-Terry reward model (trunk + scalar head) on the synthetic arithmetic pairs.

alignax train --config experiments/configs/reward_model.py:smoke --workdir runs/rm
The export (`WORKDIR/hf`) is an HF trunk plus `reward_head/head.safetensors`
(`alignax.models.load_reward_model`). Start from an SFT export with
--config.model.path=runs/sft/hf. Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    c = common.base("reward_model", name="bradley_terry", center_rewards_coefficient=0.01)
    c.optim.learning_rate = 1e-4
    c.train.steps = 300
    if variant == "smoke":
        common.smoke(c)
    return c
