"""eqmlip.data.GraphLoader and Batch: packing, padding, masks, budgets, trace counts, seeds."""

import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import batch_graphs, pad_graph
from eqmlip.data import Batch, Budget, GraphLoader, Structure, make_batch, structure_graph

from .conftest import cu_au_alloys

CUTOFF = 4.0


def _weights(batch: Batch) -> list[float]:
    """The real structures of a batch, identified by their distinct weights."""
    return batch.weight[np.asarray(batch.graph.graph_mask)].tolist()


def _check_batch(batch: Batch, by_weight: dict[float, Structure]):
    """Exact values, in the batch's float dtype (float64 with x64, else float32)."""
    g = batch.graph
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(batch))
    dtype = g.positions.dtype
    assert dtype == (np.float64 if jax.config.read("jax_enable_x64") else np.float32)
    assert batch.energy.dtype == batch.forces.dtype == batch.stress.dtype == dtype

    def cast(x):
        return np.asarray(x, dtype=dtype)

    leaves = [g.positions, g.shifts, g.cell, batch.energy, batch.forces, batch.stress, batch.weight]
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    real = np.asarray(g.graph_mask)
    assert not real[-1]  # always a padding graph
    assert not (batch.has_energy | batch.has_forces | batch.has_stress)[~real].any()
    assert np.all(batch.weight[~real] == 0) and np.all(batch.energy[~real] == 0)
    node_graph = np.repeat(np.arange(g.num_graphs), g.n_node)
    assert not g.node_mask.all() and np.all(batch.forces[~g.node_mask] == 0)
    for k in np.flatnonzero(real):
        s = by_weight[float(batch.weight[k])]
        nodes = node_graph == k
        np.testing.assert_array_equal(g.positions[nodes], cast(s.positions))
        np.testing.assert_array_equal(g.atomic_numbers[nodes], s.atomic_numbers)
        assert batch.has_energy[k] == (s.energy is not None)
        assert batch.energy[k] == cast(0.0 if s.energy is None else s.energy)
        assert batch.has_forces[k] == (s.forces is not None)
        expected_forces = np.zeros((s.num_atoms, 3)) if s.forces is None else s.forces
        np.testing.assert_array_equal(batch.forces[nodes], cast(expected_forces))
        assert batch.has_stress[k] == (s.stress is not None)
        expected_stress = np.zeros((3, 3)) if s.stress is None else s.stress
        np.testing.assert_array_equal(batch.stress[k], cast(expected_stress))


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "ordered"])
@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_every_structure_once_per_epoch_with_right_targets(
    mixed_structures, batch_size, shuffle, x64
):
    by_weight = {s.weight: s for s in mixed_structures}
    loader = GraphLoader(mixed_structures, CUTOFF, batch_size=batch_size, shuffle=shuffle, seed=1)
    orders = []
    for epoch in range(2):
        batches = list(loader)
        assert len(batches) == -(-len(mixed_structures) // batch_size)
        seen = [w for b in batches for w in _weights(b)]
        assert sorted(seen) == sorted(by_weight)  # exactly once each
        for b in batches:
            assert b.budget in loader.budgets
            assert b.graph.num_graphs == batch_size + 1
            _check_batch(b, by_weight)
        orders.append(seen)
        assert loader.epoch == epoch + 1
    assert (orders[0] != orders[1]) == shuffle


def test_trace_count_is_bounded_by_the_buckets():
    structures = [Structure.from_atoms(a) for a in cu_au_alloys(30, seed=5)]
    loader = GraphLoader(structures, CUTOFF, batch_size=4, seed=2, num_buckets=3)
    assert 1 < len(loader.budgets) <= 3
    traces = collections.Counter()

    @eqx.filter_jit
    def masked_position_sum(batch: Batch):
        traces[batch.budget] += 1  # runs once per trace (per distinct shape)
        g = batch.graph
        return jnp.sum(jnp.where(g.node_mask[:, None], g.positions, 0.0))

    seen = set()
    for _ in range(4):
        for batch in loader:
            seen.add(batch.budget)
            total = masked_position_sum(batch)
            real = np.asarray(batch.graph.node_mask)
            expected = np.asarray(batch.graph.positions)[real].sum()
            assert float(total) == pytest.approx(float(expected), rel=1e-5)
    assert set(traces) == seen and all(count == 1 for count in traces.values())
    assert sum(traces.values()) == len(loader.budgets) <= loader.num_buckets


@pytest.mark.parametrize("num_buckets", [1, 2, 3, 5])
def test_budgets_hold_every_batch_over_many_epochs(mixed_structures, num_buckets):
    loader = GraphLoader(mixed_structures, CUTOFF, batch_size=3, seed=0, num_buckets=num_buckets)
    assert 1 <= len(loader.budgets) <= num_buckets
    assert len(set(loader.budgets)) == len(loader.budgets)
    top = loader.budgets[-1]
    assert top == Budget(loader.max_nodes + 1, loader.max_edges, 4)
    used = {loader.budget_for(b) for e in range(20) for b in loader.batch_indices(e)}
    assert used <= set(loader.budgets)


def test_same_seed_and_epoch_give_the_same_batches(mixed_structures):
    a = GraphLoader(mixed_structures, CUTOFF, batch_size=3, seed=7)
    b = GraphLoader(mixed_structures, CUTOFF, batch_size=3, seed=7)
    c = GraphLoader(mixed_structures, CUTOFF, batch_size=3, seed=8)

    def order(loader, epoch):
        return [i.tolist() for i in loader.batch_indices(epoch)]

    assert order(a, 0) == order(b, 0) and order(a, 5) == order(b, 5)
    assert order(a, 0) != order(a, 1) and order(a, 0) != order(c, 0)
    # Resuming: set_epoch, or start in the middle of an epoch.
    b.set_epoch(5)
    assert [_weights(x) for x in b] == [_weights(x) for x in a.batches(5)]
    assert b.epoch == 6
    tail = [_weights(x) for x in a.batches(5, start=2)]
    assert tail == [_weights(x) for x in list(a.batches(5))[2:]]
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        a.set_epoch(-1)


def test_budget_limits_and_drop_last(mixed_structures):
    nodes = [s.num_atoms for s in mixed_structures]
    loader = GraphLoader(
        mixed_structures, CUTOFF, batch_size=8, max_nodes=max(nodes) + 4, max_edges=10**6
    )
    for indices in loader.batch_indices():
        assert sum(nodes[i] for i in indices) <= max(nodes) + 4
    assert len(loader) > len(mixed_structures) / 8
    dropped = GraphLoader(mixed_structures, CUTOFF, batch_size=5, drop_last=True)
    assert len(dropped) == len(mixed_structures) // 5
    assert all(len(i) == 5 for i in dropped.batch_indices())
    with pytest.raises(ValueError, match="max_nodes=3 is smaller than structure"):
        GraphLoader(mixed_structures, CUTOFF, batch_size=2, max_nodes=3)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        GraphLoader(mixed_structures, CUTOFF, batch_size=0)
    with pytest.raises(ValueError, match="got no structures"):
        GraphLoader([], CUTOFF, batch_size=2)


def test_make_batch_and_shape_checks(mixed_structures):
    s = mixed_structures[:2]
    graphs = [structure_graph(x, CUTOFF) for x in s]
    n = sum(x.num_atoms for x in s)
    e = sum(g.num_edges for g in graphs)
    batch = make_batch(s, graphs, Budget(n + 1, e + 5, 3))
    assert batch.budget == Budget(n + 1, e + 5, 3)
    assert batch.graph.edge_mask.sum() == e and batch.graph.graph_mask.tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="pad_graph: n_graph=2 leaves no padding graph"):
        make_batch(s, graphs, Budget(n + 1, e, 2))
    # Targets consistent with one another but not with the graph (3 graphs).
    with pytest.raises(ValueError, match=r"Batch: energy has shape \(2,\), expected \(3,\)"):
        Batch(
            graph=batch.graph,
            energy=np.zeros(2),
            forces=batch.forces,
            stress=np.zeros((2, 3, 3)),
            weight=np.zeros(2),
            has_energy=np.zeros(2, dtype=bool),
            has_forces=np.zeros(2, dtype=bool),
            has_stress=np.zeros(2, dtype=bool),
        )


