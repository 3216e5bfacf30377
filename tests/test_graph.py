"""eqmlip.Graph: neighbour lists (against ASE), edge vectors, batching, padding, species."""

from typing import Any

import ase
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.neighborlist import neighbor_list as ase_neighbor_list

from eqmlip import Graph, batch_graphs, pad_graph, species_index, testing
from eqmlip.graph import check_species, neighbour_list


def _edge_set(senders, receivers, shifts):
    return set(
        zip(
            np.asarray(senders).tolist(),
            np.asarray(receivers).tolist(),
            map(tuple, np.rint(np.asarray(shifts)).astype(int).tolist()),
            strict=True,
        )
    )


def _ase_edges(atoms, cutoff):
    i, j, s, d = ase_neighbor_list("ijSD", atoms, cutoff)
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    return i[order], j[order], s[order], d[order]


def _assert_matches_ase(atoms, cutoff):
    """The graph (built with x64 on, so in float64) has ASE's edges; returns it as NumPy."""
    with jax.enable_x64(True):
        graph = Graph.from_atoms(atoms, cutoff)
        vectors = np.asarray(graph.edge_vectors())
        graph = jax.tree.map(np.asarray, graph)
    i, j, s, d = _ase_edges(atoms, cutoff)
    assert _edge_set(graph.senders, graph.receivers, graph.shifts) == _edge_set(i, j, s)
    # Same order (sender, receiver, shift), so the vectors compare entry by entry.
    np.testing.assert_array_equal(graph.senders, i)
    np.testing.assert_array_equal(graph.receivers, j)
    np.testing.assert_allclose(vectors, d, rtol=0, atol=1e-10)
    return graph


@jax.jit
def _identity(x):
    return x


# --- neighbour lists ---------------------------------------------------------------------------


@hypothesis.given(
    atoms=st.one_of(
        testing.molecules(max_atoms=6),
        testing.crystals(max_atoms=3),
        testing.crystals(max_atoms=3, pbc=(True, True, False)),
        testing.crystals(max_atoms=2, pbc=(True, False, False), min_length=2.0),
    ),
    cutoff=st.sampled_from([1.7, 3.0, 4.5]),
)
def test_neighbour_list_matches_ase(atoms, cutoff):
    graph = _assert_matches_ase(atoms, cutoff)
    assert graph.num_edges % 2 == 0  # both directions
    assert not np.any((graph.senders == graph.receivers) & np.all(graph.shifts == 0, axis=1))


@hypothesis.given(atoms=testing.crystals(max_atoms=3), data=st.data())
def test_unwrapped_positions_give_the_same_pairs(atoms, data):
    """Moving an atom by a lattice vector changes its shifts, not the geometry."""
    moved = atoms.copy()
    k = data.draw(st.integers(0, len(atoms) - 1))
    n = np.array(data.draw(st.tuples(*[st.integers(-2, 2)] * 3)), dtype=float)
    moved.positions[k] += n @ atoms.cell.array
    _assert_matches_ase(moved, 3.0)
    with jax.enable_x64(True):
        graph, reference = Graph.from_atoms(moved, 3.0), Graph.from_atoms(atoms, 3.0)
        lengths = np.sort(np.linalg.norm(np.asarray(graph.edge_vectors()), axis=1))
        expected = np.sort(np.linalg.norm(np.asarray(reference.edge_vectors()), axis=1))
    np.testing.assert_allclose(lengths, expected, atol=1e-9)


def _tilted(cell):
    return np.asarray(cell, dtype=float)


