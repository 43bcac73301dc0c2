r"""Runs a list of `benchmarks/train_step.py` variants, each in its own process, and prints a
markdown table (and writes JSON): the one command whose output decides the defaults.

    PYTHONPATH=. python benchmarks/sweep.py --peak-tflops 798 --json sweep_h100.json
    PYTHONPATH=. python benchmarks/sweep.py --tiny                    # CPU smoke, ~1 minute
    PYTHONPATH=. python benchmarks/sweep.py --only defaults,remat_none --extra="--pairs 16"

The default list (`VARIANTS`) measures the levers that decide `alignax`'s training defaults on
the 1B DPO shape (8 pairs x 512 tokens): parameter / optimizer-state dtype, remat policy,
logits chunk, attention implementation, the cached reference, plus SFT and the GRPO update.
Each variant runs in a fresh process (its own compile, its own peak-memory counter), with a
per-variant timeout; the whole default list is sized to finish within 8 minutes on one H100
with a warm compile cache (20 timed steps each). A variant that fails or runs out of memory is
a row saying so, not the end of the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> train_step.py arguments. "defaults" is alignax's training defaults as they stand.
VARIANTS: dict[str, str] = {
    "defaults": "",  # float32 master weights, bf16 compute, remat save_dots, chunk 128
    "remat_none": "--remat none",
    "remat_full": "--remat full",
    "bf16_params": "--param-dtype bfloat16",
    "chunk512": "--logits-chunk 512",
    "chunk1024": "--logits-chunk 1024",
    "xla_attention": "--attention xla",
    "cached_reference": "--reference cached",
    "pairs16": "--pairs 16",
    "pairs32": "--pairs 32",
    "bf16_params_pairs32": "--param-dtype bfloat16 --pairs 32",
    "sft": "--task sft --rows 16",
    "grpo": "--task grpo --rows 4 --generations 8",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated variant names (default: all)")
    p.add_argument("--extra", default="", help="arguments added to every variant")
    p.add_argument("--tiny", action="store_true", help="every variant at --tiny (CPU smoke)")
    p.add_argument("--peak-tflops", type=float, help="passed to every variant")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds per variant")
    p.add_argument("--json", metavar="PATH", help="write every variant's result here")
    return p.parse_args(argv)


def run_variant(name: str, arguments: str, args) -> dict:
    """One variant in its own process: its JSON result, or {"error": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.join(HERE, "train_step.py"), *shlex.split(arguments),
               *shlex.split(args.extra), "--json", out]
        if args.tiny:
            cmd.append("--tiny")
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"name": name, "args": arguments, "error": f"timeout {args.timeout:g}s"}
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            oom = "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr
            return {"name": name, "args": arguments, "wall_s": wall,
                    "error": "out of memory" if oom else tail[0][:160]}
        with open(out, encoding="utf-8") as f:
            result = json.load(f)
        return {"name": name, "args": arguments, "wall_s": wall, **result}


def _mem(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f}"


def table(results: list[dict]) -> str:
    """Markdown: one row per variant (tokens/s, model TFLOP/s, MFU, peak and XLA memory)."""
    rows = ["| variant | args | tokens/s | model TFLOP/s | MFU | peak GiB | XLA temp GiB | "
            "compile s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['name']} | `{r['args']}` | {r['error']} | | | | | |")
            continue
        mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.0f}%"
        rows.append(f"| {r['name']} | `{r['args']}` | {r['tokens_per_s']:,.0f} | "
                    f"{r['model_tflops']:.1f} | {mfu} | {_mem(r['peak_memory_bytes'])} | "
                    f"{_mem(r['xla_temp_bytes'])} | {r['compile_s']:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        r = run_variant(name, VARIANTS[name], args)
        print(f"{name}: " + (r["error"] if "error" in r
                             else f"{r['tokens_per_s']:,.0f} tokens/s"), flush=True)
        results.append(r)
    first = next((r for r in results if "error" not in r), None)
    if first is not None:
        print(f"\n{first['device_kind']} x{first['num_devices']}, jax {first['jax']}, "
              f"flax {first['flax']}, {first['backend_version']}")
    print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
