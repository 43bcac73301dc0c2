r"""Static vs continuous batching of a decode loop, counted without a device: useful tokens
per slot-step for a list of completion lengths (issue 14's device-independent figure).

    PYTHONPATH=. python benchmarks/batching_efficiency.py --slots 64 --requests 1024 \
        --max-new-tokens 256 --tail 0.1 --json /tmp/batching.json

A decode loop with S slots spends one slot-step per slot per step, used or not.

* static (today's sampler): requests in order, S at a time; a batch runs until its longest
  row stops (a row that stopped early idles in its slot).
* continuous: a slot that frees takes the next waiting request at the next step; the loop
  runs until the last request stops. Prefill is not counted (it is the same work either way).

Efficiency = sum of lengths / slot-steps (1.0 = no idle slot). Lengths: log-normal (median
`--median`, sigma `--sigma`) with a `--tail` fraction forced to the length limit (runs that
never emit EOS), or `--lengths-file` (one completion length per line, e.g. real rollouts).

Worked example: lengths [8, 1, 1, 1] on 2 slots. Static: batches (8, 1) then (1, 1): 8 + 1
steps x 2 slots = 18 slot-steps for 11 tokens (0.611). Continuous: slot 0 runs the 8, slot 1
runs the three 1s one after another: the loop ends at step 8, 16 slot-steps (0.6875).

This is the ceiling a continuous-batching engine can reach on decode steps; the engine
(`alignax.sampling.sample_continuous`) is measured by rollout_engine.py.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys

import numpy as np


def static_slot_steps(lengths, slots: int) -> int:
    """Slot-steps of static batching: each batch of `slots` requests runs to its longest."""
    lengths = list(lengths)
    return sum(slots * max(lengths[i:i + slots]) for i in range(0, len(lengths), slots))


def continuous_slot_steps(lengths, slots: int) -> int:
    """Slot-steps of continuous batching: a freed slot takes the next request at once."""
    free_at = [0] * min(slots, len(lengths))  # the step each slot frees
    heapq.heapify(free_at)
    end = 0
    for n in lengths:
        start = heapq.heappop(free_at)
        heapq.heappush(free_at, start + n)
        end = max(end, start + n)
    return slots * end


def simulate(lengths, *, slots: int) -> dict:
    """Useful tokens, slot-steps and efficiency of both schemes.

    >>> r = simulate([8, 1, 1, 1], slots=2)
    >>> r["static"]["slot_steps"], r["continuous"]["slot_steps"]
    (18, 16)
    >>> round(r["speedup"], 4)
    1.125
    """
    lengths = [int(n) for n in lengths]
    if slots < 1 or not lengths or min(lengths) < 1:
        raise ValueError("need slots >= 1 and at least one length, every length >= 1")
    useful = sum(lengths)
    out = {"requests": len(lengths), "slots": slots, "useful_tokens": useful}
    for name, fn in (("static", static_slot_steps), ("continuous", continuous_slot_steps)):
        steps = fn(lengths, slots)
        out[name] = {"slot_steps": steps, "efficiency": useful / steps}
    out["speedup"] = out["static"]["slot_steps"] / out["continuous"]["slot_steps"]
    return out


def long_tail_lengths(n: int, *, max_new_tokens: int, median: float, sigma: float,
                      tail: float, seed: int = 0) -> np.ndarray:
    """Log-normal completion lengths clipped to [1, limit], a `tail` fraction at the limit."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 1, max_new_tokens)
    lengths[rng.random(n) < tail] = max_new_tokens
    return lengths.astype(int)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--requests", type=int, default=1024)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--median", type=float, default=48.0)
    p.add_argument("--sigma", type=float, default=0.8)
    p.add_argument("--tail", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lengths-file", default="")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.lengths_file:
        with open(args.lengths_file, encoding="utf-8") as f:
            lengths = [int(x) for x in f.read().split()]
    else:
        lengths = long_tail_lengths(args.requests, max_new_tokens=args.max_new_tokens,
                                    median=args.median, sigma=args.sigma, tail=args.tail,
                                    seed=args.seed)
    r = simulate(lengths, slots=args.slots)
    print(f"{r['requests']} requests, {r['slots']} slots, {r['useful_tokens']} useful tokens")
    for name in ("static", "continuous"):
        print(f"  {name:>10}: {r[name]['slot_steps']} slot-steps, "
              f"efficiency {r[name]['efficiency']:.3f}")
    print(f"  continuous / static useful tokens per slot-step: {r['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
