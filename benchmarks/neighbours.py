"""Rebuild time of the on-device neighbour list: all-pairs search against the cell list.

Rattled Si diamond supercells (a = 5.43 Å, atoms rattled by 0.05 Å) of 256 (4x4x2 cubic
cells), 2,048 (8x8x4) and 8,192 atoms (8x8x16), `cutoff + skin` = 5 + 1 Å (benchmarks/md.py's
model cutoff and `simulate`'s default skin), and a triclinic cell (the 2,048-atom cell sheared
by 0.3 of its third vector along the first) for the grid's skewed bins; 64 (2x2x2) and 216
atoms (3x3x3) on request, for where the automatic choice switches.

Correctness first: for each system, both searches return the same arrays (senders, receivers,
shifts, in the order of `eqmlip.graph.neighbour_list`) and the same pairs as the host list.
Timing: `eqmlip.md.build` jitted per search; the first call (compilation) is timed apart, then
the median of `--repeats` calls with `block_until_ready`. The all-pairs search is skipped above
`--max-all-pairs` atoms (its O(N^2) time is then reported as null).

    python benchmarks/neighbours.py [--systems 256,2048,8192,2048-triclinic] [--repeats 5]
        [--x64] [--max-all-pairs 8192]

Prints progress on stderr and one JSON line on stdout (speedup > 1: the cell list is faster).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from eqmlip.graph import neighbour_list
from eqmlip.md import _neighbours as nl

CUTOFF, SKIN = 5.0, 1.0
PBC = (True, True, True)


def log(message: str) -> None:
    print(f"[neighbours] {message}", file=sys.stderr, flush=True)


def silicon(cells: tuple[int, int, int], shear: float = 0.0) -> ase.Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * cells
    if shear:
        cell = atoms.cell.array.copy()
        cell[2] += shear * cell[0]
        atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=0)
    return atoms


SYSTEMS = {
    "64": lambda: silicon((2, 2, 2)),
    "216": lambda: silicon((3, 3, 3)),
    "256": lambda: silicon((4, 4, 2)),
    "2048": lambda: silicon((8, 8, 4)),
    "8192": lambda: silicon((8, 8, 16)),
    "2048-triclinic": lambda: silicon((8, 8, 4), shear=0.3),
}

_build = jax.jit(nl.build, static_argnums=2)


def time_build(positions, cell, spec, repeats: int) -> tuple[nl.NeighbourList, float, float]:
    """(list, compile + first call seconds, median seconds of a call)."""
    begin = time.perf_counter()
    neighbours = jax.block_until_ready(_build(positions, cell, spec))
    first = time.perf_counter() - begin
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        jax.block_until_ready(_build(positions, cell, spec))
        times.append(time.perf_counter() - begin)
    return neighbours, first, statistics.median(times)


def pairs(neighbours: nl.NeighbourList) -> set:
    count = int(neighbours.count)
    return {
        (int(i), int(j), *map(int, s))
        for i, j, s in zip(
            np.asarray(neighbours.senders[:count]),
            np.asarray(neighbours.receivers[:count]),
            np.asarray(neighbours.shifts[:count]),
            strict=True,
        )
    }


def run_system(name: str, repeats: int, max_all_pairs: int, dtype) -> dict:
    atoms = SYSTEMS[name]()
    x, c = atoms.positions, atoms.cell.array
    positions, cell = jnp.asarray(x, dtype), jnp.asarray(c, dtype)
    cell_spec = nl.allocate(x, c, PBC, CUTOFF, SKIN, search="cell_list")
    auto = nl.allocate(x, c, PBC, CUTOFF, SKIN)
    host = neighbour_list(x, c, np.array(PBC), CUTOFF + SKIN, min_distance=None)
    host_pairs = {
        (int(i), int(j), *map(int, s)) for i, j, s in zip(*host, strict=True)
    }  # fmt: skip
    log(
        f"{name}: {len(atoms)} atoms, {len(host[0])} candidates; cell list bins "
        f"{cell_spec.bins}, reach {cell_spec.reach}, bin capacity {cell_spec.bin_capacity}"
    )
    cells, cell_compile, cell_seconds = time_build(positions, cell, cell_spec, repeats)
    if bool(cells.overflow) or pairs(cells) != host_pairs:
        raise SystemExit(f"{name}: the cell list differs from the host list")
    result = {
        "atoms": len(atoms),
        "candidates": len(host[0]),
        "bins": cell_spec.bins,
        "bin_capacity": cell_spec.bin_capacity,
        "auto_search": "all_pairs" if auto.bins is None else "cell_list",
        "cell_list_ms": 1e3 * cell_seconds,
        "cell_list_compile_s": cell_compile,
        "all_pairs_ms": None,
        "all_pairs_compile_s": None,
        "speedup": None,
    }
    if len(atoms) <= max_all_pairs:
        spec = cell_spec._replace(bins=None, reach=(1, 1, 1), bin_capacity=0)
        everything, compile_seconds, seconds = time_build(
            positions, cell, spec, max(1, repeats if len(atoms) <= 2048 else 1)
        )
        count = int(cells.count)
        for field in ("senders", "receivers", "shifts"):
            if not np.array_equal(
                getattr(cells, field)[:count], getattr(everything, field)[:count]
            ):
                raise SystemExit(f"{name}: the searches' {field} differ")
        result |= {
            "all_pairs_ms": 1e3 * seconds,
            "all_pairs_compile_s": compile_seconds,
            "speedup": seconds / cell_seconds,
        }
    log(
        f"{name}: cell list {result['cell_list_ms']:.1f} ms, all-pairs "
        f"{result['all_pairs_ms'] and round(result['all_pairs_ms'], 1)} ms "
        f"(auto: {result['auto_search']})"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Neighbour-list rebuild: all-pairs vs cell list.")
    parser.add_argument("--systems", default="256,2048,8192,2048-triclinic")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-all-pairs", type=int, default=8192)
    parser.add_argument("--x64", action="store_true", help="float64 positions")
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.x64 else jnp.float32
    results = {
        name: run_system(name, args.repeats, args.max_all_pairs, dtype)
        for name in args.systems.split(",")
    }
    print(
        json.dumps(
            {
                "benchmark": "neighbour_list_rebuild",
                "cutoff_plus_skin": CUTOFF + SKIN,
                "dtype": str(jnp.zeros((), dtype).dtype),
                **results,
                "repeats": args.repeats,
                "jax": jax.__version__,
                "device": jax.devices()[0].device_kind,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "load_average": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
