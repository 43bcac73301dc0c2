r"""Training-step throughput of one jitted update: DPO, SFT or a GRPO update, on one
accelerator (or a mesh), with the model FLOP rate, peak memory and an optional profile.

Default shape: Llama-style 1B (hidden 2048, 16 layers, 32 query / 8 KV heads, MLP 8192,
vocab 32000, untied LM head), random init, bf16 compute, AdamW with global-norm clipping.

* `--task dpo` (default): DPO sigmoid (beta 0.1), 8 pairs x (256 prompt + 256 completion):
  one `[16, 512]` policy forward + backward and, with `--reference copy` (default), one
  `[16, 512]` frozen-reference forward (bf16 copy in the state); `--reference cached` gives
  the step precomputed reference log-probs instead (`reference.precompute=True`): 6/8 of
  the work.
* `--task sft`: token-mean NLL, `--rows` 16 x (256 + 256) tokens.
* `--task grpo`: the update half of online GRPO: `--rows` prompts x `--generations` G
  completions, policy forward + backward over `[R * G, prompt + completion]` with the old
  log-probs and advantages given (what the rollout produces), TRL's clipped loss.

From the repository root (`--tiny`: a CPU smoke run in seconds):

    PYTHONPATH=. python benchmarks/train_step.py --peak-tflops 798 --json dpo_1b.json
    PYTHONPATH=. python benchmarks/train_step.py --task sft --rows 16
    PYTHONPATH=. python benchmarks/train_step.py --task grpo --rows 4 --generations 8
    PYTHONPATH=. python benchmarks/train_step.py --reference cached --profile /tmp/prof
    PYTHONPATH=. python benchmarks/train_step.py --tiny

What is reported (a benchmark reports; it never fails a test):

* step time: median wall time of `--steps` steps after `--warmup` untimed ones, each step
  bracketed by `jax.block_until_ready`; compilation (`lower().compile()`) is timed separately
  and excluded (with `JAX_COMPILATION_CACHE_DIR` set, a cache hit makes it a load time).
* tokens/s: every token of the step's batch (DPO: chosen and rejected, prompt and
  completion) over the step time.
* model TFLOP/s: `k x N_matmul x tokens / step time`, k = 6 for a forward + backward plus 2
  for a frozen reference forward (DPO `--reference copy`: 8). `N_matmul` = every weight
  matrix except the input embedding: the attention and MLP projections of all layers and the
  LM head (for tied embeddings the shared table counts once, as the LM head); norm scales and
  biases are left out. Attention's own score and value products (~`4 x S x E` per token and
  layer, ~3% here) and rematerialised recomputation are not counted, the usual "model FLOPs"
  convention (PaLM, MaxText).
* peak device memory: the largest `memory_stats()["peak_bytes_in_use"]` over local devices,
  "n/a" where the backend keeps no statistics (CPU); and XLA's static plan of the compiled
  step (arguments, temporaries).
* `--profile DIR`: a `jax.profiler` trace of `--profile-steps` more steps in DIR, and the top
  25 device ops by total time (`DIR/top_ops.txt`, `DIR/top_ops.json`): where the time goes
  (attention, matmuls, LM head / log-softmax, optimizer, copies). On CPU the "device" is the
  host's XLA thunks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from flax import nnx

from alignax import sharding
from alignax.algorithms.dpo import dpo_loss_fn
from alignax.algorithms.online.grpo import clipped_loss_fn
from alignax.algorithms.sft import sft_loss_fn
from alignax.costs import matmul_flops
from alignax.models import ModelConfig, Transformer
from alignax.train import init_train_state, make_optimizer, make_train_step

try:  # run from the repository root (PYTHONPATH=.) or imported as benchmarks.train_step
    from benchmarks.profile_ops import format_top_ops, profile_steps
except ImportError:  # run with benchmarks/ itself on the path
    from profile_ops import format_top_ops, profile_steps

# The 1B shape and batch; `--tiny` shrinks everything for a CPU smoke run.
PRESETS: dict[str, dict[str, Any]] = {
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, mlp=8192, vocab=32000, pairs=8,
               rows=16, generations=8, prompt_len=256, completion_len=256, steps=20,
               warmup=3),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vocab=512, pairs=2,
                 rows=2, generations=2, prompt_len=16, completion_len=16, steps=2, warmup=1),
}
TASKS = ("dpo", "sft", "grpo")
REFERENCE = ("copy", "cached")
REMAT = ("none", "full", "save_dots")
ATTENTION = ("auto", "xla", "cudnn")
DTYPES = ("float32", "bfloat16")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke preset: hidden 64, 2 layers, vocab 512, 2 pairs x 16+16 "
                        "tokens, 2 steps (flags given explicitly still win)")
    size = p.add_argument_group("model (default: Llama-shaped 1B)")
    size.add_argument("--hidden", type=int, help="hidden size E (2048)")
    size.add_argument("--layers", type=int, help="decoder layers L (16)")
    size.add_argument("--heads", type=int, help="query heads (32); head_dim = hidden / heads")
    size.add_argument("--kv-heads", type=int, help="key/value heads (8)")
    size.add_argument("--mlp", type=int, help="MLP intermediate size F (8192)")
    size.add_argument("--vocab", type=int, help="vocabulary size V (32000)")
    size.add_argument("--tie-embeddings", action="store_true", help="tie the LM head")
    run = p.add_argument_group("task, batch and timing")
    run.add_argument("--task", choices=TASKS, default="dpo",
                     help="dpo (default), sft, or grpo (the update half of online GRPO)")
    run.add_argument("--reference", choices=REFERENCE, default="copy",
                     help="dpo: a frozen bf16 copy run in the step (default), or cached "
                          "reference log-probs in the batch (reference.precompute=True)")
    run.add_argument("--pairs", type=int, help="dpo: preference pairs per step B (8)")
    run.add_argument("--rows", type=int,
                     help="sft: sequences per step (16); grpo: prompts per step (16)")
    run.add_argument("--generations", type=int, help="grpo: completions per prompt G (8)")
    run.add_argument("--prompt-len", type=int, help="prompt tokens per sequence (256)")
    run.add_argument("--completion-len", type=int, help="completion tokens per sequence (256)")
    run.add_argument("--steps", type=int, help="timed steps (20)")
    run.add_argument("--warmup", type=int, help="untimed steps after compilation (3)")
    run.add_argument("--seed", type=int, default=0)
    num = p.add_argument_group("numerics and memory")
    num.add_argument("--param-dtype", choices=DTYPES, default="float32",
                     help="master weights and Adam moments (default float32)")
    num.add_argument("--compute-dtype", choices=DTYPES, default="bfloat16",
                     help="activations and matmul inputs (default bfloat16)")
    num.add_argument("--ref-dtype", choices=DTYPES, default="bfloat16",
                     help="frozen reference weights (default bfloat16)")
    num.add_argument("--remat", choices=REMAT, default="save_dots",
                     help="per-layer rematerialisation (default save_dots, as training)")
    num.add_argument("--attention", choices=ATTENTION, default="auto",
                     help="attention implementation (auto: cuDNN on GPU when allowed)")
    num.add_argument("--logits-chunk", type=int, default=128,
                     help="tokens per chunk of the chunked LM-head log-probs (default 128)")
    num.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    num.add_argument("--learning-rate", type=float, default=1e-6)
    par = p.add_argument_group("devices and output")
    par.add_argument("--mesh", default="data=-1",
                     help="mesh axes, e.g. 'data=-1' or 'data=2,fsdp=4,tensor=1' (-1 = rest)")
    par.add_argument("--peak-tflops", type=float,
                     help="the chip's bf16 dense peak (or measured matmul rate) in TFLOP/s, to "
                          "print model FLOPs utilisation")
    par.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    par.add_argument("--profile", metavar="DIR",
                     help="trace --profile-steps more steps with jax.profiler into DIR and "
                          "write the top 25 device ops (DIR/top_ops.txt, .json)")
    par.add_argument("--profile-steps", type=int, default=3)
    args = p.parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "1b"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def parse_mesh(text: str) -> dict[str, int]:
    """`"data=-1,fsdp=2"` -> `{"data": -1, "fsdp": 2}`."""
    axes = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, _, size = part.partition("=")
        if not size:
            raise ValueError(f"--mesh entry {part!r} is not NAME=SIZE")
        axes[name.strip()] = int(size)
    return axes


def model_config(args) -> ModelConfig:
    kwargs = dict(family="llama", vocab_size=args.vocab, hidden_size=args.hidden,
                  intermediate_size=args.mlp, num_layers=args.layers, num_heads=args.heads,
                  num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                  rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=max(2048, args.prompt_len + args.completion_len),
                  tie_word_embeddings=args.tie_embeddings, dtype=args.compute_dtype,
                  param_dtype=args.param_dtype, remat=args.remat)
    # Only configs that have the field take it (older checkouts had no attention_impl).
    if "attention_impl" in {f.name for f in dataclasses.fields(ModelConfig)}:
        kwargs["attention_impl"] = args.attention
    elif args.attention != "auto":
        raise SystemExit("this alignax ModelConfig has no attention_impl; use --attention auto")
    return ModelConfig(**kwargs)


def count_params(abstract_params, config: ModelConfig) -> tuple[int, int]:
    """(all parameters, matmul parameters): see the module docstring for what counts."""
    total = matmul = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        keys = sharding.normalize_path(path)
        n = math.prod(leaf.shape)
        total += n
        name = keys[-1]
        if keys[0] == "embed" or name == "scale" or name.endswith("bias"):
            continue
        matmul += n
    if config.tie_word_embeddings:  # the embedding table is also the LM head
        matmul += config.vocab_size * config.hidden_size
    return total, matmul


def make_batch(args, seed: int) -> dict[str, np.ndarray]:
    """Random `[B, 2, S]` preference pairs: a shared prompt, two different completions.

    Every slot is a real token (no padding), so all `2 B S` tokens are processed and counted;
    `completion_mask` is 0 on the prompt and 1 on the completion, as the tokeniser makes it.
    With `--reference cached`, `ref_logps` `[B, 2]` as the reference cache stores them.
    """
    rng = np.random.default_rng(seed)
    b, p, c = args.pairs, args.prompt_len, args.completion_len
    prompt = rng.integers(0, args.vocab, (b, 1, p), dtype=np.int32)
    completions = rng.integers(0, args.vocab, (b, 2, c), dtype=np.int32)
    input_ids = np.concatenate([np.repeat(prompt, 2, axis=1), completions], axis=-1)
    completion_mask = np.zeros((b, 2, p + c), np.int32)
    completion_mask[..., p:] = 1
    batch = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
             "completion_mask": completion_mask}
    if args.reference == "cached":
        # About what a random-init model assigns: log(1 / V) per completion token.
        batch["ref_logps"] = np.full((b, 2), -c * math.log(args.vocab), np.float32)
    return batch


def make_sft_batch(args, seed: int) -> dict[str, np.ndarray]:
    """Random `[R, S]` rows, prompt + completion, every slot a real token."""
    rng = np.random.default_rng(seed)
    r, p, c = args.rows, args.prompt_len, args.completion_len
    input_ids = rng.integers(0, args.vocab, (r, p + c), dtype=np.int32)
    completion_mask = np.zeros((r, p + c), np.int32)
    completion_mask[:, p:] = 1
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
            "completion_mask": completion_mask}


def make_grpo_batch(args, seed: int) -> dict[str, np.ndarray]:
    """A rollout batch as the GRPO update sees it: `[R, G, P + N]` ids, `[R, G, N]`
    completion mask and old log-probs, `[R, G]` advantages, `[R]` normaliser."""
    rng = np.random.default_rng(seed)
    r, g, p, n = args.rows, args.generations, args.prompt_len, args.completion_len
    input_ids = rng.integers(0, args.vocab, (r, g, p + n), dtype=np.int32)
    adv = rng.standard_normal((r, g)).astype(np.float32)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
            "completion_mask": np.ones((r, g, n), np.int32),
            "old_logps": np.full((r, g, n), -math.log(args.vocab), np.float32),
            "advantages": adv - adv.mean(axis=1, keepdims=True),
            "normalizer": np.full((r,), float(r * g * n), np.float32)}


def task_setup(args, graphdef):
    """`(loss_fn, batch, reference, wrap, tokens, flops factor)` of `args.task`: `wrap` turns
    the model's parameters into the loss function's tree."""
    chunk = args.logits_chunk
    if args.task == "dpo":
        batch = make_batch(args, args.seed)
        loss_fn = dpo_loss_fn(graphdef, loss_types="sigmoid", beta=args.beta, chunk_size=chunk)
        copy = args.reference == "copy"
        return (loss_fn, batch, "copy" if copy else None, lambda p: p,
                batch["input_ids"].size, 8 if copy else 6)
    if args.task == "sft":
        batch = make_sft_batch(args, args.seed)
        return (sft_loss_fn(graphdef, chunk_size=chunk), batch, None, lambda p: p,
                batch["input_ids"].size, 6)
    batch = make_grpo_batch(args, args.seed)
    loss_fn = clipped_loss_fn({"policy": graphdef}, loss_type="grpo", temperature=1.0,
                              epsilon=0.2, epsilon_high=None, importance_sampling_level="token",
                              delta=None, use_bias_correction_kl=True, chunk_size=chunk)
    return loss_fn, batch, None, lambda p: {"policy": p}, batch["input_ids"].size, 6


def environment() -> dict[str, Any]:
    dev = jax.devices()[0]
    try:
        backend_version = dev.client.platform_version
    except Exception:  # noqa: BLE001 - purely informational
        backend_version = "unknown"
    return {"device_kind": dev.device_kind, "platform": dev.platform,
            "num_devices": jax.device_count(), "backend_version": str(backend_version).strip(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "python": platform.python_version()}


def peak_memory_bytes() -> int | None:
    """Largest `peak_bytes_in_use` over local devices; None where the backend has no stats."""
    peaks = []
    for dev in jax.local_devices():
        try:
            stats = dev.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def _memory_analysis(compiled) -> dict[str, int]:
    """XLA's static buffer sizes of the compiled step (per device), where it reports them."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - purely informational
        return {}
    names = ("argument_size_in_bytes", "temp_size_in_bytes")
    return {k: int(getattr(m, k)) for k in names if getattr(m, k, None) is not None}


