r"""Decoding-time alignment on the arithmetic task: accuracy vs compute (experiments/README.md).

    python experiments/decoding_task.py --sft runs/sft/hf --dpo runs/dpo/hf --rm runs/rm/hf \
        --grpo runs/grpo/hf --out runs/decoding
    python experiments/decoding_task.py --sft runs/sft/hf --mah runs/mah/hf --out runs/decoding

Every method decodes the same held-out prompts (the trainers' evaluation draw: 256 prompts,
`alignax eval`'s) from the SFT export, except the rows that report a trained policy's greedy
decoding. Accuracy = `data.arithmetic.accuracy` of the returned completion; compute = forward
tokens per output token (`alignax.decoding`); plus wall seconds (compile included). Writes
`results.json`, `results.md` and `accuracy_vs_compute.png` under `--out` (with `--mah`:
`trade_off.json`, `trade_off.md`).

Scorers: `verifier` = the task's own checker (`arithmetic_correct`: an oracle, so best-of-N
with it is pass@N), `rm` = the reward model trained on the task's preference pairs,
`implicit` = the DPO policy's implicit reward against the SFT model (beta 0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from flax import nnx

from alignax import data, decoding, rewards
from alignax.models import from_hf, load_tokenizer
from alignax.sampling import decode_completions, generate

MAX_NEW = 6
BETA = 0.1


def methods(m: dict, prompts: list[str]):
    """`(name, family, run)` rows; `run(ids) -> (tokens, mask, forward_tokens)`."""
    tok = m["tokenizer"]
    verifier = lambda: decoding.verifier_sequence_scorer(
        rewards.get_reward_function("arithmetic_correct"), prompts, tok)
    rm = lambda: decoding.reward_model_sequence_scorer(*nnx.split(m["rm"]))
    implicit = lambda: decoding.implicit_sequence_scorer(m["dpo"], m["sft"], BETA)
    rows = []

    def greedy(model):
        return lambda ids: _greedy(model, ids, tok)

    for name in ("sft", "dpo", "grpo"):
        rows.append((f"greedy {name.upper()}", "trained policy" if name != "sft" else "none",
                     greedy(m[name])))

    def best_of(n, make):
        def run(ids):
            scorer = {"verifier": lambda: decoding.verifier_scorer(
                rewards.get_reward_function("arithmetic_correct"), prompts),
                "rm": lambda: decoding.reward_model_scorer(*nnx.split(m["rm"])),
                "implicit": lambda: decoding.implicit_reward_scorer(m["dpo"], m["sft"],
                                                                    BETA)}[make]()
            return _picked(decoding.best_of_n(m["sft"], ids, n=n, scorer=scorer,
                                              tokenizer=tok, max_new_tokens=MAX_NEW,
                                              temperature=1.0, seed=0, batch_size=64))
        return run

    for scorer in ("verifier", "rm", "implicit"):
        for n in (4, 16):
            rows.append((f"best-of-{n} ({scorer})", "best-of-N", best_of(n, scorer)))

    def guided(search, make, **kw):
        def run(ids):
            return _picked(decoding.guided_decode(m["sft"], ids, search=search, scorer=make(),
                                                  tokenizer=tok, max_new_tokens=MAX_NEW,
                                                  seed=0, batch_size=64, **kw))
        return run

    guide = lambda: decoding.ImplicitGuide(m["dpo"], m["sft"], BETA)
    for w in (1.0, 4.0):
        rows.append((f"ARGS k=5 w={w:g} (rm)", "ARGS",
                     guided(decoding.args_search(candidates=5, weight=w), rm)))
    for w in (10.0, 30.0):
        rows.append((f"ARGS k=5 w={w:g} (implicit, token-level)", "ARGS",
                     guided(decoding.args_search(candidates=5, weight=w), guide)))
    for make, name, w in ((rm, "rm", 4.0), (verifier, "verifier", 10.0)):
        rows.append((f"DeAL b=2 k=3 d=3 w={w:g} ({name})", "DeAL",
                     guided(decoding.deal_search(candidates=3, beams=2, lookahead=3,
                                                 weight=w), make)))
    tq = lambda k, w, **kw: decoding.transfer_q_search(max_new_tokens=MAX_NEW, candidates=k,
                                                       weight=w, **kw)
    rows.append(("TQ* direct: rho=GRPO, r=verifier, k=3 a=10", "TQ*",
                 guided(tq(3, 10.0), verifier, rollout_model=m["grpo"])))
    rows.append(("TQ* direct: rho=DPO, r=implicit, k=3 a=1", "TQ*",
                 guided(tq(3, 1.0), implicit, rollout_model=m["dpo"])))
    rows.append(("TQ* indirect: rho=DPO (r_BL implicit), r=rm, k=3 a=4", "TQ*",
                 guided(tq(3, 4.0, rollouts=2, rollout_temperature=1.0, indirect_beta=1.0),
                        rm, rollout_model=m["dpo"], baseline_scorer=implicit())))
    return rows


def scorer_of(name: str) -> str:
    """The value a row's method optimises, from its name (TQ*: the target reward r)."""
    for key, label in (("r=rm", "rm"), ("r=verifier", "verifier"), ("r=implicit", "implicit"),
                       ("(rm)", "rm"), ("(verifier)", "verifier"), ("(implicit", "implicit")):
        if key in name:
            return label
    return "none"


