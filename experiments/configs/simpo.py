r"""SimPO (reference-free, length-normalised margin) on the synthetic arithmetic pairs.

alignax train --config experiments/configs/simpo.py:smoke --workdir runs/simpo
Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    c = common.base("simpo", name="simpo", beta=2.0, gamma=1.0, nll_weight=0.0)
    c.optim.learning_rate = 1e-5
    if variant == "smoke":
        common.smoke(c)
    return c