EDGE_CASES = [
    ("single-atom", ase.Atoms("H", positions=[[0.3, -1.0, 2.0]]), 3.0, 0),
    ("linear", ase.Atoms("HCO", positions=[[0, 0, 0], [1.1, 0, 0], [2.2, 0, 0]]), 3.0, 6),
    ("flat", ase.Atoms("HCON", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]), 1.2, 8),
    ("far-from-origin", ase.Atoms("H2", positions=[[1e3, -5e2, 7.0], [1e3, -5e2, 7.74]]), 1.0, 2),
    ("molecule-in-a-box", ase.Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], cell=[2, 2, 2]), 1.0, 2),
    ("tiny-cell", ase.Atoms("H", positions=[[0.1, 0.2, 0.3]], cell=[1.0, 1.1, 1.2], pbc=True), 2.5, None),
    ("triclinic", ase.Atoms("HC", positions=[[0, 0, 0], [0.7, 0.4, 0.9]], cell=_tilted([[2.0, 0, 0], [0.9, 1.8, 0], [-0.6, 0.5, 1.7]]), pbc=True), 3.0, None),
    ("left-handed", ase.Atoms("HC", positions=[[0, 0, 0], [0.7, 0.4, 0.9]], cell=_tilted([[2.0, 0, 0], [0, 0, 2.1], [0.4, 1.9, 0]]), pbc=True), 3.0, None),
    ("outside-cell", ase.Atoms("HC", positions=[[-7.0, 3.0, 11.0], [0.7, 0.4, 0.9]], cell=[2.0, 2.5, 3.0], pbc=True), 3.0, None),
    ("slab-no-c", ase.Atoms("HC", positions=[[0, 0, 0], [0.7, 0.4, 1.5]], cell=_tilted([[2.0, 0, 0], [0.5, 2.2, 0], [0, 0, 0]]), pbc=[True, True, False]), 3.0, None),
    ("wire-no-bc", ase.Atoms("HC", positions=[[0, 0, 0], [0.7, 0.4, 0.9]], cell=_tilted([[1.5, 0.3, 0], [0, 0, 0], [0, 0, 0]]), pbc=[True, False, False]), 3.0, None),
    ("slab-tilted-c", ase.Atoms("HC", positions=[[0, 0, 0], [0.7, 0.4, 9.0]], cell=_tilted([[2.0, 0, 0], [0, 2.0, 0], [1.0, 1.0, 3.0]]), pbc=[True, True, False]), 3.0, None),
]  # fmt: skip


@pytest.mark.parametrize(
    "atoms, cutoff, n_edges", [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES]
)
def test_neighbour_list_edge_cases(atoms, cutoff, n_edges):
    graph = _assert_matches_ase(atoms, cutoff)
    if n_edges is not None:
        assert graph.num_edges == n_edges
    else:
        assert graph.num_edges > 2 * len(atoms)  # periodic images: more pairs than atoms
    assert graph.positions.dtype == np.float64 and graph.senders.dtype == np.int32
    np.testing.assert_array_equal(graph.cell[0], atoms.cell.array)
    np.testing.assert_array_equal(graph.pbc[0], atoms.pbc)
    if not atoms.pbc.any():
        assert np.all(graph.shifts == 0)


def test_from_atoms_fields():
    atoms = ase.Atoms("HCO", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.2, 0]], pbc=False)
    atoms.info["charge"] = -1
    graph = Graph.from_atoms(atoms, 1.5, dataset_idx=2)
    np.testing.assert_array_equal(graph.atomic_numbers, [1, 6, 8])
    assert graph.charge.tolist() == [-1] and graph.dataset_idx.tolist() == [2]
    assert graph.n_node.tolist() == [3] and graph.n_edge.tolist() == [graph.num_edges]
    assert graph.node_mask.all() and graph.edge_mask.all() and graph.graph_mask.all()
    assert Graph.from_atoms(atoms, 1.5, charge=2).charge.tolist() == [2]
    atoms.info["charge"] = 0.5
    with pytest.raises(ValueError, match="integer"):
        Graph.from_atoms(atoms, 1.5)


def test_neighbour_list_errors():
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], pbc=True)  # zero cell
    with pytest.raises(
        ValueError, match=r"lattice vector a \(direction 0\) but that vector is zero"
    ):
        Graph.from_atoms(atoms, 2.0)
    flat = ase.Atoms(
        "H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]]
    )
    flat.pbc = True
    with pytest.raises(ValueError, match="linearly dependent"):
        Graph.from_atoms(flat, 2.0)
    with pytest.raises(ValueError, match="cutoff"):
        neighbour_list(np.zeros((1, 3)), np.eye(3), np.array([False] * 3), 0.0)
    with pytest.raises(TypeError, match="Atoms"):
        Graph.from_atoms(np.zeros((2, 3)), 2.0)  # type: ignore[arg-type]