def trade_off(args) -> None:
    """Two objectives (`correct`, `round`: the MAH-DPO task): for each weight w on `correct`
    (1 - w on `round`), the MAH-DPO export's heads mixed (w, 1 - w) and decoded greedily,
    against search from the SFT model with the value w x correct + (1 - w) x round (the
    task's own scorers: an oracle): best-of-8 and DeAL. Writes `trade_off.json` / `.md`."""
    from alignax.data.arithmetic import is_correct, is_round
    from alignax.models import load_multihead

    tok = load_tokenizer("byte")
    pairs = data.arithmetic.preference_pairs(args.prompts, seed=10_000, max_operand=20,
                                             error_offsets=(1,))
    prompts = [p.prompt for p in pairs]
    ids = [tok.encode(p) for p in prompts]
    sft, (mah, _) = from_hf(args.sft), load_multihead(args.mah)
    rows = []
    for w in (1.0, 0.75, 0.5, 0.25, 0.0):
        def value(ps, cs, w=w):
            return [w * is_correct(p, c) + (1 - w) * is_round(p, c) for p, c in zip(ps, cs)]

        runs = {
            "MAH-DPO heads (greedy)": lambda w=w: _greedy(mah, ids, tok, head_weights=[w, 1 - w]),
            "best-of-8 (value)": lambda value=value: _picked(decoding.best_of_n(
                sft, ids, n=8, scorer=decoding.verifier_scorer(value, prompts), tokenizer=tok,
                max_new_tokens=MAX_NEW, temperature=1.0, batch_size=64)),
            "DeAL b=2 k=3 d=3 (value)": lambda value=value: _picked(decoding.guided_decode(
                sft, ids, search=decoding.deal_search(candidates=3, beams=2, lookahead=3,
                                                      weight=10.0),
                scorer=decoding.verifier_sequence_scorer(value, prompts, tok), tokenizer=tok,
                max_new_tokens=MAX_NEW, batch_size=64)),
        }
        for name, run in runs.items():
            tokens, mask, spent = run()
            texts = decode_completions(tok, tokens, mask)
            rows.append({"method": name, "w_correct": w,
                         "correct": float(np.mean([is_correct(p, c)
                                                   for p, c in zip(prompts, texts)])),
                         "round": float(np.mean([is_round(p, c)
                                                 for p, c in zip(prompts, texts)])),
                         "forward_tokens_per_output_token": spent / max(int(mask.sum()), 1)})
            print(json.dumps(rows[-1]), flush=True)
    _write(args.out, "trade_off", rows,
           "| method | w (correct, round) | correct | round | forward tokens / output token |",
           lambda r: f"| {r['method']} | {r['w_correct']:g}, {1 - r['w_correct']:g} | "
                     f"{r['correct']:.3f} | {r['round']:.3f} | "
                     f"{r['forward_tokens_per_output_token']:.1f} |")


