"""NequIP energy+forces step time against system size, eqmlip vs mlip 0.2.5, as a PNG.

Rattled diamond Si supercells (1^3 to 4^3 cubic cells: 8, 64, 216 and 512 atoms, cutoff 5 Å,
float32). For each size: build both graphs (padded by one node and one graph), check that
eqmlip (weights converted by `from_mlip`) and mlip give the same energy and forces, compile
each step separately, and time the median of `--repeats` steps. Above `--mlip-max-atoms`
only eqmlip runs, checked against its own float64 result. Writes the figure (log-log,
step time against atoms) and prints one JSON line with every number plotted.

`--config default` (the default) is NequIP's default config ("128x0e + 128x0o + 64x1o +
64x1e + 4x2e + 4x2o", l_max 3, 2 layers, radial MLP [64, 64]); `--config mid` is
"32x0e + 32x0o + 16x1o + 16x1e + 4x2e + 4x2o", l_max 2.

    python benchmarks/plot_scaling.py [--config default|mid] [--cells 1,2,3,4] \
        [--out docs/assets/nequip-step-time.png] [--mlip-max-atoms 512]
"""

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

if os.environ.get("MLIP_TESTING"):
    raise SystemExit("unset MLIP_TESTING: the benchmark compares with mlip's production path")

import equinox as eqx
import jax
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from ase.build import bulk
from mlip.data.chemical_system import ChemicalSystem
from mlip.data.dataset_info import DatasetInfo
from mlip.graph import Graph as MlipGraph
from mlip.graph.batching_helpers import pad_with_graphs
from mlip.models import ForceField, Nequip as MlipNequip
from mlip.models.force_field import get_dummy_graph_for_model_init
from mlip.models.nequip.config import NequipConfig as MlipNequipConfig
from mlip.typing.properties import Properties

from eqmlip import Graph, pad_graph
from eqmlip.interop.mlip import from_mlip
from eqmlip.potential import predict

CONFIGS: dict[str, dict[str, Any]] = {
    "mid": dict(target_irreps="32x0e + 32x0o + 16x1o + 16x1e + 4x2e + 4x2o", l_max=2),
    "default": dict(target_irreps="128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o", l_max=3),
}
CUTOFF = 5.0
INFO = DatasetInfo(
    atomic_energies_map={14: -7.9}, graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=20.0
)


def silicon(repeat: int) -> Any:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=repeat)
    return atoms


def force_field(config: MlipNequipConfig) -> ForceField:
    """mlip's ForceField with its parameter init compiled (eager init is slow on CPU)."""
    network = MlipNequip(config, INFO)
    properties = Properties()  # energy and forces
    predictor = ForceField.get_predictor_class(properties, network.config)(
        mlip_network=network,
        required_properties=properties,
        energy_head=ForceField.get_energy_head(network.config, properties, network),
    )
    params = jax.jit(predictor.init)(jax.random.key(0), get_dummy_graph_for_model_init())
    return ForceField(predictor=predictor, params=params)


def graphs(atoms: Any) -> tuple[Any, Graph]:
    system = ChemicalSystem(
        atomic_numbers=atoms.numbers,
        positions=atoms.positions,
        cell=np.asarray(atoms.cell.array),
        pbc=(True, True, True),
    )
    mgraph = MlipGraph.from_chemical_system(system, CUTOFF)
    nodes, edges = int(np.sum(mgraph.n_node)), int(np.sum(mgraph.n_edge))
    mgraph = pad_with_graphs(mgraph, n_node=nodes + 1, n_edge=edges + 1, n_graph=2)
    return mgraph, graphs_eqmlip(atoms)


def timed(fn: Any, *args: Any, repeats: int) -> tuple[float, float, Any]:
    """(compile s, median step s, first output) of `fn`: the compile timed on a fresh
    `lower().compile()` after clearing JAX's caches, the steps as calls of `jax.jit(fn)` on
    arguments already on the device (as `benchmarks/nequip.py`)."""
    args = jax.device_put(args)
    jitted = jax.jit(fn)
    jax.clear_caches()
    start = time.perf_counter()
    jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(jitted(*args))  # reuses that executable
    steps = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        steps.append(time.perf_counter() - start)
    return compile_s, statistics.median(steps), out