# --- edge vectors, batching, padding ------------------------------------------------------------


def _water():
    return ase.Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])


def _crystal():
    cell = [[2.2, 0, 0], [0.4, 2.0, 0], [0.3, -0.2, 2.4]]
    return ase.Atoms("CO", positions=[[0, 0, 0], [0.9, 1.0, 1.1]], cell=cell, pbc=True)


def _batch():
    graphs = [Graph.from_atoms(_water(), 1.2), Graph.from_atoms(_crystal(), 2.5)]
    graphs.append(Graph.from_atoms(ase.Atoms("N", positions=[[5.0, 5, 5]]), 1.2, dataset_idx=1))
    return graphs, batch_graphs(graphs)


def test_edge_vectors_follow_replaced_positions_and_cell_with_gradient():
    with jax.enable_x64(True):
        graph = Graph.from_atoms(_crystal(), 2.5)
        positions = jnp.asarray(graph.positions)
        cell = jnp.asarray(graph.cell)
        strain = jnp.array([[0.01, 0.002, 0], [0.002, -0.02, 0], [0, 0, 0.03]])

        def moved(p, c):
            return eqx.tree_at(lambda g: (g.positions, g.cell), graph, (p, c))

        strained = moved(positions + positions @ strain, cell + cell @ strain).edge_vectors()
        # Straining positions and cell strains every edge vector the same way.
        base = graph.edge_vectors()
        np.testing.assert_allclose(strained, base + base @ strain, atol=1e-12)

        def energy(p, c):
            return jnp.sum(jnp.linalg.norm(moved(p, c).edge_vectors(), axis=1) ** 2)

        grad_p, grad_c = jax.grad(energy, argnums=(0, 1))(positions, cell)
        assert np.all(np.isfinite(grad_p)) and np.abs(np.asarray(grad_c)).max() > 0
        # float32 positions give float32 vectors (shifts and cell follow the positions' dtype).
        single = moved(jnp.asarray(graph.positions, jnp.float32), cell)
        assert single.edge_vectors().dtype == jnp.float32


