"""Several processes, one mesh: each process's slice of the global batch, and multi-host start.

JAX's multi-controller runtime runs the same program in every process (one per host, or per
GPU); each process loads only its rows of every global batch (`process_batch_slice`) and
`host_local_to_global` assembles the global `jax.Array`s the jitted step reads.
`initialize_distributed` starts `jax.distributed` from explicit arguments or the cluster's
environment (TPU pods, SLURM, Open MPI).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from alignax.sharding import Rules, batch_sharding, check_batch_size


def is_primary() -> bool:
    """Whether this process writes the run's files (metrics, config, summary, exports, caches):
    process 0. Every process computes; one writes, so a shared workdir gets each file once."""
    return jax.process_index() == 0


def host_tree(tree) -> Any:
    """`tree`'s arrays as host numpy arrays, whole (global), in every process: `device_get` on
    one process; on several, an all-gather (a collective: every process must call it), since
    a sharded array's other rows live on other hosts."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def from_primary(compute):
    """`compute()` run by process 0 only, its (picklable) result given to every process.

    For host work with side effects that must happen once (an environment's tool call, a
    sandbox): the other processes wait for process 0's answer instead of repeating the call
    (and perhaps getting another answer, which would split the SPMD program). One process:
    just `compute()`.
    """
    if jax.process_count() == 1:
        return compute()
    import pickle

    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(compute()), np.uint8) if is_primary() else None
    n = int(multihost_utils.broadcast_one_to_all(np.int64(0 if data is None else len(data))))
    buf = np.zeros(n, np.uint8) if data is None else data.copy()
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())


def process_sum(value: int) -> int:
    """A host-side count (tokens of this process's rows, ...) summed over the processes: an
    all-gather on several (every process must call it), the value itself on one."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.asarray(multihost_utils.process_allgather(np.asarray(value))).sum())


def process_batch_slice(global_batch_size: int, *, mesh: Mesh,
                        rules: Rules | None = None) -> slice:
    """The rows of the global batch that this process loads (`[start, stop)` of `B`).

    Each process reads only `global_batch[process_batch_slice(B, mesh=mesh)]` and passes it to
    `host_local_to_global`. In a single process this is `slice(0, B)`.
    """
    check_batch_size(global_batch_size, mesh=mesh, rules=rules)
    sharding = batch_sharding(mesh, rules=rules)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    rows = sorted({(idx[0].start or 0, global_batch_size if idx[0].stop is None else
                    idx[0].stop) for idx in index_map.values()})
    for (_, stop), (start, _) in zip(rows[:-1], rows[1:]):
        if stop != start:
            raise ValueError(f"process {jax.process_index()} owns non-contiguous batch rows "
                             f"{rows}; order the mesh devices by process")
    return slice(rows[0][0], rows[-1][1])


def host_local_to_global(local_batch, *, mesh: Mesh, rules: Rules | None = None) -> Any:
    """Turns each process's slice of the global batch into global `jax.Array`s.

    Args:
      local_batch: pytree of `[B_local, ...]` host arrays, rows
        `process_batch_slice(B, mesh=mesh)` of the global batch (all of it in one process).
    Returns:
      pytree of `[B, ...]` arrays with `batch_sharding(mesh)`, ready for the jitted step.
    """
    sharding = batch_sharding(mesh, rules=rules)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "OMPI_MCA_orte_hnp_uri", "MEGASCALE_COORDINATOR_ADDRESS")


def _cluster_detected() -> bool:
    """Whether the environment looks like a multi-process job that jax can auto-configure."""
    if any(os.environ.get(k) for k in _CLUSTER_ENV):
        return True
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES")
    return bool(hosts and "," in hosts)


def initialize_distributed(*, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None,
                           heartbeat_timeout_seconds: int | None = None) -> bool:
    """Starts multi-host JAX; call once per process before any other JAX call.

    * explicit: `coordinator_address="10.0.0.1:1234", num_processes=N, process_id=i`;
    * auto-detected: TPU pods, SLURM (`srun`), Open MPI, or `JAX_COORDINATOR_ADDRESS` set:
      `jax.distributed.initialize()` reads the cluster's environment;
    * otherwise a single process: nothing to do.

    On CPU the cross-process collectives use gloo (`jax_cpu_collectives_implementation`).
    If a process dies, the others stop with "heartbeat timeout ... another task died" after
    `heartbeat_timeout_seconds` (JAX's default: 100 s) instead of waiting in a collective.

    Returns:
      whether `jax.distributed` is initialised (multi-process).
    """
    if jax.distributed.is_initialized():
        return True
    if coordinator_address is None and not _cluster_detected():
        return False
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # pragma: no cover - flag renamed in a future jax
        pass
    extra = {}
    if heartbeat_timeout_seconds:
        import inspect

        if "heartbeat_timeout_seconds" not in inspect.signature(
                jax.distributed.initialize).parameters:
            raise ValueError(f"heartbeat_timeout_seconds: jax {jax.__version__}'s "
                             "jax.distributed.initialize has no such setting")
        extra["heartbeat_timeout_seconds"] = int(heartbeat_timeout_seconds)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids, **extra)
    return True
