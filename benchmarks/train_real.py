"""Convergence of eqmlip's NequIP on real molecular data in extxyz (rMD17-style) form.

Reads any file `ase.io.read` reads (energies and forces under configurable keys), splits it
train/validation/test by seed, fits E0s and the average neighbour count on the training set,
trains a NequIP with `eqmlip.training.train` (AMSGrad, warmup + cosine decay, EMA), printing
the validation metrics after every epoch, then evaluates the best EMA model on the test set
and prints one JSON line (test metrics next to the data's force standard deviation, the loss
curve, timings).

    python benchmarks/train_real.py rmd17_aspirin.extxyz --energy-key energy --forces-key forces \
        --max-structures 1000 --epochs 50
    python benchmarks/train_real.py demo.extxyz --write-emt-demo 200   # makes its own data

`--write-emt-demo N` first writes N frames of an EMT Langevin trajectory of ethanol (ASE's
EMT covers H, C and O; a toy, not a physical force field) to PATH with
`eqmlip.data.write_structures`, so the option can be tried without downloading a dataset.
rMD17 is distributed as NumPy archives: convert it once to extxyz (energy in eV, forces in
eV/Å) with ASE, then point this script at the file.

Single-molecule data have one composition, so the E0s are not determined by the data: the
E0s used are the energy per atom (see `eqmlip.data.statistics`), which only shifts the
energy; the warning saying so is printed, not raised.
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.random as jr
import numpy as np

from eqmlip.data import GraphLoader, Structure, read_structures, split, statistics, write_structures
from eqmlip.models.nequip import Nequip, NequipConfig
from eqmlip.training import TrainConfig, evaluate, train


def emt_ethanol_trajectory(num_frames: int, *, seed: int = 0) -> list[Structure]:
    """`num_frames` snapshots (every 4 steps of 0.5 fs) of ethanol under EMT Langevin
    dynamics at 600 K, after 20 steps of equilibration: an rMD17-like toy dataset."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.collections import g2
    from ase.md.langevin import Langevin

    atoms = g2["CH3CH2OH"].copy()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    atoms.rattle(0.02, rng=rng)
    dynamics = Langevin(
        atoms, 0.5 * units.fs, temperature_K=600, friction=0.05, fixcm=False, rng=rng
    )
    dynamics.run(20)
    frames = []
    for _ in range(num_frames):
        dynamics.run(4)
        frames.append(
            Structure.from_atoms(atoms)  # reads the calculator's energy and forces
        )
    return frames


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train eqmlip's NequIP on an extxyz file.")
    parser.add_argument("path", help="extxyz (or any ASE-readable) file")
    parser.add_argument("--energy-key", default=None, help="default: ASE's energy")
    parser.add_argument("--forces-key", default=None, help="default: ASE's forces")
    parser.add_argument("--max-structures", type=int, default=None, help="first N frames")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,valid,test fractions")
    parser.add_argument("--seed", type=int, default=0, help="split and initialisation seed")
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--target-irreps", default="32x0e + 16x1o + 8x2e")
    parser.add_argument("--l-max", type=int, default=2)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--radial-hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--energy-weight", type=float, default=10.0, help="per-atom energy MSE")
    parser.add_argument("--forces-weight", type=float, default=10.0)
    parser.add_argument(
        "--write-emt-demo",
        type=int,
        default=None,
        metavar="N",
        help="first write N frames of an EMT ethanol trajectory to PATH",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and prints) the final JSON record."""
    args = _parse(argv)
    if args.write_emt_demo is not None:
        write_structures(args.path, emt_ethanol_trajectory(args.write_emt_demo, seed=args.seed))
    if not os.path.exists(args.path):
        raise SystemExit(f"train_real: no file {args.path!r} (pass --write-emt-demo N to make one)")
    keys = {
        name: value
        for name, value in (("energy_key", args.energy_key), ("forces_key", args.forces_key))
        if value is not None  # left out: ASE's names, which may be missing
    }
    index = ":" if args.max_structures is None else slice(0, args.max_structures)
    structures = read_structures(args.path, index=index, stress_key=None, **keys)
    missing = sum(s.energy is None or s.forces is None for s in structures)
    if missing:
        raise SystemExit(
            f"train_real: {missing} of {len(structures)} frames lack an energy or forces; pass "
            "--energy-key/--forces-key with the names the file uses."
        )
    fractions = tuple(float(f) for f in args.split.split(","))
    train_set, valid_set, test_set = split(structures, fractions, seed=args.seed)
    if not (train_set and valid_set and test_set):
        raise SystemExit(
            f"train_real: the split {fractions} of {len(structures)} structures leaves an empty "
            "set; use more structures or other fractions."
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = statistics(train_set, cutoff=args.cutoff)
    for w in caught:  # single-molecule data: E0s = energy per atom (a constant shift)
        print(f"note: {w.message}", file=sys.stderr)

    config = NequipConfig(
        num_layers=args.num_layers,
        target_irreps=args.target_irreps,
        l_max=args.l_max,
        radial_mlp_hidden=(args.radial_hidden,),
    )
    model = Nequip(
        config,
        stats.species,
        cutoff=args.cutoff,
        avg_num_neighbors=stats.avg_num_neighbors,
        atomic_energies=stats.atomic_energies,
        energy_scale=stats.force_rms or 1.0,
        key=jr.key(args.seed),
    )
    # One padded shape per loader: a molecule's frames all have the same size.
    make = lambda data, shuffle: GraphLoader(  # noqa: E731
        data, args.cutoff, batch_size=args.batch_size, shuffle=shuffle, seed=args.seed,
        num_buckets=1,
    )  # fmt: skip
    train_loader, valid_loader = make(train_set, True), make(valid_set, False)
    train_config = TrainConfig(
        energy_weight=args.energy_weight,
        forces_weight=args.forces_weight,
        stress_weight=0.0,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=None,
        seed=args.seed,
        quiet=args.quiet,
    )
    start = time.perf_counter()
    result = train(model, train_loader, valid_loader, train_config)
    train_s = time.perf_counter() - start
    test = evaluate(result.model, make(test_set, False))
    history = result.history
    record = {
        "benchmark": "nequip_train_real",
        "data": os.path.basename(args.path),
        "structures": {"train": len(train_set), "valid": len(valid_set), "test": len(test_set)},
        "atoms_per_structure": stats.avg_num_nodes,
        "config": f"{args.target_irreps}, l_max {args.l_max}, {args.num_layers} layers",
        "cutoff": args.cutoff,
        "epochs": len(history),
        "train_s": round(train_s, 2),
        "valid_loss": [float(f"{row['valid_loss']:.5g}") for row in history],
        "train_loss": [float(f"{row['train_loss']:.5g}") for row in history],
        "test_energy_mae_ev_per_atom": test["energy_mae"],
        "test_energy_rmse_ev_per_atom": test["energy_rmse"],
        "test_forces_mae": test["forces_mae"],
        "test_forces_rmse": test["forces_rmse"],
        "data_force_std": stats.force_std,
        "jax": jax.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
