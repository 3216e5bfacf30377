"""Small EMT datasets for the data tests: rattled, strained Cu-Au fcc alloys and g2 molecules."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from eqmlip.data import Structure


def cu_au_alloys(n: int, seed: int = 0, sizes=((1, 1, 1), (2, 1, 1), (2, 2, 1))) -> list:
    """`n` rattled, strained Cu-Au fcc cells of 4, 8 and 16 atoms with EMT energy, forces, stress."""
    rng = np.random.default_rng(seed)
    atoms_list = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * sizes[k % len(sizes)]
        symbols = np.where(rng.random(len(atoms)) < 0.3, "Au", "Cu")
        atoms.set_chemical_symbols(list(symbols))
        strain = np.eye(3) + 0.03 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += 0.08 * rng.standard_normal(atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
        atoms_list.append(atoms)
    return atoms_list


def g2_molecules() -> list:
    """Small molecules with EMT energies and forces (EMT knows H, C, N, O), no cell."""
    atoms_list = []
    for name in ("H2O", "CH4", "NH3", "C2H6", "CO2", "C6H6"):
        atoms = molecule(name)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms_list.append(atoms)
    return atoms_list


@pytest.fixture(scope="session")
def alloys() -> list:
    return cu_au_alloys(24)


@pytest.fixture(scope="session")
def mixed_structures(alloys) -> list[Structure]:
    """Alloys and molecules with some targets missing, and distinct weights as identifiers."""
    structures = [Structure.from_atoms(a) for a in alloys[:12] + g2_molecules()]
    out = []
    for k, s in enumerate(structures):
        changes: dict = {"weight": float(k + 1)}
        if k % 3 == 1:
            changes["energy"] = None
        if k % 4 == 2:
            changes["forces"] = None
        if k % 5 == 3:
            changes["stress"] = None
        out.append(s.replace(**changes))
    return out
