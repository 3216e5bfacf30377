"""Energy conservation (NVE) and NPT pressure of a trained model with eqmlip's jitted MD engine.

NVE at 300 K with a 1 fs step on a 28-atom Cu-Au cluster (no cell) and a 256-atom random
Cu-Au fcc cell: the drift of the total energy (slope of a linear fit, eV/atom/ps) and its
fluctuation; then (float32 only) NPT at 1 GPa and 300 K on the cell: the mean pressure and its
standard error from 20 block averages. Prints one JSON line.

    eqmlip train --output_dir=runs/default      # the embedded EMT Cu-Au default
    python benchmarks/md_conservation.py runs/default/model.eqx [--x64]
"""

import argparse
import json
import sys

import ase
import ase.build
import jax
import numpy as np


def _structures() -> tuple[ase.Atoms, ase.Atoms]:
    rng = np.random.default_rng(0)
    cell = ase.build.bulk("Cu", "fcc", a=3.75, cubic=True) * (4, 4, 4)  # 256 atoms
    cell.numbers[rng.random(len(cell)) < 0.5] = 79
    cell.rattle(0.02, seed=1)
    block = ase.build.bulk("Cu", "fcc", a=3.75, cubic=True) * (3, 3, 3)
    centre = block.positions.mean(0)
    cluster = block[np.linalg.norm(block.positions - centre, axis=1) < 4.2]
    cluster.numbers[rng.random(len(cluster)) < 0.5] = 79
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster.center()
    return cluster, cell


def main() -> None:
    parser = argparse.ArgumentParser(description="NVE drift and NPT pressure of a model.")
    parser.add_argument("model", help="model file (.eqx) trained on Cu-Au")
    parser.add_argument("--x64", action="store_true", help="float64 (model cast to it)")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", args.x64)
    import equinox as eqx
    import jax.numpy as jnp

    from eqmlip.io import load_model
    from eqmlip.md import simulate

    model = load_model(args.model)
    if args.x64:
        model = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
        )
    cluster, cell = _structures()
    out: dict = {"dtype": "float64" if args.x64 else "float32", "cutoff": model.cutoff}
    for name, atoms, steps in (("cluster", cluster, 4000), ("cell256", cell, 2000)):
        result = simulate(model, atoms, steps=steps, timestep=1.0, temperature=300.0, chunk=500)
        total = result.total[:, 0] / len(atoms)
        out[name] = {
            "atoms": len(atoms),
            "steps": steps,
            "timestep_fs": 1.0,
            "drift_ev_per_atom_per_ps": float(np.polyfit(result.time / 1000.0, total, 1)[0]),
            "total_energy_std_ev_per_atom": float(total.std()),
            "mean_temperature_k": float(result.temperature.mean()),
            "steps_per_second": result.steps_per_second,
            "compile_s": result.compile_seconds,
        }
        print(name, out[name], file=sys.stderr, flush=True)
    if not args.x64:
        result = simulate(
            model, cell, steps=3000, ensemble="npt", timestep=2.0, temperature=300.0,
            friction=0.02, pressure=1.0, barostat_time=200.0, chunk=1000,
        )  # fmt: skip
        blocks = np.array([b.mean() for b in np.array_split(result.pressure[1000:, 0], 20)])
        out["npt_cell256"] = {
            "target_gpa": 1.0,
            "mean_gpa": float(blocks.mean()),
            "standard_error_gpa": float(blocks.std(ddof=1) / np.sqrt(len(blocks))),
            "mean_temperature_k": float(result.temperature[1000:].mean()),
            "volume_per_atom": result.atoms[0].get_volume() / len(cell),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