def float64_reference(step: Any, params: Any, graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """`step` in float64 (x64 on for this call only): a reference where mlip is not run."""

    def wide(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
            return np.asarray(x, np.float64)
        return np.asarray(x) if isinstance(x, jax.Array) else x

    with jax.enable_x64(True):
        energy, forces = jax.jit(step)(jax.tree.map(wide, params), jax.tree.map(wide, graph))
        if forces.dtype != np.float64:
            raise SystemExit(f"the float64 reference ran in {forces.dtype}")
        return np.asarray(energy), np.asarray(forces)


def graphs_eqmlip(atoms: Any) -> Graph:
    egraph = Graph.from_atoms(atoms, CUTOFF)
    return pad_graph(egraph, egraph.num_nodes + 1, egraph.num_edges + 1, 2)


def _spread(values: list[float]) -> float | None:
    return round(max(values) / min(values), 3) if len(values) > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description="NequIP step time against system size.")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--cells", default="1,2,3,4", help="cubic supercell repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/assets/nequip-step-time.png")
    parser.add_argument(
        "--mlip-max-atoms",
        type=int,
        default=None,
        help="time mlip only up to this size (its 4,096-atom step needs ~16 GiB and minutes); "
        "larger sizes are checked against eqmlip's float64 result instead",
    )
    args = parser.parse_args()

    ff = force_field(MlipNequipConfig(**CONFIGS[args.config]))
    model = from_mlip(ff.params, ff.predictor.mlip_network.config, INFO)
    params, static = eqx.partition(model, eqx.is_array)

    def mlip_step(params, graph):
        out: Any = ff.predictor.apply(params, graph)
        return out.globals.energy, out.nodes.forces

    def eqmlip_step(params, graph):
        out = predict(eqx.combine(params, static), graph, stress=False)
        return out.energy, out.forces

    rows = []
    for repeat in (int(c) for c in args.cells.split(",")):
        atoms = silicon(repeat)
        n = len(atoms)
        with_mlip = args.mlip_max_atoms is None or n <= args.mlip_max_atoms
        mgraph, egraph = graphs(atoms) if with_mlip else (None, graphs_eqmlip(atoms))
        ours = timed(eqmlip_step, params, egraph, repeats=args.repeats)
        row: dict[str, Any] = {
            "atoms": n,
            "edges": int(egraph.n_edge[0]),
            "eqmlip_ms": round(ours[1] * 1e3, 2),
            "eqmlip_us_per_edge": round(ours[1] * 1e6 / int(egraph.n_edge[0]), 2),
            "eqmlip_compile_s": round(ours[0], 2),
        }
        # Correctness of what was timed: the same energy and forces from the same weights
        # (mlip's), or eqmlip's own float64 result where mlip is not run.
        if with_mlip:
            theirs = timed(mlip_step, ff.params, mgraph, repeats=args.repeats)
            (e_ref, f_ref), reference = theirs[2], "mlip"
            row |= {
                "mlip_ms": round(theirs[1] * 1e3, 2),
                "speedup_vs_mlip": round(theirs[1] / ours[1], 3),
                "mlip_compile_s": round(theirs[0], 2),
            }
        else:
            e_ref, f_ref = float64_reference(eqmlip_step, params, egraph)
            reference = "eqmlip float64"
        (e_ours, f_ours) = ours[2]
        energy_error = float(abs(e_ours[0] - e_ref[0]) / abs(e_ref[0]))
        force_error = float(np.max(np.abs(np.asarray(f_ours)[:n] - np.asarray(f_ref)[:n])))
        if energy_error > 1e-5 or force_error > 1e-3:
            raise SystemExit(
                f"{n} atoms: eqmlip and {reference} disagree: {energy_error=}, {force_error=}"
            )
        rows.append(row | {"checked_against": reference})
        print(json.dumps(rows[-1]), flush=True)

    atoms = [r["atoms"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(atoms, [r["eqmlip_ms"] for r in rows], "o-", label="eqmlip")
    timed_mlip = [r for r in rows if "mlip_ms" in r]
    ax.plot(
        [r["atoms"] for r in timed_mlip],
        [r["mlip_ms"] for r in timed_mlip],
        "s--",
        label="mlip 0.2.5",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(atoms, [str(a) for a in atoms])
    ax.set_xlabel("atoms (diamond Si, cutoff 5 Å)")
    ax.set_ylabel("energy + forces step (ms, median)")
    ax.set_title(f"NequIP ({args.config} config), {platform.machine()} CPU, {os.cpu_count()} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out)
    print(
        json.dumps(
            {
                "benchmark": "nequip_step_time_vs_size",
                "config": args.config
                + " ("
                + CONFIGS[args.config]["target_irreps"].replace(" ", "")
                + f", l_max {CONFIGS[args.config]['l_max']}, 2 layers)",
                "rows": rows,
                # Issue goal: flat cost per edge (max/min within 1.3x) from 64 atoms up.
                "eqmlip_per_edge_spread_from_64_atoms": _spread(
                    [r["eqmlip_us_per_edge"] for r in rows if r["atoms"] >= 64]
                ),
                "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                "figure": args.out,
                "jax": jax.__version__,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
