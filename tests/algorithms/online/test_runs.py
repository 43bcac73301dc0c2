"""End to end: each online config's smoke variant through the engine, resume equality, the
same numbers on every mesh."""

import os
import shutil

import numpy as np
import pytest

from alignax import config, metrics
from tests.runs import load, train


def _cfg(name, *overrides):
    cfg = load(name)
    # A random-init policy never answers the arithmetic task, so add a dense second objective
    # (brevity): the groups then have different rewards and the updates are non-zero.
    cfg.reward.functions = tuple(cfg.reward.functions) + ("brevity",)
    cfg.reward.weights = tuple(cfg.reward.weights) + (1.0,)
    return config.apply_overrides(cfg, list(overrides))


EXPECTED = {
    "ppo": {"objective/kl", "objective/scores", "policy/clipfrac_avg", "val/clipfrac_avg",
            "loss/policy_avg", "loss/value_avg"},
    "grpo": {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"},
    "rloo": {"clip_ratio/region_mean", "objective/kl"},
    "grao": {"loss/exploration", "loss/imitation", "loss/alignment", "loss/total"},
}
COMMON = {"loss", "grad_norm", "learning_rate", "reward", "reward_std", "entropy",
          "completions/mean_length", "sampler/logp_gap", "samples_per_second",
          "tokens_per_second", "task_accuracy", "rewards/arithmetic_correct/mean",
          "rewards/brevity/mean"}


# GRPO runs as DAPO (loss, dynamic sampling) with two updates per rollout, so the ratio and
# clipping are live; the resume test uses the same settings (compiled once, cached).
GRPO = ("--config.loss.name=dapo", "--config.rollout.dynamic_sampling=True",
        "--config.rollout.num_epochs=2")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppo", "grpo", "rloo", "grao"])
def test_online_smoke_configs(name, tmp_path):
    # grpo also evaluates (greedy held-out accuracy before / after) and exports.
    evals = name == "grpo"
    overrides = list(GRPO) if evals else ["--config.train.eval_every=0",
                                          "--config.train.export_hf=False"]
    summary = train(_cfg(name, *overrides), str(tmp_path))
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert COMMON | EXPECTED[name] <= set(r), sorted(COMMON | EXPECTED[name] - set(r))
        assert np.isfinite(r["loss"])
        # The sampler's log-probs are the training forward's (float32 on CPU).
        assert r["sampler/logp_gap"] < 1e-4
    assert any(r["grad_norm"] > 0 for r in rows)
    if evals:
        assert "eval/task_accuracy" in rows[-1]
        assert {"eval_before", "eval_after", "hf_export"} <= set(summary)
        assert "dynamic_sampling/batches" in rows[-1]
        assert os.path.exists(tmp_path / "hf" / "config.json")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "ppo"])
def test_resume_is_identical(name, tmp_path):
    # 4 steps straight vs 2 steps, stop, rerun: the same rollouts, metrics and parameters
    # (PPO: the critic and its optimizer state are in the checkpoint too).
    base = ("--config.train.eval_every=0", *(GRPO if name == "grpo" else ()))
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    train(_cfg(name, *base), straight)
    train(_cfg(name, *base, "--config.train.steps=2"), resumed)
    train(_cfg(name, *base, "--config.resume.allow_changes=True"), resumed)
    a, b = metrics.read_metrics(straight), metrics.read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    timing = lambda k: k.startswith("time/") or k.endswith(("per_second", "seconds"))
    for ra, rb in zip(a, b):  # bit for bit (non-finite values are null in metrics.jsonl)
        assert {k: v for k, v in ra.items() if not timing(k)} == {
            k: v for k, v in rb.items() if not timing(k)}
    assert any(r["grad_norm"] > 0 for r in a[2:])
    from safetensors.numpy import load_file

    wa = load_file(f"{straight}/hf/model.safetensors")
    wb = load_file(f"{resumed}/hf/model.safetensors")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_bad_loss_field_is_named(tmp_path):
    with pytest.raises(config.ConfigError, match=r"config field 'loss.gamma' is not a keyword "
                                                 r"of grao"):
        cfg = _cfg("grao", "--config.train.eval_every=0")
        cfg.loss.gamma = 1.0
        train(cfg, str(tmp_path))


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_a_group_of_one_is_a_config_error(tmp_path, name):
    # One sample per prompt has no group baseline (RLOO: 0/0); TRL refuses it too.
    with pytest.raises(ValueError, match=rf"'rollout.num_generations': {name} needs at least "
                                         r"2 samples per prompt, got 1"):
        train(_cfg(name, "--config.rollout.num_generations=1", "--config.train.eval_every=0"),
              str(tmp_path))


