"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685) for the alignax transformer.

A targeted projection `y = x W` with `W` of shape `[*in, *out]` (q `[E, N, D]`, k/v
`[E, K, D]`, o `[N, D, E]`, gate/up `[E, F]`, down `[F, E]`) becomes

    y = x W + (alpha / r) * (dropout(x) A) B,    A: [*in, r],  B: [r, *out]

i.e. `W + (alpha / r) A B` factored over the flattened input and output dimensions. A starts
Kaiming-uniform as in PEFT (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, fan_in = prod(in)), B at
zero, so a model with fresh adapters computes exactly the base model's outputs.

Adapters are `LoRAAdapter` submodules stored next to the weight they adapt (`attn.q_proj` ->
`attn.q_proj_lora.{a, b}`), stacked on the leading `layers` axis like the base weights, so the
layer scan, remat, the KV-cache paths (`prefill` / `extend` / `decode_step`) and the sampler's
unrolled decode loop all run them through the same `DecoderLayer.__call__`. Their weights are
`LoRA` variables (a subclass of `nnx.Param`) carrying logical axis names: A has the base
weight's (`layers` +) input names then `None` for the rank, B `None` then the output names.

The low-rank path is computed factored, `(x A) B`, never by materialising `W + s A B`: with
the base frozen, the backward pass then needs no `[*in, *out]` weight gradient at all, and a
decode step costs `O(rows * (in + out) * r)` extra instead of `O(in * out * r)` per weight.
(XLA cost analysis of one scanned layer, E=1024, F=4096, 4096 tokens, r=16: a training
step takes 285 GFLOP factored vs 402 merged vs 401 full fine-tuning; a decode step of 8 rows
0.3 vs 0.8 GFLOP.)
The adapted projection's output is tagged `LORA_OUT`, which the transformer's "save_dots"
remat policy saves instead of the two matmul outputs `x W` and `(x A) B`.
`merge_lora` folds the adapters into the weights once (HF export, fast sampling).

Training only the adapters, the base stored once:

    model = add_lora(from_hf(path), rank=16, alpha=32.0)
    graphdef, adapters, base = split_lora(model)     # adapters: params; base: frozen
    loss = lambda adapters: objective(nnx.merge(graphdef, adapters, base))
    grads = jax.grad(loss)(adapters)                 # optimizer state for adapters only
    reference = nnx.merge(nnx.graphdef(remove_lora(model)), base)   # the frozen base model
    to_hf(merge_lora(nnx.merge(graphdef, adapters, base)), out_dir)

