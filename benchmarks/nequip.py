"""NequIP energy+forces: eqmlip against mlip 0.2.5 (its production path), in the same process.

For the default config (target irreps "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o",
l_max 3, 2 layers, 8 Bessel functions, radial MLP [64, 64]) on a 21-atom organic molecule
(1-hexanol, cutoff 5 Å) and a 512-atom periodic Si crystal: builds mlip's `ForceField`,
converts its weights with `eqmlip.interop.from_mlip`, checks that both give the same energies
and forces, then times the compile and the steady-state step of each and prints one JSON line
(medians, compile times, XLA's peak-memory estimate of each compiled step, ratios
mlip / eqmlip: > 1 means eqmlip is faster or smaller).

    python benchmarks/nequip.py [--repeats 50] [--crystal-repeats 10] [--systems molecule,crystal]
"""

import argparse
import json
import math
import os
import platform
import statistics
import time
from typing import Any

if os.environ.get("MLIP_TESTING"):
    raise SystemExit("unset MLIP_TESTING: the benchmark compares with mlip's production path")

import ase
import equinox as eqx
import jax
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

DEFAULT_TARGET = "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o"
CUTOFF = 5.0
E0 = {1: -13.6, 6: -1029.8, 8: -2041.3, 14: -7.9}


def hexanol() -> ase.Atoms:
    """1-hexanol, C6H13OH (21 atoms), from ideal bond lengths and tetrahedral angles."""
    half = math.radians(109.47) / 2
    cc, ch, co, oh = 1.53, 1.09, 1.43, 0.96
    # Zig-zag backbone C1..C6, O along the x axis in the xy plane.
    step = np.array([math.sin(half), math.cos(half), 0.0])
    backbone = [np.zeros(3)]
    for i in range(6):
        sign = 1.0 if i % 2 == 0 else -1.0
        length = co if i == 5 else cc
        direction = np.array([step[0], sign * step[1], 0.0])
        backbone.append(backbone[-1] + length * direction)
    symbols = ["C"] * 6 + ["O"]
    positions = list(backbone)
    # Two hydrogens per CH2 (three on the terminal CH3), out of the backbone plane.
    for i in range(6):
        sign = -1.0 if i % 2 == 0 else 1.0
        outward = np.array([0.0, sign * math.cos(half), 0.0])
        for z in (1.0, -1.0):
            h = outward * math.cos(math.radians(35)) + np.array(
                [0, 0, z * math.sin(math.radians(55))]
            )
            positions.append(backbone[i] + ch * h / np.linalg.norm(h))
            symbols.append("H")
    positions.append(backbone[0] + ch * np.array([-1.0, 0.0, 0.0]))  # third H of the CH3
    symbols.append("H")
    positions.append(backbone[6] + oh * np.array([math.sin(half), -math.cos(half), 0.0]))
    symbols.append("H")
    atoms = ase.Atoms(symbols=symbols, positions=np.asarray(positions))
    assert len(atoms) == 21 and atoms.get_chemical_formula() == "C6H14O"
    return atoms


def silicon() -> ase.Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (4, 4, 4)
    atoms.rattle(0.05, seed=0)
    assert len(atoms) == 512
    return atoms


def mlip_force_field(config: MlipNequipConfig, dataset_info: DatasetInfo) -> ForceField:
    """`ForceField.from_mlip_network` with the parameter init compiled (eager init of the
    default network takes minutes on CPU); same initialisers, same seed handling."""
    network = MlipNequip(config, dataset_info)
    properties = Properties()  # energy and forces
    predictor = ForceField.get_predictor_class(properties, network.config)(
        mlip_network=network,
        required_properties=properties,
        energy_head=ForceField.get_energy_head(network.config, properties, network),
    )
    params = jax.jit(predictor.init)(jax.random.key(0), get_dummy_graph_for_model_init())
    return ForceField(predictor=predictor, params=params)


def mlip_graph(atoms: ase.Atoms) -> Any:
    periodic = bool(atoms.pbc.any())
    system = ChemicalSystem(
        atomic_numbers=atoms.numbers,
        positions=atoms.positions,
        cell=np.asarray(atoms.cell.array) if periodic else None,
        pbc=(bool(atoms.pbc[0]), bool(atoms.pbc[1]), bool(atoms.pbc[2])) if periodic else None,
    )
    graph = MlipGraph.from_chemical_system(system, CUTOFF)
    n_node, n_edge = int(np.sum(graph.n_node)), int(np.sum(graph.n_edge))
    return pad_with_graphs(graph, n_node=n_node + 1, n_edge=n_edge + 1, n_graph=2)


