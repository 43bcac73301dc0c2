r"""MAH-DPO (multi-action-head DPO, arXiv 2510.01167) on the two-objective arithmetic task.

Objective 0 `correct`: the exact answer; objective 1 `round`: a multiple of ten. Pairs name
their objective (`alignax.data.arithmetic.multiobjective_pairs`); one LM head per objective on
a shared trunk, the reference is the SFT model. Start from the noisy SFT model (40% of its
training answers are one too many); `:single` is the baseline, single-head DPO on the same
routed pairs:

alignax train --config experiments/configs/sft.py:demo --workdir runs/sft
alignax train --config experiments/configs/mah_dpo.py --workdir runs/mah_dpo \
    --config.model.path=runs/sft/hf
alignax train --config experiments/configs/mah_dpo.py:single --workdir runs/mah_single \
    --config.model.path=runs/sft/hf
python experiments/mah_dpo_report.py --mah runs/mah_dpo --single runs/mah_single \
    --out experiments/mah_dpo_tradeoff.png
alignax sample --model runs/mah_dpo --prompt "12+7=" --head-weights 0.3,0.7 --temperature 0

`smoke`: the same code path from a tiny random model in seconds (CPU).
Expected: see experiments/README.md, section "MAH-DPO" (about 40 s per run on 2 CPU cores).
"""

import common

VARIANTS = ("default", "single", "smoke")


def get_config(variant: str = "default"):
    c = common.base("mah_dpo", name="sigmoid", beta=0.1, label_smoothing=0.0,
                    reference_free=False)
    # num_heads 0 = one head per objective; 1 = single-head DPO on the same routed data.
    # trunk_lr_scale: the trunk's learning rate relative to the heads' (1 = the reference
    # code). On the tiny model the shared trunk over-optimises within a few hundred DPO steps
    # at any learning rate that lets the heads move (experiments/README.md), so the demo
    # trains the heads on the frozen SFT trunk (0); the baseline uses the same setting.
    c.heads = dict(num_heads=0, noise_std=1e-3, seed=42, export_weights=(), trunk_lr_scale=0.0)
    # Objective names in head order; MAH-DPO's own fields of `data`.
    c.data.task = "multiobjective"
    c.data.objectives = ("correct", "round")
    c.data.error_offsets = (1,)  # the SFT data's systematic error: rejected = answer + 1
    c.data.conflict = 1.0  # share of problems with the conflicting (round, exact) comparison
    c.data.balance = True  # B/2 pairs of each objective per batch, as the reference code
    c.optim.learning_rate = 3e-4  # heads only; with trunk_lr_scale=1 use ~3e-6 (as dpo.py)
    c.train.steps = 300
    c.train.eval_every = 50
    c.train.eval_prompts = 256
    c.train.sweep_points = 11
    if variant == "single":
        c.heads.num_heads = 1
    if variant == "smoke":
        common.smoke(c)
        c.data.num_train = 128
        c.heads.trunk_lr_scale = 1.0  # the reference code's path: trunk and heads learn
        c.train.sweep_points = 3
    return c
