r"""Rollout engine benchmarks: continuous vs static batching on long-tailed completions, shared
vs copied prompt caches for GRPO groups, and a GRPO step's time by phase.

From the repository root (`--tiny`: a CPU smoke run in seconds):

    PYTHONPATH=. python benchmarks/rollout_engine.py --mode long-tail --json lt.json
    PYTHONPATH=. python benchmarks/rollout_engine.py --mode grpo --json grpo.json
    PYTHONPATH=. python benchmarks/rollout_engine.py --mode step --workdir runs/grpo_1b
    PYTHONPATH=. python benchmarks/rollout_engine.py --mode long-tail --tiny

* `long-tail`: `--requests` prompts of `--prompt-len` tokens, each with its own completion
  length drawn log-normal (median `--median`, sigma `--sigma`) with a `--tail` share at
  `--new-tokens` (as `batching_efficiency.py`), imposed as per-request limits (no stop token,
  so the lengths are exactly these). Static batching: the requests `--slots` at a time, each
  batch decoding until its longest row is done; continuous: `--slots` rows refilled as they
  finish (`alignax.sampling.engine`). Reported: wall time (median of `--repeats` after one
  untimed run), useful tokens/s (the sum of the lengths over the time), slot-steps,
  efficiency, and continuous / static.
* `grpo`: `--prompts` prompts x `--samples` G completions of `--new-tokens` (no stop token):
  `sample_tokens` with the prompt's cache shared by its G rows (the default), with the prompt
  prefilled once and its cache repeated G times (the layout before), and with G copies of each
  prompt (G = 1 on repeated prompts): new tokens/s and XLA's temporary bytes of each;
  `speedup` = repeated cache / shared.
* `step`: a GRPO run's time by phase, from its `metrics.jsonl` (`time/rollout` = sampling +
  rewards, `time/forward` = the old-policy / reference forward, `time/update` = the
  optimizer updates; medians over the steps after the first, which compiles). Produce the
  run with, e.g. (1B shape, random init, 64 prompts x G = 8, 128 + 256 tokens, bf16):

      alignax train --config experiments/configs/grpo.py --workdir runs/grpo_1b \
        --config.model.overrides="{'hidden_size': 2048, 'intermediate_size': 8192, \
        'num_layers': 16, 'num_heads': 32, 'num_kv_heads': 8, 'head_dim': 64, \
        'max_position_embeddings': 2048}" --config.model.dtype=bfloat16 \
        --config.train.batch_size=64 --config.rollout.num_generations=8 \
        --config.data.max_prompt_length=128 --config.rollout.max_new_tokens=256 \
        --config.loss.beta=0.04 --config.train.steps=6 --config.train.eval_every=0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from alignax.sampling.engine import sample_continuous
from alignax.sampling.sampler import sample_tokens

try:  # run from the repository root (PYTHONPATH=.) or imported as benchmarks.rollout_engine
    from benchmarks.batching_efficiency import long_tail_lengths
    from benchmarks.sampler_throughput import PRESETS, environment, init_params, model_config
except ImportError:  # run with benchmarks/ itself on the path
    from batching_efficiency import long_tail_lengths
    from sampler_throughput import PRESETS, environment, init_params, model_config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("long-tail", "grpo", "step"), default="long-tail")
    p.add_argument("--tiny", action="store_true", help="CPU smoke preset")
    for name, kind, text in (("requests", int, "long-tail: requests (512)"),
                             ("slots", int, "long-tail: decode rows (64)"),
                             ("median", float, "long-tail: median length (48)"),
                             ("prompts", int, "grpo: prompts (64)"),
                             ("samples", int, "grpo: G (8)"),
                             ("prompt-len", int, "prompt tokens (128)"),
                             ("new-tokens", int, "token limit (256)"),
                             ("repeats", int, "timed runs (3)")):
        p.add_argument(f"--{name}", type=kind, help=text)
    p.add_argument("--sigma", type=float, default=0.8)
    p.add_argument("--tail", type=float, default=0.1)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="", help="step: the GRPO run's directory")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    preset = {**PRESETS["1b"], "requests": 512, "slots": 64, "median": 48.0, "prompts": 64,
              "samples": 8, "prompt_len": 128, "new_tokens": 256, "repeats": 3}
    if args.tiny:  # the sampler benchmark's tiny model, a short long tail
        preset.update(PRESETS["tiny"], requests=48, slots=8, prompts=4, samples=4,
                      prompt_len=16, new_tokens=32, median=6.0, repeats=1)
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def _timed(fn, repeats: int) -> tuple[Any, float]:
    out = fn()  # untimed: compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def long_tail(args) -> dict[str, Any]:
    config = model_config(args)
    graphdef, params = init_params(config, args.seed)
    model = nnx.merge(graphdef, params)
    rng = np.random.default_rng(args.seed)
    prompts = [list(rng.integers(3, args.vocab, args.prompt_len)) for _ in range(args.requests)]
    lengths = long_tail_lengths(args.requests, max_new_tokens=args.new_tokens,
                                median=args.median, sigma=args.sigma, tail=args.tail,
                                seed=args.seed)
    kw = dict(max_new_tokens=args.new_tokens, eos_id=-1, pad_id=0, stop_ids=(),
              temperature=1.0, prompt_width=args.prompt_len)
    key = jax.random.key(args.seed)

    def static():
        stats = []
        for s in range(0, args.requests, args.slots):
            part = slice(s, s + args.slots)
            _, st = sample_continuous(model, prompts[part], jax.random.fold_in(key, s),
                                      slots=args.slots, limits=lengths[part], **kw)
            stats.append(st)
        return stats

    def continuous():
        return [sample_continuous(model, prompts, key, slots=args.slots, limits=lengths,
                                  **kw)[1]]

    useful = int(lengths.sum())
    out = {"requests": args.requests, "slots": args.slots, "useful_tokens": useful}
    for name, fn in (("static", static), ("continuous", continuous)):
        stats, seconds = _timed(fn, args.repeats)
        slot_steps = sum(st.slot_steps for st in stats)
        out[name] = {"seconds": seconds, "useful_tokens_per_s": useful / seconds,
                     "slot_steps": slot_steps, "efficiency": useful / slot_steps,
                     "prefills": sum(st.prefills for st in stats)}
    out["speedup"] = out["static"]["seconds"] / out["continuous"]["seconds"]
    return out


def grpo(args) -> dict[str, Any]:
    config = model_config(args)
    graphdef, params = init_params(config, args.seed)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, args.vocab, (args.prompts, args.prompt_len), dtype=np.int32)
    mask = np.ones_like(ids)
    kw = dict(max_new_tokens=args.new_tokens, stop_ids=(), pad_id=0)
    key = jax.random.key(args.seed)
    g, rows = args.samples, args.prompts * args.samples
    out = {"prompts": args.prompts, "samples": g, "rows": rows}
    for name, (p_ids, p_mask, n, shared) in {
            "shared": (ids, mask, g, True),
            "repeated_cache": (ids, mask, g, False),
            "copies": (np.repeat(ids, g, 0), np.repeat(mask, g, 0), 1, False)}.items():
        compiled = sample_tokens.lower(graphdef, params, p_ids, p_mask, key, num_samples=n,
                                       shared_prompt=shared, **kw).compile()
        _, seconds = _timed(lambda c=compiled, a=p_ids, b=p_mask: jax.block_until_ready(
            c(params, a, b, key)), args.repeats)
        out[name] = {"seconds": seconds, "new_tokens_per_s": rows * args.new_tokens / seconds,
                     "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}
    out["speedup"] = out["repeated_cache"]["seconds"] / out["shared"]["seconds"]
    return out


def step_phases(workdir: str) -> dict[str, Any]:
    with open(f"{workdir}/metrics.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][1:]  # the first step compiles
    if not rows:
        raise SystemExit(f"{workdir}/metrics.jsonl: needs at least 2 steps")
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("time/step", "time/rollout", "time/forward", "time/update")}
    return {"steps": len(rows), **med,
            **{f"share/{k[5:]}": med[k] / med["time/step"]
               for k in ("time/rollout", "time/forward", "time/update")}}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode == "step":
        result = step_phases(args.workdir)
    else:
        result = {**environment(), "mode": args.mode,
                  **(long_tail(args) if args.mode == "long-tail" else grpo(args))}
    for key, value in result.items():
        print(f"  {key}: {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
