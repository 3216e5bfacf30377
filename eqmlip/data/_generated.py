"""The embedded default dataset: Cu-Au fcc alloys sampled by EMT molecular dynamics."""

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin

from ._structure import Structure

# Lattice constants (Å) of EMT's fcc Cu and Au; alloys start from Vegard's law between them.
_A_CU, _A_AU = 3.61, 4.08


def _set_momenta(atoms: Atoms, temperature_k: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at `temperature_k` with zero total momentum."""
    masses = atoms.get_masses()[:, None]
    momenta = np.sqrt(masses * units.kB * temperature_k) * rng.standard_normal((len(atoms), 3))
    momenta -= momenta.sum(axis=0) / len(atoms)
    atoms.set_momenta(momenta)


def emt_alloy_dataset(
    num_structures: int = 200,
    *,
    seed: int = 0,
    repeat: tuple[int, int, int] = (2, 2, 2),
    snapshots_per_trajectory: int = 10,
    temperatures_k: tuple[float, float] = (300.0, 1500.0),
) -> list[Structure]:
    """Periodic Cu-Au fcc alloy cells with EMT energies, forces and stresses, sampled from
    short Langevin trajectories (the embedded default dataset of `eqmlip train`).

    Each trajectory starts from a cubic fcc supercell (`repeat` of the 4-atom cell: 32 atoms by
    default) with a random Au fraction in [0, 0.5] placed at random, the Vegard's-law lattice
    constant scaled by a random factor in [0.97, 1.04], a random symmetric strain (0.02 rms)
    and a 0.05 Å rattle. It runs Langevin dynamics (5 fs steps, friction 0.02) at a random
    temperature in `temperatures_k`, and records a snapshot every 5 steps after 10 steps of
    equilibration (more disordered at higher temperature).

    **Arguments:**

    - `num_structures`: number of structures.
    - `seed`: the seed of every random choice (same seed, same dataset).
    - `repeat`: supercell of the cubic 4-atom fcc cell.
    - `snapshots_per_trajectory`: snapshots taken from each trajectory.
    - `temperatures_k`: range of the trajectory temperatures (K).

    **Returns:** a list of [`eqmlip.data.Structure`][]s with energy, forces and stress.
    """
    if num_structures < 1 or snapshots_per_trajectory < 1:
        raise ValueError(
            f"emt_alloy_dataset: num_structures ({num_structures}) and snapshots_per_trajectory "
            f"({snapshots_per_trajectory}) must be >= 1."
        )
    rng = np.random.default_rng(seed)
    structures: list[Structure] = []
    while len(structures) < num_structures:
        atoms = bulk("Cu", "fcc", a=1.0, cubic=True) * repeat
        x_au = rng.uniform(0.0, 0.5)
        symbols = np.where(rng.random(len(atoms)) < x_au, "Au", "Cu")
        atoms.set_chemical_symbols(list(symbols))
        a = (_A_CU + (_A_AU - _A_CU) * float(np.mean(symbols == "Au"))) * rng.uniform(0.97, 1.04)
        eps = 0.02 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array * a @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
        atoms.calc = EMT()
        temperature = rng.uniform(*temperatures_k)
        _set_momenta(atoms, temperature, rng)
        dynamics = Langevin(
            atoms, 5 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng
        )
        dynamics.run(10)
        for _ in range(snapshots_per_trajectory):
            if len(structures) == num_structures:
                break
            dynamics.run(5)
            structures.append(
                Structure(
                    positions=atoms.positions,
                    atomic_numbers=atoms.numbers,
                    cell=atoms.cell.array,
                    pbc=atoms.pbc,
                    energy=atoms.get_potential_energy(),
                    forces=atoms.get_forces(),
                    stress=atoms.get_stress(voigt=False),
                )
            )
    return structures
