"""`benchmarks/train_real.py`: training from an extxyz path, end to end."""

import json

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.collections import g2

from eqmlip.data import Structure, read_structures, write_structures

from ..helpers import load_benchmark


def _load_script():
    return load_benchmark("train_real")


def _methane_frames(n: int) -> list[Structure]:
    """Rattled methane with EMT energies and forces, under the rMD17-like key names."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        atoms = g2["CH4"].copy()
        atoms.rattle(0.08, rng=rng)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(Structure.from_atoms(atoms))
    return frames


def test_trains_from_extxyz_path(tmp_path, capsys):
    path = tmp_path / "methane.extxyz"
    write_structures(path, _methane_frames(20))
    # Rename the targets to custom keys, as rMD17 conversions often have them.
    text = path.read_text().replace("energy=", "REF_energy=").replace("forces:", "REF_forces:")
    path.write_text(text)
    assert read_structures(path, energy_key="REF_energy")[0].energy is not None

    script = _load_script()
    args = [str(path), "--energy-key", "REF_energy", "--forces-key", "REF_forces"]
    args += ["--split", "0.6,0.2,0.2", "--cutoff", "3.0", "--target-irreps", "4x0e + 2x1o"]
    args += ["--l-max", "1", "--num-layers", "1", "--radial-hidden", "8", "--epochs", "6"]
    args += ["--batch-size", "4", "--learning-rate", "2e-2", "--warmup-steps", "2", "--quiet"]
    record = script.main(args)

    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == record
    assert record["structures"] == {"train": 12, "valid": 4, "test": 4}
    assert record["epochs"] == 6 and len(record["valid_loss"]) == 6
    assert record["valid_loss"][-1] < 0.5 * record["valid_loss"][0], record["valid_loss"]
    assert record["train_loss"][-1] < record["train_loss"][0], record["train_loss"]
    assert 0 < record["test_forces_mae"] < np.inf


def test_missing_targets_are_a_clear_error(tmp_path):
    path = tmp_path / "no_targets.extxyz"
    write_structures(path, [s.replace(energy=None) for s in _methane_frames(3)])
    with pytest.raises(SystemExit, match="lack an energy or forces"):
        _load_script().main([str(path)])
