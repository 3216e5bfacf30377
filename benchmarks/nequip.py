"""NequIP energy+forces: eqmlip against mlip 0.2.5 (its production path), in the same process.

For the default config (target irreps "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o",
l_max 3, 2 layers, 8 Bessel functions, radial MLP [64, 64]) on a 21-atom organic molecule
(1-hexanol, cutoff 5 Å) and a 512-atom periodic Si crystal: builds mlip's `ForceField`,
converts its weights with `eqmlip.interop.from_mlip`, checks that both give the same energies
and forces, then times the compile of each step separately, and the steady-state steps in
`--rounds` interleaved rounds of `--repeats` steps of each library (eqmlip first in even
rounds, mlip in odd ones), so that a change of load on a shared machine reaches both. Prints
one JSON line: medians over all steps and their ratio, the median, range and list of the
per-round ratios, eqmlip's 10th/90th percentile step, compile times, XLA's peak-memory
estimate of each compiled step; ratios are mlip / eqmlip: > 1 means eqmlip is faster or
smaller.

    python benchmarks/nequip.py [--rounds 7] [--repeats 7] [--crystal-repeats 1]
        [--systems molecule,crystal]
"""

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
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


def _compile(fn: Any, args: tuple) -> tuple[Any, float, int | None]:
    """(jitted `fn`, compile seconds, peak bytes) for arguments already on the device.

    The compile is timed on `jax.jit(fn).lower(...).compile()`; the steps then go through that
    `jax.jit(fn)` (its C++ dispatch, as a user's jitted call), which reuses the executable. The
    caller clears JAX's caches once before compiling both libraries' steps: a clear between
    them would drop the first one's executable.
    """
    jitted = jax.jit(fn)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    return jitted, compile_s, _peak_bytes(compiled)


def interleaved(
    ours: Callable[[], Any], theirs: Callable[[], Any], rounds: int, repeats: int
) -> tuple[list[float], list[float], list[float]]:
    """Seconds of every step of `ours` and `theirs` (each blocks until its result is ready) and
    the ratio theirs / ours of the medians of each round.

    Each of `rounds` rounds runs `repeats` steps of one then `repeats` of the other, eqmlip
    first in even rounds and the reference first in odd ones, so that a change of load on a
    shared machine reaches both. An untimed round comes first: the first steps after
    compiling are slow. Each block of `repeats` also starts with one untimed step: the first
    step after the other library's is cold (under glibc's default malloc, eqmlip's Si-512
    step took 260 ms right after mlip's, whose 2 GiB of buffers had just been freed, and 120
    ms right after its own), and a library used alone never pays that.
    """
    steps = (ours, theirs)
    for step in steps:
        for _ in range(max(2, repeats)):
            step()
    times: tuple[list[float], list[float]] = ([], [])
    ratios = []
    for r in range(rounds):
        medians = [0.0, 0.0]
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            steps[i]()
            record = []
            for _ in range(repeats):
                start = time.perf_counter()
                steps[i]()
                record.append(time.perf_counter() - start)
            times[i].extend(record)
            medians[i] = statistics.median(record)
        ratios.append(medians[1] / medians[0])
    return times[0], times[1], ratios


def timing_summary(
    ours: list[float], theirs: list[float], ratios: list[float], reference: str = "mlip"
) -> dict[str, Any]:
    """The JSON keys of an interleaved comparison: medians over all steps and their ratio
    (reference / eqmlip, > 1: eqmlip is faster), the per-round ratios (median, range, each
    round), and eqmlip's 10th and 90th percentile step (its steps spread widely at a few ms)."""
    omed, tmed = statistics.median(ours), statistics.median(theirs)
    deciles = statistics.quantiles(ours, n=10, method="inclusive") if len(ours) > 1 else ours * 9
    return {
        "eqmlip_median_ms": round(omed * 1e3, 3),
        f"{reference}_median_ms": round(tmed * 1e3, 3),
        f"speedup_vs_{reference}": round(tmed / omed, 3),
        "speedup_per_round_median": round(statistics.median(ratios), 3),
        "speedup_per_round_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        f"round_speedups_vs_{reference}": [round(x, 3) for x in ratios],
        "eqmlip_p10_ms": round(deciles[0] * 1e3, 3),
        "eqmlip_p90_ms": round(deciles[-1] * 1e3, 3),
    }


