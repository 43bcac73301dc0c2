"""`alignax plan`: per-device memory of a training run, from its config alone, before launch.

Nothing is allocated and no accelerator is needed: the models are built abstractly
(`nnx.eval_shape`), their parameters placed by the same logical-axis rules the trainer uses
(`alignax.sharding`) on an `AbstractMesh` of the planned shape, and every array's per-device
shard counted. Which models a run holds, and the batch each update sees, come from the
config: the algorithm's reference (a frozen copy, none with `reference.precompute` or LoRA),
teachers (ADPA / DCKD), a PPO critic, a reward model, MAH-DPO's heads, LoRA adapters.

Per device (each line says how it was counted):

* state, exact: parameters, AdamW's two moments (in the parameters' dtype), the frozen copies;
* gradients: one trainable-parameter-sized buffer (two with `train.grad_accum` > 1: the
  running sum);
* activations of one micro-batch, rows split over `data` x `fsdp`: what the remat policy keeps
  per layer for the backward pass (`save_dots`: the weight matmuls' outputs and the layer
  input; `full`: the layer input; `none`: every intermediate), the final hidden states, one
  layer's recomputation, attention scores `[rows, heads, S, S]` in float32 unless the
  attention is a flash kernel (`--attention flash`: cuDNN on GPU), and the chunked LM head's
  `[rows, chunk, V]` float32 logits (`train.logits_chunk`);
* rollouts (online RL), a phase of their own: the policy re-laid out for decoding (weights not
  split over `fsdp`: `sharding.decode_rules`) and the KV cache of the rollout rows.

Peak = state + max(training temporaries, rollout buffers). The estimate is checked against
XLA's compiled memory analysis of the real step on CPU fake devices (tests/test_plan.py:
within 10% for DPO, SFT and GRPO updates over data / fsdp / tensor meshes and each remat
policy). It is a plan, not a promise: XLA on a TPU or GPU fuses and schedules differently,
and leaves some memory to itself; keep a margin (`--headroom`, default 10%).

Example (1B DPO on 8 devices, pure FSDP; the command line is `alignax/plan_cli.py`):

    alignax plan --config experiments/configs/dpo.py --shape llama-1b \\
        --mesh data=1,fsdp=8 --devices 8 --device h100
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from alignax import sharding
from alignax.config import ConfigError
from alignax.models.config import ModelConfig, tiny_config

# Published architectures, for planning without a checkpoint directory (`--shape NAME`).
SHAPES: dict[str, dict[str, Any]] = {
    # The Llama-shaped 1B of benchmarks/train_step.py.
    "llama-1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                     num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128),
    "llama3-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                       num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128),
    "qwen2.5-7b": dict(family="qwen2", vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                       head_dim=128, qkv_bias=True),
}

# Memory per chip (GiB) as the runtime reports it, and whether attention runs as a flash
# kernel there by default (cuDNN on GPU with bf16; XLA's materialised scores on TPU / CPU).
DEVICES: dict[str, tuple[float, bool]] = {
    "h100": (79.2, True), "h200": (139.8, True), "a100": (79.2, True),
    "v5e": (15.75, False), "v5p": (95.74, False), "v4": (32.0, False), "v6e": (31.25, False),
}

ALGORITHM_ROWS = {"pairs": 2, "unpaired": 1, "sft": 1}  # sequences per batch entry offline


def _bytes(dtype) -> int:
    return jnp.dtype(dtype).itemsize


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ------------------------------------------------------------------------------ the mesh

def abstract_mesh(axes: Mapping[str, int], devices: int) -> AbstractMesh:
    """The planned mesh (`{"data": 2, "fsdp": -1, ...}`, -1 = the rest) over `devices`."""
    sizes = sharding.resolve_mesh_shape(axes, num_devices=devices)
    if math.prod(sizes.values()) != devices:
        raise ConfigError(f"mesh {sizes} uses {math.prod(sizes.values())} devices, not the "
                          f"{devices} of --devices")
    return AbstractMesh(tuple(sizes.values()), tuple(sizes))


def shard_bytes(tree, mesh, *, dtype=None, rules=None) -> int:
    """Bytes of one device's shard of every array in `tree` (an abstract NNX state or module),
    placed by the logical-axis rules (`rules`, default the trainer's), in `dtype` if given."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    shardings = sharding.tree_shardings(tree, mesh=mesh, rules=rules)
    return sum(math.prod(s.shard_shape(np.shape(x))) * _bytes(dtype or x.dtype)
               for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True))


