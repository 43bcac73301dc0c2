r"""ORPO (NLL + odds-ratio term, no reference) on the synthetic arithmetic pairs.

alignax train --config experiments/configs/orpo.py:smoke --workdir runs/orpo
Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    c = common.base("orpo", name="orpo", beta=0.1, nll_weight=1.0)
    c.optim.learning_rate = 1e-5
    if variant == "smoke":
        common.smoke(c)
    return c
