"""Multi-process worker: `python _mh_worker.py PROCESS_ID NUM_PROCESSES PORT [fail]`, each
process with XLA_FLAGS=--xla_force_host_platform_device_count=2.

The processes join one `jax.distributed` run on 127.0.0.1 (4 devices in all), each reads its
own share of the structures, and they take a few data-parallel steps on global batches built
with `make_array_from_process_local_data`. Process 0 also takes the same steps on one device
with the same global batches (assembled on its host) as the single-process reference.
"""

import sys

import _common  # noqa: I001  (sets JAX flags and the jaxtyping hook before eqmlip loads)
import jax
import numpy as np

from eqmlip.training import (
    Loss,
    TrainConfig,
    data_parallel_step,
    distributed,
    init_state,
    make_mesh,
    make_optimizer,
    plan_batch,
    plan_epoch,
    replicate,
    shard_batch,
    to_host,
)

STEPS = 2
LOCAL_DEVICES = 2


def main() -> None:
    pid, nproc, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    distributed.initialize(
        f"127.0.0.1:{port}",
        nproc,
        pid,
        initialization_timeout=60,
        heartbeat_timeout_seconds=10,
        shutdown_timeout_seconds=30,
    )
    out: dict = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
    }
    structures = _common.dataset(16)
    model = _common.tiny_model(structures)  # same on every process: same data, same key
    mine = distributed.process_share(structures)
    loader = _common.loader(mine, batch_size=2)
    out["share"] = len(mine)
    mesh = make_mesh(LOCAL_DEVICES)
    out["mesh_processes"] = [d.process_index for d in mesh.devices.flat]
    optimizer = make_optimizer(TrainConfig(learning_rate=1e-2, warmup_steps=0), 10)
    loss = Loss()
    plans = plan_epoch(loader, LOCAL_DEVICES, 0)
    out["steps_per_epoch"] = len(plans)
    state = replicate(init_state(model, optimizer), mesh)
    losses = []
    for plan in plans[:STEPS]:
        local = plan_batch(loader, plan)
        state, value, _ = data_parallel_step(state, shard_batch(local, mesh), optimizer, loss, 0.9)
        losses.append(float(value))
    out["losses"] = losses
    params = to_host(state.model)
    distributed.assert_same_across_processes(params, "the parameters")
    out["agree"] = True
    leaves = [np.asarray(x) for x in jax.tree.leaves(params) if hasattr(x, "shape")]
    out["checksum"] = float(sum(np.sum(np.abs(x.astype(np.float64))) for x in leaves))
    metrics = distributed.process_sum({"structures": float(len(mine))})
    out["structures_total"] = metrics["structures"]

    if pid == 0:
        # Reference: the same global batches (process 0's devices first) on one device.
        shares = [structures[p::nproc] for p in range(nproc)]
        loaders = [_common.loader(s, batch_size=2) for s in shares]
        ref = init_state(model, optimizer)
        ref_losses = []
        for k in range(STEPS):
            stacks = [
                plan_batch(ld, plan_epoch(ld, LOCAL_DEVICES, 0, across_processes=False)[k])
                for ld in loaders
            ]
            glob = jax.tree.map(lambda *xs: np.concatenate(xs), *stacks)
            ref, value, _ = data_parallel_step(ref, glob, optimizer, loss, 0.9)
            ref_losses.append(float(value))
        out["ref_losses"] = ref_losses
        out["param_rel_to_single"] = _common.rel(params, to_host(ref.model))
    _common.report(out)
    distributed.shutdown()


if __name__ == "__main__":
    main()