# ----------------------------------------------------------------------- the workload

@dataclasses.dataclass
class Workload:
    """What one training step holds and computes, read off a config (`workload_of`).

    Attributes:
      algorithm: the config's algorithm. model: the policy's `ModelConfig`.
      rows: sequences per optimizer update (global), forward + backward; seq_len: tokens each.
      grad_accum: micro-batches per update. chunk: `train.logits_chunk`.
      lora_rank / lora_targets: LoRA adapters (rank 0 = full fine-tuning).
      reference: dtype of a frozen copy of the policy, or None.
      frozen: other frozen models, `(what, ModelConfig, dtype)` (teachers, reward model).
      critic: PPO's trainable value model (a copy of the trunk + a head).
      heads: MAH-DPO's LM heads (0 = the plain LM head).
      rollout: online RL, `(rows, total tokens)` generated per rollout batch (global).
    """

    algorithm: str
    model: ModelConfig
    rows: int
    seq_len: int
    grad_accum: int = 1
    chunk: int = 128
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()
    reference: str | None = None
    frozen: list[tuple[str, ModelConfig, str]] = dataclasses.field(default_factory=list)
    critic: bool = False
    heads: int = 0
    rollout: tuple[int, int] | None = None


def _model_config(section, shape: str = "") -> ModelConfig:
    """A model section's `ModelConfig` without loading weights: `--shape`, else `path`'s
    config.json, else the named tiny model with its overrides."""
    kw = {k: section[k] for k in ("dtype", "param_dtype", "remat") if section.get(k)}
    if shape:
        if shape not in SHAPES:
            raise ConfigError(f"--shape {shape!r}: known shapes are {sorted(SHAPES)}")
        base = dict(family="llama", rms_norm_eps=1e-5, rope_theta=500000.0,
                    max_position_embeddings=131072)
        return ModelConfig(**{**base, **SHAPES[shape], **kw})
    if section.get("path"):
        path = os.path.join(section.path, "config.json")
        if not os.path.exists(path):
            raise ConfigError(f"config field 'model.path': {section.path} has no config.json")
        with open(path, encoding="utf-8") as f:
            return dataclasses.replace(ModelConfig.from_hf(json.load(f)), **kw)
    return tiny_config(section.get("name", "llama"), **{**dict(section.get("overrides") or {}),
                                                        **kw})


