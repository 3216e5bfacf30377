"""NequIP energy+forces: eqmlip against nequix 0.4.5 (an Equinox NequIP-style library) at a
FLOP-matched config, in the same process.

nequix pulls `jax[cuda12]` as a dependency; install it without its dependencies (it imports
only e3nn-jax, equinox and jraph for its model, all eqmlip dependencies or mlip's):

    pip install --no-deps nequix==0.4.5

The two models are built to do the same work per edge (the weights cannot be shared: the
layers are parametrised differently, e.g. nequix's gates and skip differ from mlip's):

- eqmlip: the default NequIP config (target irreps "128x0e + 128x0o + 64x1o + 64x1e + 4x2e +
  4x2o", l_max 3, 2 layers, 8 Bessel functions, radial MLP [64, 64], polynomial envelope,
  cutoff 5 Å). Its first layer maps the 128 0e species-embedding channels to the reachable
  irreps "128x0e + 64x1o + 4x2e" (0o and 1e cannot be reached from scalars in two layers);
  its last layer builds only the paths that reach the 0e readout.
- nequix: `hidden_irreps="128x0e + 64x1o + 4x2e"` (the irreps eqmlip's first layer actually
  produces), l_max 3, 2 layers, 8 Bessel functions, `radial_mlp_size=64`,
  `radial_mlp_layers=2`, polynomial cutoff p = 5, cutoff 5 Å. nequix's first-layer input is
  a one-hot of `n_species`; it is built with `n_species=128`, so that one-hot times its
  first 128 x 128 linear is an embedding of width 128, as eqmlip's. Its last layer also keeps
  only the 0e outputs, so both compute the same tensor-product paths (128, 128 and 128 for
  0e, 1o, 2e in the first layer; 196 scalar paths in the last), radial MLPs of the same
  shapes, and species-indexed skips of the same widths. XLA's FLOP count of each compiled
  step is printed as a check.

Both compute energy and forces only (no stress): eqmlip through `eqmlip.potential.predict`
(`stress=False`), nequix through `Nequix.node_energies` and `jax.value_and_grad` over the
positions, as its own `__call__` does for a structure without a cell (its periodic path also
differentiates a strain). Correctness of each model on its own (energies finite; forces
equal to a central finite difference of the energy along the forces; rotating the
structure rotates the forces and keeps the energy) comes first. Then compile is timed
separately, and the steady-state steps in `--rounds` interleaved rounds (eqmlip then nequix,
the order alternating), with medians over all steps and the ratio nequix / eqmlip of each
round (> 1: eqmlip is faster). Peak memory is XLA's estimate for each compiled step
(arguments, outputs, temporaries). Prints one JSON line.

    python benchmarks/nequix.py [--systems molecule,crystal] [--rounds 5] [--repeats 10]
        [--crystal-repeats 3]
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
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# Run as a script, this file's folder comes first on sys.path and this file would shadow the
# nequix package: look it up from the repository root instead.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, os.path.dirname(HERE))

try:
    import nequix.model as nequix_model  # pyright: ignore[reportMissingImports]  # optional
except ImportError as error:
    raise SystemExit(
        "benchmarks/nequix.py needs nequix 0.4.5; install it without its CUDA dependencies: "
        f"`pip install --no-deps nequix==0.4.5` ({error})"
    ) from error

from benchmarks.nequip import (  # noqa: E402
    CUTOFF,
    DEFAULT_TARGET,
    _peak_bytes,
    eqmlip_graph,
    hexanol,
    silicon,
)
from eqmlip import Graph  # noqa: E402
from eqmlip.models.nequip import Nequip, NequipConfig  # noqa: E402
from eqmlip.potential import predict  # noqa: E402

SPECIES = (1, 6, 8, 14)
AVG_NEIGHBOURS = 12.0
NEQUIX_HIDDEN = "128x0e + 64x1o + 4x2e"
ONE_HOT_WIDTH = 128  # nequix's first-layer input: one-hot of this width (see the docstring)


def build_models(key: jax.Array) -> tuple[Nequip, Any]:
    ekey, nkey = jax.random.split(key)
    ours = Nequip(
        NequipConfig(target_irreps=DEFAULT_TARGET),
        SPECIES,
        cutoff=CUTOFF,
        avg_num_neighbors=AVG_NEIGHBOURS,
        key=ekey,
    )
    theirs = nequix_model.Nequix(
        nkey,
        n_species=ONE_HOT_WIDTH,
        lmax=3,
        cutoff=CUTOFF,
        hidden_irreps=NEQUIX_HIDDEN,
        n_layers=2,
        radial_basis_size=8,
        radial_mlp_size=64,
        radial_mlp_layers=2,
        radial_polynomial_p=5.0,
        avg_n_neighbors=AVG_NEIGHBOURS,
    )
    return ours, theirs


def nequix_inputs(graph: Graph) -> tuple[jax.Array, ...]:
    """(positions, species index, senders, receivers, cell offsets) of an unpadded graph.

    nequix's edge vector is `pos[senders] - pos[receivers] + offset`; eqmlip's is
    `pos[receivers] - pos[senders] + shift @ cell`, so the offset is `-shift @ cell` and both
    gather from the same senders and sum into the same receivers.
    """
    species = np.searchsorted(SPECIES, np.asarray(graph.atomic_numbers))
    offsets = -np.asarray(graph.shifts) @ np.asarray(graph.cell[0])
    return tuple(
        jnp.asarray(a) for a in (graph.positions, species, graph.senders, graph.receivers, offsets)
    )


def eqmlip_step(model: Nequip, graph: Graph) -> tuple[jax.Array, jax.Array]:
    out = predict(model, graph, stress=False)
    assert out.forces is not None
    return out.energy[0], out.forces


def nequix_step(
    model: Any, positions, species, senders, receivers, offsets
) -> tuple[jax.Array, jax.Array]:
    def energy(positions):
        vectors = positions[senders] - positions[receivers] + offsets
        return jnp.sum(model.node_energies(vectors, species, senders, receivers))

    e, gradient = jax.value_and_grad(energy)(positions)
    return e, -gradient


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _check(name: str, library: str, energy_forces: Any, atoms: ase.Atoms) -> dict[str, float]:
    """Energies finite, forces = -dE/dx (central difference along the forces), and
    E(R x) = E(x), F(R x) = R F(x). `energy_forces(atoms)` -> (E, forces of the real atoms)."""
    e, f = energy_forces(atoms)
    if not (np.isfinite(e) and np.all(np.isfinite(f))):
        raise SystemExit(f"{name}/{library}: non-finite energy or forces")
    # Along the forces themselves (steepest descent): the energy changes fastest there, so
    # float32's rounding of a total energy of hundreds of eV stays small against the change.
    direction = f / np.linalg.norm(f)
    h = 3e-2
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions += h * direction
    minus.positions -= h * direction
    difference = (energy_forces(plus)[0] - energy_forces(minus)[0]) / (2 * h)
    slope = -float(np.sum(f * direction))
    fd_error = abs(difference - slope) / max(abs(slope), 1e-3)
    rotation = _rotation(2)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        rotated.cell = atoms.cell.array @ rotation.T
    e_rot, f_rot = energy_forces(rotated)
    energy_error = abs(e_rot - e) / max(abs(e), 1.0)
    force_error = float(np.max(np.abs(f_rot - f @ rotation.T))) / max(np.max(np.abs(f)), 1e-3)
    # float32: a central difference with h = 0.03 Å agrees to ~1e-3 relative, a rotation to
    # ~1e-5 relative; a wrong gradient or a broken equivariance is off by O(1).
    if fd_error > 2e-2 or energy_error > 1e-4 or force_error > 1e-3:
        raise SystemExit(
            f"{name}/{library}: failed the check: finite difference {fd_error:.2e}, rotation "
            f"energy {energy_error:.2e}, rotation forces {force_error:.2e}"
        )
    return {
        "finite_difference_rel_error": float(f"{fd_error:.3g}"),
        "rotation_energy_rel_error": float(f"{energy_error:.3g}"),
        "rotation_force_rel_error": float(f"{force_error:.3g}"),
    }


def _steps(fn: Any, args: tuple, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def _compile(fn: Any, args: tuple) -> tuple[Any, float, int | None, float | None]:
    """(jitted, compile s, peak bytes, XLA FLOPs) after clearing the checks' executables."""
    jitted = jax.jit(fn)
    jax.clear_caches()
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    jax.block_until_ready(jitted(*args))  # warm-up, twice (the first may allocate)
    jax.block_until_ready(jitted(*args))
    return jitted, compile_s, _peak_bytes(compiled), flops


