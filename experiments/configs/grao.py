r"""GRAO (Group Relative Alignment Optimization, arXiv 2508.07750) on the arithmetic task.

alignax train --config experiments/configs/grao.py:smoke --workdir runs/grao
From an SFT export: --config.model.path=runs/sft/hf. Per prompt: G samples plus the dataset's
reference answer y (the correct answer of the task's pairs); rewards R(o_i, y) and R(y, y)
from the verifiable checker; loss = exploration + beta imitation + lambda alignment (each
logged under loss/). No reference model, no ratio: one update per rollout batch.
Expected: see experiments/README.md.
"""

import common

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    # beta: imitation weight; lam: alignment-regulariser weight (paper 0.5 / 0.6); pooled:
    # advantages normalised over the G samples and the answer together (docs/algorithms.md).
    c = common.online("grao", dict(name="grao", beta=0.5, lam=0.6, pooled=True),
                      temperature=0.7)
    if variant == "smoke":
        common.online_smoke(c)
    return c
