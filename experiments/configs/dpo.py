r"""DPO (any TRL loss type: --config.loss.name=ipo, ...) on the synthetic arithmetic pairs.

alignax train --config experiments/configs/dpo.py:smoke --workdir runs/dpo
Start from an SFT export with --config.model.path=runs/sft/hf (the reference is that model).
Expected: see experiments/README.md.
"""

import common


def get_config(variant: str = "default"):
    c = common.base()
    c.algorithm = "dpo"
    c.loss = dict(name="sigmoid", beta=0.1)
    c.optim.learning_rate = 5e-4
    c.train.steps = 200
    if variant == "smoke":
        common.smoke(c)
    return c
