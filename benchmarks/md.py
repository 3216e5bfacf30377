"""MD steps per second: eqmlip's jitted engine against the ASE loop and mlip's JAX-MD engine.

The same NequIP weights (mlip 0.2.5's `ForceField`, converted with `eqmlip.interop.from_mlip`)
run NVE (velocity Verlet, 1 fs, initial momenta drawn at 300 K, the same for all engines) with:

1. `eqmlip.md.simulate` (the jitted engine: many steps per host call, on-device neighbour list);
2. the ASE loop: `ase.md.VelocityVerlet` with `eqmlip.calculator.EqmlipCalculator` (a host
   neighbour list and one device call per step);
3. mlip's `JaxMDSimulationEngine` (NVE_VELOCITY_VERLET) on the mlip `ForceField` itself.

Systems: 1-hexanol (21 atoms, no cell), and rattled Si diamond supercells of 256 (4x4x2 cubic
cells) and 2,048 atoms (8x8x4). The default model is a smaller NequIP than mlip's default
(target irreps "32x0e + 32x0o + 16x1o + 16x1e", l_max 2, 2 layers) so that 2,048 atoms run on
a laptop CPU; `--config default` uses benchmarks/nequip.py's config (l_max 3).

Correctness first, for each system: the engine's initial energy and forces equal the mlip
`ForceField`'s, and its NVE trajectory equals the ASE loop's over 5 steps.

Timing (compilation excluded everywhere; medians over `--repeats` runs), interleaved: mlip's
engine runs `1 + --repeats` episodes of N steps, and after each episode (from its logger, outside
the episode's timing) eqmlip and the ASE loop run once each, so that all three share the
machine's load as it drifts:

- mlip: each episode's duration from mlip's own `state.compute_time_seconds` (which times the
  jitted `fori_loop` and its overflow check). The first episode compiles; steps/s is N over the
  median of the later episodes; compile = engine construction plus the first episode minus a
  steady episode. mlip's default logging (positions, forces, velocities every step) is kept.
- eqmlip: after the first episode, `simulate(..., steps=N, chunk=N)` once to compile (its
  `compile_seconds`); after each later one, one more run, whose
  `MDResult.steps_per_second` times the chunk calls only.
- ASE: after the first episode, the calculator's first call (compile) and 2 steps; after each
  later one, a run of `--ase-steps` steps timed around `VelocityVerlet.run`.

    python benchmarks/md.py [--systems molecule,cell256,cell2048] [--config small|default]
        [--steps 100] [--ase-steps 20] [--large-steps 10] [--large-ase-steps 5] [--repeats 3]

Prints progress on stderr and one JSON line on stdout (ratios > 1: eqmlip is faster).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import ase
import ase.units
import jax
import numpy as np
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from mlip.data.dataset_info import DatasetInfo
from mlip.models import ForceField
from mlip.models.nequip.config import NequipConfig as MlipNequipConfig
from mlip.simulation.enums import MDIntegrator
from mlip.simulation.jax_md import JaxMDSimulationEngine
from nequip import CUTOFF, DEFAULT_TARGET, E0, hexanol, mlip_force_field, mlip_graph

from eqmlip import Graph
from eqmlip.calculator import EqmlipCalculator
from eqmlip.interop.mlip import from_mlip
from eqmlip.md import MDResult, simulate
from eqmlip.md._engine import maxwell_boltzmann

SMALL_TARGET = "32x0e + 32x0o + 16x1o + 16x1e"
CONFIGS = {
    "small": (SMALL_TARGET, 2),
    "default": (DEFAULT_TARGET, 3),
}
TIMESTEP_FS = 1.0
TEMPERATURE_K = 300.0
INFO = DatasetInfo(atomic_energies_map=E0, graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=12.0)


def log(message: str) -> None:
    print(f"[md] {message}", file=sys.stderr, flush=True)


def silicon(cells: tuple[int, int, int]) -> ase.Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * cells
    atoms.rattle(0.05, seed=0)
    return atoms


SYSTEMS = {
    "molecule": hexanol,
    "cell256": lambda: silicon((4, 4, 2)),
    "cell2048": lambda: silicon((8, 8, 4)),
}


def with_momenta(atoms: ase.Atoms) -> ase.Atoms:
    atoms = atoms.copy()
    atoms.set_momenta(maxwell_boltzmann(atoms.get_masses(), TEMPERATURE_K, seed=0))
    return atoms


def check(name: str, atoms: ase.Atoms, model: Any, force_field: ForceField) -> dict:
    """The engine's initial energy/forces against mlip's ForceField, and its NVE trajectory
    against the ASE loop's over 5 steps."""
    n = len(atoms)
    out: Any = jax.jit(force_field)(mlip_graph(atoms))
    e_ref, f_ref = float(out.energy[0]), np.asarray(out.forces)[:n]
    first = simulate(model, atoms, steps=0).atoms[0]
    energy_error = abs(first.get_potential_energy() - e_ref) / abs(e_ref)
    force_error = float(np.max(np.abs(first.get_forces() - f_ref)))

    steps = 5
    ours = simulate(model, atoms, steps=steps, timestep=TIMESTEP_FS, chunk=steps).atoms[0]
    reference = atoms.copy()
    reference.calc = EqmlipCalculator(model)
    VelocityVerlet(reference, timestep=TIMESTEP_FS * ase.units.fs).run(steps)
    position_error = float(np.max(np.abs(ours.positions - reference.positions)))
    log(
        f"{name}: energy rel. error vs mlip {energy_error:.2e}, forces {force_error:.2e} eV/Å, "
        f"NVE positions vs ASE after {steps} steps {position_error:.2e} Å"
    )
    if energy_error > 1e-5 or force_error > 1e-3 or position_error > 1e-4:
        raise SystemExit(
            f"{name}: engines disagree: {energy_error=}, {force_error=}, {position_error=}"
        )
    return {
        "energy_relative_error_vs_mlip": energy_error,
        "force_max_abs_error_vs_mlip": force_error,
        "nve_position_max_abs_error_vs_ase_5_steps": position_error,
    }


