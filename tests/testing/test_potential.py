"""`assert_potential_symmetries` on a hand-written periodic pair potential: the correct one passes
every symmetry, each broken one fails the symmetry it breaks, with a message that says which."""

import re

import ase
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from eqmlip import testing

from ._pair import DENSE_CRYSTALS, make

CRYSTALS = testing.crystals(
    (1, 8), max_atoms=3, min_length=3.0, max_length=4.0, triclinic=False, min_distance=0.8
)

correct = make()
no_minimum_image = make(minimum_image=False)
intensive_energy = make(intensive=True)


@st.composite
def _elements(draw, atoms):
    n = len(atoms)
    return {
        "matrix": draw(testing.o3_matrices()),
        "translation": draw(hnp.arrays(np.float64, 3, elements=st.floats(-5.0, 5.0))),
        "permutation": draw(st.permutations(range(n))),
        "lattice_shifts": draw(hnp.arrays(np.int64, (n, 3), elements=st.integers(-2, 2))),
        "supercell": draw(st.sampled_from([(2, 1, 1), (1, 2, 1), (1, 1, 2)])),
    }


CASES = st.data()


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "f64"])
@testing.hypothesis_settings(max_examples=30)
@hypothesis.given(atoms=CRYSTALS, data=st.data())
def test_periodic_pair_potential_has_every_symmetry(x64, atoms, data):
    elements = data.draw(_elements(atoms))
    with jax.enable_x64(x64):
        tol = 1e-4 if not x64 else 1e-11
        testing.assert_potential_symmetries(correct, atoms, **elements, atol=tol, rtol=tol)
        energy, forces, stress = correct(
            atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc
        )
    assert np.all(np.isfinite(np.asarray(forces))) and np.asarray(stress).shape == (3, 3)


def _caught(fn, **check):
    """Run a check over the shipped profile's examples; return the failure message."""

    # Pairs within the cutoff across a cell face are rare in these draws (about 1 in 20
    # examples); 100 examples find the broken symmetry with a margin.
    @testing.hypothesis_settings(max_examples=100, database=None, report_multiple_bugs=False)
    @hypothesis.given(atoms=CRYSTALS, data=st.data())
    def run(atoms, data):
        elements = data.draw(_elements(atoms))
        testing.assert_potential_symmetries(
            fn, atoms, **{k: elements[k] for k in check["use"]}, atol=1e-4, rtol=1e-4
        )

    with pytest.raises(AssertionError) as info:
        run()
    return str(info.value)


def test_missing_minimum_image_breaks_lattice_shifts():
    message = _caught(no_minimum_image, use=("matrix", "translation", "lattice_shifts"))
    assert "lattice shift (N = [[" in message
    assert "rotation" not in message and "translation (" not in message
    assert "energy (float32): max error" in message
    assert "ase.Atoms(numbers=[" in message  # the structure, reproducibly


def test_intensive_energy_breaks_supercells():
    message = _caught(intensive_energy, use=("matrix", "permutation", "supercell"))
    assert "supercell (repeat (" in message
    assert "energy (float32)" in message
    assert "permutation" not in message and "rotation" not in message


def _pair_with_index_bug(positions, numbers, cell, pbc):
    # The first atom's species counts twice: not permutation invariant.
    energy, forces, stress = correct(positions, numbers, cell, pbc)
    return energy + 0.5 * float(numbers[0]), forces, stress


def test_atom_order_dependence_breaks_permutations():
    atoms = ase.Atoms("HO", positions=[[0, 0, 0], [1.0, 0, 0]], cell=np.eye(3) * 3.5, pbc=True)
    testing.assert_potential_symmetries(_pair_with_index_bug, atoms, permutation=[0, 1])
    with pytest.raises(AssertionError, match=r"permutation \(atom order \[1, 0\]\):\n  energy"):
        testing.assert_potential_symmetries(_pair_with_index_bug, atoms, permutation=[1, 0])


MOLECULE = ase.Atoms("H2O", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0.2]])
CRYSTAL = ase.Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 3.5, pbc=(True, True, False))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="no group element given"):
        testing.assert_potential_symmetries(correct, CRYSTAL)
    with pytest.raises(ValueError, match=r"permutation must be a permutation of range\(3\)"):
        testing.assert_potential_symmetries(correct, MOLECULE, permutation=[0, 0, 1])
    with pytest.raises(ValueError, match="non-periodic direction"):
        testing.assert_potential_symmetries(correct, CRYSTAL, lattice_shifts=[[0, 0, 1]])
    with pytest.raises(ValueError, match="integers of shape"):
        testing.assert_potential_symmetries(correct, CRYSTAL, lattice_shifts=[[0.5, 0, 0]])
    with pytest.raises(ValueError, match="> 1 only along periodic"):
        testing.assert_potential_symmetries(correct, CRYSTAL, supercell=(1, 1, 2))
    with pytest.raises(ValueError, match=r"forces has shape \(3,\); expected \(3, 3\)"):
        testing.assert_potential_symmetries(
            lambda p, z, c, b: (0.0, np.zeros(3)), MOLECULE, translation=np.ones(3)
        )
    with pytest.raises(TypeError, match="must return"):
        testing.assert_potential_symmetries(
            lambda p, z, c, b: 1.0, MOLECULE, translation=np.ones(3)
        )


