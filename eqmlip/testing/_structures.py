"""Hypothesis strategies for atomic structures (`ase.Atoms`) and their graphs."""

import functools
import math
from collections.abc import Collection
from typing import Any

import ase
import hypothesis.strategies as st
import numpy as np
from hypothesis.strategies import SearchStrategy
from jaxtyping import Float, Int

from ..graph import Graph, check_species, neighbour_list, pad_graph
from ._rotations import rotations


def full_repr(atoms: ase.Atoms) -> str:
    """`ase.Atoms(numbers=..., positions=..., cell=..., pbc=...)`: evaluates back to `atoms`."""

    def listed(x: np.ndarray) -> str:
        return repr(np.asarray(x).tolist())

    return (
        f"ase.Atoms(numbers={listed(atoms.numbers)}, positions={listed(atoms.positions)}, "
        f"cell={listed(atoms.cell.array)}, pbc={listed(atoms.pbc)})"
    )


class DrawnAtoms(ase.Atoms):
    """`ase.Atoms` whose repr is the full structure, so that a failing example reproduces.

    Hypothesis prints failing examples with `repr`; ASE's own repr omits the positions.
    """

    def __repr__(self) -> str:
        return full_repr(self)


# Helpers called while Hypothesis draws take NumPy arrays and scalars only: the runtime type
# checker samples the items of variadic container hints with `random`, which Hypothesis forbids
# there.


def _check_common(
    name: str,
    species: Collection[int],
    min_atoms: int,
    max_atoms: int,
    min_distance: float,
    sizes: Collection[int] | None,
) -> tuple:
    """The species to draw from and the numbers of atoms (a range, or the given sizes)."""
    # Any order and repeats are fine to draw from; the elements themselves must exist.
    values = check_species(sorted({int(z) for z in species}), caller=name)
    if not (math.isfinite(min_distance) and min_distance > 0):
        raise ValueError(f"{name}: min_distance must be positive and finite, got {min_distance}.")
    if sizes is not None:
        if isinstance(sizes, str | bytes) or not all(
            isinstance(k, int | np.integer) and not isinstance(k, bool) and k >= 1 for k in sizes
        ):
            raise ValueError(
                f"{name}: sizes must be positive integers (numbers of atoms), got {sizes!r}."
            )
        counts = tuple(sorted({int(k) for k in sizes}))
        if not counts:
            raise ValueError(
                f"{name}: sizes must name at least one number of atoms, got {sizes!r}."
            )
        return values, counts
    if not 1 <= min_atoms <= max_atoms:
        raise ValueError(
            f"{name}: need 1 <= min_atoms <= max_atoms, got min_atoms={min_atoms}, "
            f"max_atoms={max_atoms}."
        )
    return values, tuple(range(min_atoms, max_atoms + 1))


def _count(counts: Any) -> SearchStrategy[int]:
    # A range shrinks as integers do; a few buckets are sampled (and shrink to the smallest).
    if counts == tuple(range(counts[0], counts[-1] + 1)):
        return st.integers(counts[0], counts[-1])
    return st.sampled_from(counts)


