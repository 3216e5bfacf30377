"""The on-device neighbour list against the host one (`eqmlip.graph.neighbour_list`)."""

import itertools

import equinox as eqx
import hypothesis
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from hypothesis import assume, given, strategies as st

from eqmlip.graph import _complement_basis, neighbour_list
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


def _small_cell_spec(pbc: tuple[bool, bool, bool], search: str, nodes: int) -> nl.NeighbourSpec:
    """One spec for every random cell of `_random_system` (one compilation per pattern)."""
    images = (MAX_IMAGES * pbc[0], MAX_IMAGES * pbc[1], MAX_IMAGES * pbc[2])
    spec = nl.NeighbourSpec(CUTOFF, SKIN, pbc, images, 12000, 6000)
    if search == "all_pairs":
        return spec
    # Two bins along periodic directions (a bin is then reached with two shifts, one on each
    # side), a reach covering MAX_IMAGES images; three bins along the others.
    return spec._replace(
        bins=(2 if pbc[0] else 3, 2 if pbc[1] else 3, 2 if pbc[2] else 3),
        reach=(2 * MAX_IMAGES if pbc[0] else 1, 2 * MAX_IMAGES if pbc[1] else 1,
               2 * MAX_IMAGES if pbc[2] else 1),
        bin_capacity=nodes,
    )  # fmt: skip


_device_build = eqx.filter_jit(nl.build)


