"""Scale-out on forced host devices: data-parallel training throughput on 1, 2 and 4 devices,
and graph-parallel energy+forces of one large crystal on 1 and 4 devices.

Each configuration runs in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N`
(set before JAX starts). Correctness first: the sharded step's loss equals the unsharded
step's on the same global batch, and the sharded energy/forces equal the unsharded ones.
Then compile and steady-state step are timed separately (medians). Weak scaling: each device
gets `--per-device` structures per step. Prints one JSON line.

    python benchmarks/scaling.py [--per-device 2] [--repeats 5] [--supercell 8]

On a CPU, forced devices share the same cores: the figures show the overhead of the
partitioned program, not a speed-up (see docs/scaling.md).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _median_time(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(species, cutoff: float, avg_neighbors: float):
    import jax.random as jr

    from eqmlip.models.nequip import Nequip, NequipConfig

    config = NequipConfig(
        num_layers=2, target_irreps="16x0e + 8x1o", l_max=1, num_rbf=8, radial_mlp_hidden=(16,)
    )
    return Nequip(config, species, cutoff=cutoff, avg_num_neighbors=avg_neighbors, key=jr.key(0))


def worker_data_parallel(n: int, per_device: int, repeats: int) -> dict:
    import equinox as eqx
    import jax

    from eqmlip.data import GraphLoader, statistics as data_statistics
    from eqmlip.training import (
        Loss,
        StackedLoss,
        TrainConfig,
        data_parallel_step,
        emt_alloy_dataset,
        group_batches,
        init_state,
        make_mesh,
        make_optimizer,
        replicate,
        shard_batch,
    )

    structures = emt_alloy_dataset(n * per_device, seed=0, snapshots_per_trajectory=4)
    stats = data_statistics(structures, cutoff=4.0)
    model = _model(stats.species, 4.0, stats.avg_num_neighbors or 1.0)
    loader = GraphLoader(structures, 4.0, batch_size=per_device, shuffle=False, num_buckets=1)
    batch = next(group_batches(loader, n, epoch=0))
    mesh = make_mesh(n)
    loss = Loss()
    optimizer = make_optimizer(TrainConfig(warmup_steps=0), 100)

    stacked = StackedLoss.from_loss(loss)
    v_one = float(eqx.filter_jit(stacked)(model, batch)[0])
    sharded = shard_batch(batch, mesh)
    v_n = float(eqx.filter_jit(stacked)(replicate(model, mesh), sharded)[0])
    state = replicate(init_state(model, optimizer), mesh)

    jax.clear_caches()
    start = time.perf_counter()
    lowered = eqx.filter_jit(data_parallel_step).lower(state, sharded, optimizer, loss, 0.99)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    step_s = _median_time(lambda: compiled(state, sharded, optimizer, loss, 0.99)[1], repeats)
    return {
        "devices": n,
        "loss_rel": abs(v_n - v_one) / abs(v_one),
        "compile_s": compile_s,
        "step_s": step_s,
        "structures_per_s": n * per_device / step_s,
        "structures_per_s_per_device": per_device / step_s,
    }


def worker_graph_parallel(n: int, supercell: int, repeats: int) -> dict:
    import equinox as eqx
    import jax
    import numpy as np
    from ase.build import bulk

    from eqmlip import Graph
    from eqmlip.parallel import make_mesh, shard_graph
    from eqmlip.potential import predict

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * ((supercell,) * 3)
    atoms.positions += 0.05 * np.random.default_rng(0).standard_normal(atoms.positions.shape)
    graph = Graph.from_atoms(atoms, 4.0)
    model = _model((29,), 4.0, graph.num_edges / graph.num_nodes)
    mesh = make_mesh(n)
    sharded = shard_graph(graph, mesh)
    params, static = eqx.partition(model, eqx.is_array)
    # jax.jit (not eqx.filter_jit) so that the compiled program reports its memory.
    fn = jax.jit(lambda p, g: predict(eqx.combine(p, static), g))
    ref = fn(params, graph)
    par = fn(params, sharded)
    energy_rel = abs(float(par.energy[0] - ref.energy[0])) / abs(float(ref.energy[0]))
    forces_abs = float(np.max(np.abs(np.asarray(par.forces)[: graph.num_nodes] - ref.forces)))
    jax.clear_caches()  # or the correctness check's executable is served from the cache
    start = time.perf_counter()
    compiled = fn.lower(params, sharded).compile()
    compile_s = time.perf_counter() - start
    step_s = _median_time(lambda: compiled(params, sharded).forces, repeats)
    memory = compiled.memory_analysis()
    return {
        "devices": n,
        "atoms": graph.num_nodes,
        "edges": graph.num_edges,
        "energy_rel": energy_rel,
        "forces_abs": forces_abs,
        "compile_s": compile_s,
        "step_s": step_s,
        "atoms_per_s_per_device": graph.num_nodes / step_s / n,
        "temp_bytes_per_device": None if memory is None else int(memory.temp_size_in_bytes),
    }


def _spawn(args: list[str], devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)  # partial results, as they come
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Data- and graph-parallel scaling on CPU.")
    parser.add_argument("--per-device", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--supercell", type=int, default=8)
    parser.add_argument("--worker", choices=("dp", "gp"), default=None)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    if args.worker == "dp":
        print(json.dumps(worker_data_parallel(args.devices, args.per_device, args.repeats)))
        return
    if args.worker == "gp":
        print(json.dumps(worker_graph_parallel(args.devices, args.supercell, args.repeats)))
        return

    common = ["--repeats", str(args.repeats)]
    dp = [
        _spawn(
            ["--worker", "dp", "--devices", str(n), "--per-device", str(args.per_device)] + common,
            n,
        )
        for n in (1, 2, 4)
    ]
    gp = [
        _spawn(
            ["--worker", "gp", "--devices", str(n), "--supercell", str(args.supercell)] + common, n
        )
        for n in (1, 4)
    ]
    # Correctness before figures.
    assert all(r["loss_rel"] <= 1e-5 for r in dp), dp
    assert all(r["energy_rel"] <= 1e-5 and r["forces_abs"] <= 1e-4 for r in gp), gp
    base = dp[0]["structures_per_s_per_device"]
    print(
        json.dumps(
            {
                "benchmark": "scaling",
                "machine": f"{platform.machine()} {os.cpu_count()} cores (forced host devices)",
                "per_device_structures": args.per_device,
                "data_parallel": dp,
                "data_parallel_efficiency": {
                    str(r["devices"]): r["structures_per_s_per_device"] / base for r in dp
                },
                "graph_parallel": gp,
                "graph_parallel_speedup_4": gp[0]["step_s"] / gp[1]["step_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