def run(args) -> dict[str, Any]:
    env = environment()
    config = model_config(args)
    mesh = sharding.make_mesh(parse_mesh(args.mesh))
    rows = {"dpo": args.pairs, "sft": args.rows, "grpo": args.rows}[args.task]
    sharding.check_batch_size(rows, mesh=mesh)

    # Abstract model: the graph definition and shapes, no values anywhere.
    graphdef, abstract = nnx.split(nnx.eval_shape(
        lambda: Transformer(config, rngs=nnx.Rngs(0))))
    n_total, n_matmul = count_params(abstract, config)
    loss_fn, host_batch, reference, wrap, tokens, factor = task_setup(args, graphdef)

    # Values: drawn on the devices inside one jit, straight into their shardings; the DPO
    # reference is a bf16 copy of the initial policy (DPO's frozen pi_ref).
    tx = make_optimizer(learning_rate=args.learning_rate, decay="constant", max_grad_norm=1.0)
    seed = args.seed
    t0 = time.perf_counter()
    state, shardings = init_train_state(
        lambda: wrap(nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))[1]), tx, mesh=mesh,
        seed=seed, reference=reference, ref_dtype=jnp.dtype(args.ref_dtype))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    step = make_train_step(loss_fn, tx, mesh=mesh, state_shardings=shardings)
    batch = jax.device_put(host_batch, sharding.batch_sharding(mesh))

    # Ahead-of-time compile, so compilation is timed on its own and never inside a step.
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    xla_memory = _memory_analysis(compiled)
    with jax.set_mesh(mesh):  # every matmul the step asks for, remat and attention included
        traced_flops = matmul_flops(step.jitted, state, batch)

    losses = []
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))
    if not all(math.isfinite(x) for x in losses):
        print(f"WARNING: non-finite loss: {losses}", file=sys.stderr)
    profile = None
    if args.profile:
        state, profile = profile_steps(compiled, state, batch, args.profile,
                                       steps=args.profile_steps)

    step_time = statistics.median(times)
    flops_per_step = factor * n_matmul * tokens
    model_tflops = flops_per_step / step_time / 1e12
    peak = peak_memory_bytes()
    result = {
        **env,
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "mesh": dict(mesh.shape),
        "params_total": n_total,
        "params_matmul": n_matmul,
        "tokens_per_step": tokens,
        "flops_factor": factor,
        "flops_per_step": flops_per_step,
        "traced_matmul_flops_per_step": traced_flops,
        "init_s": init_s,
        "compile_s": compile_s,
        "step_time_s": step_time,
        "step_time_mean_s": statistics.fmean(times),
        "step_time_min_s": min(times),
        "step_time_max_s": max(times),
        "step_times_s": times,
        "tokens_per_s": tokens / step_time,
        "model_tflops": model_tflops,
        "mfu": model_tflops / args.peak_tflops if args.peak_tflops else None,
        "peak_memory_bytes": peak,
        "xla_argument_bytes": xla_memory.get("argument_size_in_bytes"),
        "xla_temp_bytes": xla_memory.get("temp_size_in_bytes"),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "profile": profile,
        "command": " ".join(sys.argv),
    }
    return result


