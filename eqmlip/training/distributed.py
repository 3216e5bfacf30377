"""Multi-host training with `jax.distributed`: one process per host (or per GPU), each
reading its own share of the data; the mesh spans every process's devices.

```python
from eqmlip.training import distributed
distributed.initialize()                 # from SLURM / JAX_* environment variables
mine = distributed.process_share(structures)
# build a GraphLoader over `mine`, then eqmlip.training.train(..., config with num_devices)
```

Only process 0 writes checkpoints and logs ([`eqmlip.training.train`][] does this itself);
metrics are summed over the processes.
"""

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from ..data import Budget

T = TypeVar("T")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
    shutdown_timeout_seconds: int = 300,
) -> None:
    """Join a multi-process JAX run (`jax.distributed.initialize`); call it before any
    other JAX call.

    Arguments left `None` are read from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID` when set, else left to JAX, which detects SLURM (`srun`), Open MPI and
    cloud TPU environments on its own.

    **Arguments:**

    - `coordinator_address`: `host:port` of process 0.
    - `num_processes`: the number of processes.
    - `process_id`: this process's index, in `0..num_processes - 1`.
    - `local_device_ids`: the local devices this process uses (default: all visible).
    - `initialization_timeout`: seconds to wait for every process to join before raising.
    - `heartbeat_timeout_seconds`: seconds without a heartbeat after which a process is
        declared dead and the others abort (instead of hanging in a collective).
    - `shutdown_timeout_seconds`: seconds to wait for every process at shutdown.
    """
    env = os.environ
    if coordinator_address is None:
        coordinator_address = env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    if num_processes is not None and process_id is not None:
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"initialize: process_id={process_id} is outside 0..{num_processes - 1} "
                f"(num_processes={num_processes})."
            )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds,
    )


def shutdown() -> None:
    """Leave the multi-process run (`jax.distributed.shutdown`)."""
    jax.distributed.shutdown()


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes checkpoints and logs."""
    return jax.process_index() == 0


def process_share(items: Sequence[T]) -> list[T]:
    """This process's share of a dataset: `items[process_index::process_count]` (every
    process must pass the same list; the shares differ by at most one item)."""
    return list(items[jax.process_index() :: jax.process_count()])


def allgather(value: Any) -> np.ndarray:
    """`value` (a NumPy-compatible array of the same shape on every process) from every
    process, stacked on a new leading axis of size `jax.process_count()`."""
    x = np.asarray(value)
    if jax.process_count() == 1:
        return x[None]
    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def process_sum(values: dict[str, float]) -> dict[str, float]:
    """A dict of numbers summed over the processes (e.g. error sums and counts)."""
    keys = sorted(values)
    gathered = allgather(np.array([float(values[k]) for k in keys], np.float64))
    return dict(zip(keys, (float(v) for v in gathered.sum(axis=0)), strict=True))


def agree_budgets(budgets: Sequence[Budget]) -> list[Budget]:
    """One budget per step that every process accepts: as many steps as the process with
    the most, each the elementwise maximum of the processes' budgets for that step."""
    count = int(allgather(len(budgets)).max())
    table = np.zeros((count, 3), np.int64)
    if budgets:
        table[: len(budgets)] = np.array([tuple(b) for b in budgets], np.int64)
    merged = allgather(table).max(axis=0)
    return [Budget(*(int(v) for v in row)) for row in merged]


def assert_same_across_processes(tree: Any, name: str = "tree") -> None:
    """Raise a `ValueError` unless every array leaf of `tree` is bitwise equal on all
    processes (a check that replicated parameters did not drift)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree) if hasattr(x, "shape")]
    for k, leaf in enumerate(leaves):
        gathered = allgather(leaf)
        if not all(np.array_equal(gathered[0], g) for g in gathered[1:]):
            raise ValueError(
                f"assert_same_across_processes: leaf {k} of {name} differs between processes."
            )
