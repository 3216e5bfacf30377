"""eqmlip.data: Structure checks, reading targets from ASE/extxyz, write/read round trips."""

from typing import Any

import ase
import ase.io
import numpy as np
import pytest
from ase.build import molecule

from eqmlip.data import Structure, read_structures, write_structures

from .conftest import cu_au_alloys


def _assert_same(a: Structure, b: Structure, atol: float = 5e-9):
    """Equal up to `atol` on per-atom arrays (extxyz keeps 8 decimals), else to 1e-12."""
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=atol)
    np.testing.assert_array_equal(a.atomic_numbers, b.atomic_numbers)
    np.testing.assert_allclose(a.cell, b.cell, rtol=0, atol=atol)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    for name in ("energy", "forces", "stress"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            tol = atol if name == "forces" else 1e-12
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=tol, err_msg=name)
    assert (a.charge, a.weight, a.dataset_idx) == (b.charge, b.weight, b.dataset_idx)


def test_from_atoms_reads_the_calculator_results():
    (atoms,) = cu_au_alloys(1)
    s = Structure.from_atoms(atoms)
    assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    assert s.forces is not None and s.stress is not None
    np.testing.assert_allclose(s.forces, atoms.get_forces(), atol=1e-12)
    # ASE's sign convention, as a full tensor.
    np.testing.assert_allclose(s.stress, atoms.get_stress(voigt=False), atol=1e-12)
    assert (s.charge, s.weight, s.dataset_idx) == (0, 1.0, 0)
    assert s.positions.dtype == np.float64 and s.atomic_numbers.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        s.positions[0, 0] = 1.0


def test_write_read_round_trip(tmp_path, mixed_structures):
    structures = list(mixed_structures)
    structures[0] = structures[0].replace(charge=-2)
    structures[1] = structures[1].replace(weight=0.25)
    path = tmp_path / "data.xyz"
    write_structures(path, structures)
    back = read_structures(path)
    assert len(back) == len(structures)
    for a, b in zip(structures, back, strict=True):
        _assert_same(a, b)
    # The fixture really covers missing targets and molecules without a cell.
    assert any(s.energy is None for s in back)
    assert any(s.forces is None for s in back)
    assert any(s.stress is None and s.pbc.all() for s in back)
    assert any(not s.pbc.any() and not s.cell.any() for s in back)
    # index selects frames, dataset_idx is set by the reader.
    some = read_structures(path, index="2:4", dataset_idx=3)
    assert [s.weight for s in some] == [3.0, 4.0] and {s.dataset_idx for s in some} == {3}


def test_custom_keys_voigt_stress_and_charge_in_info():
    (atoms,) = cu_au_alloys(1, seed=3)
    ref = Structure.from_atoms(atoms)
    plain = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
    plain.info.update(REF_energy=ref.energy, REF_stress=atoms.get_stress(), total_charge=1, w=2.0)
    plain.arrays["REF_forces"] = np.array(ref.forces)
    s = read_structures(
        [plain],
        energy_key="REF_energy",
        forces_key="REF_forces",
        stress_key="REF_stress",
        charge_key="total_charge",
        weight_key="w",
    )[0]
    _assert_same(s, ref.replace(charge=1, weight=2.0))
    # Default keys absent: None, not zero.
    bare = read_structures([plain])[0]
    assert bare.energy is None and bare.forces is None and bare.stress is None


def test_virial_is_converted_to_stress(tmp_path):
    (atoms,) = cu_au_alloys(1, seed=4)
    stress = atoms.get_stress(voigt=False)
    plain = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
    plain.info["virial"] = -stress * atoms.get_volume()
    path = tmp_path / "virial.xyz"
    ase.io.write(path, plain, format="extxyz")
    s = read_structures(path)[0]
    assert s.stress is not None
    np.testing.assert_allclose(s.stress, stress, rtol=1e-9, atol=1e-12)
    # A stress wins over a virial.
    plain.info["stress"] = np.zeros((3, 3))
    np.testing.assert_array_equal(read_structures([plain])[0].stress, np.zeros((3, 3)))


def test_virial_without_volume_raises():
    water = molecule("H2O")
    water.info["virial"] = np.eye(3)
    with pytest.raises(ValueError, match="frame 0.*zero volume"):
        read_structures([water])
    assert read_structures([water], virial_key=None)[0].stress is None


def test_explicit_key_missing_names_frame_and_key():
    frames = cu_au_alloys(3)
    frames[1].info["REF_energy"] = -1.0
    for a in (frames[0], frames[2]):
        a.info["REF_energy"] = 2.0
    del frames[2].info["REF_energy"]
    with pytest.raises(ValueError, match="'REF_energy'.*frame 2"):
        read_structures(frames, energy_key="REF_energy")
    # The same name left at its default would be optional; an explicit default name is not.
    plain = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]])
    assert read_structures([plain])[0].energy is None
    with pytest.raises(ValueError, match="'energy'.*frame 0"):
        read_structures([plain], energy_key="energy")
    with pytest.raises(ValueError, match="'forces'.*frame 0"):
        read_structures([plain], forces_key="forces")