def _write(out: str, name: str, rows: list[dict], header: str, line) -> None:
    """`OUT/NAME.json` (the rows) and `OUT/NAME.md` (a markdown table), printed too."""
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = [header, "|" + "---|" * (header.count("|") - 1)] + [line(r) for r in rows]
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _greedy(model, ids, tok, **kw):
    out = generate(model, ids, max_new_tokens=MAX_NEW, eos_id=tok.eos_id, pad_id=tok.pad_id,
                   batch_size=64, **kw)
    return out.tokens, out.mask, sum(map(len, ids)) + int(out.mask.sum())


def _picked(out):
    return out.tokens, out.mask, out.forward_tokens


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("sft", "dpo", "rm", "grpo"):
        parser.add_argument(f"--{name}", default="", help=f"the {name} HF export")
    parser.add_argument("--mah", default="",
                        help="a MAH-DPO export: run the two-objective trade-off instead")
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--only", default="", help="run rows whose name contains this")
    args = parser.parse_args(argv)
    if args.mah:
        if not args.sft:
            parser.error("--mah needs --sft")
        os.makedirs(args.out, exist_ok=True)
        return trade_off(args)
    missing = [f"--{n}" for n in ("sft", "dpo", "rm", "grpo") if not getattr(args, n)]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    os.makedirs(args.out, exist_ok=True)
    pairs = data.arithmetic.preference_pairs(args.prompts, seed=10_000, max_operand=20,
                                             error_offsets=(1,))
    prompts = [p.prompt for p in pairs]
    tok = load_tokenizer("byte")
    m = {"tokenizer": tok, "sft": from_hf(args.sft), "dpo": from_hf(args.dpo),
         "grpo": from_hf(args.grpo), "rm": rewards.load_scorer(args.rm)}
    m["rm"] = nnx.merge(*m["rm"])
    ids = [tok.encode(p) for p in prompts]
    results = []
    for name, family, run in methods(m, prompts):
        if args.only and args.only not in name:
            continue
        start = time.perf_counter()
        tokens, mask, spent = run(ids)
        wall = time.perf_counter() - start
        texts = decode_completions(tok, tokens, mask)
        acc = data.arithmetic.accuracy(prompts, texts)
        row = {"method": name, "family": family, "scorer": scorer_of(name), "accuracy": acc,
               "forward_tokens_per_output_token": spent / max(int(np.sum(mask)), 1),
               "wall_seconds": wall}
        print(json.dumps(row), flush=True)
        results.append(row)
    _write(args.out, "results", results,
           "| method | family | task accuracy | forward tokens / output token | wall s |",
           lambda r: f"| {r['method']} | {r['family']} | {r['accuracy']:.3f} | "
                     f"{r['forward_tokens_per_output_token']:.1f} | {r['wall_seconds']:.1f} |")
    _plot(results, os.path.join(args.out, "accuracy_vs_compute.png"))


def _plot(results, path):
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    colors = dict(zip(dict.fromkeys(r["family"] for r in results), plt.cm.tab10.colors))
    markers = {"none": "D", "verifier": "o", "rm": "s", "implicit": "^"}
    for r in results:
        ax.scatter(r["forward_tokens_per_output_token"], r["accuracy"], s=45,
                   color=colors[r["family"]], marker=markers.get(r["scorer"], "x"))
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=f)
               for f, c in colors.items()]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="", label=f"value: {k}")
                for k, m in markers.items() if k != "none"]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xscale("log")
    ax.set_xlabel("forward tokens per output token (log)")
    ax.set_ylabel("task accuracy (256 held-out prompts)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
