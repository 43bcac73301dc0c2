"""Benchmarks run end to end: `benchmarks/dpo_throughput.py --tiny` on CPU writes sane JSON.

A smoke test of the script's code path, not of its numbers: no speed is asserted.
"""

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
