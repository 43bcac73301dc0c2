"""Profiles of a compiled step: a `jax.profiler` trace of a few steps and its top ops.

`profile_steps(compiled, state, batch, DIR)` writes the trace under DIR and the summary as
`DIR/top_ops.txt` and `DIR/top_ops.json`; `top_ops(trace)` reads any perfetto trace
(`perfetto_trace.json.gz`). Used by `benchmarks/train_step.py --profile DIR`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from typing import Any

import jax


def profile_steps(compiled, state, batch, directory: str, *, steps: int = 3):
    """Runs `steps` more steps under `jax.profiler.trace(directory)` and summarises the
    trace: returns `(state, {"trace": path, "top_ops": [...], "device_ms": total})`."""
    os.makedirs(directory, exist_ok=True)
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
    traces = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"),
                              recursive=True), key=os.path.getmtime)
    if not traces:
        return state, {"trace": None, "top_ops": [], "device_ms": 0.0}
    summary = top_ops(traces[-1], steps=steps)
    with open(os.path.join(directory, "top_ops.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(directory, "top_ops.txt"), "w", encoding="utf-8") as f:
        f.write(format_top_ops(summary) + "\n")
    return state, summary


# Host-trace events that wrap ops rather than being one: the runtime's executor and call
# plumbing, and Python frames (named "$file:line function" by the Python tracer).
_HOST_WRAPPERS = ("ThunkExecutor::", "PjitFunction", "PjRt", "ParseArguments", "Execute")


def top_ops(trace_path: str, *, steps: int = 1, top: int = 25) -> dict[str, Any]:
    """The `top` ops by total time in a perfetto/Chrome trace (`.json.gz`), per step.

    Device ops are the complete ("X") events of the processes named like a device
    (`/device:GPU:0`, TPU), from their "XLA Ops" threads where the trace has those (a
    device's "XLA Modules" thread spans whole programs and would count every op twice). A
    trace with no device (CPU) counts the host's XLA op events, without Python frames and the
    runtime's executor wrappers.
    """
    with gzip.open(trace_path, "rt", encoding="utf-8") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    meta = [e for e in events if e.get("ph") == "M"]
    names = {e.get("pid"): e.get("args", {}).get("name", "") for e in meta
             if e.get("name") == "process_name"}
    device = {pid for pid, name in names.items()
              if any(k in name for k in ("/device:GPU", "/device:TPU", "GPU:", "TPU:"))}
    op_threads = {(e.get("pid"), e.get("tid")) for e in meta
                  if e.get("name") == "thread_name" and e.get("pid") in device
                  and "XLA Ops" in e.get("args", {}).get("name", "")}
    where = "device" if device else "host"

    def counted(e) -> bool:
        if device:
            if e.get("pid") not in device:
                return False
            return not op_threads or (e.get("pid"), e.get("tid")) in op_threads
        name = e.get("name", "")
        return not name.startswith("$") and not any(w in name for w in _HOST_WRAPPERS)

    totals: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") != "X" or "dur" not in e or not counted(e):
            continue
        entry = totals.setdefault(e.get("name", "?"), [0, 0.0])
        entry[0] += 1
        entry[1] += float(e["dur"]) / 1e3  # microseconds -> ms
    busy = sum(t for _, t in totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    return {"trace": trace_path, "where": where, "steps": steps, "device_ms": busy / steps,
            "top_ops": [{"name": n, "count": c // max(steps, 1), "ms_per_step": t / steps,
                         "fraction": t / busy if busy else 0.0} for n, (c, t) in ranked]}


def format_top_ops(summary: dict[str, Any]) -> str:
    lines = [f"top {len(summary['top_ops'])} {summary['where']} ops per step "
             f"({summary['device_ms']:.2f} ms of op time per step; {summary['trace']})",
             f"  {'ms/step':>9}  {'share':>6}  {'count':>5}  op"]
    for op in summary["top_ops"]:
        lines.append(f"  {op['ms_per_step']:9.3f}  {100 * op['fraction']:5.1f}%  "
                     f"{op['count']:5d}  {op['name'][:100]}")
    return "\n".join(lines)