def workload_of(cfg, *, shape: str = "") -> Workload:
    """The `Workload` a resolved config trains (the policy's shape from `shape` if given)."""
    from alignax.algorithms import ALGORITHMS  # the registry imports the trainers
    algo = ALGORITHMS[cfg.algorithm]
    model = _model_config(cfg.model, shape)
    d, t = cfg.data, cfg.train
    lora_rank = int(cfg.lora.rank) if "lora" in cfg else 0
    dtype = model.param_dtype
    ref_dtype = (cfg.reference.dtype or dtype) if "reference" in cfg else dtype
    w = Workload(algorithm=cfg.algorithm, model=model, rows=t.batch_size, seq_len=0,
                 grad_accum=t.grad_accum, chunk=t.logits_chunk, lora_rank=lora_rank,
                 lora_targets=tuple(cfg.lora.targets) if lora_rank else ())
    prompt = d.max_prompt_length or (512 if d.path else 8)
    completion = d.max_completion_length or (512 if d.path else 6)
    if algo.data == "prompts":
        r = cfg.rollout
        env = cfg.get("environment")
        if env is not None and env.name:
            width = env.max_total_tokens or env.max_turns * (
                (env.max_turn_tokens or r.max_new_tokens) + env.max_observation_chars + 8)
        else:
            width = r.max_new_tokens
        rows = t.batch_size * r.num_generations
        w.rows, w.seq_len = rows // r.num_minibatches, prompt + width
        # Continuous batching (`rollout.slots`) holds a KV cache for its slots (all of them,
        # whatever the number of requests).
        w.rollout = (r.slots if r.get("slots") else rows, prompt + width)
        loss = cfg.loss
        needs_ref = bool(loss.get("beta") or loss.get("kl_coef"))
        w.reference = ref_dtype if needs_ref and not lora_rank else None
        w.critic = cfg.algorithm == "ppo"
        if cfg.reward.model_path:
            w.frozen.append(("reward model", _model_config(
                {"path": cfg.reward.model_path}), dtype))
    else:
        w.rows = t.batch_size * ALGORITHM_ROWS[algo.data]
        if cfg.algorithm == "kto":
            w.rows *= 2  # the mismatched (prompt, completion) rows of the KL estimate
        w.seq_len = prompt + completion
        if d.packing and d.pack_width:
            w.seq_len = d.pack_width
        precompute = "reference" in cfg and cfg.reference.precompute
        if algo.reference == "policy" and not precompute and not lora_rank:
            reference_free = bool(cfg.loss.get("reference_free"))
            w.reference = None if reference_free else ref_dtype
        if algo.reference == "teachers" and not cfg.teacher.precompute:
            tc = cfg.teacher
            teacher = _model_config(tc if tc.path else
                                    {"name": tc.name, "overrides": tc.overrides}, "")
            tdtype = tc.dtype or dtype
            w.frozen.append(("teacher", teacher, tdtype))
            if cfg.algorithm == "adpa":
                w.frozen.append(("teacher reference", teacher, tdtype))
        if cfg.algorithm == "mah_dpo":
            objectives = len(d.objectives) or 2
            w.heads = cfg.heads.num_heads or objectives
    return w


# ----------------------------------------------------------------------- the estimate

@dataclasses.dataclass
class Line:
    what: str
    bytes: int
    how: str
    phase: str = "state"  # state | train | rollout


@functools.lru_cache(maxsize=8)
def _abstract_model(config: ModelConfig):
    from alignax.models.transformer import Transformer
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def _lora_params(config: ModelConfig, rank: int, targets: Sequence[str]) -> int:
    """Per-device bytes of the adapters (A `[L, *in, r]`, B `[L, r, *out]`, param dtype)."""
    e, f = config.hidden_size, config.intermediate_size
    n, k, d = config.num_heads, config.num_kv_heads, config.head_dim
    dims = {"q_proj": (e, n * d), "k_proj": (e, k * d), "v_proj": (e, k * d),
            "o_proj": (n * d, e), "gate": (e, f), "up": (e, f), "down": (f, e)}
    total = sum(rank * sum(dims[name]) for name in targets if name in dims)
    return total * config.num_layers * _bytes(config.param_dtype)  # small: replicated bound


