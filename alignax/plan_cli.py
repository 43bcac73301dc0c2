"""`alignax plan` on the command line: rank meshes, print the lines, say what fits and what
would (the estimate itself: `alignax/plan.py`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from alignax.config import ConfigError
from alignax.plan import (
    DEVICES,
    LONG_SEQUENCE,
    SHAPES,
    Workload,
    candidate_meshes,
    count_parameters,
    gib,
    mesh_text,
    parse_mesh,
    plan_mesh,
    workload_of,
)

# ------------------------------------------------------------------------------ the CLI

HELP = """Per-device memory of a training run before launch, from its config alone (no
accelerator, nothing allocated): parameters, optimizer state, frozen copies (reference,
teachers, critic, reward model), gradients, activations with the config's remat, the LM head's
logits chunk and, online, the rollout's KV cache. With --mesh, that mesh; without, every
data x fsdp x tensor split of --devices (x sequence for sequences of 4,096+ tokens), best
first. Estimates are checked against XLA's compiled memory analysis on CPU
(tests/test_plan.py)."""


def main(argv: list[str]) -> int:
    import argparse

    from alignax import algorithms, config

    p = argparse.ArgumentParser(prog="alignax plan", description=HELP,
                                usage="alignax plan --config PATH[:VARIANT] --devices N "
                                      "[--mesh data=..,fsdp=..,tensor=..] [--shape NAME] "
                                      "[--device h100 | --device-memory-gib M] "
                                      "[--config.KEY=VALUE ...]")
    p.add_argument("--config", required=True)
    p.add_argument("--devices", type=int, required=True, help="accelerator chips in the mesh")
    p.add_argument("--mesh", default="", help="e.g. data=1,fsdp=8,tensor=1 (-1 = the rest); "
                   "default: rank every split of --devices")
    p.add_argument("--shape", default="", help=f"the policy's architecture: one of "
                   f"{', '.join(SHAPES)} (default: the config's model)")
    p.add_argument("--device", default="", choices=sorted(DEVICES) + [""],
                   help="the chip: its memory and whether attention is a flash kernel")
    p.add_argument("--device-memory-gib", type=float, default=0.0)
    p.add_argument("--attention", choices=("auto", "flash", "xla"), default="auto",
                   help="flash: no S x S scores (cuDNN); auto: as --device says")
    p.add_argument("--headroom", type=float, default=0.10,
                   help="share of the chip kept free for XLA and the runtime")
    p.add_argument("--top", type=int, default=8, help="meshes listed without --mesh")
    p.add_argument("--json", default="", help="also write the plan as JSON here")
    args, rest = p.parse_known_args(argv)
    cfg = config.load_config(args.config)
    config.apply_overrides(cfg, rest)
    cfg = algorithms.resolve_config(cfg, source=args.config)
    w = workload_of(cfg, shape=args.shape)
    memory, flash = DEVICES.get(args.device, (0.0, False))
    memory = args.device_memory_gib or memory
    flash = args.attention == "flash" or (args.attention == "auto" and flash)
    budget = memory * 2**30 * (1 - args.headroom) if memory else None
    if args.mesh:
        plans = [plan_mesh(w, parse_mesh(args.mesh), args.devices, flash=flash)]
    else:
        plans, skipped = [], []
        for axes in candidate_meshes(args.devices, max_sequence=_max_sequence(w)):
            try:
                plans.append(plan_mesh(w, axes, args.devices, flash=flash))
            except ConfigError as e:
                skipped.append(f"{mesh_text(axes)}: {e}")
        if not plans:
            raise ConfigError(f"no mesh of {args.devices} devices runs this config: "
                              f"{skipped[0]}")
        plans.sort(key=lambda x: (x["peak"], x["mesh"]["tensor"], -x["mesh"]["data"],
                                  x["mesh"].get("sequence", 1)))
    print(report(w, plans, args, budget, flash))
    if budget is not None and plans[0]["peak"] > budget:
        print(suggest(w, args.devices, budget, flash))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"workload": _workload_json(w), "device": args.device,
                       "budget_bytes": budget, "flash_attention": flash,
                       "plans": [{"mesh": x["mesh"], "peak_bytes": x["peak"],
                                  "fits": None if budget is None else x["peak"] <= budget,
                                  "lines": [dataclasses.asdict(y) for y in x["lines"]]}
                                 for x in plans]}, f, indent=2)
    return 0


def _max_sequence(w: Workload) -> int:
    return 8 if w.seq_len >= LONG_SEQUENCE else 1


def suggest(w: Workload, devices: int, budget: float, flash: bool) -> str:
    """The smallest change that fits: more micro-batches, then full remat, on any mesh."""
    meshes = candidate_meshes(devices, max_sequence=_max_sequence(w))
    full = dataclasses.replace(w.model, remat="full")
    for model in (w.model, full):
        for k in (1, 2, 4, 8, 16, 32):
            x = dataclasses.replace(w, model=model, grad_accum=w.grad_accum * k)
            fits = []
            for axes in meshes:
                try:
                    p = plan_mesh(x, axes, devices, flash=flash)
                except ConfigError:
                    continue
                if p["peak"] <= budget:
                    fits.append(p)
            if fits:
                best = min(fits, key=lambda p: p["peak"])
                change = [f"--mesh {mesh_text(best['mesh'])}"]
                if x.grad_accum != w.grad_accum:
                    change.append(f"--config.train.grad_accum={x.grad_accum}")
                if model is full and w.model.remat != "full":
                    change.append("--config.model.remat=full")
                return f"  hint: fits ({gib(best['peak'])}) with {' '.join(change)}"
    return ("  hint: no mesh, grad_accum or remat fits: more devices, LoRA "
            "(--config.lora.rank=16, base weights in bfloat16), reference.precompute")


def _workload_json(w: Workload) -> dict[str, Any]:
    out = dataclasses.asdict(w)
    out["model"] = w.model.to_hf() if hasattr(w.model, "to_hf") else str(w.model)
    out["frozen"] = [(what, dtype) for what, _, dtype in w.frozen]
    return out


def report(w: Workload, plans: list[dict], args, budget: float | None, flash: bool) -> str:
    m = w.model
    n = count_parameters(m)
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
    chip = (f"{args.device or 'device'} with {budget / (1 - args.headroom) / 2**30:.1f} GiB"
            if budget else "device memory not given")
    out = [f"alignax plan: {w.algorithm}, {args.shape or 'model'} ({size} parameters, "
           f"{m.num_layers} layers, param {m.param_dtype}, compute {m.dtype}, remat "
           f"{m.remat}) on {args.devices} devices ({chip})",
           f"  per update: {w.rows} sequences x {w.seq_len} tokens, {w.grad_accum} "
           f"micro-batch(es) (train.grad_accum); attention "
           f"{'flash (no S x S scores)' if flash else 'XLA'}"
           + (f"; rollout {w.rollout[0]} rows x {w.rollout[1]} tokens" if w.rollout else "")]
    verdict = lambda x: "" if budget is None else ("fits" if x <= budget else "does NOT fit")
    if len(plans) > 1 or not args.mesh:
        out.append(f"  {'mesh':28s} {'state':>10s} {'train':>10s} {'rollout':>10s} "
                   f"{'peak':>10s}")
        for x in plans[:args.top]:
            part = {ph: sum(y.bytes for y in x["lines"] if y.phase == ph)
                    for ph in ("state", "train", "rollout")}
            out.append(f"  {mesh_text(x['mesh']):28s} {gib(part['state']):>10s} "
                       f"{gib(part['train']):>10s} {gib(part['rollout']):>10s} "
                       f"{gib(x['peak']):>10s}  {verdict(x['peak'])}")
        out.append(f"  best: {mesh_text(plans[0]['mesh'])}; its lines:")
    best = plans[0]
    for phase, title in (("state", "state"), ("train", "training step"),
                         ("rollout", "rollout")):
        rows = [y for y in best["lines"] if y.phase == phase]
        if rows:
            out.append(f"  {title}:")
            out += [f"    {y.what:34s} {gib(y.bytes):>11s}  {y.how}" for y in rows]
    line = f"  peak per device: {gib(best['peak'])} on mesh {mesh_text(best['mesh'])}"
    if budget is not None:
        line += (f" of {gib(budget)} usable ({args.headroom:.0%} headroom): "
                 f"{verdict(best['peak'])}")
    out.append(line)
    return "\n".join(out)