@pytest.mark.slow
def test_grpo_same_numbers_on_fsdp_and_tensor_meshes(tmp_path):
    # The sampler reads the sharded parameters in place; the rollouts (tokens -> rewards) and
    # the updates must not depend on the layout.
    quick = ("--config.train.eval_every=0", "--config.train.export_hf=False")
    runs = {}
    for name, mesh in [("data", ()), ("fsdp", ("--config.mesh.data=2", "--config.mesh.fsdp=4")),
                       ("tensor", ("--config.mesh.data=4", "--config.mesh.tensor=2"))]:
        train(_cfg("grpo", *quick, *mesh), str(tmp_path / name))
        runs[name] = metrics.read_metrics(str(tmp_path / name))
    for name in ("fsdp", "tensor"):
        for a, b in zip(runs["data"], runs[name]):
            assert a["reward"] == b["reward"] and a["reward_std"] == b["reward_std"], name
            np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-4, err_msg=name)
            assert a["grad_norm"] > 1e-6 and b["sampler/logp_gap"] < 1e-4


def test_continuous_batching_rollouts(tmp_path):
    """`rollout.slots`: GRPO samples through the engine (stop tokens end rows early, so
    slots are refilled), logs its slot efficiency, and the sampler still agrees with the
    trainer; multi-turn rollouts refuse it by name."""
    cfg = _cfg("grpo", "--config.train.steps=2", "--config.rollout.slots=8",
               "--config.train.eval_every=0", "--config.rollout.stop_tokens=(48, 49, 50, 51)")
    train(cfg, tmp_path / "slots")
    rows = metrics.read_metrics(str(tmp_path / "slots"))
    assert len(rows) == 2
    for row in rows:
        assert 0 < row["sampler/slot_efficiency"] <= 1
        assert row["sampler/logp_gap"] < 1e-5
    tools = load("grpo_tools", "--config.rollout.slots=8", "--config.train.steps=1")
    with pytest.raises(config.ConfigError, match="rollout.slots"):
        train(tools, tmp_path / "tools")


@pytest.mark.parametrize("name", ["grpo", "ppo", "grao"])
def test_async_rollouts_are_one_step_off_policy(tmp_path, name):
    """`rollout.async_rollouts`: step 1 trains on-policy; from step 2 each batch was sampled
    before the previous update, so the trainer's log-probs differ from the sampler's (the gap
    the truncated importance weights correct), and the metrics say so. GRPO: a run stopped
    after step 2's checkpoint resumes with the pending batch it had sampled, and ends as the
    uninterrupted run, metric for metric and weight for weight."""
    cfg = _cfg(name, "--config.train.steps=4", "--config.rollout.async_rollouts=True",
               "--config.train.eval_every=0", "--config.optim.learning_rate=1e-3",
               "--config.optim.warmup_steps=0", "--config.checkpoint.every_steps=2")
    train(cfg, tmp_path / "async")
    rows = metrics.read_metrics(str(tmp_path / "async"))
    assert [r["async/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert rows[0]["sampler/logp_gap"] < 1e-5  # on-policy: sampler == trainer
    assert rows[0]["async/is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    for row in rows[1:]:
        assert row["sampler/logp_gap"] > 1e-3  # one update old
        assert 0 < row["async/is_weight_mean"] <= 2.0 and row["async/is_ratio_max"] > 1.0
    assert rows[-1]["async/next_rollout_seconds"] == 0.0  # nothing sampled after the last
    if name == "grao":  # the deferred rollout also carries the answers and their rewards
        assert all(np.isfinite(r["loss/imitation"]) for r in rows)
    if name != "grpo":
        return
    # Preempted after step 2's checkpoint: the workdir as it was then, resumed.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "async", resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    train(cfg, resumed)
    timing = lambda k: k.startswith(("time/", "async/next")) or k.endswith(
        ("per_second", "seconds"))
    again = metrics.read_metrics(str(resumed))
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(rows, again):
        assert {k: v for k, v in a.items() if not timing(k)} == {
            k: v for k, v in b.items() if not timing(k)}
    from safetensors.numpy import load_file

    wa, wb = (load_file(f"{d}/hf/model.safetensors") for d in (tmp_path / "async", resumed))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(config.ConfigError, match="async_rollouts"):
        train(_cfg("grpo", "--config.rollout.async_rollouts=True",
                   "--config.rollout.dynamic_sampling=True"), tmp_path / "dapo")
