r"""SFT of a tiny Llama-shaped model on the synthetic arithmetic task (`a+b=` -> answer).

alignax train --config experiments/configs/sft.py:smoke --workdir runs/sft
Expected: see experiments/README.md (measured on the 2-core CPU machine).
"""

import common

VARIANTS = ("default", "noisy", "demo", "smoke")


def get_config(variant: str = "default"):
    c = common.base("sft", name="nll")
    c.data.error_rate = 0.0
    c.optim.learning_rate = 3e-3
    c.train.steps = 800
    if variant in ("noisy", "demo"):  # 40% of answers one too many: the DPO demo's start
        c.data.error_rate = 0.4
    if variant == "smoke":
        common.smoke(c)
    return c