def _gib(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def report(r: dict[str, Any]) -> str:
    c = r["config"]
    peak = r["peak_memory_bytes"]
    mem = "n/a" if peak is None else f"{_gib(peak)} ({peak / 1e9:.2f} GB)"
    mfu = "" if r["mfu"] is None else (
        f"\n  fraction of peak   {100 * r['mfu']:.1f}% of {c['peak_tflops']:g} TFLOP/s bf16")
    what = {"dpo": "DPO step (policy fwd+bwd + " + (
        "frozen reference fwd" if c["reference"] == "copy" else "cached reference log-probs")
        + ", one jitted step)", "sft": "SFT step (fwd+bwd, one jitted step)",
        "grpo": "GRPO update step (policy fwd+bwd on given rollouts, one jitted step)"}
    batch = {"dpo": f"{c['pairs']} pairs x 2", "sft": f"{c['rows']} rows",
             "grpo": f"{c['rows']} prompts x {c['generations']} completions"}[c["task"]]
    traced = r["traced_matmul_flops_per_step"]
    xla_line = (
        f"\n  matmul FLOPs/step  {traced / 1e9:,.2f} G traced (model count "
        f"{r['flops_per_step'] / 1e9:,.2f} G: x{traced / r['flops_per_step']:.2f}; remat, "
        "attention and the chunked head's recompute in, GRPO's prompt-position head out)")
    lines = [
        what[c["task"]],
        f"  device             {r['device_kind']} x{r['num_devices']} ({r['platform']}, "
        f"{r['backend_version']}), mesh {r['mesh']}",
        f"  versions           jax {r['jax']}, jaxlib {r['jaxlib']}, flax {r['flax']}, "
        f"optax {r['optax']}, python {r['python']}",
        f"  model              E={c['hidden']} L={c['layers']} heads={c['heads']}/"
        f"{c['kv_heads']} F={c['mlp']} V={c['vocab']}: {_count(r['params_total'])} params, "
        f"{_count(r['params_matmul'])} matmul (no embedding, LM head in)",
        f"  numerics           params {c['param_dtype']}, compute {c['compute_dtype']}, "
        f"reference {c['ref_dtype']}, remat {c['remat']}, attention {c['attention']}, "
        f"logits chunk {c['logits_chunk']}",
        f"  batch              {batch} x ({c['prompt_len']} prompt + "
        f"{c['completion_len']} completion) = {r['tokens_per_step']:,} tokens/step",
        f"  init / compile     {r['init_s']:.2f} s / {r['compile_s']:.2f} s (not in step time)",
        f"  step time          {r['step_time_s'] * 1e3:.2f} ms median of {c['steps']} "
        f"(mean {r['step_time_mean_s'] * 1e3:.2f}, min {r['step_time_min_s'] * 1e3:.2f}, "
        f"max {r['step_time_max_s'] * 1e3:.2f}; {c['warmup']} warm-up)",
        f"  tokens/s           {r['tokens_per_s']:,.0f}",
        f"  model TFLOP/s      {r['model_tflops']:.3f} ({r['flops_factor']} x matmul params x "
        f"tokens / time)" + mfu + xla_line,
        f"  peak memory        {mem}",
        f"  XLA buffers        {_gib(r['xla_argument_bytes'])} arguments (state + batch), "
        f"{_gib(r['xla_temp_bytes'])} temporaries (compiler's static plan, per device)",
        f"  loss               {r['loss_first']:.4f} (first) -> {r['loss_last']:.4f} (last)",
    ]
    if r.get("profile"):
        lines.append(format_top_ops(r["profile"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True)
        print(f"  json               {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