class Interleaved:
    """The eqmlip and ASE timings, one run of each between two episodes of mlip's engine (from
    its logger), so that the three engines share the machine's load as it drifts."""

    def __init__(self, atoms: ase.Atoms, model: Any, steps: int, ase_steps: int):
        self.atoms, self.model, self.steps, self.ase_steps = atoms, model, steps, ase_steps
        self.eqmlip_rates: list[float] = []
        self.ase_rates: list[float] = []
        self.eqmlip_compile = self.ase_compile = float("nan")
        self.dynamics: VelocityVerlet | None = None

    def _eqmlip(self) -> MDResult:
        return simulate(
            self.model, self.atoms, steps=self.steps, timestep=TIMESTEP_FS, chunk=self.steps
        )

    def warm_up(self) -> None:
        """eqmlip: a first (compiling) run; ASE: the calculator's first call and 2 steps."""
        self.eqmlip_compile = self._eqmlip().compile_seconds
        atoms = self.atoms.copy()
        atoms.calc = EqmlipCalculator(self.model)
        start = time.perf_counter()
        atoms.get_forces()
        self.ase_compile = time.perf_counter() - start
        self.dynamics = VelocityVerlet(atoms, timestep=TIMESTEP_FS * ase.units.fs)
        self.dynamics.run(2)

    def round(self) -> None:
        """One timed run of each: eqmlip's `MDResult.steps_per_second` (the chunk calls only)
        and `ase_steps` steps of `VelocityVerlet.run`."""
        assert self.dynamics is not None
        self.eqmlip_rates.append(self._eqmlip().steps_per_second)
        start = time.perf_counter()
        self.dynamics.run(self.ase_steps)
        self.ase_rates.append(self.ase_steps / (time.perf_counter() - start))

    def __call__(self, episodes_done: int) -> None:
        self.warm_up() if episodes_done == 1 else self.round()


def time_mlip(
    atoms: ase.Atoms,
    force_field: ForceField,
    steps: int,
    repeats: int,
    between: Interleaved,
) -> tuple[float, float, float]:
    """(steps per second, compile seconds, initial potential energy) of mlip's engine; after
    each episode (not timed: an episode's own duration is), `between` runs."""
    config = JaxMDSimulationEngine.Config(
        md_integrator=MDIntegrator.NVE_VELOCITY_VERLET,
        num_steps=steps * (1 + repeats),
        num_episodes=1 + repeats,
        timestep_fs=TIMESTEP_FS,
        temperature_kelvin=TEMPERATURE_K,
    )
    start = time.perf_counter()
    engine = JaxMDSimulationEngine(atoms.copy(), force_field, config)
    construct_s = time.perf_counter() - start
    totals: list[float] = []

    def logger(state: Any) -> None:
        totals.append(state.compute_time_seconds)
        between(len(totals))

    engine.attach_logger(logger)
    engine.run()
    episodes = np.diff([0.0, *totals])
    if len(episodes) != 1 + repeats:
        raise SystemExit(f"mlip's engine ran {len(episodes)} episodes, not {1 + repeats}")
    steady = statistics.median(episodes[1:].tolist())
    energy = engine.state.potential_energy
    assert energy is not None
    return steps / steady, construct_s + episodes[0] - steady, float(energy[0])


