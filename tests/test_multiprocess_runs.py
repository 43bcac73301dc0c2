"""Whole runs on two processes: `alignax train` started twice (2 processes x 4 CPU devices,
jax.distributed on 127.0.0.1, gloo) logs the same metrics as one process with 8 devices, with
one copy of every file. Online RL (GRPO: rollouts on the global mesh, gathered to every
process, rewards and advantages computed from the whole batch; multi-turn episodes) and the
offline engine (MAH-DPO: per-objective counts summed over the processes) through a SIGTERM
to both processes, saved and resumed. A killed process: the other stops, with a clear
error."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alignax import metrics
from tests.runs import ROOT, load, train

CASES = {
    # A random policy's rewards vary with a digit anywhere in its bytes: groups differ.
    "grpo": ("--config.reward.functions=('regex:.*[0-9].*',)",),
    # (MAH-DPO, the offline engine: the SIGTERM test below.)
    # Multi-turn episodes: the environment runs on process 0, its answers go to both.
    "grpo_tools": ("--config.environment.name=tests.algorithms.online.scripted_env:make",
                   "--config.environment.max_turn_tokens=4"),
}
COMMON = ("--config.train.steps=3", "--config.train.eval_every=0",
          "--config.train.export_hf=False")


LAUNCH = os.path.join(ROOT, "experiments", "launch", "local_cpu.sh")


def _launch(name: str, workdir, overrides, *, logs, extra=(), wait=True):
    """`experiments/launch/local_cpu.sh 2 4 ...`: the documented local recipe."""
    os.makedirs(logs, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable, LOGDIR=str(logs))
    cmd = ["bash", LAUNCH, "2", "4", "--config",
           os.path.join(ROOT, "experiments", "configs", f"{name}.py:smoke"),
           "--workdir", str(workdir), *overrides, *extra]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    if not wait:
        return proc
    try:
        proc.wait(timeout=300)
    finally:
        proc.kill()
    out = "\n".join((logs / f"process{i}.log").read_text()[-2000:] for i in range(2))
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_train_as_one(tmp_path, name):
    overrides = (*CASES[name], *COMMON)
    _launch(name, tmp_path / "two", overrides, logs=tmp_path / "logs")
    train(load(name, *overrides), tmp_path / "one")
    two, one = metrics.read_metrics(str(tmp_path / "two")), metrics.read_metrics(
        str(tmp_path / "one"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]  # one writer
    timing = ("time", "second", "tokens_per_second")
    for a, b in zip(two, one):
        for key, value in b.items():
            if any(t in key for t in timing) or not isinstance(value, int | float):
                continue
            np.testing.assert_allclose(a[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    if name == "grpo":
        assert any(r["reward_std"] > 0 for r in one)  # the comparison has signal
    else:
        assert all(r["episodes/turns"] > 2 and r["episodes/tool_errors"] > 0 for r in two)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 3


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_a_clear_error(tmp_path):
    # No hang in a collective: the survivor's coordination service misses the dead process's
    # heartbeats and ends it (--heartbeat-timeout 5) with a message that says so.
    logs = tmp_path / "logs"
    launcher = _launch("dpo", tmp_path / "run", ("--config.train.steps=100000",
                                                 "--config.train.eval_every=0"),
                       logs=logs, extra=("--heartbeat-timeout", "5"), wait=False)
    try:
        deadline = time.time() + 240
        while "step 4/" not in _text(logs / "process1.log"):
            assert time.time() < deadline and launcher.poll() is None, _text(logs / "process0.log")
            time.sleep(0.5)
        os.kill(_child(launcher.pid, "--process-id\x001\x00"), 9)
        killed = time.time()
        launcher.wait(timeout=120)
        waited = time.time() - killed
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    survivor = _text(logs / "process0.log")
    assert "stopped sending heartbeats" in survivor or "heartbeat timeout" in survivor
    assert waited < 60, waited


@pytest.mark.slow
def test_sigterm_to_both_processes_saves_then_resumes_as_one_process(tmp_path):
    # The offline engine on two processes (MAH-DPO: per-objective counts summed over both)
    # and a preemption: SIGTERM to the launcher, which passes it to both processes; they agree
    # on a step (JAX's preemption sync), save it and exit 0. The same command resumes; the
    # whole run's metrics equal one process's uninterrupted run.
    overrides = ("--config.train.steps=24", "--config.train.eval_every=0",
                 "--config.train.export_hf=False", "--config.checkpoint.every_steps=1000")
    logs = tmp_path / "logs"
    launcher = _launch("mah_dpo", tmp_path / "two", overrides, logs=logs, wait=False)
    try:
        deadline = time.time() + 240
        while "step 4/" not in _text(logs / "process0.log"):
            assert time.time() < deadline and launcher.poll() is None, _text(logs / "process0.log")
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
    finally:
        launcher.kill()
    first = _text(logs / "process0.log")
    assert launcher.returncode == 0, first[-2000:]
    saved = int(re.search(r"preempted: saved step (\d+)", first).group(1))
    assert 4 <= saved < 24
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "two"))] == list(
        range(1, saved + 1))
    out = _launch("mah_dpo", tmp_path / "two", overrides, logs=tmp_path / "logs2")
    assert f"resumed from step {saved}" in out
    train(load("mah_dpo", *overrides), tmp_path / "one")
    two, one = metrics.read_metrics(str(tmp_path / "two")), metrics.read_metrics(
        str(tmp_path / "one"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 25))
    for a, b in zip(two, one):
        for key, value in b.items():
            if "second" in key or "time" in key or not isinstance(value, int | float):
                continue
            np.testing.assert_allclose(a[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    # counted over both processes' rows (not one process's times two), across the restart
    assert two[-1]["correct/examples_seen"] == one[-1]["correct/examples_seen"]


def _child(parent: int, marker: str) -> int:
    """The launcher's child process whose command line contains `marker`."""
    for pid in subprocess.check_output(["pgrep", "-P", str(parent)]).split():
        with open(f"/proc/{int(pid)}/cmdline") as f:
            if marker in f.read():
                return int(pid)
    raise AssertionError(f"no child of {parent} with {marker!r}")


def _text(path) -> str:
    return path.read_text() if path.exists() else ""
