r"""DPO (any TRL loss type: --config.loss.name=ipo, ...) on the synthetic arithmetic pairs.

alignax train --config experiments/configs/dpo.py:smoke --workdir runs/dpo
Start from an SFT export with --config.model.path=runs/sft/hf (the reference is that model);
`make demo` runs sft.py:demo then dpo.py:demo.
Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "demo", "smoke")  # demo = default (`make demo`'s second stage)


def get_config(variant: str = "default"):
    c = common.base("dpo", name="sigmoid", beta=0.1)
    # Adam moves tiny-model weights fast: 3e-6 for 200 steps; 5e-5 already over-optimises
    # (pair accuracy 1.0 while greedy accuracy collapses), see experiments/README.md.
    c.optim.learning_rate = 3e-6
    c.train.steps = 200
    if variant == "smoke":
        common.smoke(c)
    return c
