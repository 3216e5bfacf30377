"""Hypothesis properties of the NequIP potential on random molecules and crystals: the symmetries
checked by `eqmlip.testing.assert_potential_symmetries` (O(3), translations, permutations,
periodic images, supercells), padding, and forces/stress as derivatives of the energy.

Every graph is padded to one of a few fixed budgets, so a handful of compilations serve all
examples.
"""

import ase
import equinox as eqx
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import Graph, batch_graphs, pad_graph, testing
from eqmlip.models.nequip import Nequip, NequipConfig
from eqmlip.potential import Prediction, predict

from ..helpers import check_finite_differences

SPECIES = (1, 6, 7, 8)
CUTOFF = 2.5
CONFIG = NequipConfig(target_irreps="4x0e+4x0o+2x1o+2x1e+2x2e", l_max=2, radial_mlp_hidden=(8,))
NODE_BUDGET = 8
EDGE_BUDGETS = (32, 128, 512, 2048)

CRYSTALS = testing.crystals(SPECIES, max_atoms=3, min_length=2.0, max_length=4.0)
STRUCTURES = st.one_of(testing.molecules(SPECIES, max_atoms=5), CRYSTALS)

_predict = eqx.filter_jit(predict)
_models: dict[bool, Nequip] = {}


def _model(x64: bool) -> Nequip:
    """One model per precision, built once (same key, so both hold the same weights)."""
    if x64 not in _models:
        _models[x64] = Nequip(
            CONFIG,
            SPECIES,
            cutoff=CUTOFF,
            avg_num_neighbors=3.0,
            atomic_energies={1: -0.5, 6: -1.0, 7: -1.5, 8: -2.0},
            dtype=jnp.float64 if x64 else jnp.float32,
            key=jr.PRNGKey(0),
        )
    return _models[x64]


def _padded(graph: Graph, extra: int = 0) -> Graph:
    """`graph` padded to the smallest edge budget that fits (`extra` budgets more)."""
    fitting = [b for b in EDGE_BUDGETS if b > graph.num_edges]
    return pad_graph(graph, NODE_BUDGET, fitting[min(extra, len(fitting) - 1)], 2)


def _run(atoms: ase.Atoms, x64: bool = False, extra: int = 0) -> Prediction:
    graph = _padded(Graph.from_atoms(atoms, CUTOFF), extra)
    return _predict(_model(x64), graph)


def _np(x) -> np.ndarray:
    assert x is not None
    return np.asarray(x, dtype=np.float64)


