"""Writes gkd_goldens.json: the full-vocabulary forward KL(teacher || student) from TRL 1.16.0.

Run with the oracle environment (torch CPU + trl==1.16.0), from the repository root:

    /tmp/v/bin/python tests/testdata/make_gkd_goldens.py

Each case calls the static method
`trl.experimental.gkd.GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels,
beta=0.0, temperature=...)`, which returns the mean over tokens with labels != -100 of
KL(teacher || student) (DCKD's distillation term, uncompressed), and its gradient with respect to
the student logits. The test suite reads only the JSON.
"""

from __future__ import annotations

import json
import pathlib

import torch
import trl
from trl.experimental.gkd import GKDTrainer

OUT = pathlib.Path(__file__).with_name("gkd_goldens.json")


def _case(gen, temperature, batch=2, seq=4, vocab=7):
    student = (torch.randn(batch, seq, vocab, generator=gen, dtype=torch.float64) * 2.0)
    teacher = (torch.randn(batch, seq, vocab, generator=gen, dtype=torch.float64) * 2.0)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels[0, :1] = -100  # prompt position
    labels[1, 2:] = -100  # padding
    leaf = student.clone().requires_grad_(True)
    loss = GKDTrainer.generalized_jsd_loss(leaf, teacher, labels, beta=0.0,
                                           temperature=temperature)
    loss.backward()
    return {"temperature": temperature, "student_logits": student.tolist(),
            "teacher_logits": teacher.tolist(), "mask": (labels != -100).int().tolist(),
            "loss": float(loss.detach()), "grad_student_logits": leaf.grad.tolist()}


def main():
    gen = torch.Generator().manual_seed(0)
    cases = [_case(gen, 1.0), _case(gen, 1.0), _case(gen, 2.0)]
    OUT.write_text(json.dumps({"trl_version": trl.__version__,
                               "torch_version": torch.__version__, "cases": cases}) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
