"""The structure strategies of `eqmlip.testing` produce what their docstrings promise."""

import itertools
import math

import ase
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import Graph, testing

FIND = hypothesis.settings(max_examples=200, database=None, phases=[hypothesis.Phase.generate])


def _min_distance(atoms: ase.Atoms, bound: float) -> float:
    """Brute force: the smallest distance between two atoms or an atom and any periodic image
    (its own included), over every image that could be closer than `bound` (molecules: no
    images)."""
    if not atoms.pbc.any():
        d = atoms.get_all_distances() + np.diag(np.full(len(atoms), math.inf))
        return float(d.min())
    cell = atoms.cell.array
    volume = abs(np.linalg.det(cell))
    ranges = []
    for k in range(3):
        if not atoms.pbc[k]:
            ranges.append([0])
            continue
        # With atoms inside the cell, an image n_k planes away along reciprocal direction k is
        # at least (|n_k| - 1) * height_k away.
        height = volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))
        n = math.ceil(bound / height) + 1
        ranges.append(list(range(-n, n + 1)))
    best = math.inf
    positions = atoms.positions
    for shift in itertools.product(*ranges):
        offset = np.asarray(shift, dtype=float) @ cell
        d = np.linalg.norm(positions[None, :, :] + offset - positions[:, None, :], axis=-1)
        if shift == (0, 0, 0):
            d = d + np.diag(np.full(len(atoms), math.inf))
        best = min(best, float(d.min()))
    return best


@hypothesis.given(
    atoms=testing.molecules(species=(1, 8), min_atoms=3, max_atoms=7, min_distance=1.1)
)
def test_molecules_respect_arguments(atoms):
    assert isinstance(atoms, ase.Atoms)
    assert 3 <= len(atoms) <= 7
    assert set(atoms.numbers) <= {1, 8}
    assert not atoms.pbc.any() and np.all(atoms.cell.array == 0)
    assert _min_distance(atoms, 1.1) >= 1.1


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"species": (14,), "max_atoms": 1, "min_length": 0.5, "max_length": 1.0}, id="one-atom-tiny-cell"),
        pytest.param({"min_atoms": 3, "max_atoms": 5, "min_distance": 1.5, "triclinic": False}, id="orthorhombic"),
        pytest.param({"pbc": (True, True, False), "max_atoms": 3}, id="slab"),
    ],
)  # fmt: skip
@hypothesis.given(data=st.data())
def test_crystals_respect_arguments(kwargs, data):
    atoms = data.draw(testing.crystals(**kwargs))
    species = set(kwargs.get("species", (1, 6, 7, 8)))
    min_distance = kwargs.get("min_distance", 0.9)
    assert kwargs.get("min_atoms", 1) <= len(atoms) <= kwargs.get("max_atoms", 4)
    assert set(atoms.numbers) <= species
    assert tuple(atoms.pbc) == kwargs.get("pbc", (True, True, True))
    assert np.linalg.det(atoms.cell.array) > 0
    assert np.all(atoms.cell.lengths() >= kwargs.get("min_length", 1.5) - 1e-9)
    if not kwargs.get("triclinic", True):
        np.testing.assert_allclose(atoms.cell.angles(), 90.0)
    # Atoms are inside the cell, and apart from each other and from all periodic images.
    fractional = np.linalg.solve(atoms.cell.array.T, atoms.positions.T).T
    assert np.all((fractional >= 0) & (fractional < 1))
    assert _min_distance(atoms, min_distance) >= min_distance


def test_crystals_reach_the_interesting_cases():
    small = testing.crystals(max_atoms=1, min_length=1.0, max_length=2.0)
    # A cell smaller than a typical cutoff, so that an atom neighbours its own images.
    tiny = hypothesis.find(small, lambda a: a.cell.lengths().max() < 2.5, settings=FIND)
    assert len(Graph.from_atoms(tiny, 3.0).senders) > 6
    triclinic = hypothesis.find(
        testing.crystals(), lambda a: np.abs(a.cell.angles() - 90).max() > 10, settings=FIND
    )
    assert np.abs(triclinic.cell.angles() - 90).max() > 10


def test_molecules_reach_flat_and_compact_shapes():
    flat = hypothesis.find(
        testing.molecules(min_atoms=4, rotate=False),
        lambda a: np.ptp(a.positions[:, 2]) == 0,
        settings=FIND,
    )
    assert len(flat) >= 4
    compact = hypothesis.find(
        testing.molecules(min_atoms=6, max_atoms=6),
        lambda a: min(np.ptp(a.positions, axis=0)) > 1.0,
        settings=FIND,
    )
    assert len(compact) == 6


