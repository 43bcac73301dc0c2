"""Metrics: `metrics.jsonl` (one JSON object per logged step), TensorBoard events, a progress line.

Metric names follow TRL (`loss`, `rewards/margins`, `logps/chosen`, ...) so dashboards and
papers compare directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time

import numpy as np


def _scalar(value):
    """A metric as a JSON value: NaN / inf become null (strict JSON has no NaN)."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric value must be a scalar, got shape {arr.shape}")
    out = arr.item()
    if isinstance(out, float | np.floating):
        out = float(out)
        return out if math.isfinite(out) else None
    return out


class MetricsWriter:
    """Appends metrics to `workdir/metrics.jsonl`, TensorBoard events (if tensorboardX) and,
    optionally, Weights & Biases.

    `metrics.jsonl` keeps TRL's names (`loss`, `eval/loss`, ...), with non-finite values as
    null; TensorBoard and W&B get `train/...` and `eval/...` tags. Resuming into the same
    workdir truncates rows past the resumed step, so the file always describes one consistent
    run.

    Args:
      workdir: the run's directory.
      resume_step: drop rows past this step (a resumed run).
      tensorboard: write TensorBoard events.
      wandb: `{"project": ..., "name": ..., "config": ...}` to log to W&B too (imported
        lazily; resumed runs continue the same W&B run), or None.
      enabled: False = write nothing (`write` still returns the row): the processes of a
        multi-process run other than the first.
    """

    def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True,
                 wandb: dict | None = None, enabled: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        if not enabled:
            tensorboard, wandb = False, None
        elif resume_step is not None and os.path.exists(self.path):
            self._truncate_after(resume_step)
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard output is optional
                self._tb = None
        self._wandb = _start_wandb(workdir, **wandb) if wandb else None

    def last_row(self) -> dict:
        """The last row written (after any truncation), or {}."""
        if not os.path.exists(self.path):
            return {}
        rows = read_metrics(os.path.dirname(self.path))
        return rows[-1] if rows else {}

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
        if not self.enabled:
            return row
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        tagged = {(k if k.startswith("eval/") else f"train/{k}"): v for k, v in row.items()
                  if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in tagged.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(tagged, step=int(step))
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(workdir: str, *, project: str, name: str = "", config: dict | None = None):
    """A W&B run for `workdir` (the same run id on resume)."""
    try:
        import wandb
    except ImportError:
        raise ImportError("logging.wandb=True needs wandb: pip install wandb") from None
    run_id = "alignax-" + hashlib.sha256(os.path.abspath(workdir).encode()).hexdigest()[:16]
    return wandb.init(project=project, name=name or os.path.basename(os.path.abspath(workdir)),
                      config=config, dir=workdir, id=run_id, resume="allow")


def read_metrics(workdir: str) -> list[dict]:
    """All rows of `workdir/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A one-line progress report: step, loss (and `extra` numbers), tokens/s, ETA (to stderr,
    every `every` steps and at the first and last).

    The ETA is measured from the end of the first step of this process, so the first step's
    compilation does not inflate it.
    """

    def __init__(self, total_steps: int, *, every: int = 1, stream=None, start: int = 0):
        self.total, self.every, self.start = total_steps, max(1, every), start
        self.stream = stream or sys.stderr
        self._last_t = time.perf_counter()
        self._first_t: float | None = None
        self._tokens = 0

    def update(self, step: int, *, loss: float, tokens: int,
               extra: dict[str, float] | None = None) -> float:
        """Records a step; returns tokens/s since the last report."""
        self._tokens += tokens
        now = time.perf_counter()
        rate = self._tokens / max(now - self._last_t, 1e-9)
        if self._first_t is None:
            self._first_t, first = now, True
        else:
            first = False
        if first or step % self.every == 0 or step == self.total:
            done = step - self.start - 1
            eta = ("-" if done <= 0 else
                   f"{(now - self._first_t) / done * (self.total - step):.0f}s")
            more = "".join(f"  {k} {v:.4g}" for k, v in (extra or {}).items()
                           if isinstance(v, int | float) and math.isfinite(v))
            self.stream.write(f"step {step}/{self.total}  loss {loss:.4f}{more}  "
                              f"{rate:,.0f} tok/s  eta {eta}\n")
            self.stream.flush()
            self._tokens, self._last_t = 0, now
        return rate


def progress_bar(iterable, *, total: int | None = None, desc: str = "", log=None,
                 unit: str = "batches"):
    """`iterable` with a progress bar on an interactive terminal (tqdm), else plain: with
    `log`, a line when it starts and one with the time it took."""
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                            unit=f" {unit}")
            return
        except ImportError:  # tqdm is optional
            pass
    t0 = time.perf_counter()
    if log is not None:
        log(f"{desc}: {total if total is not None else '?'} {unit} ...")
    yield from iterable
    if log is not None:
        log(f"{desc}: done in {time.perf_counter() - t0:.1f}s")
