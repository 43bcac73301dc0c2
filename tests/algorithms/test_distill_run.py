"""DCKD / ADPA trainer end to end: the smoke configs through the engine with a real (exported)
teacher bigger than the student, in-step vs cached teacher, ADPA+ stages, clear errors."""

import os

import numpy as np
import pytest

from alignax import config, metrics
from alignax.models import init_model, tiny_config, to_hf
from tests.runs import load, train


def _cfg(name, *overrides, variant="smoke"):
    return load(name, *overrides, variant=variant)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """HF exports of a DPO teacher and its reference: hidden 64 / 2 layers, vs the smoke
    student's hidden 32; the byte tokenizer's vocabulary (320) as the student."""
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for i, name in enumerate(("dpo", "ref", "small_vocab")):
        vocab = {"vocab_size": 300} if name == "small_vocab" else {}
        path = str(root / name)
        to_hf(init_model(tiny_config(hidden_size=64, intermediate_size=128, **vocab),
                         seed=10 + i), path)
        out[name] = path
    return out


def _teacher_args(teachers):
    return (f"--config.teacher.path={teachers['dpo']}",
            f"--config.teacher.ref_path={teachers['ref']}")


@pytest.mark.slow
def test_dckd_smoke_in_step_and_cached(teachers, tmp_path):
    # The smoke config end to end with the teacher inside the step; then with its top-k cached
    # on disk: the same losses step by step (the cache only moves where the numbers come from).
    in_step = tmp_path / "in_step"
    summary = train(_cfg("dckd", *_teacher_args(teachers)), str(in_step))
    rows = metrics.read_metrics(str(in_step))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss/chosen-sft", "loss/chosen-fkl", "loss/rejected-fkl", "logps/chosen",
            "eval/task_accuracy"} <= set(rows[-1])
    assert rows[-1]["loss/chosen-fkl"] > 0 and np.isfinite(rows[-1]["loss"])
    assert "teacher_task_accuracy" in summary and "task_accuracy" in summary["eval_after"]
    for f in ("config.json", "summary.json", "checkpoints", "hf/config.json"):
        assert (in_step / f).exists(), f
    cache = tmp_path / "cache"
    cached = ("--config.teacher.precompute=True", f"--config.teacher.cache_dir={cache}",
              "--config.train.eval_every=0", "--config.train.export_hf=False")
    logs = []
    train(_cfg("dckd", *_teacher_args(teachers), *cached), str(tmp_path / "c"),
             log=logs.append)
    assert sum("computed" in m for m in logs) == 2  # the train rows and the eval rows
    np.testing.assert_allclose([r["loss"] for r in metrics.read_metrics(str(tmp_path / "c"))],
                               [r["loss"] for r in rows], rtol=1e-5)


@pytest.mark.slow
def test_adpa_plus_smoke_cached(teachers, tmp_path):
    # ADPA+: a 2-step DCKD stage, then ADPA from its export with student samples; teacher
    # advantages cached. A rerun finds both stages done and changes nothing.
    args = (*_teacher_args(teachers), "--config.teacher.precompute=True",
            "--config.train.eval_every=0")  # evaluation: covered by the DCKD smoke run
    summary = train(_cfg("adpa", *args, variant="smoke_plus"), str(tmp_path))
    assert summary["algorithm"] == "adpa" and summary["dckd_stage"]["steps"] == 2
    stage = metrics.read_metrics(str(tmp_path / "dckd_stage"))
    assert [r["step"] for r in stage] == [1, 2] and "loss/chosen-fkl" in stage[-1]
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss/adpa", "loss/chosen-sft", "logps/rejected"} <= set(rows[-1])
    assert all(np.isfinite(r["loss"]) for r in rows)
    files = os.listdir(tmp_path / "teacher_cache")
    assert sum(f.startswith("samples-") for f in files) == 2
    assert sum(f.startswith("teacher_topk-") for f in files) == 2
    logs = []
    train(_cfg("adpa", *args, variant="smoke_plus"), str(tmp_path), log=logs.append)
    assert any("DCKD stage already done" in m for m in logs)
    assert sum("reusing" in m for m in logs) == 4
    assert metrics.read_metrics(str(tmp_path)) == rows


@pytest.mark.slow
def test_adpa_smoke_in_step_equals_cached(teachers, tmp_path):
    # Plain ADPA (both teachers inside the step) end to end, then with the advantages cached:
    # the same student samples (cached once per run dir, same seed) and the same losses.
    quick = ("--config.train.eval_every=0", "--config.train.export_hf=False")
    train(_cfg("adpa", *_teacher_args(teachers), *quick), str(tmp_path / "in_step"))
    rows = metrics.read_metrics(str(tmp_path / "in_step"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss/adpa", "loss/chosen-sft"} <= set(rows[-1])
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[0]["loss/adpa"] != 0
    train(_cfg("adpa", *_teacher_args(teachers), *quick, "--config.teacher.precompute=True"),
             str(tmp_path / "cached"))
    np.testing.assert_allclose(
        [r["loss"] for r in metrics.read_metrics(str(tmp_path / "cached"))],
        [r["loss"] for r in rows], rtol=1e-5)


def test_errors_name_the_config_field(teachers, tmp_path):
    with pytest.raises(ValueError, match=r"teacher.path has vocab_size 300, the student 320"):
        train(_cfg("dckd", f"--config.teacher.path={teachers['small_vocab']}"),
                 str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"teacher.ref_path has vocab_size 300"):
        train(_cfg("adpa", f"--config.teacher.path={teachers['dpo']}",
                      f"--config.teacher.ref_path={teachers['small_vocab']}"),
                 str(tmp_path / "b"))
    with pytest.raises(config.ConfigError, match=r"'loss.name'.*no variant 'adpa'"):
        train(_cfg("dckd", "--config.loss.name='adpa'"), str(tmp_path / "c"))
    with pytest.raises(config.ConfigError, match=r"'dckd_stage.loss.name'.*no variant 'kl'"):
        train(_cfg("adpa", "--config.dckd_stage.loss.name='kl'", variant="smoke_plus"),
                 str(tmp_path / "d"))