def test_stress_rotates_as_a_tensor():
    # A potential whose "stress" is a fixed matrix: not a tensor, so a rotation catches it.
    def fixed_stress(positions, numbers, cell, pbc):
        energy, forces, _ = correct(positions, numbers, cell, pbc)
        return energy, forces, np.diag([1.0, 2.0, 3.0])

    atoms = ase.Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 3.5, pbc=True)
    rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(AssertionError, match=r"rotation \(M = (.|\n)*stress \(float64\)"):
        testing.assert_potential_symmetries(fixed_stress, atoms, matrix=rz)
    testing.assert_potential_symmetries(fixed_stress, atoms, matrix=np.diag([1.0, -1.0, -1.0]))


def test_drawn_atoms_print_in_full():
    @testing.hypothesis_settings(max_examples=5)
    @hypothesis.given(atoms=st.one_of(testing.molecules(max_atoms=3), CRYSTALS))
    def check(atoms):
        again = eval(repr(atoms), {"ase": ase})
        np.testing.assert_array_equal(again.positions, atoms.positions)
        np.testing.assert_array_equal(again.numbers, atoms.numbers)
        np.testing.assert_array_equal(again.cell.array, atoms.cell.array)
        np.testing.assert_array_equal(again.pbc, atoms.pbc)
        assert "positions=[[" in repr(atoms)

    check()


# --- stress against finite differences of the energy under strain --------------------------------

wrong_sign_stress = make(stress_bug="sign")
virial_as_stress = make(stress_bug="volume")
# Two pairs within the cutoff (0-1 across the x face of the cell, 1-2 inside it) and a triclinic
# cell, so that every stress component is non-zero.
STRAINED = ase.Atoms(
    "HOH",
    positions=[[0.2, 0.1, 0.0], [2.9, 0.4, 0.3], [2.6, 1.2, 1.0]],
    cell=[[3.2, 0.0, 0.0], [0.3, 3.1, 0.0], [0.2, -0.1, 3.0]],
    pbc=True,
)


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "f64"])
@testing.hypothesis_settings(max_examples=10)
@hypothesis.given(atoms=DENSE_CRYSTALS)
def test_correct_stress_is_the_strain_derivative(x64, atoms):
    with jax.enable_x64(x64):
        testing.assert_potential_symmetries(correct, atoms, strain=True)


def test_stress_of_the_fixed_structure_is_not_trivial():
    with jax.enable_x64(True):
        _, _, stress = correct(
            STRAINED.positions, STRAINED.numbers, STRAINED.cell.array, STRAINED.pbc
        )
    assert np.min(np.abs(np.asarray(stress))) > 1e-3  # every component is checked for real


def test_wrong_sign_stress_fails_with_components_and_values():
    with jax.enable_x64(True):
        _, _, stress = correct(
            STRAINED.positions, STRAINED.numbers, STRAINED.cell.array, STRAINED.pbc
        )
        with pytest.raises(AssertionError) as info:
            testing.assert_potential_symmetries(wrong_sign_stress, STRAINED, strain=True)
    message = str(info.value)
    assert "strain (central differences of the energy, step h = 0.0001, volume V = 29.7" in message
    assert "stress (float64) is not (1/V) dE/d(strain): 9 of 9 components" in message
    # The finite difference printed is the correct stress, to float64 accuracy.
    s = np.asarray(stress)
    for a, b, name in [(0, 0, "xx"), (0, 1, "xy"), (2, 1, "zy")]:
        line = re.search(
            rf"stress\[{a}, {b}\] \({name}\): returned (\S+), finite difference (\S+),", message
        )
        assert line is not None, message
        returned, fd = float(line[1]), float(line[2].rstrip(","))
        assert returned == pytest.approx(-s[a, b], rel=1e-7)
        assert fd == pytest.approx(s[a, b], rel=1e-7, abs=1e-12)
    assert "minus the derivative" in message
    # The structure is printed so that it reproduces.
    assert "positions=[[0.2, 0.1, 0.0]" in message


def test_virial_returned_as_stress_fails_in_float32():
    with pytest.raises(AssertionError, match=r"stress \(float32\)(.|\n)*V times the derivative"):
        testing.assert_potential_symmetries(virial_as_stress, STRAINED, strain=True)
    testing.assert_potential_symmetries(correct, STRAINED, strain=True)


def test_strain_tolerance_comes_from_the_strain_entry():
    # A plain number is for the exact checks; only {"strain": ...} loosens this one.
    with pytest.raises(AssertionError, match="strain"):
        testing.assert_potential_symmetries(wrong_sign_stress, STRAINED, strain=True, atol=1.0)
    testing.assert_potential_symmetries(
        wrong_sign_stress, STRAINED, strain=True, atol={"strain": 1.0}
    )


def test_strain_needs_a_periodic_structure_and_a_stress():
    with pytest.raises(ValueError, match=r"strain=True needs a periodic structure .*pbc \[False"):
        testing.assert_potential_symmetries(correct, MOLECULE, strain=True)
    with pytest.raises(ValueError, match="strain=True needs fn to return a stress"):
        testing.assert_potential_symmetries(
            lambda p, z, c, b: correct(p, z, c, b)[:2], STRAINED, strain=True
        )
    with pytest.raises(ValueError, match="strain_step must be positive and finite, got -0.1"):
        testing.assert_potential_symmetries(correct, STRAINED, strain=True, strain_step=-0.1)
