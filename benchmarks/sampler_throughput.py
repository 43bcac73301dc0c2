r"""Sampler throughput: `alignax.sampling.sample_tokens` (jitted prefill + on-device decode loop
over a bf16 KV cache) against the memory-bandwidth roofline and, optionally, HF `generate`.

Default shape: Llama-style 1B (hidden 2048, 16 layers, 32 query / 8 KV heads, MLP 8192,
vocab 32000, untied LM head), random init, bf16 weights and cache; 64 prompts x 128 prompt
tokens, 256 new tokens each (no stop token, so every row decodes all 256), temperature 1.
From the repository root:

    PYTHONPATH=. python benchmarks/sampler_throughput.py --json sampler_1b.json
    PYTHONPATH=. python benchmarks/sampler_throughput.py --compare-transformers   # + HF
    PYTHONPATH=. python benchmarks/sampler_throughput.py --tiny      # CPU smoke run, seconds

What is reported (a benchmark reports; it never fails a test):

* compile time: `lower().compile()` of the sampler and of a prefill-only function, excluded
  from every rate (with `JAX_COMPILATION_CACHE_DIR` set a cache hit makes it a load time).
* generate time: median wall time of `--repeats` full `sample_tokens` calls (prefill + N
  decode steps, one device call, no host sync inside), after one untimed call;
  new tokens/s = rows x N / generate time (what HF `generate` is timed on).
* decode time: generate time minus the median prefill time (a prefill-only function of the
  same shapes; where timer noise makes that meaningless, as on `--tiny`, the generate time and
  `decode_includes_prefill: true`); decode new tokens/s =
  rows x N / decode time, and the time per decode step = decode time / N.
* roofline: a decode step must read every weight once (all matrices and norms, the LM head;
  of the embedding table only the B gathered rows) plus the valid part of the KV cache
  (L x rows x (P + t + 1) x K x D x 2 (k, v) x 2 bytes at step t; averaged over the N steps).
  The bandwidth is measured here: a jitted `x + 1` over a `--copy-gib` bf16 array, counted as
  2 x its bytes (read + write) per call, median of 10. Roofline tokens/s = rows / (bytes per
  step / bandwidth); the fraction printed is decode tokens/s over it.
* HF transformers (`--compare-transformers`, needs torch with CUDA): `LlamaForCausalLM` of the
  same shape, random init, bf16, sdpa attention, `generate(do_sample=True, top_k=0,
  min_new_tokens=N, max_new_tokens=N)` on the same prompts, timed the same way
  (median of `--hf-repeats` after one untimed call).

No ml_collections import (the benchmark only needs `alignax.models` and `alignax.sampling`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from flax import nnx

from alignax.models import ModelConfig, Transformer
from alignax.models.cache import init_cache
from alignax.sampling import sample_tokens
from alignax.sampling.sampler import ragged_segments

PRESETS: dict[str, dict[str, Any]] = {
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, mlp=8192, vocab=32000,
               prompts=64, prompt_len=128, new_tokens=256, repeats=5, copy_gib=2.0),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vocab=512, prompts=4,
                 prompt_len=8, new_tokens=8, repeats=2, copy_gib=1 / 64),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke preset (hidden 64, 2 layers, 4 prompts x 8 + 8 tokens)")
    size = p.add_argument_group("model (default: Llama-shaped 1B)")
    size.add_argument("--hidden", type=int)
    size.add_argument("--layers", type=int)
    size.add_argument("--heads", type=int, help="query heads; head_dim = hidden / heads")
    size.add_argument("--kv-heads", type=int)
    size.add_argument("--mlp", type=int)
    size.add_argument("--vocab", type=int)
    run = p.add_argument_group("sampling and timing")
    run.add_argument("--prompts", type=int, help="prompts (rows) per call (64)")
    run.add_argument("--samples", type=int, default=1,
                     help="samples per prompt G (rows = prompts x G; default 1)")
    run.add_argument("--prompt-len", type=int, help="prompt tokens (128)")
    run.add_argument("--new-tokens", type=int, help="new tokens per row (256)")
    run.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    run.add_argument("--top-k", type=int, default=0)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--repeats", type=int, help="timed calls (5)")
    run.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                     help="weights, compute and KV cache (default bfloat16)")
    run.add_argument("--copy-gib", type=float, help="size of the bandwidth probe array (2)")
    run.add_argument("--seed", type=int, default=0)
    hf = p.add_argument_group("comparison")
    hf.add_argument("--compare-transformers", action="store_true",
                    help="also time HF transformers generate (torch, CUDA) on the same shape")
    hf.add_argument("--hf-repeats", type=int, default=2)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = p.parse_args(argv)
    for key, value in PRESETS["tiny" if args.tiny else "1b"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def model_config(args) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=args.vocab, hidden_size=args.hidden,
                       intermediate_size=args.mlp, num_layers=args.layers, num_heads=args.heads,
                       num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                       rms_norm_eps=1e-5, rope_theta=500000.0,
                       max_position_embeddings=max(2048, args.prompt_len + args.new_tokens),
                       dtype=args.dtype, param_dtype=args.dtype)


def init_params(config: ModelConfig, seed: int):
    """(graphdef, params): N(0, 0.02^2) matrices, unit norms, drawn on the device (a 1B model
    drawn on the host takes longer than the benchmark)."""
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    leaves, treedef = jax.tree.flatten(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    specs = [(v.get_value().shape, v.get_metadata()) for v in leaves]

    @jax.jit
    def draw(key):
        out = []
        for i, (shape, meta) in enumerate(specs):
            if "init_std" in meta:
                x = meta["init_std"] * jax.random.normal(jax.random.fold_in(key, i), shape,
                                                         jnp.float32)
            else:
                x = jnp.full(shape, meta.get("init_value", 0.0), jnp.float32)
            out.append(x.astype(config.weight_dtype))
        return out

    values = draw(jax.random.key(seed))
    state = jax.tree.unflatten(treedef, [v.replace(x) for v, x in zip(leaves, values)])
    return graphdef, state


def weight_bytes_per_step(params, config: ModelConfig, rows: int) -> tuple[int, int]:
    """(bytes a decode step reads from the weights, all parameter bytes)."""
    total = read = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        nbytes = leaf.size * leaf.dtype.itemsize
        total += nbytes
        name = str(getattr(path[0], "key", path[0]))
        if name == "embed" and not config.tie_word_embeddings:
            read += rows * config.hidden_size * leaf.dtype.itemsize  # gathered rows only
        else:
            read += nbytes
    return read, total


def kv_bytes_per_step(config: ModelConfig, rows: int, prompt_len: int, new_tokens: int,
                      dtype) -> float:
    """Mean bytes of valid KV cache read per decode step (step t attends P + t + 1 slots)."""
    per_slot = (config.num_layers * config.num_kv_heads * config.head_dim * 2
                * jnp.dtype(dtype).itemsize)
    mean_len = prompt_len + (new_tokens + 1) / 2
    return rows * mean_len * per_slot


def attended_slots_per_step(prompts: int, samples: int, prompt_len: int,
                            new_tokens: int) -> float:
    """Mean cache slots the decode loop attends per step: ragged segments over the generated
    slots (`sampling.sampler.ragged_segments`), the prompt read once per group of G rows."""
    start, total = 0, 0
    for end in ragged_segments(new_tokens):
        total += (end - start) * end
        start = end
    own = total / new_tokens
    rows = prompts * samples
    if samples > 1:
        return prompts * prompt_len + rows * own
    return rows * (prompt_len + own)


def copy_bandwidth(gib: float, dtype=jnp.bfloat16) -> float:
    """Device memory bandwidth in bytes/s: a jitted `x + 1` reads and writes the array once."""
    n = int(gib * 2**30) // jnp.dtype(dtype).itemsize
    x = jnp.zeros((n,), dtype)
    f = jax.jit(lambda a: a + jnp.asarray(1, dtype))
    jax.block_until_ready(f(x))
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t0)
    return 2 * n * jnp.dtype(dtype).itemsize / statistics.median(times)


def environment() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {"device_kind": dev.device_kind, "platform": dev.platform,
            "num_devices": jax.device_count(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "python": platform.python_version()}


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def time_transformers(args, prompt_ids: np.ndarray, device: str = "cuda") -> dict[str, Any]:
    """HF `generate` on the same shape (random init, bf16, on `device`)."""
    import torch
    import transformers

    if device == "cuda" and not torch.cuda.is_available():
        return {"hf_error": "torch has no CUDA device"}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=2048, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    model = transformers.LlamaForCausalLM(cfg).to(dtype=torch.bfloat16, device=device).eval()
    # G samples per prompt as G copies of each prompt row (greedy refuses
    # num_return_sequences > 1; the work is the same).
    ids = torch.as_tensor(np.repeat(prompt_ids, args.samples, axis=0), device=device,
                          dtype=torch.long)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=args.temperature > 0,
              temperature=args.temperature or None, top_k=args.top_k, top_p=args.top_p,
              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
              pad_token_id=0, eos_token_id=None)

    def call():
        with torch.inference_mode():
            out = model.generate(ids, **kw)
        sync()
        return out

    call()
    times = []
    for _ in range(args.hf_repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    new = out.shape[1] - ids.shape[1]
    t = statistics.median(times)
    return {"hf_generate_s": t, "hf_new_tokens_per_s": out.shape[0] * new / t,
            "hf_new_tokens": int(new), "hf_times_s": times,
            "transformers": transformers.__version__, "torch": torch.__version__}


def run(args) -> dict[str, Any]:
    env = environment()
    config = model_config(args)
    graphdef, params = init_params(config, args.seed)
    rows, p, n = args.prompts * args.samples, args.prompt_len, args.new_tokens
    prompt_ids = np.random.default_rng(args.seed).integers(
        0, args.vocab, (args.prompts, p), dtype=np.int32)
    ids, mask = jnp.asarray(prompt_ids), jnp.ones((args.prompts, p), jnp.int32)
    key = jax.random.key(args.seed)
    kw = dict(num_samples=args.samples, max_new_tokens=n, temperature=args.temperature,
              top_k=args.top_k, top_p=args.top_p, stop_ids=(), pad_id=0)

    t0 = time.perf_counter()
    compiled = sample_tokens.lower(graphdef, params, ids, mask, key, **kw).compile()
    compile_s = time.perf_counter() - t0

    @jax.jit
    def prefill(params, ids, mask):
        model = nnx.merge(graphdef, params)
        cache = init_cache(config, ids.shape[0], p + n)
        hidden, cache = model.hidden_states(ids, mask, cache=cache)
        return model.logits(hidden[:, -1:]), cache

    t0 = time.perf_counter()
    prefill_c = prefill.lower(params, ids, mask).compile()
    prefill_compile_s = time.perf_counter() - t0

    call = lambda: compiled(params, ids, mask, key)  # graphdef and kw are static
    out = jax.block_until_ready(call())  # untimed
    generated = int(np.asarray(out.mask).sum())
    gen_s, gen_times = _median_time(call, args.repeats)
    prefill_s, _ = _median_time(lambda: prefill_c(params, ids, mask), args.repeats)
    # Timer noise can exceed a tiny model's whole decode: then report generate as decode.
    split = gen_s > 1.05 * prefill_s
    decode_s = gen_s - prefill_s if split else gen_s

    bandwidth = copy_bandwidth(args.copy_gib)
    w_read, w_total = weight_bytes_per_step(params, config, rows)
    kv_read = kv_bytes_per_step(config, rows, p, n, args.dtype)
    # What this implementation reads: the slots its attention spans (masked beyond the valid).
    kv_full = kv_read / (rows * (p + (n + 1) / 2)) * attended_slots_per_step(
        args.prompts, args.samples, p, n)
    step_bytes = w_read + kv_read
    roofline = rows / (step_bytes / bandwidth)
    result = {
        **env, "rows": rows, "prompts": args.prompts, "samples": args.samples,
        "prompt_len": p, "new_tokens": n, "dtype": args.dtype,
        "temperature": args.temperature, "generated_tokens": generated,
        "compile_s": compile_s, "prefill_compile_s": prefill_compile_s,
        "generate_s": gen_s, "generate_times_s": gen_times, "prefill_s": prefill_s,
        "decode_s": decode_s, "decode_includes_prefill": not split,
        "decode_step_ms": 1e3 * decode_s / n,
        "new_tokens_per_s": rows * n / gen_s, "decode_tokens_per_s": rows * n / decode_s,
        "param_bytes": w_total, "weight_bytes_per_step": w_read,
        "kv_bytes_per_step": kv_read, "kv_bytes_per_step_allocated": kv_full,
        "bandwidth_bytes_per_s": bandwidth,
        "roofline_tokens_per_s": roofline,
        "roofline_fraction": rows * n / decode_s / roofline,
    }
    if args.compare_transformers:
        result.update(time_transformers(args, prompt_ids))
    return result


def report(r: dict[str, Any]) -> str:
    lines = [
        f"device: {r['device_kind']} ({r['platform']}), jax {r['jax']}",
        f"shape: {r['rows']} rows ({r['prompts']} prompts x {r['samples']}), "
        f"{r['prompt_len']} prompt + {r['new_tokens']} new tokens, {r['dtype']}",
        f"compile: sampler {r['compile_s']:.2f} s, prefill {r['prefill_compile_s']:.2f} s "
        "(excluded)",
        f"generate: {r['generate_s'] * 1e3:.1f} ms = prefill {r['prefill_s'] * 1e3:.1f} ms + "
        f"decode {r['decode_s'] * 1e3:.1f} ms ({r['decode_step_ms']:.3f} ms/step)",
        f"new tokens/s (prefill + decode): {r['new_tokens_per_s']:,.0f}",
        f"decode new tokens/s: {r['decode_tokens_per_s']:,.0f}",
        f"roofline: {r['weight_bytes_per_step'] / 1e9:.3f} GB weights + "
        f"{r['kv_bytes_per_step'] / 1e9:.3f} GB KV per step at "
        f"{r['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s measured = "
        f"{r['roofline_tokens_per_s']:,.0f} tokens/s; fraction {r['roofline_fraction']:.1%}",
        f"  (the decode loop's attention spans ragged segments of the cache: "
        f"{r['kv_bytes_per_step_allocated'] / 1e9:.3f} GB KV read per step)",
    ]
    if "hf_new_tokens_per_s" in r:
        lines.append(f"transformers {r['transformers']} generate: "
                     f"{r['hf_new_tokens_per_s']:,.0f} new tokens/s "
                     f"({r['hf_generate_s']:.2f} s); alignax / HF = "
                     f"{r['new_tokens_per_s'] / r['hf_new_tokens_per_s']:.1f}x")
    elif "hf_error" in r:
        lines.append(f"transformers: skipped ({r['hf_error']})")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
