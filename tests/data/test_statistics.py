"""eqmlip.data.statistics (E0s, neighbour counts, force scales, cutoff check) and split."""

import warnings

import numpy as np
import pytest
from ase.build import bulk, molecule

from eqmlip.data import Structure, split, statistics


def _synthetic(e0: dict[int, float], n: int, seed: int, noise: float = 0.0) -> list[Structure]:
    """Molecule-like structures of random composition with energy sum(E0) + noise per atom."""
    rng = np.random.default_rng(seed)
    species = np.array(sorted(e0))
    out = []
    for _ in range(n):
        numbers = rng.choice(species, size=int(rng.integers(2, 9)))
        energy = sum(e0[int(z)] for z in numbers) + noise * len(numbers) * rng.standard_normal()
        positions = 1.5 * np.arange(len(numbers))[:, None] * np.array([1.0, 0.0, 0.0])
        out.append(
            Structure(
                positions=positions,
                atomic_numbers=numbers,
                cell=np.zeros((3, 3)),
                pbc=np.zeros(3, dtype=bool),
                energy=energy,
            )
        )
    return out


def test_least_squares_recovers_known_e0s():
    e0 = {1: -13.6, 6: -1029.8, 8: -2041.3, 29: -45000.2}
    stats = statistics(_synthetic(e0, 40, seed=0, noise=1e-3))
    assert stats.species == (1, 6, 8, 29)
    assert stats.atomic_energies is not None
    for z, value in e0.items():
        assert stats.atomic_energies[z] == pytest.approx(value, abs=5e-3)
    assert stats.energy_per_atom_std is not None and 1e-4 < stats.energy_per_atom_std < 3e-3
    # Noise-free data: exact recovery and zero residual.
    exact = statistics(_synthetic(e0, 20, seed=1))
    assert exact.atomic_energies == pytest.approx(e0, abs=1e-8)
    assert exact.energy_per_atom_std == pytest.approx(0.0, abs=1e-9)


def test_single_composition_uses_the_mean_energy_per_atom():
    # Cu3Au cells of 4 and 32 atoms: only E0(Cu) * 3 + E0(Au) is determined.
    structures = []
    for repeat, energy_per_atom in (((1, 1, 1), -3.0), ((2, 2, 2), -3.2), ((1, 1, 1), -3.1)):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * repeat
        symbols = np.array(["Cu", "Cu", "Cu", "Au"] * (len(atoms) // 4))
        atoms.set_chemical_symbols(list(symbols))
        s = Structure.from_atoms(atoms).replace(energy=energy_per_atom * len(atoms))
        structures.append(s)
    with pytest.warns(UserWarning, match="rank 1 < 2 species"):
        stats = statistics(structures)
    assert stats.atomic_energies is not None
    e_cu, e_au = stats.atomic_energies[29], stats.atomic_energies[79]
    # Both equal: the least-squares fit nearest to the mean per-atom energy.
    assert e_cu == pytest.approx(e_au, abs=1e-10)
    # And it is still a least-squares fit: the residuals sum to zero over atoms.
    counts = np.array([s.num_atoms for s in structures])
    energies = np.array([s.energy for s in structures])
    assert np.sum(counts * (energies - counts * e_cu)) == pytest.approx(0.0, abs=1e-9)


def test_species_without_energy_warns_and_given_species_are_checked():
    e0 = {1: -1.0, 8: -2.0}
    structures = _synthetic(e0, 10, seed=2)
    carbon = Structure(
        positions=np.zeros((1, 3)),
        atomic_numbers=np.array([6]),
        cell=np.zeros((3, 3)),
        pbc=np.zeros(3, dtype=bool),
    )
    with pytest.warns(UserWarning, match="not determined"):
        stats = statistics(structures + [carbon])
    assert stats.atomic_energies is not None
    assert stats.atomic_energies[1] == pytest.approx(-1.0) and stats.num_energies == 10
    with pytest.raises(ValueError, match=r"atomic numbers \[8\] that are not in species"):
        statistics(structures, species=[1, 6])
    # Given species pass the library's one species check.
    with pytest.raises(ValueError, match=r"^statistics: species must be sorted and without"):
        statistics(structures, species=[8, 1])
    with pytest.raises(ValueError, match=r"^statistics: species must be atomic numbers in 1..118"):
        statistics(structures, species=[0, 1, 8])
    # A superset of species is fine; given E0s replace the fit.
    with pytest.warns(UserWarning, match="not determined"):
        assert statistics(structures, species=[1, 6, 8]).species == (1, 6, 8)
    given = statistics(structures, atomic_energies={1: -1.5, 8: -2.0})
    assert given.atomic_energies == {1: -1.5, 8: -2.0}
    assert given.energy_per_atom_mean is not None and given.energy_per_atom_mean > 0
    with pytest.raises(ValueError, match=r"lack atomic numbers \[8\]"):
        statistics(structures, atomic_energies={1: -1.0})


def test_without_energies_there_are_no_e0s():
    structures = [s.replace(energy=None) for s in _synthetic({1: -1.0}, 3, seed=0)]
    with pytest.warns(UserWarning, match="no structure has an energy"):
        stats = statistics(structures)
    assert stats.atomic_energies is None and stats.energy_per_atom_std is None
    assert stats.force_rms is None and stats.num_forces == 0


def test_neighbours_distances_and_forces_of_fcc_copper(alloys):
    a = 3.61
    copper = Structure.from_atoms(bulk("Cu", "fcc", a=a, cubic=True) * (2, 2, 2))
    # First shell a/sqrt(2) = 2.55 Å (12 neighbours), second shell a = 3.61 Å (6 more).
    copper = copper.replace(energy=-1.0)
    stats = statistics([copper], cutoff=3.0)
    assert stats.avg_num_neighbors == pytest.approx(12.0)
    assert stats.min_distance == pytest.approx(a / np.sqrt(2))
    assert stats.first_neighbour_distance == pytest.approx(a / np.sqrt(2))
    assert statistics([copper], cutoff=4.0).avg_num_neighbors == pytest.approx(18.0)

    structures = [Structure.from_atoms(atoms) for atoms in alloys]
    stats = statistics(structures, cutoff=4.0)
    forces = np.concatenate([s.forces.ravel() for s in structures if s.forces is not None])
    assert stats.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)))
    assert stats.force_std == pytest.approx(np.std(forces))
    assert stats.avg_num_nodes == pytest.approx(np.mean([s.num_atoms for s in structures]))
    assert (stats.num_structures, stats.num_energies, stats.num_stresses) == (24, 24, 24)
    assert stats.energy_per_atom_std is not None and stats.energy_per_atom_std > 0