def _grid_site(index: int, side: int) -> Int[np.ndarray, "3"]:
    return np.array([index % side, (index // side) % side, index // (side * side)])


@st.composite
def _molecule(draw: Any, species: Any, counts: Any, min_distance: float, rotate: bool) -> ase.Atoms:
    n = draw(_count(counts))
    max_atoms = counts[-1]
    side = math.ceil(max_atoms ** (1 / 3)) + 1
    sites = draw(st.lists(st.integers(0, side**3 - 1), min_size=n, max_size=n, unique=True))
    # Sites `spacing` apart, each moved by at most `jitter` per coordinate: two atoms stay at
    # least spacing - 2 * sqrt(3) * jitter = min_distance (times 1.001) apart.
    spacing = 1.5 * min_distance
    jitter = (spacing - 1.001 * min_distance) / (2.0 * math.sqrt(3.0))
    unit = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    offsets = np.array(draw(st.lists(st.tuples(unit, unit, unit), min_size=n, max_size=n)))
    positions = spacing * np.array([_grid_site(s, side) for s in sites], dtype=np.float64)
    positions = positions + jitter * offsets.reshape(n, 3)
    if rotate:
        positions = positions @ draw(rotations()).T
    numbers = draw(st.lists(st.sampled_from(species), min_size=n, max_size=n))
    return DrawnAtoms(numbers=numbers, positions=positions)


def molecules(
    species: Collection[int] = (1, 6, 7, 8),
    *,
    min_atoms: int = 2,
    max_atoms: int = 6,
    min_distance: float = 0.9,
    rotate: bool = True,
    sizes: Collection[int] | None = None,
) -> SearchStrategy[ase.Atoms]:
    """A strategy for molecules: `ase.Atoms` without cell or periodicity.

    Atoms sit on the sites of a cubic grid (spacing `1.5 * min_distance`), each moved by a small
    jitter, so any two atoms are at least `min_distance` apart; the molecule is then rotated.
    Hypothesis shrinks towards atoms on a line along the x axis with no jitter: exactly
    collinear and flat molecules, which neighbour-list libraries get wrong (matscipy fails on
    them without a cell).

    **Arguments:**

    - `species`: atomic numbers to draw from.
    - `min_atoms`, `max_atoms`: bounds on the number of atoms (`1 <= min_atoms <= max_atoms`).
    - `min_distance`: smallest distance between two atoms (Å).
    - `rotate`: apply a random rotation (drawn by [`eqmlip.testing.rotations`][]).
    - `sizes`: the numbers of atoms to draw from, e.g. `(2, 4, 8)`, instead of every number
        from `min_atoms` to `max_atoms`: a few sizes (buckets) mean a few shapes, hence a few
        compilations of a jitted function for all examples, instead of one per size.

    **Returns:** a `SearchStrategy[ase.Atoms]` (a subclass whose `repr`, which Hypothesis
    prints for a failing example, lists numbers, positions, cell and pbc in full).

    **Example:**

    ```python
    import hypothesis
    import numpy as np
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.molecules(species=(1, 8), max_atoms=4))
    def test_atoms_are_apart(atoms):
        d = atoms.get_all_distances()
        assert (d[np.triu_indices(len(atoms), 1)] >= 0.9).all()
    ```
    """
    values, counts = _check_common("molecules", species, min_atoms, max_atoms, min_distance, sizes)
    return _molecule(values, counts, float(min_distance), rotate)


def _cell_from_parameters(
    lengths: Float[np.ndarray, "3"], angles: Float[np.ndarray, "3"]
) -> Float[np.ndarray, "3 3"]:
    """Lattice vectors (rows) from lengths `a, b, c` and angles `alpha, beta, gamma` (degrees)."""
    a, b, c = lengths
    cos_alpha, cos_beta, cos_gamma = np.cos(np.radians(angles))
    sin_gamma = np.sin(np.radians(angles[2]))
    cy = (cos_alpha - cos_beta * cos_gamma) / sin_gamma
    cz = math.sqrt(max(1.0 - cos_beta**2 - cy**2, 0.0))
    return np.array(
        [
            [a, 0.0, 0.0],
            [b * cos_gamma, b * sin_gamma, 0.0],
            [c * cos_beta, c * cy, c * cz],
        ]
    )


def _closest_pair(
    positions: Float[np.ndarray, "n 3"], cell: Float[np.ndarray, "3 3"], pbc: Any, cutoff: float
) -> float:
    """The smallest distance between two atoms, periodic images included (inf if >= cutoff)."""
    senders, receivers, shifts = neighbour_list(positions, cell, np.asarray(pbc), cutoff)
    if len(senders) == 0:
        return math.inf
    vectors = positions[receivers] - positions[senders] + shifts @ cell
    return float(np.min(np.linalg.norm(vectors, axis=-1)))


@st.composite
def _crystal(
    draw: Any,
    species: Any,
    counts: Any,
    min_distance: float,
    min_length: float,
    max_length: float,
    triclinic: bool,
    pbc: Any,
) -> ase.Atoms:
    length = st.floats(min_length, max_length, allow_nan=False, allow_infinity=False)
    lengths = np.array([draw(length) for _ in range(3)], dtype=np.float64)
    if triclinic:
        # Angles in [70, 110] degrees always give a valid cell (each angle is smaller than the
        # sum of the other two, and the three add up to less than 360).
        angle = st.one_of(st.just(90.0), st.floats(70.0, 110.0, allow_nan=False))
        angles = np.array([draw(angle) for _ in range(3)], dtype=np.float64)
    else:
        angles = np.full(3, 90.0)
    cell = _cell_from_parameters(lengths, angles)

    n = draw(_count(counts))
    side = math.ceil(counts[-1] ** (1 / 3))
    sites = draw(st.lists(st.integers(0, side**3 - 1), min_size=n, max_size=n, unique=True))
    unit = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    offsets = np.array(draw(st.lists(st.tuples(unit, unit, unit), min_size=n, max_size=n)))
    # Distinct fractional positions inside the cell: grid cells of width 1/side, jitter < 1/4 of it.
    grid = np.array([_grid_site(s, side) for s in sites], dtype=np.float64)
    fractional = (grid + 0.5 + 0.2 * offsets.reshape(n, 3)) / side
    positions = fractional @ cell
    # Scaling the cell (atoms fixed in fractional coordinates) scales every distance, periodic
    # images included; scale up when two atoms, or an atom and its image, are too close.
    closest = _closest_pair(positions, cell, pbc, min_distance)
    if closest < min_distance:
        factor = 1.001 * min_distance / closest
        cell, positions = cell * factor, positions * factor
    numbers = draw(st.lists(st.sampled_from(species), min_size=n, max_size=n))
    return DrawnAtoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)


def crystals(
    species: Collection[int] = (1, 6, 7, 8),
    *,
    min_atoms: int = 1,
    max_atoms: int = 4,
    min_distance: float = 0.9,
    min_length: float = 1.5,
    max_length: float = 5.0,
    triclinic: bool = True,
    pbc: tuple[bool, bool, bool] = (True, True, True),
    sizes: Collection[int] | None = None,
) -> SearchStrategy[ase.Atoms]:
    """A strategy for periodic structures: `ase.Atoms` with a random cell.

    Lattice lengths are drawn in `[min_length, max_length]` and, with `triclinic`, angles in
    `[70, 110]` degrees (90 is tried first, so Hypothesis shrinks towards orthorhombic cells).
    Atoms get distinct fractional positions inside the cell, and the whole cell is scaled up
    when needed so that no two atoms, and no atom and a periodic image of any atom (itself
    included), are closer than `min_distance`. Small cells are the point: with the default
    lengths a cutoff of a few Å reaches several images, the case neighbour lists get wrong.

    **Arguments:**

    - `species`: atomic numbers to draw from.
    - `min_atoms`, `max_atoms`: bounds on the number of atoms (`1 <= min_atoms <= max_atoms`).
    - `min_distance`: smallest distance between atoms, periodic images included (Å).
    - `min_length`, `max_length`: bounds on the drawn lattice lengths (Å), before any scaling.
    - `triclinic`: draw angles other than 90 degrees.
    - `pbc`: periodicity along each lattice vector (e.g. `(True, True, False)` for slabs).
    - `sizes`: the numbers of atoms to draw from, e.g. `(1, 2, 4)`, instead of every number
        from `min_atoms` to `max_atoms`, so that examples share a few compiled shapes (see
        also `buckets` of [`eqmlip.testing.graphs`][], which pads the neighbour lists too).

    **Returns:** a `SearchStrategy[ase.Atoms]` (a subclass whose `repr`, which Hypothesis
    prints for a failing example, lists numbers, positions, cell and pbc in full).

    **Example:**

    ```python
    import hypothesis
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.crystals(max_atoms=2))
    def test_cell_has_volume(atoms):
        assert atoms.get_volume() > 0
    ```
    """
    values, counts = _check_common("crystals", species, min_atoms, max_atoms, min_distance, sizes)
    if not 0 < min_length <= max_length < math.inf:
        raise ValueError(
            "crystals: need 0 < min_length <= max_length (finite), got "
            f"min_length={min_length}, max_length={max_length}."
        )
    pbc = (bool(pbc[0]), bool(pbc[1]), bool(pbc[2]))
    return _crystal(
        values,
        counts,
        float(min_distance),
        float(min_length),
        float(max_length),
        triclinic,
        pbc,
    )


def bucket(size: int, smallest: int) -> int:
    """The smallest `smallest * 2**k` (k >= 0) that is at least `size`."""
    return smallest * 2 ** max(0, math.ceil(math.log2(max(size, 1) / smallest)))


def pad_to_bucket(graph: Graph, node_multiple: int, edge_multiple: int) -> Graph:
    """`graph` padded to bucketed sizes (room for one padding node and graph), see `graphs`."""
    nodes = bucket(int(graph.positions.shape[0]) + 1, node_multiple)
    edges = bucket(int(graph.senders.shape[0]) + 1, edge_multiple)
    return pad_graph(graph, nodes, edges, int(graph.cell.shape[0]) + 1)


def _graph_of(cutoff: float, dataset_idx: int, buckets: Any, atoms: ase.Atoms) -> Graph:
    graph = Graph.from_atoms(atoms, cutoff, dataset_idx=dataset_idx)
    return graph if buckets is None else pad_to_bucket(graph, *buckets)


def graphs(
    structures: SearchStrategy[ase.Atoms],
    cutoff: float,
    *,
    dataset_idx: int = 0,
    buckets: tuple[int, int] | None = None,
) -> SearchStrategy[Graph]:
    """A strategy for [`eqmlip.Graph`][]s: the graphs of drawn structures.

    **Arguments:**

    - `structures`: a strategy for `ase.Atoms`, such as [`eqmlip.testing.molecules`][] or
        [`eqmlip.testing.crystals`][].
    - `cutoff`: neighbour cutoff radius (Å), positive.
    - `dataset_idx`: the dataset index stored in each graph.
    - `buckets`: `None` for unpadded graphs, or `(node_multiple, edge_multiple)`: pad every
        graph with [`eqmlip.pad_graph`][] to `node_multiple * 2**k` nodes and `edge_multiple *
        2**k'` edges (the smallest that leave room for a padding node and edge) and one padding
        graph, so that the drawn graphs share a few shapes, hence a few compilations of a jitted
        model, instead of one per example.

    **Returns:** a `SearchStrategy[Graph]` of single-structure graphs (padded with `buckets`),
    in JAX's default precision while Hypothesis draws (float32 unless `jax_enable_x64` is on
    then). Batch and pad them yourself with [`eqmlip.batch_graphs`][] and
    [`eqmlip.pad_graph`][].

    **Example:**

    ```python
    import hypothesis
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.graphs(testing.crystals(max_atoms=2), cutoff=3.0))
    def test_edges_come_in_pairs(graph):
        assert graph.num_edges % 2 == 0
    ```
    """
    if not isinstance(structures, SearchStrategy):
        raise TypeError(
            f"graphs: structures must be a Hypothesis strategy, got {type(structures).__name__}."
        )
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"graphs: cutoff must be positive and finite, got {cutoff}.")
    if buckets is not None:
        if len(buckets) != 2 or min(int(b) for b in buckets) < 1:
            raise ValueError(
                "graphs: buckets must be (node_multiple, edge_multiple), two positive ints, "
                f"got {buckets!r}."
            )
        buckets = (int(buckets[0]), int(buckets[1]))
    return structures.map(functools.partial(_graph_of, float(cutoff), int(dataset_idx), buckets))