def run_system(
    name: str, model: Any, force_field: ForceField, steps: int, ase_steps: int, repeats: int
) -> dict:
    atoms = with_momenta(SYSTEMS[name]())
    edges = Graph.from_atoms(atoms, CUTOFF).num_edges
    log(f"{name}: {len(atoms)} atoms, {edges} edges")
    result = {"atoms": len(atoms), "edges": int(edges)} | check(name, atoms, model, force_field)

    others = Interleaved(atoms, model, steps, ase_steps)
    mlip_rate, mlip_compile, mlip_energy = time_mlip(atoms, force_field, steps, repeats, others)
    eqmlip_rate, ase_rate = (
        statistics.median(others.eqmlip_rates),
        statistics.median(others.ase_rates),
    )
    log(f"{name}: eqmlip.md {eqmlip_rate:.2f} steps/s (compile {others.eqmlip_compile:.1f} s)")
    log(f"{name}: ASE loop {ase_rate:.2f} steps/s (compile {others.ase_compile:.1f} s)")
    log(f"{name}: mlip JAX-MD {mlip_rate:.2f} steps/s (compile {mlip_compile:.1f} s)")

    initial = simulate(model, atoms, steps=0)
    first = initial.atoms[0].get_potential_energy()
    return result | {
        "mlip_engine_initial_energy_relative_error": abs(mlip_energy - first) / abs(first),
        "eqmlip_steps_per_s": round(eqmlip_rate, 3),
        "ase_steps_per_s": round(ase_rate, 3),
        "mlip_jaxmd_steps_per_s": round(mlip_rate, 3),
        "speedup_vs_ase": round(eqmlip_rate / ase_rate, 3),
        "speedup_vs_mlip_jaxmd": round(eqmlip_rate / mlip_rate, 3),
        "eqmlip_steps_per_s_each": [round(r, 2) for r in others.eqmlip_rates],
        "ase_steps_per_s_each": [round(r, 2) for r in others.ase_rates],
        "eqmlip_compile_s": round(others.eqmlip_compile, 2),
        "ase_compile_s": round(others.ase_compile, 2),
        "mlip_jaxmd_compile_s": round(mlip_compile, 2),
        "eqmlip_search": "all_pairs" if initial.spec.bins is None else "cell_list",
        "eqmlip_edge_capacity": initial.spec.edge_capacity,
        "steps": {"jitted": steps, "ase": ase_steps},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="MD steps/s: eqmlip.md vs ASE vs mlip JAX-MD.")
    parser.add_argument("--systems", default="molecule,cell256,cell2048")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed jitted run")
    parser.add_argument("--ase-steps", type=int, default=20, help="steps per timed ASE run")
    parser.add_argument("--large-steps", type=int, default=10, help="--steps for cell2048")
    parser.add_argument("--large-ase-steps", type=int, default=5, help="--ase-steps, cell2048")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load_start = [round(x, 2) for x in os.getloadavg()]
    target, l_max = CONFIGS[args.config]
    log(f"building mlip NequIP ({target}, l_max {l_max}, 2 layers)")
    force_field = mlip_force_field(MlipNequipConfig(target_irreps=target, l_max=l_max), INFO)
    model = from_mlip(force_field.params, force_field.predictor.mlip_network.config, INFO)
    results = {}
    for name in args.systems.split(","):
        large = name == "cell2048"
        results[name] = run_system(
            name,
            model,
            force_field,
            args.large_steps if large else args.steps,
            args.large_ase_steps if large else args.ase_steps,
            args.repeats,
        )
    goals = {
        "molecule_10x_ase": results["molecule"]["speedup_vs_ase"] >= 10
        if "molecule" in results
        else None,
        "all_1.5x_mlip_jaxmd": all(r["speedup_vs_mlip_jaxmd"] >= 1.5 for r in results.values()),
    }
    print(
        json.dumps(
            {
                "benchmark": "md_steps_per_second",
                "config": f"{args.config} ({target.replace(' ', '')}, l_max {l_max}, 2 layers)",
                "ensemble": "nve",
                "timestep_fs": TIMESTEP_FS,
                "cutoff": CUTOFF,
                "dtype": str(jax.numpy.zeros(()).dtype),
                **results,
                "goals_met": goals,
                "repeats": args.repeats,
                "jax": jax.__version__,
                "device": jax.devices()[0].device_kind,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "load_average_1_5_15_min": {
                    "start": load_start,
                    "end": [round(x, 2) for x in os.getloadavg()],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