def checked_steps(name: str, atoms: ase.Atoms, force_field: ForceField) -> dict[str, Any]:
    """Both libraries' energy+forces steps on `atoms`, checked against each other: the
    converted eqmlip model's `eqmlip_step(params, graph)` and mlip's `mlip_step(params, graph)`
    with their arguments (`eqmlip_args`, `mlip_args`) and the errors."""
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

    e_ref, f_ref = jax.jit(mlip_step)(force_field.params, mgraph)
    e_ours, f_ours = jax.jit(eqmlip_step)(params, egraph)
    if not (np.isfinite(e_ours[0]) and np.all(np.isfinite(np.asarray(f_ours)[:n]))):
        raise SystemExit(f"{name}: eqmlip's energy or forces are not finite")
    energy_error = float(abs(e_ours[0] - e_ref[0]) / abs(e_ref[0]))
    force_error = float(np.max(np.abs(np.asarray(f_ours)[:n] - np.asarray(f_ref)[:n])))
    if energy_error > 1e-6 or force_error > 1e-4:
        raise SystemExit(f"{name}: eqmlip and mlip disagree: {energy_error=}, {force_error=}")
    return {
        "eqmlip_step": eqmlip_step,
        "eqmlip_args": jax.device_put((params, egraph)),
        "mlip_step": mlip_step,
        "mlip_args": jax.device_put((force_field.params, mgraph)),
        "energy_relative_error": energy_error,
        "force_max_abs_error": force_error,
    }


def run_system(
    name: str, atoms: ase.Atoms, force_field: ForceField, rounds: int, repeats: int
) -> dict:
    built = checked_steps(name, atoms, force_field)  # correctness first
    oargs, margs = built["eqmlip_args"], built["mlip_args"]
    jax.clear_caches()  # or the correctness check's executables are served from the cache
    ojit, ocompile, opeak = _compile(built["eqmlip_step"], oargs)
    mjit, mcompile, mpeak = _compile(built["mlip_step"], margs)
    ours, theirs, ratios = interleaved(
        lambda: jax.block_until_ready(ojit(*oargs)),
        lambda: jax.block_until_ready(mjit(*margs)),
        rounds,
        repeats,
    )
    result = {
        "atoms": len(atoms),
        "edges": int(oargs[1].n_edge[0]),
        "energy_relative_error": built["energy_relative_error"],
        "force_max_abs_error": built["force_max_abs_error"],
        **timing_summary(ours, theirs, ratios),
        "eqmlip_compile_s": round(ocompile, 3),
        "mlip_compile_s": round(mcompile, 3),
        "compile_speedup_vs_mlip": round(mcompile / ocompile, 3),
    }
    if opeak and mpeak:
        result |= {
            "eqmlip_peak_mib": round(opeak / 2**20, 2),
            "mlip_peak_mib": round(mpeak / 2**20, 2),
            "memory_ratio_vs_mlip": round(mpeak / opeak, 3),
        }
    return result


_INFO = DatasetInfo(atomic_energies_map=E0, graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=12.0)


def main() -> None:
    parser = argparse.ArgumentParser(description="NequIP energy+forces, eqmlip vs mlip.")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=7, help="steps per round, molecule")
    parser.add_argument("--crystal-repeats", type=int, default=1, help="steps per round, crystal")
    parser.add_argument("--systems", default="molecule,crystal")
    args = parser.parse_args()
    if min(args.rounds, args.repeats, args.crystal_repeats) < 1:
        parser.error("--rounds, --repeats and --crystal-repeats must be at least 1")
    systems = {"molecule": hexanol, "crystal": silicon}
    names = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(names) - set(systems))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; expected some of {sorted(systems)}")

    load_start = os.getloadavg()[0]
    config = MlipNequipConfig(target_irreps=DEFAULT_TARGET)
    force_field = mlip_force_field(config, _INFO)
    results = {
        name: run_system(
            name,
            systems[name](),
            force_field,
            args.rounds,
            args.crystal_repeats if name == "crystal" else args.repeats,
        )
        for name in names
    }
    print(
        json.dumps(
            {
                "benchmark": "nequip_energy_forces",
                "config": "default (" + DEFAULT_TARGET.replace(" ", "") + ", l_max 3, 2 layers)",
                "cutoff": CUTOFF,
                "dtype": str(jax.numpy.zeros(()).dtype),
                **results,
                "rounds": args.rounds,
                "repeats": {"molecule": args.repeats, "crystal": args.crystal_repeats},
                "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                "jax": jax.__version__,
                "device": jax.devices()[0].device_kind,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