def estimate(w: Workload, mesh, *, flash: bool = False) -> list[Line]:
    """Per-device memory lines of workload `w` on `mesh` (see the module docstring)."""
    cfg = w.model
    sizes = dict(mesh.shape)
    dp, tp = sizes.get("data", 1) * sizes.get("fsdp", 1), sizes.get("tensor", 1)
    abstract = _abstract_model(cfg)
    params = shard_bytes(abstract, mesh)
    lines = [Line("policy parameters", params, f"{cfg.param_dtype}, sharded by the rules")]
    trainable = params
    if w.lora_rank:
        trainable = _lora_params(cfg, w.lora_rank, w.lora_targets)
        lines.append(Line("LoRA adapters", trainable, f"rank {w.lora_rank}, replicated bound"))
    if w.heads:
        heads = w.heads * cfg.hidden_size * cfg.vocab_size * _bytes(cfg.param_dtype)
        heads //= max(1, sizes.get("fsdp", 1) * tp)
        lines.append(Line(f"MAH-DPO heads x{w.heads}", heads, "[H, E, V], sharded E / V"))
        trainable += heads
    if w.critic:
        critic = params + cfg.hidden_size * _bytes(cfg.param_dtype)
        lines.append(Line("critic (trunk + value head)", critic, "a trainable copy"))
        trainable += critic
    lines.append(Line("AdamW moments", 2 * trainable, "mu + nu, as the parameters"))
    if w.reference:
        ref = shard_bytes(abstract, mesh, dtype=w.reference)
        lines.append(Line("reference copy", ref, f"frozen, {w.reference}"))
    for what, mcfg, dtype in w.frozen:
        lines.append(Line(what, shard_bytes(_abstract_model(mcfg), mesh, dtype=dtype),
                          f"frozen, {dtype}"))
    lines.append(Line("gradients", trainable * (2 if w.grad_accum > 1 else 1),
                      "trainable size" + (" x 2 (accumulator)" if w.grad_accum > 1 else ""),
                      "train"))
    lines += _activations(w, dp, tp, flash, sp=sizes.get("sequence", 1))
    if sizes.get("fsdp", 1) * sizes.get("sequence", 1) > 1:  # the running layer, gathered
        lines.append(Line("gathered layer weights", _layer_bytes(cfg) // tp,
                          "one layer's weights, unsplit over fsdp", "train"))
    if w.rollout is not None:
        lines += _rollout(w, mesh, abstract, dp, tp)
    return lines


def _layer_bytes(cfg: ModelConfig) -> int:
    e, f = cfg.hidden_size, cfg.intermediate_size
    n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return (e * (n + 2 * k) * d + n * d * e + 3 * e * f) * _bytes(cfg.param_dtype)


def _activations(w: Workload, dp: int, tp: int, flash: bool, sp: int = 1) -> list[Line]:
    cfg = w.model
    rows = w.rows // w.grad_accum
    if rows % dp:
        raise ConfigError(f"{rows} rows per micro-batch do not split over the "
                          f"{dp} data-parallel devices")
    tokens = rows // dp * w.seq_len // sp  # a sequence axis splits every row's tokens
    c = _bytes(cfg.dtype)
    e, f, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim / tp
    heads = cfg.num_heads / tp
    dots = qkv + 2 * e + 2 * f / tp  # q, k, v, attention out-projection, gate, up, down
    every = 2 * qkv + cfg.num_heads * cfg.head_dim / tp + 6 * e + 4 * f / tp  # + norms, RoPE
    scores = 0 if flash else 2 * heads * w.seq_len * 4  # float32 scores and probabilities
    # What the backward pass finds saved per token and layer, in the compute dtype.
    kept = {"full": e, "save_dots": e + dots,
            "none": e + 1.25 * every + 1.5 * scores / c}[cfg.remat]
    lines = [Line(f"saved activations ({cfg.remat})", int(tokens * kept * c * layers),
                  f"{rows // dp} rows x {w.seq_len} tokens x {layers} layers", "train")]
    # The layer being differentiated: its recomputed intermediates (save_dots: the norms,
    # RoPE, attention and the MLP's activation; full: everything) and attention's scores.
    recompute = {"full": every, "save_dots": 3 * e + 2 * f / tp, "none": 0}[cfg.remat]
    layer = tokens * (recompute * c + (scores if cfg.remat != "none" else 0))
    if sp > 1:  # the keys and values gathered whole along the sequence
        layer += rows // dp * w.seq_len * 2 * cfg.num_kv_heads * cfg.head_dim / tp * c
    lines.append(Line("one layer's backward", int(layer + tokens * 2 * e * c),
                      "recomputed intermediates" + ("" if flash else " + S x S scores"),
                      "train"))
    chunk = min(w.chunk, w.seq_len)
    head = rows // dp * chunk * v / tp * 4 * 2 * (w.heads or 1)
    lines.append(Line("LM head chunk", int(head + tokens * e * (c + 4)),
                      f"{chunk} tokens x V float32 x 2, final hidden states", "train"))
    return lines


