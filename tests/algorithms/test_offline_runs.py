"""End to end: every offline config's smoke variant, resume equality, NaN stop, CLI errors,
the precomputed reference."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alignax import config, metrics
from alignax.train.runner import TrainingError
from tests.runs import ROOT, load, train


def _cfg(name, *overrides):
    return load(name, *overrides)


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sft"))
    summary = train(_cfg("sft"), workdir)
    return summary["hf_export"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "simpo", "orpo", "kto", "reward_model"])
def test_smoke_configs_run_from_sft(name, sft_export, tmp_path):
    summary = train(_cfg(name, f"--config.model.path={sft_export}"), tmp_path)
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows)
    if name == "reward_model":
        assert {"accuracy", "margin", "eval/accuracy"} <= set(rows[-1])
        from alignax.models import load_reward_model

        load_reward_model(summary["hf_export"])
    else:
        assert "eval/task_accuracy" in rows[-1] and "task_accuracy" in summary["eval_after"]
    if name in ("dpo", "simpo", "orpo"):
        assert "rewards/margins" in rows[-1] and "logps/chosen" in rows[-1]
    for f in ("config.json", "summary.json", "checkpoints", "tensorboard", "hf/config.json"):
        assert os.path.exists(tmp_path / f), f


@pytest.mark.slow
def test_resume_is_identical(tmp_path):
    # 4 steps straight vs 2 steps, stop, rerun the same command: the same losses and params.
    # The summary too: eval_before is measured once, before step 1, and kept for the resume.
    straight = str(tmp_path / "a")
    ev = "--config.train.eval_every=4"
    sa = train(_cfg("dpo", ev), straight)
    resumed = str(tmp_path / "b")
    train(_cfg("dpo", ev, "--config.train.steps=2"), resumed)
    # Raising train.steps is a config change: allowed explicitly.
    sb = train(_cfg("dpo", ev, "--config.resume.allow_changes=True"), resumed)
    assert sb["eval_before"] == sa["eval_before"] and sb["eval_after"] == sa["eval_after"]
    a, b = metrics.read_metrics(straight), metrics.read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    from safetensors.numpy import load_file

    wa = load_file(f"{straight}/hf/model.safetensors")
    wb = load_file(f"{resumed}/hf/model.safetensors")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_with_step(tmp_path):
    cfg = _cfg("sft", "--config.train.eval_every=0", "--config.optim.learning_rate=1e30",
               "--config.optim.max_grad_norm=None")
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step \d"):
        train(cfg, str(tmp_path))


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "alignax.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_bad_data_names_file_and_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"}) + "\n"
                    + json.dumps({"prompt": "1+2=", "chosen": "3"}) + "\n")
    out = _cli("train", "--config", "experiments/configs/dpo.py:smoke", "--workdir",
               str(tmp_path / "w"), f"--config.data.path={data}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-2:] == [
        f"alignax: error: {data}:2: field 'rejected': missing field",
        "alignax: hint: set --config.data.on_error=skip to skip (and count) rows like this one"]
    out = _cli("train", "--config", "experiments/configs/dpo.py:smoke", "--workdir",
               str(tmp_path / "w"), "--config.train.batch_size=0")
    assert out.returncode == 2 and "'train.batch_size' must be a positive integer" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_precomputed_reference_matches_in_step_reference(tmp_path):
    # Same data, same start: caching the reference's log-probs changes no number (beyond
    # float32 reassociation), and a second run reuses the cache file.
    base = ("--config.train.eval_every=0", "--config.train.export_hf=False")
    in_step = str(tmp_path / "in_step")
    train(_cfg("dpo", *base), in_step)
    cache = str(tmp_path / "cache")
    pre = ("--config.reference.precompute=True", f"--config.reference.cache_dir={cache}")
    logs = []
    train(_cfg("dpo", *base, *pre), str(tmp_path / "pre1"), log=logs.append)
    train(_cfg("dpo", *base, *pre), str(tmp_path / "pre2"), log=logs.append)
    assert any("computed" in m for m in logs) and any("reusing" in m for m in logs)
    assert len(os.listdir(cache)) == 2  # one file for the train rows, one for the eval rows
    a = metrics.read_metrics(in_step)
    b = metrics.read_metrics(str(tmp_path / "pre2"))
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    np.testing.assert_allclose([r["rewards/margins"] for r in a],
                               [r["rewards/margins"] for r in b], atol=1e-6)
    # Same weights, another compute dtype: other log-probs, so a new cache file, not a reuse.
    train(_cfg("dpo", *base, *pre, "--config.model.dtype=bfloat16"), tmp_path / "bf16")
    assert len(os.listdir(cache)) == 4
    with pytest.raises(config.ConfigError, match="KTO keeps its reference in the train state"):
        train(_cfg("kto", *base, *pre), str(tmp_path / "kto"))
