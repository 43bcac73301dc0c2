"""Benchmarks run end to end on CPU (`--tiny`) and write sane JSON: the DPO step (under its old
name, `dpo_throughput.py`), the sweep of `train_step.py` variants (cached reference, SFT, GRPO
update), a profile's top-ops summary, the sampler.

Smoke tests of the scripts' code paths, not of their numbers: no speed is asserted.
"""

import gzip
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # conftest gives this process 8 fake CPU devices; the benchmark's `data=-1` mesh would then
    # need a multiple of 8 pairs. One device, as a user's CPU run has.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


@pytest.mark.slow
def test_dpo_throughput_tiny_writes_sane_json(tmp_path):
    out = tmp_path / "dpo.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/dpo_throughput.py", "--tiny", "--json", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tokens/s" in proc.stdout and "model TFLOP/s" in proc.stdout
    r = json.loads(out.read_text())
    for key in ("step_time_s", "tokens_per_s", "model_tflops", "compile_s"):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    # --tiny: 2 pairs x (chosen, rejected) x (16 prompt + 16 completion) tokens.
    assert r["tokens_per_step"] == 2 * 2 * (16 + 16)
    assert len(r["step_times_s"]) == 2
    assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_time_s"])
    # 8 = 6 (policy forward + backward) + 2 (reference forward) per matmul parameter and token.
    assert r["model_tflops"] == pytest.approx(
        8 * r["params_matmul"] * r["tokens_per_step"] / r["step_time_s"] / 1e12)
    assert 0 < r["params_matmul"] < r["params_total"]
    # CPU keeps no allocator statistics.
    assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] > 0
    # The first step sees policy == reference (same initial weights), so the DPO logit is ~0
    # and the loss log 2; bf16 compute rounds both forwards alike.
    assert r["loss_first"] == pytest.approx(math.log(2.0), abs=1e-3)
    assert math.isfinite(r["loss_last"])


def _tokens(r: dict) -> int:
    """Every token of the step's batch, from the variant's own configuration."""
    c = r["config"]
    rows = {"dpo": 2 * (c["pairs"] or 0), "sft": c["rows"] or 0,
            "grpo": (c["rows"] or 0) * (c["generations"] or 0)}[c["task"]]
    return rows * (c["prompt_len"] + c["completion_len"])


@pytest.mark.slow
def test_sweep_tiny_covers_cached_reference_and_grpo(tmp_path):
    out = tmp_path / "sweep.json"
    names = "cached_reference,grpo"  # (sft: train_step.py's own path, as DPO's above)
    proc = subprocess.run(
        [sys.executable, "benchmarks/sweep.py", "--tiny", "--only", names, "--json", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("\n| ") == 3  # the table: header + 2 variants
    results = {r["name"]: r for r in json.loads(out.read_text())}
    assert list(results) == names.split(",")
    for name, r in results.items():
        assert "error" not in r, r
        assert r["tokens_per_step"] == _tokens(r) > 0, name
        assert r["config"]["remat"] == "save_dots"  # the training default
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_time_s"])
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
        # The traced count is the model count plus attention, remat and the chunked head's
        # recompute (tests/train/test_step_costs.py checks it exactly), less the LM head on
        # prompt positions where a loss skips them (GRPO).
        assert r["traced_matmul_flops_per_step"] > 0.9 * r["flops_per_step"], name
    # A cached reference removes the reference forward: 6 instead of 8 per parameter-token.
    assert results["cached_reference"]["flops_factor"] == 6
    assert results["grpo"]["config"]["task"] == "grpo"


@pytest.mark.slow
def test_profile_writes_top_device_ops(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--tiny", "--task", "sft", "--profile",
         str(tmp_path), "--profile-steps", "2"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "top_ops.json").read_text())
    assert (tmp_path / "top_ops.txt").read_text().startswith("top ")
    assert summary["where"] == "host" and summary["steps"] == 2
    ops = summary["top_ops"]
    assert 5 <= len(ops) <= 25 and summary["device_ms"] > 0
    assert not any(op["name"].startswith("$") for op in ops)  # no Python frames
    assert sum(op["fraction"] for op in ops) <= 1 + 1e-9
    assert [op["ms_per_step"] for op in ops] == sorted((op["ms_per_step"] for op in ops),
                                                       reverse=True)


def test_top_ops_counts_a_devices_op_thread_once(tmp_path):
    from benchmarks.profile_ops import top_ops

    meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind,
                                          "args": {"name": name}}
    x = lambda pid, tid, name, dur: {"ph": "X", "pid": pid, "tid": tid, "name": name,
                                     "ts": 0, "dur": dur}
    events = [meta(1, 0, "process_name", "/device:GPU:0"), meta(2, 0, "process_name", "host"),
              meta(1, 1, "thread_name", "XLA Modules"), meta(1, 2, "thread_name", "XLA Ops"),
              x(1, 1, "jit_step", 1000.0), x(1, 2, "fusion.1", 600.0),
              x(1, 2, "fusion.1", 200.0), x(1, 2, "dot.3", 200.0), x(2, 0, "$a.py:1 f", 5e3)]
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = top_ops(str(path), steps=2)
    assert s["where"] == "device" and s["device_ms"] == pytest.approx(0.5)  # 1 ms over 2 steps
    assert [(o["name"], o["count"], o["ms_per_step"]) for o in s["top_ops"]] == [
        ("fusion.1", 1, 0.4), ("dot.3", 0, 0.1)]