def test_ignored_targets():
    (atoms,) = cu_au_alloys(1)
    s = read_structures([atoms], energy_key=None, forces_key=None, stress_key=None)[0]
    assert s.energy is None and s.forces is None and s.stress is None


_GOOD: dict[str, Any] = dict(
    positions=np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.97]]),
    atomic_numbers=np.array([1, 8]),
    cell=np.zeros((3, 3)),
    pbc=np.zeros(3, dtype=bool),
)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(positions=np.zeros((2, 2))), "positions has shape"),
        (dict(atomic_numbers=np.array([1])), "atomic_numbers has shape"),
        (dict(atomic_numbers=np.array([0, 1])), "atomic_numbers must be integers in 1..118"),
        (dict(atomic_numbers=np.array([1.5, 1])), "atomic_numbers must be integers"),
        (dict(cell=np.zeros(3)), "cell has shape"),
        (dict(pbc=np.array([2, 0, 0])), "pbc must be 3 booleans"),
        (dict(pbc=np.array([0.0, 1.0, 0.0])), "pbc must be 3 booleans"),
        (dict(pbc=[True, False]), "pbc must be 3 booleans"),
        (dict(energy=float("nan")), "missing energy must be None"),
        (dict(forces=np.zeros((3, 3))), "forces has shape"),
        (dict(forces=np.full((2, 3), np.nan)), "forces of atom 0 is nan .*missing target"),
        (dict(positions=[[0.0, 0.0, 0.0], [0.0, np.inf, 0.0]]), "positions of atom 1 is inf"),
        (dict(cell=np.diag([5.0, 5.0, np.nan])), "cell of row 2 is nan"),
        (dict(positions=np.zeros((2, 3))), "atoms 0 and 1 are 0 Å apart, closer than"),
        (dict(positions=[[0.0, 0, 0], [0.0, 0, 0.05]]), "atoms 0 and 1 are 0.05 Å apart"),
        (
            dict(cell=np.diag([3.0, 3.0, 0.0]), pbc=[True, True, True]),
            r"lattice vector c \(direction 2\) but that vector is zero",
        ),
        (
            dict(cell=[[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]], pbc=[True, True, False]),
            "periodic lattice vectors a, b .* are linearly dependent",
        ),
        (
            dict(cell=np.diag([3.0, 3.0, 0.0]), pbc=[True, True, False], stress=np.zeros((3, 3))),
            "stress target needs a periodic cell of non-zero volume",
        ),
        (dict(stress=np.zeros(6)), "stress has shape"),
        (dict(charge=0.5), "charge must be an integer"),
        (dict(weight=-1.0), "weight must be finite and >= 0"),
        (dict(dataset_idx=-1), "dataset_idx must be a non-negative integer"),
        (dict(positions=[[0.0, 0.0, "x"], [0.0, 0.0, 0.0]]), "positions must be an array"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_structure_rejects_bad_fields(changes, match):
    Structure(**_GOOD)  # the base case is valid
    with pytest.raises((ValueError, TypeError), match=match):
        Structure(**{**_GOOD, **changes})


@pytest.mark.parametrize(
    "pbc", [[1, 1, 0], np.array([1, 1, 0]), np.array([1, 1, 0], np.uint8), (True, True, False)]
)
def test_structure_takes_pbc_as_ase_does(pbc):
    """0/1 integers (lists or NumPy) mean False/True, as for `ase.Atoms(pbc=...)`."""
    structure = Structure(**{**_GOOD, "pbc": pbc, "cell": np.eye(3) * 5.0})
    assert structure.pbc.dtype == bool and structure.pbc.tolist() == [True, True, False]


def test_bad_inputs_to_readers():
    # Messages match both the readers' own and the test-time type checker's.
    with pytest.raises(TypeError, match="Atoms"):
        Structure.from_atoms("H2O")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Atoms"):
        read_structures([1, 2])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Structure"):
        write_structures("/dev/null", [molecule("H2O")])  # type: ignore[list-item]
    bad = molecule("H2O")
    bad.info["stress"] = np.zeros(4)
    with pytest.raises(ValueError, match="stress in frame 0 has shape"):
        read_structures([bad])


def test_to_atoms_round_trip(mixed_structures):
    for s in mixed_structures:
        _assert_same(Structure.from_atoms(s.to_atoms(), dataset_idx=s.dataset_idx), s, atol=0)