def _rollout(w: Workload, mesh, abstract, dp: int, tp: int) -> list[Line]:
    cfg = w.model
    rows, width = w.rollout
    c = _bytes(cfg.dtype)
    decode = shard_bytes(abstract, mesh, dtype=cfg.dtype, rules=sharding.decode_rules())
    kv = (math.ceil(rows / dp) * width * cfg.num_layers * 2 * cfg.num_kv_heads
          * cfg.head_dim * c)
    kv //= tp if cfg.num_kv_heads % tp == 0 else 1
    logits = math.ceil(rows / dp) * cfg.vocab_size * 4 * 2
    return [Line("decode weights", decode, f"the policy in {cfg.dtype}, not split over fsdp",
                 "rollout"),
            Line("KV cache", int(kv), f"{rows} rows x {width} tokens, {cfg.dtype}", "rollout"),
            Line("decode logits", logits, "one step, float32", "rollout")]


def peak(lines: Sequence[Line]) -> int:
    """State + the larger of the training and the rollout phase's temporaries."""
    state = sum(x.bytes for x in lines if x.phase == "state")
    return state + max(sum(x.bytes for x in lines if x.phase == p) for p in ("train", "rollout"))


# ------------------------------------------------------------------------------ meshes

def candidate_meshes(devices: int, *, max_tensor: int = 8,
                     max_sequence: int = 1) -> list[dict[str, int]]:
    """Every `data x fsdp x tensor (x sequence) = devices` split, tensor and sequence powers
    of two <= `max_tensor` / `max_sequence` (sequence only where > 1: long sequences)."""
    out = []
    sequence = 1
    while sequence <= min(max_sequence, devices):
        tensor = 1
        while tensor <= min(max_tensor, devices // sequence):
            if devices % (tensor * sequence) == 0:
                rest = devices // (tensor * sequence)
                for fsdp in range(1, rest + 1):
                    if rest % fsdp == 0:
                        axes = {"data": rest // fsdp, "fsdp": fsdp, "tensor": tensor}
                        out.append(axes if sequence == 1 else {**axes, "sequence": sequence})
            tensor *= 2
        sequence *= 2
    return out


# Sequences at least this long are also planned with a `sequence` axis (up to 8).
LONG_SEQUENCE = 4096


def parse_mesh(text: str) -> dict[str, int]:
    """`"data=2,fsdp=-1"` -> `{"data": 2, "fsdp": -1}` (ConfigError naming the entry)."""
    axes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.partition("=")
        try:
            axes[name.strip()] = int(size)
        except ValueError:
            raise ConfigError(f"--mesh entry {part!r} is not AXIS=SIZE") from None
    return axes


def mesh_text(sizes: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def plan_mesh(w: Workload, axes: Mapping[str, int], devices: int, *,
              flash: bool) -> dict[str, Any]:
    """`{"mesh", "lines", "peak"}` of workload `w` on one mesh (ConfigError if it cannot run)."""
    mesh = abstract_mesh(axes, devices)
    try:
        lines = estimate(w, mesh, flash=flash)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {"mesh": dict(mesh.shape), "lines": lines, "peak": peak(lines)}


def count_parameters(config: ModelConfig) -> int:
    state = nnx.state(_abstract_model(config), nnx.Param)
    return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(state))
