"""Whole runs on two processes: `alignax train` started twice (2 processes x 4 CPU devices,
jax.distributed on 127.0.0.1, gloo) logs the same metrics as one process with 8 devices, with
one copy of every file. Online RL (GRPO: rollouts on the global mesh, gathered to every
process, rewards and advantages computed from the whole batch) and the offline engine
(MAH-DPO: per-objective counts summed over the processes)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from alignax import metrics
from tests.runs import ROOT, load, train

CASES = {
    # A random policy's rewards vary with a digit anywhere in its bytes: groups differ.
    "grpo": ("--config.reward.functions=('regex:.*[0-9].*',)",),
    "mah_dpo": (),
}
COMMON = ("--config.train.steps=3", "--config.train.eval_every=0",
          "--config.train.export_hf=False")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(name: str, workdir, overrides) -> list[str]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join(flags + ["--xla_force_host_platform_device_count=4"]))
    port = _free_port()
    cmd = [sys.executable, "-m", "alignax.cli", "train", "--config",
           os.path.join(ROOT, "experiments", "configs", f"{name}.py:smoke"),
           "--workdir", str(workdir), "--coordinator", f"127.0.0.1:{port}",
           "--num-processes", "2", *overrides]
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0].decode()[-3000:])
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return logs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_train_as_one(tmp_path, name):
    overrides = (*CASES[name], *COMMON)
    _two_processes(name, tmp_path / "two", overrides)
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
    else:  # counted over both processes' rows, not one process's times two
        assert two[-1]["correct/examples_seen"] == one[-1]["correct/examples_seen"]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 3
