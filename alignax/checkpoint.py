"""Checkpoints: orbax `CheckpointManager`, async, keep-k, reshard on restore, preemption.

A checkpoint at step `s` is the directory `DIR/s/` with three items:

* `state`: the train state (params, optimizer state, step, rng, reference), saved sharded;
* `data`: the data iterator's position, a JSON-able dict;
* `config`: the resolved run config, JSON.

Saves are asynchronous: `save_checkpoint` returns once the arrays are copied off the devices
and a background thread writes them. Orbax writes into `DIR/s.orbax-checkpoint-tmp*` and
renames it to `DIR/s` only when every process has finished (atomic finalisation), so a save
interrupted by a kill is never taken as the latest (`latest_step` ignores the tmp directory).

Restoring takes a target: `ShapeDtypeStruct`s carrying the shardings of the mesh you restore
on (`alignax.train.abstract_train_state`), which may differ from the mesh that saved.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_manager(directory: str | epath.PathLike, *, every_steps: int = 1000,
                       keep: int | None = 3, async_save: bool = True) -> ocp.CheckpointManager:
    """An orbax `CheckpointManager` saving every `every_steps` steps and keeping `keep`.

    Args:
      directory: created if missing (e.g. `WORKDIR/checkpoints`).
      every_steps: `save_checkpoint` is a no-op on other steps unless forced.
      keep: number of most recent checkpoints kept; None keeps all.
      async_save: write in a background thread.
    """
    options = ocp.CheckpointManagerOptions(save_interval_steps=every_steps, max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(epath.Path(directory), options=options, item_handlers=handlers)


def save_checkpoint(manager: ocp.CheckpointManager, *, step: int, state: Any,
                    data_state: Mapping[str, Any] | None = None,
                    config: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Saves the train state, data position and config at `step` if it is due.

    Args:
      manager: from `checkpoint_manager`.
      step: the number of completed steps (the key of the checkpoint).
      state: the train state pytree (sharded `jax.Array`s).
      data_state: the data iterator's position, JSON-able.
      config: the resolved run config, JSON-able.
      force: save even if `step` is not a multiple of `every_steps`.
    Returns:
      whether a save was started (it finishes in the background; `manager.wait_until_finished`).
    """
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(dict(data_state or {})),
                              config=ocp.args.JsonSave(dict(config or {})))
    return manager.save(int(step), args=args, force=force)


class Restored(NamedTuple):
    """What `restore_checkpoint` returns."""

    step: int
    state: Any
    data_state: dict[str, Any]
    config: dict[str, Any]


def path_key(path) -> str:
    """A tree path as "a/b/0": how checkpoints and exports match leaves across trees."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_key(p): tuple(x.shape) for p, x in flat if hasattr(x, "shape")}


def check_compatible(manager: ocp.CheckpointManager, *, step: int, target: Any) -> None:
    """Raises a ValueError naming paths and shapes if checkpoint `step` does not fit `target`.

    Orbax's own errors for a different model are hard to read; this compares the saved tree
    (metadata only, nothing is loaded) with the restore target first.
    """
    meta = manager.item_metadata(step)["state"]
    saved = _shapes(getattr(meta, "tree", meta))
    wanted = _shapes(target)
    where = f"{manager.directory}/{step}"
    # Shortest paths first: `params/...` is named before `opt_state/1/0/mu/...`.
    order = lambda k: (k.count("/"), k)
    missing = sorted(set(wanted) - set(saved), key=order)
    extra = sorted(set(saved) - set(wanted), key=order)
    if missing or extra:
        raise ValueError(
            f"checkpoint {where} has a different tree than the model: {len(missing)} leaves "
            f"missing from the checkpoint (e.g. {missing[:3]}), {len(extra)} leaves not in the "
            f"model (e.g. {extra[:3]}); saved {len(saved)} leaves, model has {len(wanted)}")
    bad = [(k, saved[k], wanted[k]) for k in sorted(wanted, key=order) if saved[k] != wanted[k]]
    if bad:
        detail = "; ".join(f"{k}: {s} in the checkpoint vs {w} in the model"
                           for k, s, w in bad[:3])
        raise ValueError(f"checkpoint {where} does not match the model's shapes "
                         f"({len(bad)} leaves differ): {detail}")


def restore_checkpoint(manager: ocp.CheckpointManager, *, target: Any,
                       step: int | None = None) -> Restored | None:
    """Restores a checkpoint onto the shardings given by `target`.

    Args:
      manager: from `checkpoint_manager`.
      target: the state's structure as `ShapeDtypeStruct`s with the `sharding` each leaf
        should have (any mesh; e.g. `abstract_train_state(...)[0]`).
      step: which checkpoint; defaults to the latest finalised one.
    Returns:
      `Restored(step, state, data_state, config)`, or None if there is no checkpoint.
    Raises:
      ValueError: the checkpoint's tree or shapes differ from `target` (names them).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    check_compatible(manager, step=step, target=target)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target),
                              data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    out = manager.restore(step, args=args)
    return Restored(step=step, state=out["state"], data_state=dict(out["data"] or {}),
                    config=dict(out["config"] or {}))


class PreemptionGuard:
    """Turns SIGTERM (preemption) into a checkpoint at the next step boundary.

    The handler only records the signal; the loop asks `should_stop(step)` after each step,
    saves with `force=True`, waits for the save, and exits:

        with PreemptionGuard() as guard:
            for ...:
                state, metrics = step_fn(state, batch)
                save_checkpoint(manager, step=s, state=state, data_state=...)
                if guard.should_stop(s):
                    save_checkpoint(manager, step=s, state=state, ..., force=True)
                    manager.wait_until_finished()
                    break

    With several processes every host must stop at the same step: the handler is then left to
    JAX's preemption notifier (started by `jax.distributed.initialize`) and `should_stop`
    asks its sync point, which makes all processes agree.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._event = threading.Event()

    @property
    def stop_requested(self) -> bool:
        """Whether this process received one of the signals."""
        return self._event.is_set()

    def request_stop(self, *_) -> None:
        """The signal handler; also callable by hand."""
        self._event.set()

    def should_stop(self, step: int) -> bool:
        """Whether to save and exit after `step` (identical on every process)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            try:
                return bool(multihost_utils.reached_preemption_sync_point(int(step)))
            except RuntimeError:  # preemption service disabled
                return False
        return self.stop_requested

    def __enter__(self) -> PreemptionGuard:
        # Several processes: JAX's preemption notifier owns SIGTERM; do not replace it.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self.request_stop)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextlib.contextmanager
def preemption_guard(signals: tuple[int, ...] = (signal.SIGTERM,)):
    """`with preemption_guard() as guard:`; see `PreemptionGuard`."""
    with PreemptionGuard(signals) as guard:
        yield guard