def _real(prediction: Prediction, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy, forces and stress of the first (real) graph."""
    return (
        float(prediction.energy[0]),
        _np(prediction.forces)[:n],
        _np(prediction.stress)[0],
    )


def _potential(x64: bool = False):
    """The model as `fn(positions, numbers, cell, pbc) -> (E, F, S)` on the fixed budgets."""

    def fn(positions, numbers, cell, pbc):
        atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        prediction = _run(atoms, x64)
        assert prediction.forces is not None and prediction.stress is not None
        return prediction.energy[0], prediction.forces[: len(atoms)], prediction.stress[0]

    return fn


# Float32 tolerances, relative to each output's scale (1 + max |output|).
TOLERANCE = {"energy": 1e-5, "forces": 1e-4, "stress": 1e-4}


@hypothesis.given(
    atoms=STRUCTURES,
    matrix=testing.o3_matrices(),
    shift=st.tuples(*[st.floats(-5.0, 5.0)] * 3),
)
def test_energy_invariant_and_forces_stress_equivariant(atoms, matrix, shift):
    testing.assert_potential_symmetries(
        _potential(),
        atoms,
        matrix=matrix,
        translation=np.asarray(shift),
        atol=TOLERANCE,
        rtol=TOLERANCE,
    )
    _, forces, _ = _real(_run(atoms), len(atoms))
    assert np.all(np.isfinite(forces))
    if not atoms.pbc.any() and Graph.from_atoms(atoms, CUTOFF).num_edges > 0:
        assert np.max(np.abs(forces)) > 0.0  # not vacuous: the atoms interact


@hypothesis.given(atoms=STRUCTURES, data=st.data())
def test_permuting_atoms_permutes_forces(atoms, data):
    order = data.draw(st.permutations(range(len(atoms))))
    testing.assert_potential_symmetries(
        _potential(), atoms, permutation=order, atol=1e-5, rtol=1e-5
    )


@hypothesis.given(atoms=CRYSTALS, data=st.data())
def test_periodic_images_and_supercells(atoms, data):
    shifts = data.draw(hnp.arrays(np.int64, (len(atoms), 3), elements=st.integers(-1, 1)))
    supercell = data.draw(st.sampled_from([(2, 1, 1), (1, 2, 1), (1, 1, 2)]))
    testing.assert_potential_symmetries(
        _potential(),
        atoms,
        lattice_shifts=shifts,
        supercell=supercell,
        atol=TOLERANCE,
        rtol=TOLERANCE,
    )


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.settings(max_examples=5)
@hypothesis.given(atoms=CRYSTALS)
def test_stress_is_the_strain_derivative_of_the_energy(x64, atoms):
    # The library's check: six central differences of the energy under symmetric strains.
    with jax.enable_x64(x64):
        testing.assert_potential_symmetries(_potential(x64), atoms, strain=True)


def test_potential_function_wraps_a_registered_model():
    atoms = ase.Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0.3]])
    fn = testing.potential_function(_model(False))
    energy, forces, stress = fn(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    expected = _real(_run(atoms), 3)
    assert abs(float(energy) - expected[0]) <= 1e-5 * (1 + abs(expected[0]))
    np.testing.assert_allclose(np.asarray(forces), expected[1], rtol=0, atol=1e-5)
    assert stress is not None and np.asarray(stress).shape == (3, 3)
    testing.assert_potential_symmetries(fn, atoms, translation=np.array([1.0, 2.0, 3.0]))


@hypothesis.given(atoms=STRUCTURES, other=STRUCTURES)
def test_padding_and_batching_leave_real_outputs_unchanged(atoms, other):
    n, m = len(atoms), len(other)
    energy, forces, stress = _real(_run(atoms), n)
    # A larger edge budget: more padding edges.
    energy2, forces2, stress2 = _real(_run(atoms, extra=1), n)
    scale = 1.0 + float(np.max(np.abs(forces)))
    assert abs(energy2 - energy) <= 1e-6 * (1.0 + abs(energy))
    assert np.max(np.abs(forces2 - forces)) <= 1e-5 * scale
    assert np.max(np.abs(stress2 - stress)) <= 1e-5 * scale
    # Batched with another structure, plus padding nodes, edges and a padding graph.
    batch = batch_graphs([Graph.from_atoms(atoms, CUTOFF), Graph.from_atoms(other, CUTOFF)])
    budget = [b for b in EDGE_BUDGETS if b > batch.num_edges][0]
    together = _predict(_model(False), pad_graph(batch, 2 * NODE_BUDGET, budget, 3))
    assert abs(float(together.energy[0]) - energy) <= 1e-5 * (1.0 + abs(energy))
    assert np.max(np.abs(_np(together.forces)[:n] - forces)) <= 1e-4 * scale
    assert np.max(np.abs(_np(together.stress)[0] - stress)) <= 1e-4 * scale
    alone = _run(other)
    assert abs(float(together.energy[1]) - float(alone.energy[0])) <= 1e-5 * (
        1.0 + abs(float(alone.energy[0]))
    )
    # Padding: zero energies and forces, finite everything.
    assert float(together.energy[2]) == 0.0
    assert not np.any(_np(together.forces)[n + m :])
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(together))


@hypothesis.settings(max_examples=5)
@hypothesis.given(atoms=STRUCTURES, data=st.data())
def test_forces_and_stress_are_finite_difference_derivatives(atoms, data):
    with jax.enable_x64(True):
        n = len(atoms)
        model = _model(True)
        graph = _padded(Graph.from_atoms(atoms, CUTOFF))
        out = _predict(model, graph)

        def energy(positions, cell) -> float:
            moved = eqx.tree_at(lambda g: (g.positions, g.cell), graph, (positions, cell))
            return float(_predict(model, moved).energy[0])

        check_finite_differences(energy, graph, out.forces, out.stress, n, data)
