"""The train state: parameters, optimizer state, step, rng, and an optional frozen reference.

`TrainState` is a pytree (a flax struct dataclass), so it goes through `jax.jit`, donation,
`jax.eval_shape` and orbax unchanged. Parameters are any pytree of arrays; for an NNX model they
are the `nnx.State` of its `nnx.Param`s (`graphdef, params = nnx.split(model, nnx.Param)`), and
the objective merges them back (`nnx.merge(graphdef, params)`).

`init_train_state` builds the state without a full replica on any host: shapes come from
`jax.eval_shape`, shardings from the logical-axis rules (`alignax.sharding`), and the values are
created by one `jax.jit(..., out_shardings=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alignax import sharding


@struct.dataclass
class TrainState:
    """Everything a step reads and writes.

    Attributes:
      step: `[]` int32, optimizer steps taken.
      params: the parameters (pytree, float32 master weights by default); with a
        `trainable` mask only part of them is updated (e.g. LoRA adapters on a frozen base).
      opt_state: `tx.init(trainable_part(params, trainable))`.
      rng: `[2]` uint32 key data (`jax.random.key_data` of a threefry key): a plain array, so
        checkpoints hold it like any other leaf. The step splits it once per step.
      ref_params: frozen reference / teacher parameters, or None. Never differentiated or
        updated; passed to the objective as `ref_params=`.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ref_params: Any = None


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def trainable_part(params, trainable) -> Any:
    """`params` with the frozen entries of `trainable` (a pytree of bools over the
    parameters' variables, True = updated) replaced by None; `trainable=None`: all of it."""
    if trainable is None:
        return params
    return jax.tree.map(lambda v, keep: v if keep else None, params, trainable,
                        is_leaf=_is_variable)


def frozen_part(params, trainable) -> Any:
    """The complement of `trainable_part`: the frozen entries, None for the trainable ones."""
    return jax.tree.map(lambda v, keep: None if keep else v, params, trainable,
                        is_leaf=_is_variable)


def join_parts(trainable_params, frozen_params) -> Any:
    """The full parameters from `trainable_part` and `frozen_part`."""
    return jax.tree.map(lambda t, f: f if t is None else t, trainable_params, frozen_params,
                        is_leaf=lambda x: x is None or _is_variable(x))


def cast_floating(tree, dtype) -> Any:
    """Casts the floating-point leaves of `tree` to `dtype` (e.g. a bf16 reference)."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def train_state_shardings(abstract_state: TrainState, *, mesh: Mesh, names=None,
                          ref_names=None, rules: sharding.Rules | None = None) -> TrainState:
    """Shardings for every leaf of a train state, from the logical-axis rules.

    Args:
      abstract_state: the state or its `jax.eval_shape`.
      mesh: target mesh.
      names: logical names of `params` (see `alignax.sharding.tree_shardings`); None reads NNX
        variable metadata.
      ref_names: same for `ref_params`; defaults to `names`.
      rules: defaults to `alignax.sharding.current_rules()`.
    Returns:
      a `TrainState` of `NamedSharding`s; `step` and `rng` replicated, optimizer moments
      sharded like their parameters.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    params = sharding.tree_shardings(abstract_state.params, mesh=mesh, names=names, rules=rules)
    opt = sharding.opt_state_shardings(abstract_state.opt_state, params=abstract_state.params,
                                 params_shardings=params, mesh=mesh)
    ref = None
    if abstract_state.ref_params is not None:
        ref = sharding.tree_shardings(abstract_state.ref_params, mesh=mesh,
                                names=names if ref_names is None else ref_names, rules=rules)
    return TrainState(step=replicated, params=params, opt_state=opt, rng=replicated,
                      ref_params=ref)