def test_batch_offsets_and_graph_indices():
    graphs, batch = _batch()
    sizes = [g.num_nodes for g in graphs]
    assert batch.n_node.tolist() == sizes == [3, 2, 1]
    assert batch.n_edge.tolist() == [g.num_edges for g in graphs]
    assert batch.num_graphs == 3 and batch.dataset_idx.tolist() == [0, 0, 1]
    offset = 0
    start = 0
    for g in graphs:
        np.testing.assert_array_equal(
            batch.senders[start : start + g.num_edges], g.senders + offset
        )
        np.testing.assert_array_equal(
            batch.receivers[start : start + g.num_edges], g.receivers + offset
        )
        offset += g.num_nodes
        start += g.num_edges
    np.testing.assert_array_equal(batch.node_graph_index(), [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(
        batch.edge_graph_index(), np.repeat(np.arange(3), [g.num_edges for g in graphs])
    )
    with jax.enable_x64(True):
        expected = np.concatenate([np.asarray(g.edge_vectors()) for g in graphs])
        np.testing.assert_array_equal(np.asarray(batch.edge_vectors()), expected)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(batch))
    # An unpadded batch is all real: no graph is mistaken for padding (mlip's last-graph bug).
    assert batch.graph_mask.all() and batch.node_mask.all() and batch.edge_mask.all()
    with pytest.raises(ValueError, match="no graphs"):
        batch_graphs([])


def test_padding_masks_and_values():
    graphs, batch = _batch()
    n, e, g = batch.num_nodes, batch.num_edges, batch.num_graphs
    padded = pad_graph(batch, n + 3, e + 5, g + 2)
    assert (padded.num_nodes, padded.num_edges, padded.num_graphs) == (n + 3, e + 5, g + 2)
    np.testing.assert_array_equal(padded.node_mask, [True] * n + [False] * 3)
    np.testing.assert_array_equal(padded.edge_mask, [True] * e + [False] * 5)
    np.testing.assert_array_equal(padded.graph_mask, [True] * g + [False] * 2)
    assert padded.n_node.tolist() == batch.n_node.tolist() + [3, 0]
    assert padded.n_edge.tolist() == batch.n_edge.tolist() + [5, 0]
    # Padding edges are self-loops on the first padding node, in the first padding graph.
    assert padded.senders[e:].tolist() == padded.receivers[e:].tolist() == [n] * 5
    np.testing.assert_array_equal(padded.node_graph_index()[n:], [g] * 3)
    np.testing.assert_array_equal(padded.edge_graph_index()[e:], [g] * 5)
    assert np.all(padded.cell[g:] == 0) and not padded.pbc[g:].any()
    assert padded.atomic_numbers[n:].tolist() == [0, 0, 0]
    for name in ("positions", "shifts", "cell"):
        assert np.all(np.isfinite(getattr(padded, name)))
    vectors = np.asarray(padded.edge_vectors())
    assert np.all(np.isfinite(vectors)) and np.all(vectors[e:] == 0)
    np.testing.assert_allclose(vectors[:e], np.asarray(batch.edge_vectors()), rtol=1e-6)

    # Exact budgets: nothing added, all real.
    same = pad_graph(batch, n, e, g)
    assert same.node_mask.all() and same.num_graphs == g
    # Extra graphs only: empty padding graphs.
    more = pad_graph(batch, n, e, g + 2)
    assert more.n_node.tolist()[g:] == [0, 0] and not more.graph_mask[g:].any()


@pytest.mark.parametrize(
    "budget, message",
    [
        ((5, 100, 10), r"n_node=5 < 6 nodes.*Need n_node >= 6"),
        ((10, 3, 10), r"n_edge=3 < \d+ edges"),
        ((10, 100, 2), r"n_graph=2 < 3 graphs"),
        ((6, 100, 10), r"no padding node.*n_node >= 7"),
        ((10, 100, 3), r"no padding graph.*n_graph >= 4"),
    ],
    ids=["nodes", "edges", "graphs", "edges-need-a-node", "nodes-need-a-graph"],
)
def test_padding_budget_too_small(budget, message):
    _, batch = _batch()
    with pytest.raises(ValueError, match=message):
        pad_graph(batch, *budget)


def test_padding_and_batching_under_jit_match_eager():
    graphs, batch = _batch()
    eager = pad_graph(batch, 8, batch.num_edges + 4, 5)
    jitted = eqx.filter_jit(lambda gs: pad_graph(batch_graphs(gs), 8, batch.num_edges + 4, 5))(
        graphs
    )
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_graph_indices_are_jit_compatible_without_retracing():
    traces = 0

    @eqx.filter_jit
    def indices(graph):
        nonlocal traces
        traces += 1
        return graph.node_graph_index(), graph.edge_graph_index(), graph.edge_vectors()

    budget = (12, 80, 4)
    first = pad_graph(_batch()[1], *budget)
    second = pad_graph(batch_graphs([Graph.from_atoms(_water(), 1.2)] * 3), *budget)
    for graph in (first, second):
        nodes, edges, vectors = indices(graph)
        np.testing.assert_array_equal(nodes, np.repeat(np.arange(4), graph.n_node))
        np.testing.assert_array_equal(edges, np.repeat(np.arange(4), graph.n_edge))
        assert np.all(np.isfinite(np.asarray(vectors)))
    assert traces == 1


@pytest.mark.parametrize("compare_pairs", [0, 1 << 18], ids=["repeat", "compare"])
def test_owner_index_matches_repeat(monkeypatch, compare_pairs):
    """Both ways of finding each item's graph (the fused comparison for small sizes, the
    repeat beyond) give `np.repeat`'s indices, with empty graphs, and the last graph's index
    for items past the counts' sum, as `jnp.repeat` does."""
    import eqmlip.graph

    monkeypatch.setattr(eqmlip.graph, "_COMPARE_PAIRS", compare_pairs)
    owner = jax.jit(eqmlip.graph._owner_index, static_argnums=1)
    for counts, total in (([3, 0, 2, 1], 6), ([0, 4], 4), ([5], 5), ([2, 1, 0], 5)):
        got = owner(jnp.asarray(counts, jnp.int32), total)
        expected = np.repeat(np.arange(len(counts)), counts)
        expected = np.concatenate([expected, [len(counts) - 1] * (total - len(expected))])
        assert got.dtype == jnp.arange(1).dtype
        np.testing.assert_array_equal(np.asarray(got), expected)


def test_inconsistent_fields_raise():
    graph = Graph.from_atoms(_water(), 1.2)
    fields = {k: getattr(graph, k) for k in graph.__dataclass_fields__}
    with pytest.raises((ValueError, TypeError), match="n_node|nodes"):
        Graph(**{**fields, "n_node": np.array([2], np.int32)})
    with pytest.raises((ValueError, TypeError)):
        Graph(**{**fields, "node_mask": np.ones(2, bool)})


def test_counts_are_checked_on_concrete_jax_arrays():
    graph = Graph.from_atoms(_crystal(), 2.5)
    fields = {k: getattr(graph, k) for k in graph.__dataclass_fields__}
    with pytest.raises(ValueError, match=r"Graph: n_node sums to 3 but there are 2 nodes"):
        Graph(**{**fields, "n_node": jnp.array([3], jnp.int32)})
    wrong_edges = jnp.array([graph.num_edges + 1], jnp.int32)
    with pytest.raises(ValueError, match=rf"n_edge sums to {graph.num_edges + 1} but there are"):
        Graph(**{**fields, "n_edge": wrong_edges})
    # Under jit the counts are tracers: the graph is built without reading them back.
    rebuilt = eqx.filter_jit(lambda f: Graph(**f))(fields)
    for a, b in zip(jax.tree.leaves(graph), jax.tree.leaves(rebuilt), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("build", ["from_atoms", "constructor"])
def test_fields_are_jax_arrays_in_the_default_precision(x64, build):
    atoms = _crystal()
    graph = Graph.from_atoms(atoms, 2.5)
    if build == "constructor":  # NumPy inputs, as a user may pass them
        host: dict[str, Any] = {
            k: np.asarray(getattr(graph, k))
            for k in graph.__dataclass_fields__
            if k != "long_range"
        }
        host["positions"] = np.asarray(atoms.positions, dtype=np.float64)
        host["n_node"] = host["n_node"].astype(np.int64)
        graph = Graph(**host)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(graph))
    expected = np.float64 if x64 else np.float32
    assert graph.positions.dtype == graph.shifts.dtype == graph.cell.dtype == expected
    assert graph.n_node.dtype == (np.int64 if x64 and build == "constructor" else np.int32)
    assert graph.senders.dtype == np.int32 and graph.pbc.dtype == np.bool_
    np.testing.assert_array_equal(graph.positions, atoms.positions.astype(expected))


# --- species ------------------------------------------------------------------------------------


def test_species_index_on_host():
    z = np.array([8, 1, 1, 6, 0], dtype=np.int32)
    mask = np.array([True, True, True, True, False])
    np.testing.assert_array_equal(species_index(z, (1, 6, 8), mask), [2, 0, 0, 1, 0])
    with pytest.raises(ValueError, match=r"element Fe \(Z=26\).*\(H, C, O\)"):
        species_index(np.array([1, 26, 6]), (1, 6, 8))
    with pytest.raises(ValueError, match="atomic number 0.*mask"):
        species_index(z, (1, 6, 8))
    with pytest.raises(ValueError, match="atomic number 130"):
        species_index(np.array([130]), (1, 6, 8))
    with pytest.raises(ValueError, match="sorted"):
        species_index(z, (6, 1))
    with pytest.raises(ValueError, match="1..118"):
        species_index(z, (0, 1))
    # Concrete JAX arrays are checked eagerly too, with the same message.
    np.testing.assert_array_equal(
        species_index(jnp.asarray(z), (1, 6, 8), jnp.asarray(mask)), [2, 0, 0, 1, 0]
    )
    assert isinstance(species_index(z, (1, 6, 8), mask), jax.Array)
    with pytest.raises(ValueError, match=r"species_index: element Fe \(Z=26\).*\(H, C, O\)"):
        species_index(jnp.array([1, 26, 6]), (1, 6, 8))


@pytest.mark.parametrize(
    "species, error, message",
    [
        ((1, 6, 8), None, None),
        ([1, np.int64(118)], None, None),
        ((), ValueError, r"^Caller: species is empty; give the atomic numbers"),
        ((1, 0, 6), ValueError, r"^Caller: species must be atomic numbers in 1..118, got \(1, 0, 6\); remove \[0\]"),
        ((1, 119), ValueError, r"^Caller: .*in 1..118, got \(1, 119\); remove \[119\]"),
        ((6, 1, 1), ValueError, r"^Caller: species must be sorted and without repeats, got \(6, 1, 1\); use \(1, 6\)"),
        ((1, 1), ValueError, r"sorted and without repeats.*use \(1,\)"),
        (("H", "C"), TypeError, r"species"),  # the runtime type checker may answer first
    ],
    ids=["ok", "ok-numpy-int", "empty", "zero", "too-large", "unsorted", "repeat", "symbols"],
)  # fmt: skip
def test_check_species(species, error, message):
    if error is None:
        values = check_species(species, caller="Caller")
        assert values == tuple(int(z) for z in species)
        assert all(type(z) is int for z in values)
    else:
        with pytest.raises(error, match=message):
            check_species(species, caller="Caller")


@eqx.filter_jit
def _species_jit(z, mask):
    return species_index(z, (1, 6, 8), mask)


def test_species_index_under_jit():
    z = jnp.array([8, 1, 6, 0], dtype=jnp.int32)
    mask = jnp.array([True, True, True, False])
    np.testing.assert_array_equal(_species_jit(z, mask), [2, 0, 1, 0])
    with pytest.raises(RuntimeError, match=r"element Fe \(Z=26\)"):
        jax.block_until_ready(_species_jit(jnp.array([1, 26, 6, 0]), mask))
    with pytest.raises(RuntimeError, match="atomic number 0"):
        jax.block_until_ready(_species_jit(z, jnp.ones(4, bool)))
    with pytest.raises(RuntimeError, match="outside 0..118"):
        jax.block_until_ready(_species_jit(jnp.array([1, 6, 200, 8]), mask))
    # The masked padding entry is never checked, and an empty input works.
    assert species_index(jnp.zeros(0, jnp.int32), (1,)).shape == (0,)


def _padded(graphs):
    batch = batch_graphs(graphs)
    index = species_index(batch.atomic_numbers, (1, 6, 7, 8), batch.node_mask)
    assert index.shape == (batch.num_nodes,)
    return pad_graph(batch, 16, 64, 4)


@hypothesis.given(
    padded=st.lists(
        testing.graphs(testing.molecules(max_atoms=4), cutoff=2.0), min_size=1, max_size=3
    ).map(_padded)
)
def test_batching_and_padding_work_while_hypothesis_draws(padded):
    """The helpers run inside strategies (no `random` from the runtime type checker)."""
    real = int(padded.n_node[padded.graph_mask].sum())
    np.testing.assert_array_equal(padded.node_mask, np.arange(16) < real)
    assert padded.num_graphs == 4 and not padded.graph_mask[-1]
    np.testing.assert_array_equal(
        np.asarray(padded.node_graph_index())[padded.node_mask],
        np.repeat(np.arange(4), padded.n_node)[padded.node_mask],
    )
