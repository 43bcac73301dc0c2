r"""MAH-DPO report: mean +- std tables over seeds and the trade-off plot of experiments/README.md.

    python experiments/mah_dpo_report.py --mah runs/mah/mah_s{0,1,2} \
        --single runs/mah/single_s{0,1,2} --out experiments/mah_dpo_tradeoff.png

Reads each run's `summary.json` (`eval_before`, `eval_after`, and the two-head `sweep` that
`train.sweep_points` asks for).
"""

from __future__ import annotations

import json
import os

import numpy as np


def _load(workdir: str) -> dict:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run `alignax train` there first")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def report(mah: list[str], single: list[str], *, out: str | None = None) -> str:
    """Markdown tables (mean +- std over the given runs, e.g. seeds) and the trade-off plot.

    Args:
      mah: workdirs of two-head runs (with `train.sweep_points`).
      single: workdirs of `:single` runs (the single-head DPO baseline on the same data).
      out: PNG path for the (correct, round) plane: the sweep curve of every MAH run, the
        SFT start and the single-head baseline; None = no plot.
    Returns:
      the markdown text.
    """
    ms, ss = [_load(w) for w in mah], [_load(w) for w in single]
    names = ms[0]["objectives"]

    def stat(values):
        v = np.asarray(values, np.float64)
        return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    rows = [("SFT start (both runs' reference)", [s["eval_before"] for s in ms], "correct_head"),
            ("single-head DPO, mixed data", [s["eval_after"] for s in ss], "single")]
    rows += [(f"MAH-DPO, {n} head alone", [s["eval_after"] for s in ms], f"{n}_head")
             for n in names]
    rows += [("MAH-DPO, uniform mix (the HF export)", [s["eval_after"] for s in ms], "uniform")]
    lines = ["| policy (greedy, held-out prompts) | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for label, evals, key in rows:
        lines.append(f"| {label} | " + " | ".join(stat([e[f"{key}/{n}"] for e in evals])
                                                   for n in names) + " |")
    weights = np.asarray(ms[0]["sweep"]["weights"])
    sweep = {n: np.asarray([s["sweep"][n] for s in ms]) for n in names}
    lines += ["", f"| weights ({', '.join(names)}) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for i, w in enumerate(weights):
        lines.append(f"| {w[0]:.1f}, {w[1]:.1f} | " + " | ".join(stat(sweep[n][:, i])
                                                                 for n in names) + " |")
    if out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 4.2), dpi=100)
        x, y = sweep[names[0]], sweep[names[1]]
        for k in range(len(ms)):
            ax.plot(x[k], y[k], "-", color="tab:blue", alpha=0.25, lw=1)
        ax.plot(x.mean(0), y.mean(0), "o-", color="tab:blue", label="MAH-DPO weight sweep")
        for i in (0, len(weights) // 2, len(weights) - 1):
            ax.annotate(f"w={weights[i][1]:.1f}", (x.mean(0)[i], y.mean(0)[i]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
        sft = [[s["eval_before"][f"correct_head/{n}"] for n in names] for s in ms]
        one = [[s["eval_after"][f"single/{n}"] for n in names] for s in ss]
        ax.plot(*np.mean(sft, 0), "s", color="gray", label="SFT start")
        ax.plot(*np.mean(one, 0), "D", color="tab:red", label="single-head DPO")
        ax.set_xlabel(f"{names[0]} (greedy accuracy)")
        ax.set_ylabel(f"{names[1]} (greedy rate)")
        ax.set_title(f"MAH-DPO trade-off, mean of {len(ms)} runs; w = weight of "
                     f"{names[1]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python experiments/mah_dpo_report.py --mah DIR... --single DIR... [--out PNG]`"""
    import argparse

    parser = argparse.ArgumentParser(prog="python experiments/mah_dpo_report.py")
    parser.add_argument("--mah", nargs="+", required=True, help="two-head run workdirs")
    parser.add_argument("--single", nargs="+", required=True, help=":single run workdirs")
    parser.add_argument("--out", default=None, help="PNG path for the trade-off plot")
    args = parser.parse_args(argv)
    print(report(args.mah, args.single, out=args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
