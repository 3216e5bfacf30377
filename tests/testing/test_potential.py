"""`assert_potential_symmetries` on a hand-written periodic pair potential: the correct one passes
every symmetry, each broken one fails the symmetry it breaks, with a message that says which."""

import ase
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import testing

CUTOFF = 1.4  # below half the shortest cell length: the minimum image is the only image in range
CRYSTALS = testing.crystals(
    (1, 8), max_atoms=3, min_length=3.0, max_length=4.0, triclinic=False, min_distance=0.8
)


def _energy(positions, cell, numbers, minimum_image: bool, intensive: bool):
    d = positions[None, :] - positions[:, None]
    if minimum_image:  # exact for pair distances below half the cell heights
        s = d @ jnp.linalg.inv(cell)
        d = (s - jnp.round(s)) @ cell
    n = positions.shape[0]
    r2 = jnp.sum(d**2, axis=-1) + jnp.eye(n, dtype=positions.dtype)  # no self-pair
    phi = jnp.where(r2 < CUTOFF**2, (1.0 - r2 / CUTOFF**2) ** 3, 0.0)
    z = numbers.astype(positions.dtype)
    pair = (1 - jnp.eye(n, dtype=positions.dtype)) * (z[:, None] + z[None]) * phi
    energy = 0.5 * jnp.sum(pair)
    return energy / n if intensive else energy


def _make(minimum_image: bool = True, intensive: bool = False):
    def strained(strain, positions, cell, numbers):
        deform = jnp.eye(3, dtype=positions.dtype) + strain
        return _energy(positions @ deform, cell @ deform, numbers, minimum_image, intensive)

    @jax.jit
    def core(positions, cell, numbers):
        zero = jnp.zeros((3, 3), positions.dtype)
        energy, (de_dstrain, de_dpos) = jax.value_and_grad(strained, argnums=(0, 1))(
            zero, positions, cell, numbers
        )
        return energy, -de_dpos, de_dstrain / jnp.abs(jnp.linalg.det(cell))

    def fn(positions, numbers, cell, pbc):
        dtype = jax.dtypes.canonicalize_dtype(np.float64)  # float64 under x64, else float32
        return core(jnp.asarray(positions, dtype), jnp.asarray(cell, dtype), jnp.asarray(numbers))

    return fn


correct = _make()
no_minimum_image = _make(minimum_image=False)
intensive_energy = _make(intensive=True)


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
