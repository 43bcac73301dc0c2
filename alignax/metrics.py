"""Metrics: `metrics.jsonl` (one JSON object per logged step), TensorBoard events, a progress line.

Metric names follow TRL (`loss`, `rewards/margins`, `logps/chosen`, ...) so dashboards and
papers compare directly.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np


def _scalar(value):
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric value must be a scalar, got shape {arr.shape}")
    out = arr.item()
    return float(out) if isinstance(out, float | np.floating) else out


class MetricsWriter:
    """Appends metrics to `workdir/metrics.jsonl` and to TensorBoard events (if tensorboardX).

    Resuming into the same workdir truncates rows past the resumed step, so the file always
    describes one consistent run.
    """

    def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            self._truncate_after(resume_step)
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard output is optional
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        keep = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a killed run
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(keep)

    def write(self, step: int, metrics: dict, *, prefix: str = "") -> dict:
        row = {"step": int(step)}
        row.update({prefix + k: _scalar(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All rows of `workdir/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A one-line progress report: step, loss, tokens/s, ETA (to stderr, every `every` steps)."""

    def __init__(self, total_steps: int, *, every: int = 1, stream=None):
        self.total, self.every = total_steps, max(1, every)
        self.stream = stream or sys.stderr
        self._t0 = self._last_t = time.perf_counter()
        self._tokens = 0

    def update(self, step: int, *, loss: float, tokens: int) -> float:
        """Records a step; returns tokens/s since the last report."""
        self._tokens += tokens
        now = time.perf_counter()
        rate = self._tokens / max(now - self._last_t, 1e-9)
        if step % self.every == 0 or step == self.total:
            eta = (now - self._t0) / max(step, 1) * (self.total - step)
            self.stream.write(f"step {step}/{self.total}  loss {loss:.4f}  "
                              f"{rate:,.0f} tok/s  eta {eta:.0f}s\n")
            self.stream.flush()
            self._tokens, self._last_t = 0, now
        return rate