Dropout on the adapter input (PEFT's `lora_dropout`, one independent mask per target) runs
only when the forward is given an explicit key (`model(ids, dropout_rng=key)`,
`model.hidden_states(..., dropout_rng=key)`); without one the forward is deterministic
(evaluation, decoding, sampling). The key is split per layer inside the scan, so remat
recomputes the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down")
SUFFIX = "_lora"  # attribute of the adapter of weight `w`: `w_lora`
LORA_OUT = "lora_out"  # checkpoint name of an adapted projection's output

__all__ = ["DEFAULT_TARGETS", "LoRA", "LoRAAdapter", "add_lora", "has_lora", "lora_project",
           "lora_state", "merge_lora", "remove_lora", "split_lora"]


class LoRA(nnx.Param):
    """An adapter weight (A or B). A subclass of `nnx.Param`, so `nnx.state(m, nnx.Param)`
    still sees every parameter, and `nnx.split(m, LoRA, ...)` separates the adapters."""


class LoRAAdapter(nnx.Module):
    """The low-rank update `scale * A B` of one (possibly layer-stacked) weight.

    Attributes:
      a: `LoRA` `[*lead, *in, r]` (`lead` = `[L]` for the stacked decoder layers).
      b: `LoRA` `[*lead, r, *out]`.
      scale: alpha / r (static).
      dropout: dropout rate on the adapter input (static); applied only with a key.
      num_in: number of input dimensions of the base weight (static).
    """

    def __init__(self, a: LoRA, b: LoRA, *, scale: float, dropout: float, num_in: int):
        self.a, self.b = a, b
        self.scale, self.dropout, self.num_in = float(scale), float(dropout), int(num_in)

    @property
    def rank(self) -> int:
        return self.a.get_value().shape[-1]

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """`scale * (dropout(x) A) B` in x's dtype.

        Args:
          x: `[..., *in]` input of the projection (per layer: `a` without `lead` dims).
          rng: dropout key, or None for no dropout.
        Returns:
          `[..., *out]`, to add to `x W`.
        """
        if rng is not None and self.dropout > 0.0:
            keep = jax.random.bernoulli(rng, 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - self.dropout), x.dtype),
                          jnp.zeros_like(x))
        u = jnp.tensordot(x, self.a[...].astype(x.dtype), axes=self.num_in)  # [..., r]
        u = u * jnp.asarray(self.scale, u.dtype)
        return jnp.tensordot(u, self.b[...].astype(x.dtype), axes=1)

    def weight_delta(self) -> jax.Array:
        """`scale * A B` as a float32 `[*lead, *in, *out]` weight (exact float32 products)."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        r = a.shape[-1]
        lead = a.shape[:a.ndim - 1 - self.num_in]
        in_shape, out_shape = a.shape[len(lead):-1], b.shape[len(lead) + 1:]
        a2 = a.reshape(*lead, math.prod(in_shape), r)
        b2 = b.reshape(*lead, r, math.prod(out_shape))
        w = jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST)
        return self.scale * w.reshape(*lead, *in_shape, *out_shape)


def lora_project(module: nnx.Module, name: str, x: jax.Array, y: jax.Array,
                 rng: jax.Array | None = None) -> jax.Array:
    """`y + adapter(x)` when `module.<name>` has an adapter, else `y` itself (no op added).

    Called by the layers right after each targeted projection `y = x W`.

    Args:
      module: an `Attention` / `MLP` (anything with `LORA_TARGETS`).
      name: the weight's attribute, e.g. "q_proj".
      x: `[..., *in]` projection input; y: `[..., *out]` its output `x W`.
      rng: the module's dropout key (folded with the target's index), or None.
    """
    adapter = vars(module).get(name + SUFFIX)
    if adapter is None:
        return y
    if rng is not None:
        rng = jax.random.fold_in(rng, list(type(module).LORA_TARGETS).index(name))
    # Named so that remat="save_dots" saves the sum (one activation) instead of the two
    # matmul outputs it would otherwise keep (`x W` and the low-rank term).
    return checkpoint_name(y + adapter(x, rng).astype(y.dtype), LORA_OUT)


def _adaptable(model: nnx.Module) -> list[tuple[tuple, nnx.Module]]:
    """`(path, module)` of every module that declares `LORA_TARGETS` (Attention, MLP)."""
    return [(path, m) for path, m in nnx.iter_modules(model)
            if isinstance(getattr(type(m), "LORA_TARGETS", None), dict)]


def has_lora(model: nnx.Module) -> bool:
    """Whether any adapter is attached."""
    return any(isinstance(m, LoRAAdapter) for _, m in nnx.iter_modules(model))


def uses_dropout(model: nnx.Module) -> bool:
    """Whether any attached adapter has `dropout > 0` (else a dropout key changes nothing and
    the forward ignores it, compiling exactly the program it compiles without one)."""
    return any(isinstance(m, LoRAAdapter) and m.dropout > 0.0
               for _, m in nnx.iter_modules(model))


def _names(variable, ndim: int) -> tuple:
    names = variable.get_metadata().get("out_sharding")
    return tuple(names) if names and len(names) == ndim else (None,) * ndim


def add_lora(model: nnx.Module, *, rank: int, alpha: float,
             targets: Iterable[str] = DEFAULT_TARGETS, dropout: float = 0.0, seed: int = 0,
             dtype=jnp.float32) -> nnx.Module:
    """Attaches LoRA adapters to `model` in place and returns it.

    Every targeted weight `W [*lead, *in, *out]` of every attention / MLP module (for a
    `Transformer`: all layers at once, stacked like the base weights) gets
    `A [*lead, *in, rank]` ~ Kaiming-uniform `U(-1/sqrt(prod(in)), 1/sqrt(prod(in)))` (PEFT's
    default) and `B [*lead, rank, *out]` = 0, scaled by `alpha / rank`. Fresh adapters leave
    every output unchanged. Traceable (`nnx.eval_shape`, `jax.jit`): A is drawn with
    `jax.random` from `seed`.

    Args:
      model: a `Transformer` (or a model containing one: `MultiHeadLM`, `Critic`, ...).
      rank: r > 0.
      alpha: the scale numerator (scale = alpha / rank).
      targets: weight names among q_proj, k_proj, v_proj, o_proj (attention) and gate, up,
        down (MLP).
      dropout: rate in [0, 1) on the adapter input; applied only when the forward gets a key.
      seed: seed of A.
      dtype: storage dtype of A and B (float32 master weights by default).
    Returns:
      `model`, with an adapter `w_lora` next to each targeted weight `w`.
    Raises:
      ValueError: bad rank / alpha / dropout, unknown or no targets, adapters already there.
    """
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not math.isfinite(float(alpha)) or float(alpha) <= 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    targets = (targets,) if isinstance(targets, str) else tuple(dict.fromkeys(targets))
    modules = _adaptable(model)
    known = list(dict.fromkeys(t for _, m in modules for t in type(m).LORA_TARGETS))
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention / MLP weights to adapt")
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        raise ValueError(f"unknown LoRA targets {unknown or '()'}; known targets: {known}")
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters (merge_lora or remove_lora "
                         "them first)")
    key = jax.random.key(seed)
    for i, (_, module) in enumerate(modules):
        for j, (name, (n_in, n_out)) in enumerate(type(module).LORA_TARGETS.items()):
            if name not in targets:
                continue
            w = getattr(module, name)
            shape, names = w.get_value().shape, _names(w, w.get_value().ndim)
            n_lead = len(shape) - n_in - n_out
            lead, ins, outs = shape[:n_lead], shape[n_lead:n_lead + n_in], shape[n_lead + n_in:]
            bound = 1.0 / math.sqrt(math.prod(ins))
            a = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, i), j),
                                   (*lead, *ins, rank), jnp.float32, -bound, bound)
            a_names = names[:n_lead + n_in] + (None,)
            b_names = names[:n_lead] + (None,) + names[n_lead + n_in:]
            adapter = LoRAAdapter(
                LoRA(a.astype(dtype), out_sharding=a_names, eager_sharding=False),
                LoRA(jnp.zeros((*lead, rank, *outs), dtype), out_sharding=b_names,
                     eager_sharding=False),
                scale=float(alpha) / rank, dropout=dropout, num_in=n_in)
            setattr(module, name + SUFFIX, adapter)
    return model


def _without_adapters(model: nnx.Module, merge: bool) -> nnx.Module:
    model = nnx.clone(model)  # fresh module objects; arrays are shared, not copied
    for _, module in _adaptable(model):
        for name in type(module).LORA_TARGETS:
            adapter = vars(module).get(name + SUFFIX)
            if adapter is None:
                continue
            if merge:
                w = getattr(module, name)
                value = w.get_value()
                merged = value.astype(jnp.float32) + adapter.weight_delta()
                setattr(module, name, w.replace(merged.astype(value.dtype)))
            delattr(module, name + SUFFIX)
    return model


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A plain model (no adapters) with every adapted weight `W + (alpha / r) A B`.

    The sum is formed in float32 and cast back to the weight's dtype (one rounding for
    bfloat16 weights). `model` itself is unchanged. Use it before `to_hf` (which only writes
    the base weights) and for sampling without the adapter matmuls. Traceable.
    """
    return _without_adapters(model, merge=True)


