"""Test-wide setup: CPU with 8 fake devices (sharding tests), the persistent compile cache."""

import os
import subprocess
import sys

# Before jax is imported anywhere: 8 fake CPU devices so mesh tests run on any machine, and
# XLA:CPU's LLVM optimisations and its newer fusion emitters off. The suite's tiny programs
# spend far longer compiling than running: the first flag took a cold-cache run of the suite
# from 11.5 to 7.5 minutes on 2 cores; the second compiles a tiny DPO value-and-grad in 0.6
# instead of 1.9 s (same loss to the last bit). The numbers differ from an optimised build
# only in float32 rounding (about 1e-5 relative on a whole forward, from other vectorised
# exp/log code); comparisons between two programs use the same flags (worker subprocesses
# inherit them), and those against other libraries have tolerances above that.
_FLAGS = {"xla_force_host_platform_device_count": "8", "xla_backend_optimization_level": "0"}
# A flag an XLA build does not know aborts the process: this one is tried first (once, in
# the controlling process; xdist workers inherit XLA_FLAGS).
_OPTIONAL = {"xla_cpu_use_fusion_emitters": "false"}


def _xla_accepts(flag: str) -> bool:
    env = {**os.environ, "XLA_FLAGS": f"--{flag}", "JAX_PLATFORMS": "cpu"}
    probe = [sys.executable, "-c", "import jax; jax.devices()"]
    return subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode == 0


for _flag, _value in {**_FLAGS, **_OPTIONAL}.items():
    if _flag in os.environ.get("XLA_FLAGS", ""):
        continue
    if _flag in _OPTIONAL and not _xla_accepts(f"{_flag}={_value}"):
        continue
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_flag}={_value}".strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "alignax", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (golden comparisons at 1e-6 relative)."""
    with jax.enable_x64(True):
        yield


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests skip unless a GPU backend is present."""
    try:
        has_gpu = any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
