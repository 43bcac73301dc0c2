"""`make_train_step`: one pure, jitted, sharded update step from a loss function and an optimizer.

The loss function is where model meets loss (each algorithm's, in `alignax.algorithms`):

    def loss_fn(params, batch, rng, *, ref_params=None) -> (loss, metrics):
        model = nnx.merge(graphdef, params)          # graphdef closed over
        ...
        return loss, {"rewards/margins": ...}

It must be a pure function of its arguments; `ref_params` is passed only when the state holds
a frozen reference. The step is jitted once with the state's shardings in and out, the batch
sharded over the data-parallel axes, and the old state donated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alignax import sharding
from alignax.train.state import TrainState, frozen_part, join_parts, trainable_part

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _split_microbatches(x: jax.Array, num_microbatches: int) -> jax.Array:
    """`[B, ...] -> [M, B / M, ...]`, micro-batch `i` = rows `i, i + M, i + 2M, ...`.

    Strided rather than contiguous: every device keeps its own rows (each micro-batch stays
    spread over all data-parallel devices), so the split moves no data.
    """
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // num_microbatches, num_microbatches, *x.shape[1:]), 0, 1)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, mesh: Mesh,
                    state_shardings: TrainState, num_microbatches: int = 1,
                    rules: sharding.Rules | None = None, donate: bool = True,
                    learning_rate_fn: optax.Schedule | None = None, trainable=None,
                    reference_fn: Callable[[Any], Any] | None = None
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `step(state, batch) -> (state, metrics)`, jitted once with shardings.

    Gradient accumulation: with `num_microbatches=M` the batch `[B, ...]` is split into `M`
    micro-batches of `B / M` rows, scanned with `lax.scan` inside the jitted step; gradients,
    loss and metrics are averaged over micro-batches. For a loss that averages over its
    batch this equals one step on the whole batch (up to float rounding) at `1 / M` of the
    activation memory.

    Args:
      loss_fn: `(params, batch, rng, *, ref_params=None) -> (loss [], metrics {name: []})`;
        `rng` is a typed key (`jax.random.key`), fresh every step (and micro-batch).
      tx: the optax transformation the state was initialised with.
      mesh: the mesh; the step runs under `jax.set_mesh(mesh)` so `constrain` works inside.
      state_shardings: from `init_train_state` / `train_state_shardings`.
      num_microbatches: `M`, gradient-accumulation steps per update.
      rules: logical-axis rules for the batch; defaults to `sharding.current_rules()`.
      donate: donate the input state's buffers (the caller must not reuse it).
      learning_rate_fn: if given, `metrics["learning_rate"]` logs it at the new step count
        (the rate of the next update, as TRL logs it: warmup's first step shows a non-zero
        rate).
      trainable: pytree of bools over the parameters' variables (`state.trainable_part`):
        gradients, optimizer state and updates cover only the True ones (e.g. LoRA adapters);
        the rest is read, never differentiated. None = all parameters.
      reference_fn: `params -> ref_params` computed inside the step instead of a stored
        `state.ref_params` (e.g. the base model as the adapters switched off: no copy).
    Returns:
      `step(state, batch)`: `batch` a pytree of `[B, ...]` arrays (numpy on one process; global
      `jax.Array`s from `distributed.host_local_to_global` on several). Metrics always include
      `loss` and `grad_norm` (before clipping). `step.jitted` is the underlying jitted function.
    """
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = sharding.batch_sharding(mesh, rules=rules)
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharding.spec))

    def call(params, frozen, batch, rng, ref_params):
        if trainable is not None:
            params = join_parts(params, frozen)
        kwargs = {} if ref_params is None else {"ref_params": ref_params}
        return loss_fn(params, batch, rng, **kwargs)

    grad_fn = jax.value_and_grad(call, has_aux=True)
    grad_shardings = trainable_part(state_shardings.params, trainable)

    def loss_and_grads(params, frozen, batch, rng, ref_params):
        if num_microbatches == 1:
            return grad_fn(params, frozen, batch, rng, ref_params)
        micro = jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(
                _split_microbatches(x, num_microbatches), micro_sharding), batch)
        first = jax.tree.map(lambda x: x[0], micro)
        # Sums in float32 at least: integer or boolean metrics would not average.
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)),
            jax.eval_shape(grad_fn, params, frozen, first, rng, ref_params))

        def body(total, xs):
            i, batch_i = xs
            out = grad_fn(params, frozen, batch_i, jax.random.fold_in(rng, i), ref_params)
            total = jax.tree.map(lambda t, o: t + o.astype(t.dtype), total, out)
            (_, _), grads = total
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
            return (total[0], grads), None

        total, _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
        return jax.tree.map(lambda x: x / num_microbatches, total)

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
        ref_params = state.ref_params if reference_fn is None else reference_fn(state.params)
        if ref_params is not None:
            ref_params = jax.lax.stop_gradient(ref_params)
        params = trainable_part(state.params, trainable)
        frozen = None if trainable is None else frozen_part(state.params, trainable)
        (loss, metrics), grads = loss_and_grads(params, frozen, batch, step_rng, ref_params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        if trainable is not None:
            params = join_parts(params, frozen)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        if learning_rate_fn is not None:  # the next update's, as TRL logs it
            metrics["learning_rate"] = learning_rate_fn(state.step + 1)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  rng=jax.random.key_data(rng))
        return new_state, metrics

    jitted = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated),
                     donate_argnums=(0,) if donate else ())

    def run(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        leaves = jax.tree.leaves(batch)
        if leaves:
            sharding.check_batch_size(leaves[0].shape[0], mesh=mesh,
                                num_microbatches=num_microbatches, rules=rules)
        with jax.set_mesh(mesh):
            return jitted(state, batch)

    run.jitted = jitted
    return run