def remove_lora(model: nnx.Module) -> nnx.Module:
    """The base model: `model` without its adapters (base weights shared, not copied)."""
    return _without_adapters(model, merge=False)


def lora_state(model: nnx.Module) -> nnx.State:
    """The adapters' weights, `nnx.state(model, LoRA)` (paths like
    `layers/attn/q_proj_lora/a`)."""
    return nnx.state(model, LoRA)


def split_lora(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`(graphdef, adapters, base)`: `nnx.split(model, LoRA, ...)`.

    `adapters` holds the `LoRA` weights (what to train), `base` everything else (frozen;
    the same paths as the state of `remove_lora(model)`). `nnx.merge(graphdef, adapters,
    base)` rebuilds the adapted model.
    """
    if not has_lora(model):
        raise ValueError("the model has no LoRA adapters (call add_lora first)")
    return nnx.split(model, LoRA, ...)


# ------------------------------------------------------------------------------- parameter trees

def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _key(entry) -> object:
    return getattr(entry, "key", getattr(entry, "name", entry))


def lora_trainable(params) -> object:
    """The trainable mask of LoRA training over a parameter tree (an `nnx.State`, or a dict of
    them such as `{"policy": ..., "critic": ...}`): a pytree of bools, one per variable.

    True for every `LoRA` weight, False for the rest of each adapted transformer (every
    variable under the path prefix above the `layers` of an adapter: embeddings, base
    weights, norms, LM head), True for everything else (a reward model's score head, a
    critic's value head, MAH-DPO's heads: small modules trained in full, as PEFT's
    `modules_to_save`). A tree without adapters is all True.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_variable)
    roots = set()
    for path, leaf in flat:
        if isinstance(leaf, LoRA):
            keys = [_key(k) for k in path]
            roots.add(tuple(keys[:keys.index("layers")]) if "layers" in keys else ())
    mask = []
    for path, leaf in flat:
        keys = tuple(_key(k) for k in path)
        frozen = not isinstance(leaf, LoRA) and any(keys[:len(r)] == r for r in roots)
        mask.append(not frozen)
    return jax.tree_util.tree_unflatten(treedef, mask)


def lora_base_params(params) -> object:
    """`params` with every adapter's `b` at zero: the frozen base model's outputs exactly
    (`(x A) 0 = 0`), without a second copy of the base weights. Traceable; used as the
    reference of LoRA runs (DPO, KTO, GRPO's KL: "the starting policy" is the base)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_variable)
    out = []
    for path, leaf in flat:
        if isinstance(leaf, LoRA) and _key(path[-1]) == "b":
            leaf = leaf.replace(jnp.zeros_like(leaf.get_value()))
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)
