r"""Margin DPO on the arithmetic pairs: the config of the algorithm in `margin_dpo.py`.

alignax train --config notebooks/margin_dpo_config.py:smoke --workdir runs/margin_dpo \
    --config.model.path=runs/sft/hf
"""

import margin_dpo  # noqa: F401  (registers algorithm "margin_dpo")

from alignax import config

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    c = config.defaults()
    c.algorithm = "margin_dpo"
    c.loss = dict(name="sigmoid", beta=0.1, margin=0.05)
    c.optim.learning_rate = 3e-6
    if variant == "smoke":
        c.data.num_train, c.data.num_eval = 64, 16
        c.train.steps, c.train.batch_size, c.train.eval_every = 4, 8, 0
    return c
