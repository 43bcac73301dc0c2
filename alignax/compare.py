"""Multi-seed comparisons: run configs x seeds, then say which differences are significant.

    alignax compare --config experiments/configs/grpo.py --config experiments/configs/grao.py \\
        --seeds 5 --workdir runs/compare --metric eval_after.task_accuracy \\
        --set model.path=runs/sft/hf

Each run is `alignax train` of one config with `train.seed = s` (the seed drives the model
init, the data order and the sampler's keys) in `WORKDIR/{name}/seed{s}`; a run whose
`summary.json` exists is read, not rerun, so an interrupted comparison resumes (and a run that
was interrupted resumes from its checkpoint). The report (markdown on stdout, JSON in
`WORKDIR/compare.json`):

* per method: n, mean, sample standard deviation, a 95% percentile-bootstrap interval of the
  mean (10,000 resamples, fixed seed: the same numbers on every call);
* per pair of methods, paired by seed: the mean difference, its 95% bootstrap interval and the
  two-sided p-value of an exact sign-flip permutation test (all 2^n sign patterns up to n = 16,
  else 100,000 random ones). "significant" = p < 0.05. The bootstrap intervals are
  descriptive: with few seeds they are narrower than the data justify (at n = 6 an interval
  can exclude 0 where the exact test gives p = 0.125); the test decides.

Worked example (`paired_test`): differences [0.02, 0.03, 0.01, 0.04, 0.02] (5 seeds, all
positive): of the 32 sign patterns only "all +" and "all -" reach |mean| >= 0.024, p = 2/32 =
0.0625: not significant at 0.05 with 5 seeds, however consistent. With 6 such seeds p = 2/64.

Seeds are paired by their number: seed s of method A against seed s of method B, which is only
meaningful where the seed means the same thing for both (same data order and init).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
EXACT_UP_TO = 16


def bootstrap_interval(values: Sequence[float], *, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (deterministic under `seed`).

    >>> bootstrap_interval([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    x = np.asarray(values, np.float64)
    if len(x) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (BOOTSTRAP_SAMPLES, len(x)))].mean(axis=1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_test(differences: Sequence[float], *, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of mean(differences) = 0 (exact up to 16
    pairs): the fraction of sign patterns whose |mean| reaches the observed one.

    >>> paired_test([0.02, 0.03, 0.01, 0.04, 0.02])
    0.0625
    """
    d = np.asarray(differences, np.float64)
    if len(d) == 0:
        return float("nan")
    observed = abs(d.mean()) - 1e-12  # ties count as reaching it
    if len(d) <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), (100_000, len(d)))
    return float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed))


def metric_of(summary: dict, path: str) -> float:
    """`summary["eval_after"]["task_accuracy"]` for path "eval_after.task_accuracy"."""
    value: Any = summary
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"--metric {path!r}: summary.json has no {key!r} (keys: "
                           f"{', '.join(value) if isinstance(value, dict) else value})")
        value = value[key]
    return float(value)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str       # the report's label and the workdir's folder
    config: str     # PATH[:VARIANT]


def method_name(config_path: str) -> str:
    """`experiments/configs/grpo.py:dapo` -> `grpo-dapo`."""
    path, _, variant = config_path.partition(":")
    base = os.path.splitext(os.path.basename(path))[0]
    return f"{base}-{variant}" if variant else base


def run_all(methods: Sequence[Method], seeds: Sequence[int], workdir: str, *,
            overrides: Sequence[str] = (), run: Callable[[str, list[str], str], dict] | None
            = None, log: Callable[[str], None] = print) -> dict[str, dict[int, dict]]:
    """Every method x seed's `summary.json` (runs only the missing ones).

    `run(config, overrides, workdir) -> summary` trains one run (default: `alignax train` in
    this process)."""
    run = run or _train
    out: dict[str, dict[int, dict]] = {}
    for m in methods:
        out[m.name] = {}
        for s in seeds:
            where = os.path.join(workdir, m.name, f"seed{s}")
            path = os.path.join(where, "summary.json")
            if not os.path.exists(path):
                log(f"compare: {m.name} seed {s}: training in {where}")
                run(m.config, [*overrides, f"--config.train.seed={s}"], where)
            with open(path, encoding="utf-8") as f:
                out[m.name][s] = json.load(f)
    return out


def _train(config_path: str, overrides: list[str], workdir: str) -> dict:
    from alignax import algorithms, config

    cfg = config.apply_overrides(config.load_config(config_path), overrides)
    return algorithms.run(cfg, workdir, source=config_path, log=lambda m: None)


def report(summaries: dict[str, dict[int, dict]], metric: str) -> dict:
    """Per-method statistics and paired comparisons of `metric` (see the module docstring)."""
    values = {m: {s: metric_of(v, metric) for s, v in runs.items()}
              for m, runs in summaries.items()}
    methods = {}
    for m, by_seed in values.items():
        x = np.array(list(by_seed.values()))
        lo, hi = bootstrap_interval(x)
        methods[m] = {"n": len(x), "mean": float(x.mean()),
                      "std": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                      "ci95": [lo, hi], "values": {str(s): v for s, v in by_seed.items()}}
    pairs = []
    for a, b in itertools.combinations(values, 2):
        common = sorted(set(values[a]) & set(values[b]))
        d = [values[a][s] - values[b][s] for s in common]
        p = paired_test(d)
        lo, hi = bootstrap_interval(d)
        pairs.append({"a": a, "b": b, "n": len(d), "mean_difference": float(np.mean(d)),
                      "ci95": [lo, hi], "p": p, "significant": bool(p < 0.05)})
    return {"metric": metric, "methods": methods, "pairs": pairs}


def markdown(result: dict) -> str:
    lines = [f"metric: {result['metric']}", "",
             "| method | n | mean | std | 95% interval |", "|---|---|---|---|---|"]
    for m, r in result["methods"].items():
        lines.append(f"| {m} | {r['n']} | {r['mean']:.4f} | {r['std']:.4f} | "
                     f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] |")
    if result["pairs"]:
        lines += ["", "| A - B | n | mean difference | 95% interval | p (sign-flip) | "
                  "significant |", "|---|---|---|---|---|---|"]
        for p in result["pairs"]:
            lines.append(f"| {p['a']} - {p['b']} | {p['n']} | {p['mean_difference']:+.4f} | "
                         f"[{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] | {p['p']:.4f} | "
                         f"{'yes' if p['significant'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="alignax compare",
        description="Train configs x seeds (resumable) and compare a summary metric: mean, "
                    "std, 95% intervals, paired sign-flip tests.")
    parser.add_argument("--config", action="append", required=True,
                        help="PATH[:VARIANT] (repeat: one per method)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--metric", default="eval_after.task_accuracy",
                        help="a dotted path into summary.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable)")
    args = parser.parse_args(argv)
    names = [method_name(c) for c in args.config]
    if len(set(names)) != len(names):
        parser.error(f"two --config give the same method name: {names}")
    methods = [Method(n, c) for n, c in zip(names, args.config)]
    overrides = [s if s.startswith("--config.") else f"--config.{s}" for s in args.set]
    summaries = run_all(methods, range(args.seeds), args.workdir, overrides=overrides)
    result = report(summaries, args.metric)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "compare.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(markdown(result))
    return 0