@pytest.mark.parametrize("search", ["all_pairs", "cell_list"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_device_list_equals_host_list_on_random_cells(pattern, search):
    pbc = PATTERNS[pattern]
    rng = np.random.default_rng(list(PATTERNS).index(pattern))
    nodes = 9
    spec = _small_cell_spec(pbc, search, nodes)
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


GRID_NODES = 48
GRID = (3, 3, 3)


def _grid_spec(pbc: tuple[bool, bool, bool]) -> nl.NeighbourSpec:
    """A cell list with reach 1 on a 3x3x3 grid, capacities that cannot overflow."""
    candidates = GRID_NODES * GRID_NODES * 27  # every pair in every neighbouring image
    return nl.NeighbourSpec(
        CUTOFF, SKIN, pbc, (0, 0, 0), candidates, 8, GRID, (1, 1, 1), GRID_NODES
    )


def _spacings(cell: np.ndarray, pbc: tuple[bool, bool, bool]) -> np.ndarray:
    periodic = np.array(pbc)
    full = cell.copy()
    full[~periodic] = _complement_basis(cell[periodic])
    areas = np.linalg.norm(np.cross(full[[1, 2, 0]], full[[2, 0, 1]]), axis=-1)
    return abs(np.linalg.det(full)) / areas


# One compilation per pattern, then cheap examples: enough for each pattern to see cells that
# overflow and cells that do not.
@hypothesis.settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), pattern=st.sampled_from(list(PATTERNS)))
def test_cell_list_grid_on_random_triclinic_cells(seed, pattern):
    """A cell list with several bins along each vector: the host list as a set, or the
    overflow flag exactly when the cell is too thin for three bins of `cutoff + skin`."""
    rng = np.random.default_rng(seed)
    pbc = PATTERNS[pattern]
    scale = rng.uniform(7.0, 16.0)
    cell = np.diag(rng.uniform(0.8, 1.2, 3) * scale) + rng.uniform(-0.4, 0.4, (3, 3)) * scale
    assume(abs(np.linalg.det(cell)) > 0.3 * scale**3)
    positions = rng.uniform(-0.5, 1.5, (GRID_NODES, 3)) @ cell  # unwrapped
    if not any(pbc) and rng.uniform() < 0.5:
        cell = np.zeros((3, 3))
    thickness = _spacings(cell, pbc)[list(pbc)] / 3 / (CUTOFF + SKIN)
    assume(np.all(abs(thickness - 1.0) > 1e-3))  # float32 and float64 may disagree there
    neighbours = _device_build(jnp.asarray(positions), jnp.asarray(cell), _grid_spec(pbc))
    assert int(neighbours.occupancy) >= -(-GRID_NODES // 27)  # the atoms are in some bin
    if np.any(thickness < 1.0):
        assert bool(neighbours.overflow)
        return
    assert not bool(neighbours.overflow)
    host = neighbour_list(positions, cell, np.array(pbc), CUTOFF + SKIN, min_distance=None)
    count = int(neighbours.count)
    assert count == len(host[0])
    for device, expected in zip(
        (neighbours.senders, neighbours.receivers, neighbours.shifts), host, strict=True
    ):
        np.testing.assert_array_equal(device[:count], expected)  # the host's order too


def test_cell_list_overflow_is_flagged_for_bin_capacity_and_a_shrunk_cell():
    rng = np.random.default_rng(3)
    pbc = (True, True, True)
    cell = np.eye(3) * 10.5 + rng.uniform(-0.3, 0.3, (3, 3))  # plane spacings ~10.2-10.8 Å
    positions = rng.uniform(-0.2, 1.2, (60, 3)) @ cell
    spec = nl.allocate(positions, cell, pbc, CUTOFF, SKIN, search="cell_list")
    assert spec.bins == (3, 3, 3) and spec.reach == (1, 1, 1)
    host = _as_set(
        *neighbour_list(positions, cell, np.array(pbc), CUTOFF + SKIN, min_distance=None)
    )

    def device(x, c, s):
        neighbours = _device_build(jnp.asarray(x), jnp.asarray(c), s)
        count = int(neighbours.count)
        found = neighbours.senders[:count], neighbours.receivers[:count], neighbours.shifts[:count]
        return neighbours, _as_set(*found)

    neighbours, found = device(positions, cell, spec)
    assert not bool(neighbours.overflow) and found == host
    occupancy = int(neighbours.occupancy)
    assert occupancy <= spec.bin_capacity
    exact, found = device(positions, cell, spec._replace(bin_capacity=occupancy))
    assert not bool(exact.overflow) and found == host
    short = device(positions, cell, spec._replace(bin_capacity=occupancy - 1))[0]
    assert bool(short.overflow)
    regrown = nl.grow(spec, int(short.count), 0, occupancy=int(short.occupancy))
    assert regrown.bin_capacity >= occupancy
    # Compressed by 20%: three bins no longer span `cutoff + skin`; a new spec has two.
    squeezed_positions, squeezed_cell = 0.8 * positions, 0.8 * cell
    assert bool(device(squeezed_positions, squeezed_cell, spec)[0].overflow)
    smaller = nl.allocate(squeezed_positions, squeezed_cell, pbc, CUTOFF, SKIN, previous=spec)
    assert smaller.bins == (2, 2, 2)
    neighbours, found = device(squeezed_positions, squeezed_cell, smaller)
    squeezed_host = neighbour_list(
        squeezed_positions, squeezed_cell, np.array(pbc), CUTOFF + SKIN, min_distance=None
    )
    assert not bool(neighbours.overflow) and found == _as_set(*squeezed_host)
    # When the host sees no reason for an overflow, one more image or bin of reach is tried.
    assert nl.widen(spec).reach == (2, 2, 2) and nl.widen(spec).images == (2, 2, 2)


def test_auto_search_picks_the_cell_list_for_large_cells():
    small = bulk("Si", "diamond", a=5.43, cubic=True)
    large = small * (6, 6, 6)
    for atoms, cell_list in ((small, False), (large, True)):
        spec = nl.allocate(atoms.positions, atoms.cell.array, (True, True, True), 5.0, 1.0)
        assert (spec.bins is not None) is cell_list
    molecule = np.random.default_rng(0).uniform(0.0, 4.0, (9, 3))
    spec = nl.allocate(molecule, np.zeros((3, 3)), (False, False, False), 5.0, 1.0)
    assert spec.bins is None
    forced = nl.allocate(
        molecule, np.zeros((3, 3)), (False, False, False), 5.0, 1.0, search="cell_list"
    )
    assert forced.bins == (1, 1, 1) and forced.bin_capacity >= 9
    with pytest.raises(ValueError, match="search must be one of"):
        nl.allocate(molecule, np.zeros((3, 3)), (False, False, False), 5.0, 1.0, search="cells")
