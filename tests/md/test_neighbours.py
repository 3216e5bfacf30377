"""The on-device neighbour list against the host one (`eqmlip.graph.neighbour_list`)."""

import itertools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip.graph import neighbour_list
from eqmlip.md import _neighbours as nl

CUTOFF, SKIN = 2.5, 0.5
PATTERNS = {
    "molecule": (False, False, False),
    "wire": (True, False, False),
    "slab": (True, True, False),
    "bulk": (True, True, True),
}
MAX_IMAGES = 3


def _random_system(rng: np.random.Generator, nodes: int, pbc: tuple[bool, bool, bool]):
    """A random (often very skewed or small) cell and positions, some outside the cell."""
    while True:
        scale = rng.uniform(1.2, 6.0)
        cell = np.diag(rng.uniform(0.7, 1.3, 3) * scale) + rng.uniform(-0.6, 0.6, (3, 3)) * scale
        if abs(np.linalg.det(cell)) < 0.2 * scale**3:
            continue
        if max(nl.host_images(cell, pbc, CUTOFF + SKIN)) <= MAX_IMAGES:
            break
    fractional = rng.uniform(-0.5, 1.5, (nodes, 3))  # unwrapped
    positions = fractional @ cell
    if not any(pbc):
        cell = np.zeros((3, 3)) if rng.uniform() < 0.5 else cell
    return positions, cell


def _as_set(senders, receivers, shifts):
    return {
        (int(i), int(j), *map(int, np.round(s)))
        for i, j, s in zip(senders, receivers, shifts, strict=True)
    }


@eqx.filter_jit
def _device_lists(positions, cell, spec):
    neighbours = nl.build(positions, cell, spec)
    return neighbours, nl.edges(neighbours, positions, cell, spec)


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_device_list_equals_host_list_on_random_cells(pattern):
    pbc = PATTERNS[pattern]
    rng = np.random.default_rng(list(PATTERNS).index(pattern))
    nodes = 9
    images = (MAX_IMAGES * pbc[0], MAX_IMAGES * pbc[1], MAX_IMAGES * pbc[2])
    spec = nl.NeighbourSpec(CUTOFF, SKIN, pbc, images, 12000, 6000)
    for _ in range(12):
        positions, cell = _random_system(rng, nodes, pbc)
        neighbours, edges = _device_lists(jnp.asarray(positions), jnp.asarray(cell), spec)
        assert not bool(neighbours.overflow) and not bool(edges.overflow)
        count = int(neighbours.count)
        device = _as_set(
            neighbours.senders[:count], neighbours.receivers[:count], neighbours.shifts[:count]
        )
        host = neighbour_list(positions, cell, np.array(pbc), CUTOFF + SKIN, min_distance=None)
        assert device == _as_set(*host)
        assert count == len(host[0])  # no duplicates either
        # The edges of a step: the host list at the cutoff, in its order, then padding.
        host_edges = neighbour_list(positions, cell, np.array(pbc), CUTOFF, min_distance=None)
        n = int(edges.count)
        assert n == len(host_edges[0])
        np.testing.assert_array_equal(edges.senders[:n], host_edges[0])
        np.testing.assert_array_equal(edges.receivers[:n], host_edges[1])
        np.testing.assert_array_equal(edges.shifts[:n], host_edges[2])
        assert np.all(np.asarray(edges.senders[n:]) == nodes)
        assert np.all(np.asarray(edges.receivers[n:]) == nodes)


def test_overflow_is_flagged_for_capacity_and_images():
    rng = np.random.default_rng(7)
    pbc = (True, True, True)
    positions, cell = _random_system(rng, 9, pbc)
    needed = len(
        neighbour_list(positions, cell, np.array(pbc), CUTOFF + SKIN, min_distance=None)[0]
    )
    images = nl.host_images(cell, pbc, CUTOFF + SKIN)
    small = nl.NeighbourSpec(CUTOFF, SKIN, pbc, images, needed - 1, 4000)
    neighbours, _ = _device_lists(jnp.asarray(positions), jnp.asarray(cell), small)
    assert bool(neighbours.overflow) and int(neighbours.count) == needed
    exact = small._replace(candidate_capacity=needed)
    neighbours, edges = _device_lists(jnp.asarray(positions), jnp.asarray(cell), exact)
    assert not bool(neighbours.overflow)
    short = exact._replace(edge_capacity=int(edges.count) - 1)
    assert bool(_device_lists(jnp.asarray(positions), jnp.asarray(cell), short)[1].overflow)
    fewer = exact._replace(images=(max(0, images[0] - 1), images[1], images[2]))
    assert bool(_device_lists(jnp.asarray(positions), jnp.asarray(cell), fewer)[0].overflow)


def test_rebuild_criterion_moves_and_strains():
    pbc = (True, True, True)
    cell = np.eye(3) * 8.0
    positions = np.random.default_rng(0).uniform(0, 8, (5, 3))
    spec = nl.allocate(positions, cell, pbc, CUTOFF, SKIN)
    neighbours = nl.build(jnp.asarray(positions), jnp.asarray(cell), spec)
    moved = positions.copy()
    moved[2] += [0.24, 0, 0]  # 2 * 0.24 < skin
    assert not bool(nl.needs_rebuild(neighbours, jnp.asarray(moved), jnp.asarray(cell), spec))
    moved[2] += [0.02, 0, 0]
    assert bool(nl.needs_rebuild(neighbours, jnp.asarray(moved), jnp.asarray(cell), spec))
    # A homogeneous compression shrinks every distance by the strain: 3 Å * 0.2 > skin... the
    # bound is (cutoff + skin) * 0.83 < cutoff.
    squeezed = 0.83
    assert bool(
        nl.needs_rebuild(
            neighbours, jnp.asarray(positions * squeezed), jnp.asarray(cell * squeezed), spec
        )
    )
    assert not bool(
        nl.needs_rebuild(neighbours, jnp.asarray(positions * 0.9), jnp.asarray(cell * 0.9), spec)
    )


def test_allocate_sizes_follow_the_host_counts():
    positions = np.array(list(itertools.product([0.0, 1.5], repeat=3)))
    spec = nl.allocate(positions, np.zeros((3, 3)), (False, False, False), CUTOFF, SKIN)
    assert spec.images == (0, 0, 0)
    assert spec.candidate_capacity >= 8 * 7 and spec.edge_capacity >= 8 * 7