def test_host_batching_matches_batch_graphs_and_pad_graph(mixed_structures, x64):
    """The loader batches and pads on the host, then converts once: the same graph as
    batch_graphs and pad_graph give on the device, with the same dtypes."""
    s = mixed_structures[3:8]
    graphs = [structure_graph(x, CUTOFF) for x in s]
    n = sum(x.num_atoms for x in s)
    e = sum(g.num_edges for g in graphs)
    budget = Budget(n + 3, e + 7, len(s) + 2)
    batch = make_batch(s, graphs, budget)
    reference = pad_graph(batch_graphs(graphs), *budget)
    for a, b in zip(jax.tree.leaves(batch.graph), jax.tree.leaves(reference), strict=True):
        assert isinstance(a, jax.Array) and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # The loader's own host copies (from the structures) and given graphs give equal batches;
    # its per-structure graphs are built on first use.
    own = GraphLoader(s, CUTOFF, batch_size=len(s), shuffle=False)
    given = GraphLoader(s, CUTOFF, batch_size=len(s), shuffle=False, graphs=graphs)
    (a,), (b,) = list(own), list(given)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert own._graphs is None and given.graphs is given.graphs
    for x, y in zip(jax.tree.leaves(own.graphs), jax.tree.leaves(graphs), strict=True):
        assert isinstance(x, jax.Array) and x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
