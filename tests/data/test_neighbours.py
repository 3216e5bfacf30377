"""eqmlip.data.structure_graph against ASE's own neighbour list on random cells."""

import ase
import jax
import numpy as np
import pytest
from ase.build import molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from eqmlip import Graph
from eqmlip.data import Structure, structure_graph


def _triples(i, j, shifts) -> list[tuple]:
    s = np.rint(np.asarray(shifts)).astype(int)
    return sorted(
        zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, s.tolist()), strict=True)
    )


def _assert_matches_ase(atoms: ase.Atoms, cutoff: float) -> Graph:
    """The graph (built with x64 on, so in float64, and returned as NumPy) has ASE's edges."""
    with jax.enable_x64(True):
        graph = jax.tree.map(np.asarray, structure_graph(Structure.from_atoms(atoms), cutoff))
    i, j, s, d = ase_neighbor_list("ijSd", atoms, cutoff)
    assert _triples(graph.senders, graph.receivers, graph.shifts) == _triples(i, j, s)
    vectors = (
        graph.positions[graph.receivers]
        - graph.positions[graph.senders]
        + graph.shifts @ graph.cell[0]
    )
    np.testing.assert_allclose(
        np.sort(np.linalg.norm(vectors, axis=1)), np.sort(d), rtol=0, atol=1e-10
    )
    return graph


def _random_cell(rng: np.random.Generator, length: float, tilt: float) -> np.ndarray:
    """A right-handed cell of about `length` Å per side with off-diagonal `tilt` (triclinic)."""
    while True:
        cell = length * (np.eye(3) + tilt * rng.uniform(-1, 1, (3, 3)))
        if np.linalg.det(cell) > 0.3 * length**3:
            return cell


CASES = [
    # (name, side length (Å), tilt, pbc, max atoms, cutoff)
    ("cubic-large", 6.0, 0.0, (True, True, True), 6, 3.0),
    ("triclinic", 5.0, 0.4, (True, True, True), 5, 3.5),
    ("small-cell", 2.0, 0.1, (True, True, True), 2, 4.5),  # cell < cutoff: many images
    ("small-triclinic", 1.8, 0.5, (True, True, True), 3, 3.0),
    ("slab", 3.0, 0.3, (True, True, False), 4, 4.0),
    ("wire", 2.5, 0.3, (False, False, True), 3, 3.5),
    ("mixed-small", 1.5, 0.2, (True, False, True), 2, 3.0),
]


@pytest.mark.parametrize(
    "name, length, tilt, pbc, max_atoms, cutoff", CASES, ids=[c[0] for c in CASES]
)
def test_random_cells_match_ase(name, length, tilt, pbc, max_atoms, cutoff):
    rng = np.random.default_rng(len(name))
    for _ in range(6):
        cell = _random_cell(rng, length, tilt)
        n = int(rng.integers(1, max_atoms + 1))
        # Fractional positions partly outside [0, 1): unwrapped atoms are allowed.
        fractional = rng.uniform(-0.3, 1.3, (n, 3))
        atoms = ase.Atoms(
            numbers=rng.integers(1, 30, n), positions=fractional @ cell, cell=cell, pbc=pbc
        )
        graph = _assert_matches_ase(atoms, cutoff)
        if name.startswith("small") and n:
            # A cell smaller than the cutoff: an atom sees its own periodic images.
            assert np.any(graph.senders == graph.receivers)


@pytest.mark.parametrize("name", ["H2O", "CH4", "C6H6", "CO2", "H2", "NH3"])
def test_molecules_without_cell_match_ase(name):
    # Benzene is flat and CO2 and H2 are linear: the bounding box is degenerate.
    atoms = molecule(name)
    assert not atoms.pbc.any() and not atoms.cell.array.any()
    graph = _assert_matches_ase(atoms, 3.0)
    assert np.all(graph.shifts == 0) and graph.num_edges > 0


def test_single_atom_and_far_apart_atoms_have_no_edges():
    for atoms in (ase.Atoms("H"), ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 10]])):
        assert _assert_matches_ase(atoms, 3.0).num_edges == 0


def test_graph_carries_charge_and_dataset_idx():
    water = Structure.from_atoms(molecule("H2O")).replace(charge=-1, dataset_idx=2)
    graph = structure_graph(water, 2.0)
    assert graph.charge.tolist() == [-1] and graph.dataset_idx.tolist() == [2]
    reference = Graph.from_atoms(molecule("H2O"), 2.0, dataset_idx=2, charge=-1)
    for name in ("positions", "senders", "receivers", "shifts", "cell", "n_node", "n_edge"):
        np.testing.assert_array_equal(getattr(graph, name), getattr(reference, name), name)
    with pytest.raises(ValueError, match="cutoff must be positive"):
        structure_graph(water, 0.0)