def test_avg_r_min_is_the_mean_shortest_edge_per_structure():
    """mlip's avg_r_min_angstrom: each structure's shortest edge within the cutoff, averaged
    over the structures that have an edge."""
    a = 3.61
    copper = Structure.from_atoms(bulk("Cu", "fcc", a=a, cubic=True)).replace(energy=-1.0)
    water = Structure.from_atoms(molecule("H2O")).replace(energy=-10.0)
    # H2O: O-H 0.9686 Å, H-H 1.5264 Å; an atom alone has no edge and is left out.
    lone = Structure.from_atoms(molecule("H2O")[:1]).replace(energy=-5.0)
    stats = statistics([copper, water, lone], cutoff=3.0)
    o_h = float(np.linalg.norm(water.positions[1] - water.positions[0]))
    assert stats.avg_r_min == pytest.approx((a / np.sqrt(2) + o_h) / 2, rel=1e-12)
    assert statistics([copper, water, lone]).avg_r_min is None  # no cutoff
    with pytest.warns(UserWarning) as record:  # the cutoff check's two warnings
        assert statistics([lone, water], cutoff=0.5).avg_r_min is None  # no edge at all
    assert len(record) == 2


def test_cutoff_check_warns_when_too_small():
    water = Structure.from_atoms(molecule("H2O")).replace(energy=-10.0)
    with pytest.warns(UserWarning) as record:
        stats = statistics([water], cutoff=0.5)
    messages = [str(w.message) for w in record]
    assert any("below the typical (median) first-neighbour distance" in m for m in messages)
    assert any("neighbours per atom on average (< 1)" in m for m in messages)
    assert stats.avg_num_neighbors == 0.0
    assert stats.first_neighbour_distance == pytest.approx(0.9686, abs=1e-3)
    # A sensible cutoff gives no warning (warnings are errors in the test suite).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats.check_cutoff(3.0) == []
    with pytest.warns(UserWarning, match="first-neighbour"):
        assert len(stats.check_cutoff(0.9)) == 1


def test_split_is_deterministic_and_complete(alloys):
    structures = [Structure.from_atoms(a).replace(weight=k) for k, a in enumerate(alloys)]
    train, valid, test = split(structures, (0.5, 0.25, 0.25), seed=3)
    assert (len(train), len(valid), len(test)) == (12, 6, 6)
    ids = [s.weight for part in (train, valid, test) for s in part]
    assert sorted(ids) == list(range(24))
    again = split(structures, (0.5, 0.25, 0.25), seed=3)
    assert [[s.weight for s in part] for part in again] == [
        [s.weight for s in part] for part in (train, valid, test)
    ]
    other = split(structures, (0.5, 0.25, 0.25), seed=4)
    assert [s.weight for s in other[0]] != [s.weight for s in train]
    # Default fractions; the test set takes the rounding rest.
    parts = split(structures[:7])
    assert [len(p) for p in parts] == [6, 1, 0]


@pytest.mark.parametrize(
    "fractions, match",
    [
        ((0.8, 0.1), "three numbers"),
        ((0.8, 0.3, -0.1), "three numbers"),
        ((0.5, 0.1, 0.1), "sum to 1"),
    ],
)
def test_split_rejects_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        split([], fractions)