def eqmlip_graph(atoms: ase.Atoms) -> Graph:
    graph = Graph.from_atoms(atoms, CUTOFF)
    return pad_graph(graph, graph.num_nodes + 1, graph.num_edges + 1, 2)


def _peak_bytes(compiled: Any) -> int | None:
    """XLA's estimate of the compiled step's memory: arguments, outputs and temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def _time(fn: Any, *args: Any, repeats: int) -> tuple[float, float, int | None]:
    """(compile seconds, median step seconds, peak bytes) of `fn`.

    The compile is timed on a fresh `jax.jit(fn).lower(...).compile()` after clearing JAX's
    caches; the steps through `jax.jit(fn)` itself (its C++ dispatch, as a user's jitted call),
    on arguments already on the device, so host-to-device copies and Python argument handling
    are not counted for either library.
    """
    args = jax.device_put(args)
    jitted = jax.jit(fn)
    jax.clear_caches()  # or the correctness check's executable is served from the cache
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(jitted(*args))  # reuses that executable; warm-up
    jax.block_until_ready(jitted(*args))
    steps = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        steps.append(time.perf_counter() - start)
    return compile_s, statistics.median(steps), _peak_bytes(compiled)


def run_system(name: str, atoms: ase.Atoms, force_field: ForceField, repeats: int) -> dict:
    model = from_mlip(force_field.params, force_field.predictor.mlip_network.config, _INFO)
    params, static = eqx.partition(model, eqx.is_array)
    mgraph, egraph = mlip_graph(atoms), eqmlip_graph(atoms)
    n = len(atoms)

    def mlip_step(params, graph):
        out: Any = force_field.predictor.apply(params, graph)
        return out.globals.energy, out.nodes.forces

    def eqmlip_step(params, graph):
        out = predict(eqx.combine(params, static), graph, stress=False)
        return out.energy, out.forces

    # Correctness first.
    e_ref, f_ref = jax.jit(mlip_step)(force_field.params, mgraph)
    e_ours, f_ours = jax.jit(eqmlip_step)(params, egraph)
    energy_error = float(abs(e_ours[0] - e_ref[0]) / abs(e_ref[0]))
    force_error = float(np.max(np.abs(np.asarray(f_ours)[:n] - np.asarray(f_ref)[:n])))
    if energy_error > 1e-6 or force_error > 1e-4:
        raise SystemExit(f"{name}: eqmlip and mlip disagree: {energy_error=}, {force_error=}")

    ours = _time(eqmlip_step, params, egraph, repeats=repeats)
    theirs = _time(mlip_step, force_field.params, mgraph, repeats=repeats)
    result = {
        "atoms": n,
        "edges": int(egraph.n_edge[0]),
        "energy_relative_error": energy_error,
        "force_max_abs_error": force_error,
        "eqmlip_median_ms": round(ours[1] * 1e3, 3),
        "mlip_median_ms": round(theirs[1] * 1e3, 3),
        "speedup_vs_mlip": round(theirs[1] / ours[1], 3),
        "eqmlip_compile_s": round(ours[0], 3),
        "mlip_compile_s": round(theirs[0], 3),
        "compile_speedup_vs_mlip": round(theirs[0] / ours[0], 3),
    }
    if ours[2] and theirs[2]:
        result |= {
            "eqmlip_peak_mib": round(ours[2] / 2**20, 2),
            "mlip_peak_mib": round(theirs[2] / 2**20, 2),
            "memory_ratio_vs_mlip": round(theirs[2] / ours[2], 3),
        }
    return result


_INFO = DatasetInfo(atomic_energies_map=E0, graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=12.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="NequIP energy+forces, eqmlip vs mlip.")
    parser.add_argument("--repeats", type=int, default=50, help="timed steps, molecule")
    parser.add_argument("--crystal-repeats", type=int, default=10, help="timed steps, crystal")
    parser.add_argument("--systems", default="molecule,crystal")
    args = parser.parse_args()

    config = MlipNequipConfig(target_irreps=DEFAULT_TARGET)
    force_field = mlip_force_field(config, _INFO)
    systems = {"molecule": hexanol, "crystal": silicon}
    results = {
        name: run_system(
            name,
            systems[name](),
            force_field,
            args.crystal_repeats if name == "crystal" else args.repeats,
        )
        for name in args.systems.split(",")
    }
    print(
        json.dumps(
            {
                "benchmark": "nequip_energy_forces",
                "config": "default (" + DEFAULT_TARGET.replace(" ", "") + ", l_max 3, 2 layers)",
                "cutoff": CUTOFF,
                "dtype": str(jax.numpy.zeros(()).dtype),
                **results,
                "repeats": {"molecule": args.repeats, "crystal": args.crystal_repeats},
                "jax": jax.__version__,
                "device": jax.devices()[0].device_kind,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
