r"""DCKD (arXiv 2502.17927 §3.1): a small student distilled from a DPO-aligned teacher.

Loss: w_sft NLL(y_w) + w_d (w_c KL(T||S; y_w) + w_r KL(T||S; y_l)), the KL between the
teacher's top-k (+ rest bucket) distribution and the student's, on every completion token.

alignax train --config experiments/configs/dckd.py:smoke --workdir runs/dckd_smoke
  (random tiny teacher: the code path only)
alignax train --config experiments/configs/dckd.py --workdir runs/dckd \
    --config.model.path=runs/student_sft/hf --config.teacher.path=runs/teacher_dpo/hf
--config.teacher.precompute=True caches the teacher's top-k on disk once (teacher.cache_dir,
default WORKDIR/teacher_cache) instead of running the teacher inside every step;
--config.teacher.top_k=0 uses the exact full-vocabulary KL (in-step teacher only).
Expected and the full recipe (teacher, student, every row): experiments/README.md, "DCKD / ADPA".
"""

import common

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    # Recipe student_dckd.yaml: sft_on_chosen 1, distillation_weight 1, chosen / rejected
    # distil weights 0.1, prob_stabilize on.
    c = common.base("dckd", name="dckd", sft_weight=1.0, distill_weight=1.0, chosen_weight=0.1,
                    rejected_weight=0.1, prob_stabilize=True)
    # The student: a local HF export (model.path), or this tiny architecture from scratch.
    c.model.overrides = {"hidden_size": 32, "intermediate_size": 64}
    # Teacher and student share the tokenizer and vocabulary (checked). `path` = the DPO
    # teacher, `ref_path` = its SFT model (ADPA only); empty = a random tiny teacher (`name`,
    # `overrides`, `seed`) for smoke runs. dtype "" = as stored. `tokenizer` "" = the teacher
    # directory's tokenizer.json if any (compared with the student's).
    c.teacher = dict(path="", ref_path="", tokenizer="", name="llama",
                     overrides={"hidden_size": 128, "intermediate_size": 256}, seed=1, dtype="",
                     top_k=50, precompute=False, cache_dir="", advantage_beta=1.0)
    c.data.num_train = 4096
    c.optim.learning_rate = 1e-4
    c.train.steps = 200
    if variant == "smoke":
        common.smoke(c)
        c.teacher.overrides = {"hidden_size": 64}
        c.teacher.top_k = 8
    return c