def run_system(name: str, atoms: ase.Atoms, rounds: int, repeats: int) -> dict[str, Any]:
    ours, theirs = build_models(jax.random.key(0))
    oparams, ostatic = eqx.partition(ours, eqx.is_array)
    nparams, nstatic = eqx.partition(theirs, eqx.is_array)
    ostep, nstep = eqx.filter_jit(eqmlip_step), eqx.filter_jit(nequix_step)
    n = len(atoms)

    def ours_ef(a: ase.Atoms) -> tuple[float, np.ndarray]:
        e, f = ostep(ours, eqmlip_graph(a))
        return float(e), np.asarray(f)[:n]

    def theirs_ef(a: ase.Atoms) -> tuple[float, np.ndarray]:
        e, f = nstep(theirs, *nequix_inputs(Graph.from_atoms(a, CUTOFF)))
        return float(e), np.asarray(f)

    checks = {"eqmlip": _check(name, "eqmlip", ours_ef, atoms)}
    checks["nequix"] = _check(name, "nequix", theirs_ef, atoms)

    graph = eqmlip_graph(atoms)
    oargs = jax.device_put((oparams, graph))
    nargs = jax.device_put((nparams, *nequix_inputs(Graph.from_atoms(atoms, CUTOFF))))
    ojit, ocompile, opeak, oflops = _compile(
        lambda p, g: eqmlip_step(eqx.combine(p, ostatic), g), oargs
    )
    njit, ncompile, npeak, nflops = _compile(
        lambda p, *a: nequix_step(eqx.combine(p, nstatic), *a), nargs
    )
    otimes: list[float] = []
    ntimes: list[float] = []
    round_ratios = []
    for fn, args in ((ojit, oargs), (njit, nargs)):
        _steps(fn, args, repeats)  # an untimed round: the first steps after compiling are slow
    for r in range(rounds):
        order = [("o", ojit, oargs), ("n", njit, nargs)]
        if r % 2:
            order.reverse()
        medians = {}
        for tag, fn, args in order:
            times = _steps(fn, args, repeats)
            (otimes if tag == "o" else ntimes).extend(times)
            medians[tag] = statistics.median(times)
        round_ratios.append(round(medians["n"] / medians["o"], 3))
    omed, nmed = statistics.median(otimes), statistics.median(ntimes)
    result: dict[str, Any] = {
        "atoms": n,
        "edges": int(graph.n_edge[0]),
        "checks": checks,
        "eqmlip_median_ms": round(omed * 1e3, 3),
        "nequix_median_ms": round(nmed * 1e3, 3),
        "speedup_vs_nequix": round(nmed / omed, 3),
        "round_speedups_vs_nequix": round_ratios,
        "eqmlip_compile_s": round(ocompile, 3),
        "nequix_compile_s": round(ncompile, 3),
    }
    if oflops and nflops:
        result |= {
            "eqmlip_xla_gflop": round(oflops / 1e9, 4),
            "nequix_xla_gflop": round(nflops / 1e9, 4),
        }
    if opeak and npeak:
        result |= {
            "eqmlip_peak_mib": round(opeak / 2**20, 2),
            "nequix_peak_mib": round(npeak / 2**20, 2),
            "memory_ratio_vs_nequix": round(npeak / opeak, 3),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="NequIP energy+forces, eqmlip vs nequix.")
    parser.add_argument("--systems", default="molecule,crystal")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=10, help="steps per round, molecule")
    parser.add_argument("--crystal-repeats", type=int, default=3, help="steps per round, crystal")
    args = parser.parse_args()
    systems = {"molecule": hexanol, "crystal": silicon}
    names = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(names) - set(systems))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; expected some of {sorted(systems)}")
    load_start = os.getloadavg()[0]
    results = {
        name: run_system(
            name,
            systems[name](),
            args.rounds,
            args.crystal_repeats if name == "crystal" else args.repeats,
        )
        for name in names
    }
    print(
        json.dumps(
            {
                "benchmark": "nequip_vs_nequix",
                "eqmlip_config": "default (" + DEFAULT_TARGET.replace(" ", "") + ", l_max 3)",
                "nequix_config": f"hidden {NEQUIX_HIDDEN.replace(' ', '')}, one-hot width "
                f"{ONE_HOT_WIDTH}, l_max 3, 2 layers, radial MLP [64, 64], 8 Bessel, p 5",
                "cutoff": CUTOFF,
                "dtype": str(jnp.zeros(()).dtype),
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
