"""`alignax demo`: the main job on CPU in a few minutes (`make demo`).

1. SFT a tiny Llama-shaped model on the synthetic arithmetic task with noisy labels
   (`experiments/configs/sft.py:demo`);
2. DPO from that model on correct-vs-wrong answer pairs (`experiments/configs/dpo.py:demo`);
3. print a before/after table (greedy task accuracy on held-out prompts, held-out preference
   accuracy, reward margin) and write `curves.png` into the workdir.

`alignax demo --losses` prints every loss on one worked pair (docs/algorithms.md) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import jax
import jax.numpy as jnp

from alignax import losses

# Extra hyper-parameters for the loss types that need them (TRL defaults otherwise).
_EXTRA = {"exo_pair": {"label_smoothing": 1e-3}, "robust": {"label_smoothing": 0.1}}


def loss_table() -> list[tuple[str, float]]:
    """(name, value) for every registered preference loss and the other losses on the example."""
    pair = [jnp.array([v]) for v in (-10.0, -12.0, -11.0, -11.5)]
    lengths = dict(chosen_lengths=jnp.array([5.0]), rejected_lengths=jnp.array([8.0]))
    rows = []
    for name, fn in sorted(losses.PREFERENCE_LOSSES.items()):
        kw = dict(beta=0.1, **lengths, **_EXTRA.get(name, {}))
        rows.append((f"dpo/{name}", float(jax.jit(lambda *a, f=fn, k=kw: f(*a, **k))(*pair)[0])))
    rows.append(("cdpo (label_smoothing=0.1)",
                 float(losses.dpo_loss(*pair, beta=0.1, label_smoothing=0.1)[0])))
    rows.append(("simpo (beta=2, gamma=0.5)",
                 float(losses.simpo_loss(pair[0], pair[1], lengths["chosen_lengths"],
                                         lengths["rejected_lengths"], beta=2.0, gamma=0.5)[0])))
    rows.append(("cpo preference term", float(losses.cpo_loss(pair[0], pair[1], beta=0.1)[0])))
    rows.append(("orpo odds-ratio term",
                 float(losses.orpo_loss(pair[0], pair[1], lengths["chosen_lengths"],
                                        lengths["rejected_lengths"], beta=0.1)[0])))
    kl = losses.kto_kl_estimate(jnp.array([0.5, 0.2, 0.1, 0.4]), jnp.zeros(4))
    kto = losses.kto_loss(jnp.array([-10.0, -8.0, -12.0, -9.0]),
                          jnp.array([-11.0, -8.5, -11.0, -9.5]),
                          jnp.array([True, True, False, False]), kl, beta=0.1)
    rows.append(("kto (batch of 4)", float(kto.mean())))
    bt = losses.bradley_terry_loss(jnp.array([1.0, 0.2]), jnp.array([0.5, 0.4]))
    rows.append(("reward model bradley-terry", float(bt.mean())))
    return rows


def print_losses() -> None:
    print("alignax loss library on one worked pair (docs/algorithms.md, beta=0.1):")
    rows = loss_table()
    width = max(len(n) for n, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:10.6f}")


def plot_curves(workdir: str, runs: dict[str, str]) -> str:
    """Training loss and eval task accuracy per run, as `workdir/curves.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignax.metrics import read_metrics

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    offset = 0
    for label, run_dir in runs.items():
        rows = read_metrics(run_dir)
        steps = [offset + r["step"] for r in rows if "loss" in r]
        ax_loss.plot(steps, [r["loss"] for r in rows if "loss" in r], label=label)
        acc = [(offset + r["step"], r["eval/task_accuracy"]) for r in rows
               if "eval/task_accuracy" in r]
        if acc:
            ax_acc.plot(*zip(*acc), marker="o", label=label)
        offset = steps[-1] if steps else offset
    ax_loss.set(xlabel="step (SFT then DPO)", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="step (SFT then DPO)", ylabel="greedy task accuracy (held out)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(workdir, "curves.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(workdir: str, configs: str) -> dict:
    from alignax import algorithms, config

    def load(name, *overrides):
        cfg = config.load_config(os.path.join(configs, f"{name}.py") + ":demo")
        return config.apply_overrides(cfg, list(overrides))

    sft_dir, dpo_dir = os.path.join(workdir, "sft"), os.path.join(workdir, "dpo")
    for d in (sft_dir, dpo_dir):  # a demo is a fresh run: never resume an old one
        shutil.rmtree(d, ignore_errors=True)
    print("== 1/2 SFT on noisy arithmetic answers", flush=True)
    sft = algorithms.run(load("sft"), sft_dir, source="sft.py:demo")
    print("== 2/2 DPO from the SFT model (it is also the reference)", flush=True)
    dpo = algorithms.run(load("dpo", f"--config.model.path={sft['hf_export']}"), dpo_dir,
                         source="dpo.py:demo")
    before, after = dpo["eval_before"], dpo["eval_after"]
    table = [
        ("greedy task accuracy (held out)", sft["eval_before"]["task_accuracy"],
         before["task_accuracy"], after["task_accuracy"]),
        ("preference accuracy (held out)", None, before["rewards/accuracies"],
         after["rewards/accuracies"]),
        ("reward margin (held out)", None, before["rewards/margins"],
         after["rewards/margins"]),
    ]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"\n{'metric':<34}{'random init':>12}{'SFT':>10}{'SFT + DPO':>12}")
    for name, init, s, d in table:
        print(f"{name:<34}{fmt(init):>12}{fmt(s):>10}{fmt(d):>12}")
    png = plot_curves(workdir, {"SFT": sft_dir, "DPO": dpo_dir})
    result = {"table": [dict(zip(("metric", "init", "sft", "dpo"), row)) for row in table],
              "curves": png, "sft_seconds": sft["wall_seconds"],
              "dpo_seconds": dpo["wall_seconds"]}
    with open(os.path.join(workdir, "demo.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"\ncurves: {png}\nworkdir: {os.path.abspath(workdir)}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="alignax demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--configs", default="experiments/configs",
                        help="directory holding sft.py and dpo.py")
    parser.add_argument("--losses", action="store_true", help="print the loss table only")
    args = parser.parse_args(argv)
    if args.losses:
        print_losses()
        return 0
    print_losses()
    print()
    run_demo(args.workdir, args.configs)
    return 0