@pytest.mark.slow
def test_sampler_throughput_tiny_writes_sane_json(tmp_path):
    out = tmp_path / "sampler.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/sampler_throughput.py", "--tiny", "--json", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "decode new tokens/s" in proc.stdout and "roofline" in proc.stdout
    r = json.loads(out.read_text())
    # --tiny: 4 prompts x 8 new tokens, no stop token: every row decodes all of them.
    assert r["rows"] == 4 and r["generated_tokens"] == 4 * 8
    for key in ("compile_s", "generate_s", "decode_s", "new_tokens_per_s",
                "bandwidth_bytes_per_s", "roofline_tokens_per_s", "roofline_fraction"):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["new_tokens_per_s"] == pytest.approx(32 / r["generate_s"])
    # bf16 weights: 2 bytes per parameter; a step reads all but the unused embedding rows.
    assert 0 < r["weight_bytes_per_step"] < r["param_bytes"]
    # KV read per step, by hand: L=2, K=2, D=16, k and v, bf16; mean length 8 + 4.5 slots.
    assert r["kv_bytes_per_step"] == pytest.approx(4 * (8 + 4.5) * 2 * 2 * 16 * 2 * 2)


def test_batching_efficiency_counts_slot_steps(tmp_path):
    from benchmarks import batching_efficiency as be

    # One long request among short ones: static batching idles the short rows' slots.
    lengths = [20] + [2] * 7
    r = be.simulate(lengths, slots=4)
    assert r["static"]["slot_steps"] == 4 * 20 + 4 * 2
    assert r["continuous"]["slot_steps"] == 4 * 20  # the short ones fit beside the long one
    assert r["useful_tokens"] == 34 and r["speedup"] == pytest.approx(88 / 80)
    # Equal lengths: nothing to gain.
    assert be.simulate([5] * 8, slots=4)["speedup"] == 1.0
    out = tmp_path / "b.json"
    assert be.main(["--requests", "256", "--slots", "32", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["continuous"]["efficiency"] > got["static"]["efficiency"]
    with pytest.raises(ValueError, match="slots >= 1"):
        be.simulate([], slots=4)


def test_rollout_engine_long_tail_runs_in_process(tmp_path):
    """The engine benchmark's long-tail mode on the tiny model (this process's 8 CPU devices
    do not matter: nothing is sharded); static batching's slot-steps are the projection's.
    (The GRPO mode's shared-cache memory: tests/sampling/test_engine.py.)"""
    from benchmarks import batching_efficiency as be
    from benchmarks import rollout_engine as re_

    out = tmp_path / "lt.json"
    assert re_.main(["--mode", "long-tail", "--tiny", "--requests", "24", "--slots", "6",
                     "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["continuous"]["slot_steps"] < got["static"]["slot_steps"]
    lengths = be.long_tail_lengths(24, max_new_tokens=32, median=6.0, sigma=0.8, tail=0.1)
    assert got["useful_tokens"] == int(lengths.sum())
    assert got["static"]["slot_steps"] == be.static_slot_steps(lengths, 6)