def init_train_state(init_params: Callable[[], Any], tx: optax.GradientTransformation, *,
                     mesh: Mesh, seed: int = 0, names=None, rules: sharding.Rules | None = None,
                     reference: str | Callable[[], Any] | None = None, ref_names=None,
                     ref_dtype=None, trainable=None, reference_part=None
                     ) -> tuple[TrainState, TrainState]:
    """Creates a sharded train state directly on the devices.

    Args:
      init_params: `() -> params`, e.g. `lambda: nnx.split(Model(rngs=nnx.Rngs(0)),
        nnx.Param)[1]`. Traced under `jax.eval_shape` and `jax.jit`; never run eagerly.
      tx: the optax transformation.
      mesh: target mesh.
      seed: seeds `state.rng` (`jax.random.key_data(jax.random.key(seed))`).
      names: logical names of the parameters; None reads NNX variable metadata.
      rules: logical-axis rules; defaults to `alignax.sharding.current_rules()`.
      reference: None (no reference), `"copy"` (a frozen copy of the initial parameters, the
        DPO reference), or `() -> ref_params` (e.g. a teacher model's parameters).
      ref_names: logical names of a callable reference's parameters (default: metadata).
      ref_dtype: cast the reference's floating leaves to this dtype (e.g. `jnp.bfloat16`).
      trainable: pytree of bools over the parameters' variables (True = updated; the
        optimizer state covers only these), or None (all).
      reference_part: `params -> the part a "copy" reference copies`; None = all.
    Returns:
      `(state, shardings)`: the state, and a `TrainState` of its shardings (for the step's
      in/out shardings and for checkpoint restores).
    """
    init = _state_fn(init_params, tx, seed=seed, reference=reference, ref_dtype=ref_dtype,
                     trainable=trainable, reference_part=reference_part)
    _, shardings = _abstract(init, mesh=mesh, names=names, rules=rules,
                             ref_names=_ref_names(names, ref_names, reference, reference_part))
    state = sharding.init_sharded(init, mesh=mesh, shardings=shardings)
    return state, shardings


def abstract_train_state(init_params: Callable[[], Any], tx: optax.GradientTransformation, *,
                         mesh: Mesh, names=None, rules: sharding.Rules | None = None,
                         reference: str | Callable[[], Any] | None = None, ref_names=None,
                         ref_dtype=None, trainable=None, reference_part=None
                         ) -> tuple[TrainState, TrainState]:
    """`(abstract_state, shardings)`: the restore target on `mesh`, without allocating.

    Same arguments as `init_train_state`; the leaves are `ShapeDtypeStruct`s carrying their
    target `NamedSharding`, ready for `alignax.checkpoint.restore_checkpoint`.
    """
    init = _state_fn(init_params, tx, seed=0, reference=reference, ref_dtype=ref_dtype,
                     trainable=trainable, reference_part=reference_part)
    abstract, shardings = _abstract(init, mesh=mesh, names=names, rules=rules,
                                    ref_names=_ref_names(names, ref_names, reference,
                                                         reference_part))
    return sharding.abstract_like(abstract, shardings), shardings


def _state_fn(init_params, tx, *, seed, reference, ref_dtype, trainable=None,
              reference_part=None) -> Callable[[], TrainState]:
    if reference is not None and reference != "copy" and not callable(reference):
        raise ValueError(f"reference must be None, 'copy' or a callable, got {reference!r}")

    def init() -> TrainState:
        params = init_params()
        ref = None
        if reference == "copy":
            ref = cast_floating(params if reference_part is None else reference_part(params),
                                ref_dtype)
        elif reference is not None:
            ref = cast_floating(reference(), ref_dtype)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(trainable_part(params, trainable)),
                          rng=jax.random.key_data(jax.random.key(seed)), ref_params=ref)

    return init


def _ref_names(names, ref_names, reference, reference_part):
    """A whole-params "copy" reference is named like the params; else as given / metadata."""
    if reference == "copy" and reference_part is None and ref_names is None:
        return names
    return ref_names


def _abstract(init, *, mesh, names, rules, ref_names):
    with sharding.no_eager_sharding():
        abstract = jax.eval_shape(init)
    return abstract, train_state_shardings(abstract, mesh=mesh, names=names,
                                           ref_names=ref_names, rules=rules)


def shard_params(params, *, mesh: Mesh, names=None, rules: sharding.Rules | None = None,
                 dtype=None) -> Any:
    """Places an existing parameter tree by the rules, cast to `dtype` when given.

    For a reference or teacher passed alongside the state (e.g. loaded from disk):
    `ref = shard_params(teacher_params, mesh=mesh, dtype=jnp.bfloat16)`.
    """
    cast = lambda p: cast_floating(p, dtype)
    shardings = sharding.tree_shardings(jax.eval_shape(cast, params), mesh=mesh, names=names,
                                  rules=rules)
    return jax.jit(cast, out_shardings=shardings)(params)
