"""Meshes, logical-axis rules, shardings for parameters / optimizer state / batches, multi-host.

One table (`DEFAULT_RULES`) maps the logical axis names that parameters and activations carry
(`batch`, `seq`, `embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, `layers`) to the mesh
axes `data`, `fsdp`, `tensor` and, when asked for, `sequence` (context parallelism: `seq` ->
`sequence`; MaxText style). Everything else is derived from it:

* `make_mesh({"data": -1, "fsdp": 1, "tensor": 1})`: a mesh with Auto axes (-1 = the rest).
* `logical_to_spec(("embed", "mlp"), shape=(512, 2048), mesh=mesh)`: a `PartitionSpec`.
* `param_shardings(params, mesh=mesh)`: one `NamedSharding` per leaf, names read from the NNX
  variable metadata (`out_sharding`) or given as a pytree of name tuples.
* `opt_state_shardings(opt_state, params=..., params_shardings=..., mesh=mesh)`: optimizer
  moments follow their parameter, counters are replicated.
* `batch_sharding(mesh)`, `host_local_to_global(local_batch, mesh=mesh)`: the data side.
* `constrain(x, ("batch", "seq", "embed"))`: activations; a no-op when no mesh is set.
* `init_sharded(init_fn, mesh=mesh)`: shapes from `jax.eval_shape`, values created directly in
  their shardings by `jax.jit(out_shardings=...)`; no full replica on any one host.
* `initialize_distributed(...)`: multi-host start-up.

Resolution rules (`logical_to_spec`), applied dimension by dimension, left to right:

1. a name maps to one mesh axis, a tuple of mesh axes, or `None` (replicated);
2. mesh axes of size 1 or absent from the mesh are dropped (same layout, simpler spec);
3. a mesh axis already used by an earlier dimension of the same array is dropped, so
   `("batch", "seq", "embed")` gives `P(("data", "fsdp"), None, None)` although `embed` maps to
   `fsdp` for parameters (FSDP: weights sharded over `fsdp`, activations over the batch);
4. a dimension not divisible by the product of its mesh axes keeps the longest prefix of those
   axes that divides it, and is replicated if none does: an odd vocabulary or a 6-head model
   runs (less sharded) instead of failing. Batches are the exception: `check_batch_size` raises.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# Axes a mesh has only when asked for: `sequence` splits activations along the sequence
# (context parallelism: long completions; attention gathers the keys and values).
OPTIONAL_AXES = ("sequence",)
DEFAULT_MESH = {"data": -1, "fsdp": 1, "tensor": 1}

Rules = Mapping[str, str | tuple[str, ...] | None]

DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    # Activations: the batch is split over every data-parallel axis (FSDP is data parallelism
    # with sharded weights); the sequence over `sequence` when the mesh has that axis.
    "batch": ("data", "fsdp"),
    "seq": "sequence",
    # Weights: the model dimension is sharded over `fsdp` and, when the mesh has one, the
    # `sequence` axis (its devices hold the same rows: FSDP over them too; gathered per
    # layer), the wide dimensions over `tensor` (Megatron-style column/row parallelism).
    "embed": ("fsdp", "sequence"),
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "vocab": "tensor",
    "layers": None,
}

_RULES_STACK: list[Rules] = []


@contextlib.contextmanager
def axis_rules(rules: Rules):
    """Makes `rules` the default for `constrain` and friends inside the block."""
    _RULES_STACK.append(dict(rules))
    try:
        yield
    finally:
        _RULES_STACK.pop()


def current_rules() -> Rules:
    """The innermost `axis_rules` table, else `DEFAULT_RULES`."""
    return _RULES_STACK[-1] if _RULES_STACK else DEFAULT_RULES


# ----------------------------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------------------------


def resolve_mesh_shape(axes: Mapping[str, int] | None, *, num_devices: int) -> dict[str, int]:
    """Resolves a `{axis: size}` dict (-1 = the remaining devices) to concrete sizes.

    Args:
      axes: sizes for a subset of `MESH_AXES` (+ `OPTIONAL_AXES`); missing axes get 1. At
        most one -1.
      num_devices: devices available.
    Returns:
      `{"data": d, "fsdp": f, "tensor": t}` in that order, then `"sequence"` if asked for.
    Raises:
      ValueError: unknown axis, bad size, or a mesh larger than `num_devices`.
    """
    axes = dict(DEFAULT_MESH if axes is None else axes)
    known = MESH_AXES + OPTIONAL_AXES
    unknown = sorted(set(axes) - set(known))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; known axes are {list(known)}")
    sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
    sizes.update({name: int(axes[name]) for name in OPTIONAL_AXES if name in axes})
    free = [name for name, size in sizes.items() if size == -1]
    bad = {name: size for name, size in sizes.items() if size < 1 and size != -1}
    if bad or len(free) > 1:
        raise ValueError(f"mesh sizes must be positive with at most one -1, got {axes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {axes}: cannot give the -1 axis {free[0]!r} the remaining devices, "
                f"{num_devices} devices are not divisible by the fixed axes' product {fixed}")
        sizes[free[0]] = num_devices // fixed
    elif fixed > num_devices:
        shape = " x ".join(f"{n}={s}" for n, s in sizes.items())
        raise ValueError(
            f"mesh {shape} needs {fixed} devices but only {num_devices} are available")
    return sizes


def make_mesh(axes: Mapping[str, int] | None = None, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes `("data", "fsdp", "tensor")` (+ `"sequence"` when `axes` names it; all
    `AxisType.Auto`) from a config dict.

    Auto axes let `jax.jit(in_shardings=..., out_shardings=...)` and `constrain` place data
    while XLA propagates the rest; they behave the same at jax 0.10 and 0.11.

    Args:
      axes: e.g. `{"data": -1, "fsdp": 2, "tensor": 1}`; -1 takes the remaining devices.
        Defaults to pure data parallelism.
      devices: defaults to `jax.devices()` (all processes). A mesh smaller than the device
        list uses its first devices (single-process only).
    Returns:
      the `Mesh`.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(axes, num_devices=len(devices))
    n = math.prod(sizes.values())
    if n < len(devices) and jax.process_count() > 1:
        raise ValueError(
            f"mesh {sizes} uses {n} of {len(devices)} devices; with "
            f"{jax.process_count()} processes the mesh must span every device")
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes), devices=devices[:n],
                         axis_types=(AxisType.Auto,) * len(sizes))


def _mesh_shape(mesh) -> Mapping[str, int]:
    """`{axis: size}` of a `Mesh` or `AbstractMesh`."""
    return dict(mesh.shape)


# ----------------------------------------------------------------------------------------------
# Logical names -> PartitionSpec
# ----------------------------------------------------------------------------------------------


def decode_rules(rules: Rules | None = None) -> Rules:
    """`rules` with no weight sharded over a data-parallel axis (those of `batch`, e.g.
    `fsdp`, and of `seq`); tensor-parallel splits and the batch stay.

    The layout a decode loop wants: each generated token reads every weight, so FSDP-sharded
    weights would be all-gathered again at every token. Resharding once before the loop
    (device to device) costs one gather per rollout instead.
    """
    rules = dict(current_rules() if rules is None else rules)
    dp = set(_rule_axes("batch", rules))
    if "seq" in rules:
        dp |= set(_rule_axes("seq", rules))
    out: dict[str, str | tuple[str, ...] | None] = {}
    for name, axes in rules.items():
        if name == "batch":
            out[name] = axes
            continue
        kept = tuple(a for a in _rule_axes(name, rules) if a not in dp)
        out[name] = None if not kept else kept[0] if len(kept) == 1 else kept
    return out


def _rule_axes(name: str, rules: Rules) -> tuple[str, ...]:
    if name not in rules:
        raise KeyError(f"unknown logical axis {name!r}; the rules table knows {sorted(rules)}")
    axes = rules[name]
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None] | None, *, mesh,
                    shape: Sequence[int] | None = None,
                    rules: Rules | None = None) -> PartitionSpec:
    """Maps one array's logical axis names to a `PartitionSpec` (module docstring, rules 1-4).

    Args:
      names: one logical name (or `None`) per dimension; `None` for a replicated array. A
        `PartitionSpec` of logical names may be shorter than `shape` (the rest replicated).
      mesh: a `Mesh` or `AbstractMesh`.
      shape: the array's shape; enables the divisibility fallback (rule 4).
      rules: logical name -> mesh axes; defaults to `current_rules()`.
    Returns:
      a `PartitionSpec`, trailing replicated dimensions dropped (`P("fsdp")`, not
      `P("fsdp", None)`), so equal layouts compare equal.
    """
    if names is None:
        return PartitionSpec()
    if isinstance(names, PartitionSpec) and shape is not None:
        # PartitionSpec semantics: dimensions past its end are replicated.
        names = tuple(names) + (None,) * (len(shape) - len(names))
    rules = current_rules() if rules is None else rules
    if shape is not None and len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} have {len(names)} entries but the "
                         f"array has shape {tuple(shape)} ({len(shape)} dimensions)")
    sizes = _mesh_shape(mesh)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(names):
        axes = () if name is None else _rule_axes(name, rules)
        axes = [a for a in axes if sizes.get(a, 1) > 1 and a not in used]
        if shape is not None:
            while axes and shape[dim] % math.prod(sizes[a] for a in axes):
                axes.pop()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while spec and spec[-1] is None:  # canonical form: P("fsdp", None) -> P("fsdp")
        spec.pop()
    return PartitionSpec(*spec)


def _is_names(x) -> bool:
    if isinstance(x, PartitionSpec):
        return True
    return x is None or (isinstance(x, tuple) and all(isinstance(e, str | None) for e in x))


def _key_str(key) -> str | None:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def normalize_path(path) -> tuple[str, ...]:
    """A pytree key path as strings, without NNX `Variable` wrappers (`.value`).

    `State({'w': Param(value=...)})`, `{'w': ...}` and `{'w': Param(('embed',))}` all give
    `('w',)`, so name trees and parameter trees match whatever container they use.
    """
    out = tuple(_key_str(k) for k in path)
    out = tuple(k for k, raw in zip(out, path, strict=True)
                if not (type(raw).__name__ == "GetAttrKey" and k in ("value", "raw_value")))
    return out


def variable_names(tree) -> Any:
    """Logical names from NNX variable metadata: a pytree like `tree`, one tuple per array.

    Reads `out_sharding` (flax >= 0.12), or the older `sharding_names` / `sharding` keys; leaves
    without metadata give `None` (replicated). Works on concrete or `eval_shape`d states.
    """
    from flax import nnx  # flax is only needed for NNX trees

    def names_of(v):
        if isinstance(v, nnx.Variable):
            meta = v.get_metadata()
            for key in ("out_sharding", "sharding_names", "sharding"):
                if meta.get(key):
                    return tuple(meta[key])
        return None

    return jax.tree.map(names_of, tree, is_leaf=lambda v: isinstance(v, nnx.Variable))


def _names_by_path(names) -> dict[tuple[str, ...], tuple | None]:
    flat, _ = jax.tree_util.tree_flatten_with_path(names, is_leaf=_is_names)
    return {normalize_path(path): leaf for path, leaf in flat}


def tree_shardings(tree, *, mesh: Mesh, names=None, rules: Rules | None = None) -> Any:
    """One `NamedSharding` per array leaf of `tree`, from logical names.

    Args:
      tree: arrays or `ShapeDtypeStruct`s (e.g. an `nnx.State` of parameters).
      mesh: the target mesh.
      names: a pytree of logical-name tuples (or `PartitionSpec`s of logical names) matching
        `tree` by key path (any container: nested dicts, `nnx.State`, variables wrapping
        tuples); `None` reads NNX variable metadata. Leaves without names are replicated.
      rules: defaults to `current_rules()`.
    Returns:
      a pytree with `tree`'s structure and a `NamedSharding` at every leaf.
    """
    by_path = _names_by_path(variable_names(tree) if names is None else names)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    missing = [normalize_path(p) for p, _ in leaves if normalize_path(p) not in by_path]
    if names is not None and missing:
        raise ValueError(f"no logical names for {len(missing)} leaves, e.g. {missing[:3]}")
    out = []
    for path, leaf in leaves:
        spec = logical_to_spec(by_path.get(normalize_path(path)), mesh=mesh,
                               shape=np.shape(leaf), rules=rules)
        out.append(NamedSharding(mesh, spec))
    return jax.tree_util.tree_unflatten(treedef, out)


param_shardings = tree_shardings


def opt_state_shardings(opt_state, *, params, params_shardings, mesh: Mesh) -> Any:
    """Shardings for an optimizer state: each moment follows its parameter.

    A leaf whose key path ends with a parameter's path and has that parameter's shape gets the
    parameter's sharding (optax's `mu`, `nu`, ... mirror the parameter tree); everything else
    (step counters, scalars) is replicated.

    Args:
      opt_state: the state or its `jax.eval_shape`.
      params: parameters (or shapes), the tree `tx.init` was called on.
      params_shardings: `tree_shardings(params, ...)`.
      mesh: the mesh.
    """
    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    shard_leaves = jax.tree.leaves(params_shardings)
    by_path = {normalize_path(p): (np.shape(x), s)
               for (p, x), s in zip(param_leaves, shard_leaves, strict=True)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        key = normalize_path(path)
        for start in range(len(key) + 1):
            hit = by_path.get(key[start:])
            if hit is not None and hit[0] == np.shape(leaf):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, opt_state)


def init_sharded(init_fn: Callable[[], Any], *, mesh: Mesh, names=None,
                 rules: Rules | None = None, shardings=None) -> Any:
    """Calls `init_fn()` with every output created directly in its sharding.

    The shapes come from `jax.eval_shape(init_fn)`; the values from
    `jax.jit(init_fn, out_shardings=...)`, so each device computes only its own shard and no
    host ever holds a full replica. NNX eager sharding is switched off inside (the layout is
    the jit's job), so `nnx.with_partitioning(..., ("embed", "mlp"))` needs no mesh context.

    Args:
      init_fn: `() -> pytree of arrays`, e.g. `lambda: nnx.split(Model(rngs=...))[1]`.
      mesh: the target mesh.
      names: logical names (see `tree_shardings`); `None` reads NNX metadata.
      rules: defaults to `current_rules()`.
      shardings: overrides `names`/`rules` with ready shardings (a pytree prefix).
    Returns:
      the initialised pytree, sharded.
    """
    with no_eager_sharding():
        if shardings is None:
            shardings = tree_shardings(jax.eval_shape(init_fn), mesh=mesh, names=names,
                                       rules=rules)
        # No `jax.set_mesh` here: flax's `nnx.eval_shape` inside a model constructor would read
        # the logical names in the metadata as mesh axes. The out_shardings carry the mesh.
        return jax.jit(init_fn, out_shardings=shardings)()


@contextlib.contextmanager
def no_eager_sharding():
    """Switches flax NNX eager sharding off (variables are laid out by jit, not at creation)."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a hard dependency
        yield
        return
    use = getattr(nnx, "use_eager_sharding", None)
    if use is None:  # pragma: no cover - older flax: no eager sharding
        yield
        return
    with use(False):
        yield


def abstract_like(tree, shardings) -> Any:
    """`ShapeDtypeStruct`s with target shardings: the restore target for a checkpoint."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                        tree, shardings)


# ----------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------


def mesh_axis_size(name: str) -> int:
    """Size of axis `name` of the current mesh (`jax.set_mesh`); 1 outside one or if absent."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else dict(mesh.shape).get(name, 1)


def constrain(x: jax.Array, names: Sequence[str | None], *, rules: Rules | None = None):
    """Constrains an activation's layout by logical names, e.g. `("batch", "seq", "embed")`.

    A no-op outside a mesh context (`jax.set_mesh`), so models run unchanged on one device.

    Args:
      x: `[...]` any array, one name per dimension.
      names: logical names, see `DEFAULT_RULES`.
      rules: defaults to `current_rules()`.
    Returns:
      `x`, with a sharding constraint under a mesh.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(names, mesh=mesh, shape=x.shape, rules=rules)
    return jax.lax.with_sharding_constraint(x, spec)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def data_parallel_size(mesh, *, rules: Rules | None = None) -> int:
    """How many ways the `batch` axis is split on `mesh`."""
    rules = current_rules() if rules is None else rules
    sizes = _mesh_shape(mesh)
    return math.prod(sizes.get(a, 1) for a in _rule_axes("batch", rules))


def batch_sharding(mesh: Mesh, *, rules: Rules | None = None) -> NamedSharding:
    """The sharding of a `[B, ...]` batch leaf: `B` over the `batch` rule's mesh axes."""
    rules = current_rules() if rules is None else rules
    sizes = _mesh_shape(mesh)
    axes = tuple(a for a in _rule_axes("batch", rules) if sizes.get(a, 1) > 1)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def check_batch_size(batch_size: int, *, mesh, num_microbatches: int = 1,
                     rules: Rules | None = None) -> None:
    """Raises a ValueError naming the numbers unless the batch splits evenly.

    `batch_size` must be a multiple of `num_microbatches`, and each micro-batch a multiple of
    the data-parallel size (batches are never silently replicated).
    """
    dp = data_parallel_size(mesh, rules=rules)
    sizes = _mesh_shape(mesh)
    axes = " x ".join(f"{a}={sizes.get(a, 1)}" for a in _rule_axes("batch", rules or
                                                                    current_rules()))
    if batch_size % num_microbatches:
        raise ValueError(f"batch size {batch_size} is not divisible by num_microbatches="
                         f"{num_microbatches}")
    micro = batch_size // num_microbatches
    if micro % dp:
        what = (f"batch size {batch_size}" if num_microbatches == 1 else
                f"micro-batch size {micro} (batch size {batch_size} / {num_microbatches})")
        raise ValueError(f"{what} is not divisible by the data-parallel size {dp} "
                         f"(mesh axes {axes})")