@hypothesis.given(graph=testing.graphs(testing.crystals(max_atoms=2), cutoff=2.5, dataset_idx=1))
def test_graphs_strategy(graph):
    assert isinstance(graph, Graph)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(graph))
    assert graph.num_graphs == 1 and graph.dataset_idx.tolist() == [1]
    assert graph.num_edges % 2 == 0 and graph.pbc.all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="species"):
        testing.molecules(species=(0,))
    with pytest.raises(ValueError, match="min_atoms"):
        testing.molecules(min_atoms=3, max_atoms=2)
    with pytest.raises(ValueError, match="min_distance"):
        testing.crystals(min_distance=0.0)
    with pytest.raises(ValueError, match="min_length"):
        testing.crystals(min_length=3.0, max_length=2.0)
    with pytest.raises(ValueError, match="cutoff"):
        testing.graphs(testing.molecules(), cutoff=-1.0)
    with pytest.raises(TypeError, match="(?i)strategy"):
        testing.graphs(ase.Atoms("H"), cutoff=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("buckets", [(4, 16), (8, 64)], ids=str)
@hypothesis.given(data=st.data())
def test_bucketed_graphs_share_few_shapes(buckets, data):
    atoms = data.draw(st.one_of(testing.molecules(max_atoms=6), testing.crystals(max_atoms=3)))
    graph = data.draw(testing.graphs(st.just(atoms), 3.0, buckets=buckets))
    unpadded = Graph.from_atoms(atoms, 3.0)
    nodes, edges = graph.positions.shape[0], graph.senders.shape[0]
    # Powers of two times the multiples, the smallest with room for padding.
    assert nodes in [buckets[0] * 2**k for k in range(4)] and nodes > len(atoms)
    assert edges in [buckets[1] * 2**k for k in range(12)] and edges > unpadded.num_edges
    assert nodes == buckets[0] or nodes // 2 <= len(atoms)
    assert edges == buckets[1] or edges // 2 <= unpadded.num_edges
    # The real part is the unpadded graph; one padding graph holds the rest.
    assert int(graph.node_mask.sum()) == len(atoms)
    assert int(graph.edge_mask.sum()) == unpadded.num_edges
    np.testing.assert_array_equal(graph.positions[: len(atoms)], unpadded.positions)
    assert graph.cell.shape == (2, 3, 3) and graph.graph_mask.tolist() == [True, False]


def test_bad_buckets_raise():
    with pytest.raises(ValueError, match="buckets must be"):
        testing.graphs(testing.molecules(), 3.0, buckets=(0, 16))


def test_sizes_are_drawn_from_the_buckets():
    seen: dict[str, set[int]] = {"molecules": set(), "crystals": set()}

    @testing.hypothesis_settings(max_examples=30, database=None)
    @hypothesis.given(
        molecule=testing.molecules(sizes=(5, 2), min_atoms=3, max_atoms=3),  # sizes win
        crystal=testing.crystals(sizes=[3, 1, 3]),
    )
    def draw(molecule, crystal):
        seen["molecules"].add(len(molecule))
        seen["crystals"].add(len(crystal))

    draw()
    assert seen == {"molecules": {2, 5}, "crystals": {1, 3}}


def test_bucketed_sizes_and_graphs_compile_once_per_bucket():
    # A Python counter inside the traced function counts compilations of the jitted one.
    traces = []

    @eqx.filter_jit
    def total_distance(graph):
        traces.append((graph.positions.shape[0], graph.senders.shape[0]))
        vectors = graph.positions[graph.receivers] - graph.positions[graph.senders]
        return jnp.sum(jnp.where(graph.edge_mask, jnp.sum(vectors**2, axis=-1), 0.0))

    shapes = []
    structures = testing.molecules(sizes=(2, 4, 8))

    @testing.hypothesis_settings(max_examples=20, database=None)
    @hypothesis.given(graph=testing.graphs(structures, 3.0, buckets=(8, 32)))
    def run(graph):
        shapes.append((graph.positions.shape[0], graph.senders.shape[0]))
        assert np.isfinite(float(total_distance(graph)))

    run()
    assert len(shapes) >= 20 and set(shapes) <= {(n, e) for n in (8, 16) for e in (32, 64)}
    assert sorted(traces) == sorted(set(shapes))  # one compilation per bucket seen, no more
    assert 2 <= len(traces) <= 4


def test_bad_sizes_raise():
    # (Other kinds of items are refused by the annotation, or by this check without a checker.)
    for sizes in [(), (0, 2), (True,)]:
        with pytest.raises(ValueError, match="sizes must"):
            testing.molecules(sizes=sizes)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"crystals: sizes must be positive integers .*got \(-1,\)"
    ):
        testing.crystals(sizes=(-1,))
