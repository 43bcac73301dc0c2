r"""KTO on unpaired desirable / undesirable arithmetic answers.

alignax train --config experiments/configs/kto.py:smoke --workdir runs/kto
Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    c = common.base("kto", name="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)
    c.optim.learning_rate = 1e-5
    if variant == "smoke":
        common.smoke(c)
    return c
