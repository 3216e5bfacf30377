"""Atomic graphs: one pytree for a structure or a padded batch of structures.

A [`eqmlip.Graph`][] holds the atoms (nodes), the directed neighbour pairs within a cutoff
(edges, both directions), and per-structure data (graphs) of one structure or a batch of
structures, concatenated along each axis as in jraph. The data flow is

```
ase.Atoms -> neighbour list (host, NumPy) -> Graph (JAX arrays from here on)
          -> batch_graphs -> pad_graph -> model
```

A `Graph`'s fields are always JAX arrays: the constructor converts host (NumPy) inputs once.
[`eqmlip.data.GraphLoader`][] batches and pads many structures on the host and converts each
batch once, so that loading never runs as many tiny device operations.

Masks are explicit fields, so a batch without padding is never misread (mlip's `Graph` treats
the last graph of any multi-graph batch as padding). Unlike mlip's `Graph`, this one carries
only what a potential needs as input; targets (energies, forces, ...) live elsewhere.
"""

import dataclasses
import math
from collections.abc import Collection
from typing import Any

import ase
import ase.data
import equinox as eqx
import jax.numpy as jnp
import matscipy.neighbours
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Integer, Shaped

from ._arrays import _Arr, _host_value, _to_device
from ._errors import InputError
from ._species import check_species as check_species, species_index as species_index

# Real edges shorter than this (Å) are refused: coinciding atoms give a finite but meaningless
# energy. Far below any bond (H2: 0.74 Å), far above rounding noise.
MIN_DISTANCE = 0.1

_AXES = "abc"


# Up to this many (item, graph) pairs, each item's graph is counted by comparing its index
# with the running counts: one fused op, against the several small ops of `jnp.repeat`'s
# scan, which the small graphs' steps pay per call. Beyond it, the scan's linear cost wins.
_COMPARE_PAIRS = 1 << 18


def _owner_index(counts: Integer[Array, " graphs"], total: int) -> Int[Array, " {total}"]:
    """`jnp.repeat(arange(graphs), counts, total_repeat_length=total)`: the graph of each of
    `total` items when graph `g` owns the next `counts[g]` (the same output for any
    non-negative counts, whatever their sum)."""
    graphs = int(counts.shape[0])
    if graphs * total > _COMPARE_PAIRS:
        return jnp.repeat(jnp.arange(graphs), counts, total_repeat_length=total)
    ends = jnp.cumsum(counts)
    owner = jnp.sum(jnp.arange(total, dtype=ends.dtype)[:, None] >= ends[None, :], axis=1)
    return jnp.minimum(owner, graphs - 1)


class EdgeSet(eqx.Module):
    """A set of directed edges between the nodes of a [`eqmlip.Graph`][], beside its main
    edges (its long-range edges). Fields as the graph's edge fields: `senders`, `receivers`
    `[edges]`, `shifts` `[edges, 3]`, `n_edge` `[graphs]`, `edge_mask` `[edges]` (JAX arrays;
    NumPy inputs are converted once)."""

    senders: Int[Array, " edges"] = eqx.field(converter=_to_device)
    receivers: Int[Array, " edges"] = eqx.field(converter=_to_device)
    shifts: Float[Array, "edges 3"] = eqx.field(converter=_to_device)
    n_edge: Int[Array, " graphs"] = eqx.field(converter=_to_device)
    edge_mask: Bool[Array, " edges"] = eqx.field(converter=_to_device)

    def __check_init__(self):
        edges = self.senders.shape[0]
        for name in ("receivers", "shifts", "edge_mask"):
            if getattr(self, name).shape[:1] != (edges,):
                raise ValueError(
                    f"EdgeSet: {name} has shape {getattr(self, name).shape}, expected {edges} "
                    "rows (the number of senders)."
                )


class Graph(eqx.Module):
    """A structure, or a batch of structures, as a graph of atoms: Equinox counterpart of
    `mlip.graph.Graph` (the model inputs only).

    Sizes: `nodes` atoms, `edges` directed pairs, `graphs` structures. Edge `e` goes from
    `senders[e]` to `receivers[e]`; its vector is (ASE's sign convention, `D = pos[j] -
    pos[i] + S @ cell` for the pair `i -> j`)

    $$\\vec r_e = x_{r_e} - x_{s_e} + S_e \\cdot C_{g(e)}$$

    with the integer cell shift `S_e` and the cell `C` of the edge's graph `g(e)`.

    Batches are concatenations: the nodes, edges and graphs of the first structure, then those
    of the second, and so on, with `senders`/`receivers` offset to index the concatenated
    nodes. `n_node[g]` and `n_edge[g]` count the nodes and edges of graph `g` and always sum
    to the number of nodes and edges.

    **Padding convention** (see [`eqmlip.pad_graph`][]): padding nodes sit at the tail with
    position 0 and atomic number 0; padding edges are zero-length self-loops on the first
    padding node with shift 0; all padding nodes and edges belong to the first padding graph,
    and further padding graphs are empty; padding graphs have cell 0, `pbc` False, charge 0
    and `dataset_idx` 0. Masks are `False` on padding. A model must treat zero-length edges
    safely (a safe norm and a radial basis that is 0 at r = 0) and mask per-node outputs.

    **Fields** (JAX arrays; the constructor also takes NumPy arrays and converts them, in
    JAX's default precision: float64 under `jax_enable_x64`, else float32):

    - `positions`: `[nodes, 3]` Cartesian positions (Å).
    - `atomic_numbers`: `[nodes]` integer atomic numbers `Z` (0 on padding nodes).
    - `senders`, `receivers`: `[edges]` integer node indices of each directed edge.
    - `shifts`: `[edges, 3]` integer cell shifts `S`, stored as floats (0 for molecules).
    - `cell`: `[graphs, 3, 3]` lattice vectors as rows (0 where there is no cell).
    - `pbc`: `[graphs, 3]` periodicity along each lattice vector. A potential reports stress
        only where some direction is periodic (mlip instead divides by `det(cell)` replaced by
        1 for molecules, so its molecule "stress" is a virial in eV).
    - `n_node`, `n_edge`: `[graphs]` integer node and edge counts per graph.
    - `node_mask`, `edge_mask`, `graph_mask`: boolean, `True` on real entries.
    - `dataset_idx`: `[graphs]` integer dataset (readout head) of each graph.
    - `charge`: `[graphs]` integer total charge of each graph.
    - `long_range`: an optional second edge set between the same atoms (an
        [`eqmlip.graph.EdgeSet`][], e.g. the longer-cutoff edges of a Coulomb term; see
        [`eqmlip.Graph.with_long_range`][]), or `None`.

    Shapes are always checked; that `n_node` and `n_edge` sum to the numbers of nodes and
    edges is checked whenever their values are known (not under `jax.jit`).

    Build one with [`eqmlip.Graph.from_atoms`][], [`eqmlip.batch_graphs`][] and
    [`eqmlip.pad_graph`][], or pass every field to the constructor.
    """

    positions: Float[Array, "nodes 3"]
    atomic_numbers: Int[Array, " nodes"]
    senders: Int[Array, " edges"]
    receivers: Int[Array, " edges"]
    shifts: Float[Array, "edges 3"]
    cell: Float[Array, "graphs 3 3"]
    pbc: Bool[Array, "graphs 3"]
    n_node: Int[Array, " graphs"]
    n_edge: Int[Array, " graphs"]
    node_mask: Bool[Array, " nodes"]
    edge_mask: Bool[Array, " edges"]
    graph_mask: Bool[Array, " graphs"]
    dataset_idx: Int[Array, " graphs"]
    charge: Int[Array, " graphs"]
    long_range: EdgeSet | None

    def __init__(
        self,
        # Shaped, not Float/Int: the dtypes are checked below with a message naming the field.
        positions: Shaped[_Arr, "nodes 3"],
        atomic_numbers: Shaped[_Arr, " nodes"],
        senders: Shaped[_Arr, " edges"],
        receivers: Shaped[_Arr, " edges"],
        shifts: Shaped[_Arr, "edges 3"],
        cell: Shaped[_Arr, "graphs 3 3"],
        pbc: Bool[_Arr, "graphs 3"],
        n_node: Int[_Arr, " graphs"],
        n_edge: Int[_Arr, " graphs"],
        node_mask: Bool[_Arr, " nodes"],
        edge_mask: Bool[_Arr, " edges"],
        graph_mask: Bool[_Arr, " graphs"],
        dataset_idx: Int[_Arr, " graphs"],
        charge: Int[_Arr, " graphs"],
        long_range: EdgeSet | None = None,
    ):
        self.positions = _to_device(positions)
        self.atomic_numbers = _to_device(atomic_numbers)
        self.senders = _to_device(senders)
        self.receivers = _to_device(receivers)
        self.shifts = _to_device(shifts)
        self.cell = _to_device(cell)
        self.pbc = _to_device(pbc)
        self.n_node = _to_device(n_node)
        self.n_edge = _to_device(n_edge)
        self.node_mask = _to_device(node_mask)
        self.edge_mask = _to_device(edge_mask)
        self.graph_mask = _to_device(graph_mask)
        self.dataset_idx = _to_device(dataset_idx)
        self.charge = _to_device(charge)
        self.long_range = long_range
        self._check_shapes()
        # Counts are checked on the inputs as given, so that host inputs need no read-back
        # from the device; traced ones (under jit) cannot be checked.
        for name, counts, total, what in (
            ("n_node", n_node, self.num_nodes, "nodes"),
            ("n_edge", n_edge, self.num_edges, "edges"),
        ):
            values = _host_value(counts)
            if values is not None and int(values.sum()) != total:
                raise ValueError(
                    f"Graph: {name} sums to {int(values.sum())} but there are {total} {what}; "
                    f"every {what[:-1]}, padding included, must belong to a graph."
                )

    def _check_shapes(self) -> None:
        nodes, edges, graphs = self.num_nodes, self.num_edges, self.num_graphs
        expected = {
            "positions": (nodes, 3),
            "atomic_numbers": (nodes,),
            "senders": (edges,),
            "receivers": (edges,),
            "shifts": (edges, 3),
            "cell": (graphs, 3, 3),
            "pbc": (graphs, 3),
            "n_node": (graphs,),
            "n_edge": (graphs,),
            "node_mask": (nodes,),
            "edge_mask": (edges,),
            "graph_mask": (graphs,),
            "dataset_idx": (graphs,),
            "charge": (graphs,),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ValueError(
                    f"Graph: {name} has shape {actual}, expected {shape} for {nodes} nodes, "
                    f"{edges} edges and {graphs} graphs (sizes read from positions, senders "
                    "and n_node)."
                )
        for names, kind, what in (
            (("positions", "shifts", "cell"), "f", "a floating dtype (float32 or float64)"),
            (("atomic_numbers", "senders", "receivers", "n_node", "n_edge"), "iu", "integers"),
        ):
            for name in names:
                dtype = getattr(self, name).dtype
                if dtype.kind not in kind:
                    raise TypeError(
                        f"Graph: {name} has dtype {dtype}, expected {what}; convert it, e.g. "
                        f"{name}=np.asarray({name}, dtype=float)."
                        if kind == "f"
                        else f"Graph: {name} has dtype {dtype}, expected {what}."
                    )
        if self.long_range is not None and self.long_range.n_edge.shape != (graphs,):
            raise ValueError(
                f"Graph: long_range.n_edge has shape {self.long_range.n_edge.shape}, expected "
                f"({graphs},): the long-range edges must belong to this graph's {graphs} graphs."
            )

    @property
    def num_nodes(self) -> int:
        """The number of nodes, padding included (a static size)."""
        return int(np.shape(self.positions)[0])

    @property
    def num_edges(self) -> int:
        """The number of edges, padding included (a static size)."""
        return int(np.shape(self.senders)[0])

    @property
    def num_graphs(self) -> int:
        """The number of graphs, padding included (a static size)."""
        return int(np.shape(self.n_node)[0])

    def node_graph_index(self) -> Int[Array, " {self.num_nodes}"]:
        """The graph of each node: `[0]*n_node[0] + [1]*n_node[1] + ...`.

        Works under `jax.jit` (the output size is the static number of nodes).

        **Returns:** an integer array of shape `[nodes]`.
        """
        return _owner_index(self.n_node, self.num_nodes)

    def edge_graph_index(self) -> Int[Array, " {self.num_edges}"]:
        """The graph of each edge: `[0]*n_edge[0] + [1]*n_edge[1] + ...`.

        Works under `jax.jit` (the output size is the static number of edges).

        **Returns:** an integer array of shape `[edges]`.
        """
        return _owner_index(self.n_edge, self.num_edges)

    def edge_vectors(self, *, long_range: bool = False) -> Float[Array, "edges 3"]:
        """Edge vectors `pos[receivers] - pos[senders] + shifts @ cell[graph of edge]`.

        The sign convention is ASE's (`D` of `ase.neighborlist.neighbor_list`) and mlip's; the
        operations are mlip's (`pos[r] - (pos[s] - S @ C)`). Padding edges have length 0. A
        potential reads its geometry only through this method, so that replacing the graph's
        positions and cell (as [`eqmlip.potential.predict`][] does with strained copies)
        reaches every edge set.

        **Arguments:**

        - `long_range`: the vectors of the long-range edge set (`self.long_range`) instead of
            the main edges.

        **Returns:** an array of shape `[edges, 3]` in the dtype of the positions (shifts and
        cells are cast to it).
        """
        edges: Any = self
        if long_range:
            if self.long_range is None:
                raise ValueError(
                    "Graph.edge_vectors: long_range=True, but the graph has no long-range edges; "
                    "attach them with graph.with_long_range(long_range_graph)."
                )
            edges = self.long_range
        pos = self.positions
        dtype = pos.dtype
        shifts = edges.shifts.astype(dtype)
        num_edges = int(edges.senders.shape[0])
        edge_cell = self.cell.astype(dtype)[_owner_index(edges.n_edge, num_edges)]
        shift_vectors = jnp.einsum("ei,eij->ej", shifts, edge_cell)
        senders, receivers = edges.senders, edges.receivers
        return pos[receivers] - (pos[senders] - shift_vectors)

    def with_long_range(self, other: "Graph") -> "Graph":
        """This graph with `other`'s edges attached as its long-range edge set.

        Long-range terms (e.g. NequIP's Coulomb energy) need a second, longer-cutoff set of
        edges between the same atoms. Carrying it in the same graph means one replacement of
        positions and cell (the strain of [`eqmlip.potential.predict`][]) moves both edge sets.

        **Arguments:**

        - `other`: the same atoms (and padding: same node and graph counts, e.g. built with
            `Graph.from_atoms(atoms, long_range_cutoff)` and padded alike), whose edges are
            taken.

        **Returns:** a copy of this graph with `long_range` set.
        """
        if (other.num_nodes, other.num_graphs) != (self.num_nodes, self.num_graphs):
            raise ValueError(
                f"Graph.with_long_range: the long-range graph has {other.num_nodes} nodes and "
                f"{other.num_graphs} graphs, but this graph has {self.num_nodes} and "
                f"{self.num_graphs}; build both from the same atoms and pad them alike."
            )
        edges = EdgeSet(
            senders=other.senders,
            receivers=other.receivers,
            shifts=other.shifts,
            n_edge=other.n_edge,
            edge_mask=other.edge_mask,
        )
        return dataclasses.replace(self, long_range=edges)

    @classmethod
    def from_atoms(
        cls,
        atoms: ase.Atoms,
        cutoff: float,
        *,
        dataset_idx: int = 0,
        charge: int | None = None,
        min_distance: float | None = MIN_DISTANCE,
    ) -> "Graph":
        """Build the graph of one structure, with a neighbour list found on the host.

        Edges are all directed pairs `i -> j` (both directions) with `|D| < cutoff`, periodic
        images included (an atom's own images too, never the zero-shift self pair), as
        `ase.neighborlist.neighbor_list("ijS", atoms, cutoff)` gives them; they are found with
        [`eqmlip.graph.neighbour_list`][] and sorted by sender, then receiver, then shift.
        Replaces `mlip.graph.Graph.from_chemical_system`.

        **Arguments:**

        - `atoms`: an `ase.Atoms`. Molecules need no cell; periodic directions need a
            non-degenerate lattice vector; any cell size and shape works (cells smaller than the
            cutoff give several images of a pair).
        - `cutoff`: neighbour cutoff radius in Å, positive.
        - `dataset_idx`: dataset (readout head) of the structure.
        - `charge`: total charge; `None` reads `atoms.info["charge"]` (0 when absent), as
            mlip's readers do.
        - `min_distance`: two atoms closer than this (Å, default 0.1) raise a `ValueError`
            naming them (coinciding atoms); `None` skips the check.

        **Returns:** a `Graph` with one graph and no padding: JAX arrays, with positions,
        shifts and cell in JAX's default float dtype (float64 under `jax_enable_x64`, else
        float32) and int32 integers.
        """
        if not isinstance(atoms, ase.Atoms):
            raise TypeError(f"Graph.from_atoms: expected an ase.Atoms, got {type(atoms).__name__}.")
        positions = np.asarray(atoms.positions, dtype=np.float64)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        senders, receivers, shifts = neighbour_list(positions, cell, pbc, cutoff, min_distance=None)
        if min_distance is not None:
            close = (senders, receivers, shifts)
            if cutoff < min_distance:  # then the closest pairs may not be edges
                close = neighbour_list(positions, cell, pbc, min_distance, min_distance=None)
            check_min_distance(positions, cell, close, min_distance, "Graph.from_atoms")
        if charge is None:
            charge = atoms.info.get("charge", 0)
        charge_value = float(np.asarray(charge))
        if charge_value != round(charge_value):
            raise ValueError(
                f"Graph.from_atoms: the total charge must be an integer, got {charge}."
            )
        n, e = len(positions), len(senders)
        return cls(
            positions=positions,
            atomic_numbers=np.asarray(atoms.numbers, dtype=np.int32),
            senders=senders,
            receivers=receivers,
            shifts=shifts,
            cell=cell[None],
            pbc=pbc[None],
            n_node=np.array([n], dtype=np.int32),
            n_edge=np.array([e], dtype=np.int32),
            node_mask=np.ones(n, dtype=bool),
            edge_mask=np.ones(e, dtype=bool),
            graph_mask=np.ones(1, dtype=bool),
            dataset_idx=np.array([dataset_idx], dtype=np.int32),
            charge=np.array([round(charge_value)], dtype=np.int32),
        )


def _complement_basis(periodic: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning the orthogonal complement of the rows of `periodic`."""
    if len(periodic) == 0:
        return np.eye(3)
    _, _, vt = np.linalg.svd(periodic)
    return vt[len(periodic) :]


def check_periodic_cell(
    cell: Float[np.ndarray, "3 3"], pbc: Bool[np.ndarray, "3"], caller: str
) -> None:
    """Refuse a periodic direction whose lattice vector is zero, or periodic lattice vectors
    that are linearly dependent: either would give atoms infinitely many images at a finite
    distance (or a zero volume) instead of a lattice."""
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    lengths = np.linalg.norm(cell, axis=-1)
    for axis in np.flatnonzero(pbc):
        if not lengths[axis] > 0:
            raise InputError(
                f"{caller}: pbc is True along lattice vector {_AXES[axis]} (direction {axis}) "
                f"but that vector is zero (cell {cell.tolist()}); give it a length, or set pbc "
                f"False along it."
            )
    periodic = cell[pbc]
    scale = float(lengths[pbc].max()) if len(periodic) else 1.0
    if len(periodic) and np.linalg.matrix_rank(periodic, tol=1e-8 * scale) < len(periodic):
        names = ", ".join(_AXES[a] for a in np.flatnonzero(pbc))
        raise InputError(
            f"{caller}: the periodic lattice vectors {names} ({periodic.tolist()}, pbc "
            f"{pbc.tolist()}) are linearly dependent; give the periodic directions independent "
            "lattice vectors."
        )


def check_min_distance(
    positions: Float[np.ndarray, "nodes 3"],
    cell: Float[np.ndarray, "3 3"],
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    min_distance: float,
    caller: str,
) -> None:
    """Refuse edges `(senders, receivers, shifts)` shorter than `min_distance` (Å), naming the
    closest pair."""
    senders, receivers, shifts = edges
    if not len(senders):
        return
    vectors = positions[receivers] - positions[senders] + shifts @ cell
    lengths = np.linalg.norm(vectors, axis=-1)
    closest = int(np.argmin(lengths))
    if lengths[closest] < min_distance:
        i, j, shift = int(senders[closest]), int(receivers[closest]), shifts[closest]
        image = "" if not np.any(shift) else f" (periodic image {shift.astype(int).tolist()})"
        raise InputError(
            f"{caller}: atoms {i} and {j}{image} are {lengths[closest]:.4g} Å apart, closer "
            f"than min_distance {min_distance} Å: coinciding atoms give a meaningless energy. "
            "Remove the duplicate atom, or lower min_distance if the geometry is intended."
        )


def neighbour_list(
    positions: Float[np.ndarray, "nodes 3"],
    cell: Float[np.ndarray, "3 3"],
    pbc: Bool[np.ndarray, "3"],
    cutoff: float,
    *,
    min_distance: float | None = MIN_DISTANCE,
) -> tuple[Int[np.ndarray, " edges"], Int[np.ndarray, " edges"], Float[np.ndarray, "edges 3"]]:
    """All directed pairs `i -> j` with `|pos[j] - pos[i] + S @ cell| < cutoff`, with matscipy.

    Same edges as `ase.neighborlist.neighbor_list("ijS", ...)` (periodic self-images kept, the
    zero-shift self pair dropped), much faster. matscipy needs a non-singular cell covering the
    atoms, and fails on molecules without a cell (`LinAlgError`) or that are flat (a `SIGABRT`
    in C, which cannot be caught). So each non-periodic lattice direction is replaced by a
    direction orthogonal to the periodic ones, long enough to hold every atom with a margin of
    `2 * cutoff` on each side (a padded bounding box for molecules). The edges do not depend on
    that choice, since shifts along non-periodic directions are 0.

    **Arguments:**

    - `positions`: `[nodes, 3]` Cartesian positions (need not be wrapped into the cell).
    - `cell`: `[3, 3]` lattice vectors as rows; only the periodic ones are used, and each
        must be non-zero, and together linearly independent.
    - `pbc`: `[3]` periodicity along each lattice vector.
    - `cutoff`: cutoff radius, positive and finite.
    - `min_distance`: an edge shorter than this (Å; default `MIN_DISTANCE`, 0.1) raises a
        `ValueError` naming the two atoms, since coinciding atoms give a meaningless energy;
        `None` skips the check.

    **Returns:** `(senders, receivers, shifts)`: int32 `[edges]`, int32 `[edges]` and float64
    `[edges, 3]` (integer values), sorted by sender, receiver, then shift.
    """
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise InputError(f"neighbour_list: cutoff must be positive and finite, got {cutoff}.")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    bad = np.argwhere(~np.isfinite(positions))
    if len(bad):
        raise InputError(
            f"neighbour_list: the position of atom {int(bad[0][0])} is "
            f"{positions[bad[0][0]].tolist()}; positions must be finite."
        )
    if not np.all(np.isfinite(cell[pbc])):
        raise InputError(
            f"neighbour_list: the periodic lattice vectors must be finite, got {cell.tolist()}."
        )
    if len(positions) == 0:
        empty = np.zeros(0, dtype=np.int32)
        return empty, empty, np.zeros((0, 3))

    check_periodic_cell(cell, pbc, "neighbour_list")
    periodic = cell[pbc]
    work_cell = cell.copy()
    origin = np.zeros(3)
    axes = np.flatnonzero(~pbc)
    for axis, direction in zip(axes, _complement_basis(periodic), strict=True):
        projection = positions @ direction
        low, high = float(projection.min()), float(projection.max())
        work_cell[axis] = direction * (high - low + 4.0 * cutoff)
        origin += direction * (low - 2.0 * cutoff)

    i, j, s = matscipy.neighbours.neighbour_list(
        "ijS",
        positions=positions,
        cell=np.ascontiguousarray(work_cell),
        pbc=pbc,
        cutoff=cutoff,
        cell_origin=origin,
    )
    shifts = np.asarray(s, dtype=np.int64)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    edges = (
        np.asarray(i, dtype=np.int32)[order],
        np.asarray(j, dtype=np.int32)[order],
        shifts[order].astype(np.float64),
    )
    if min_distance is not None:
        check_min_distance(positions, cell, edges, min_distance, "neighbour_list")
    return edges


_FIELDS = (
    "positions",
    "atomic_numbers",
    "senders",
    "receivers",
    "shifts",
    "cell",
    "pbc",
    "n_node",
    "n_edge",
    "node_mask",
    "edge_mask",
    "graph_mask",
    "dataset_idx",
    "charge",
)


def _refuse_long_range(graphs: Collection[Graph], caller: str) -> None:
    # Long-range edges would need the same offsets and padding; attach them afterwards instead
    # of dropping them here without a word.
    if any(g.long_range is not None for g in graphs):
        raise ValueError(
            f"{caller}: a graph carries long-range edges; batch and pad the short- and "
            "long-range graphs separately, then attach with graph.with_long_range(...)."
        )


def batch_graphs(graphs: Collection[Graph]) -> Graph:
    """Concatenate graphs into one batch, offsetting `senders` and `receivers`.

    Masks are concatenated too, so padded inputs stay padded (their padding is then no longer
    at the tail). Runs in `jax.numpy` (also under `jax.jit`); to batch many structures per
    step, [`eqmlip.data.GraphLoader`][] concatenates on the host instead and converts once.
    Replaces `mlip.graph.batching_helpers.batch_graphs`.

    **Arguments:**

    - `graphs`: a non-empty sequence of `Graph`s.

    **Returns:** a `Graph` whose `n_node`, `n_edge` and per-graph fields are those of the
    inputs, in order.
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("batch_graphs: got no graphs; pass at least one Graph.")
    for g in graphs:
        if not isinstance(g, Graph):
            raise TypeError(f"batch_graphs: expected Graphs, got {type(g).__name__}.")
    _refuse_long_range(graphs, "batch_graphs")
    offsets = np.cumsum([0] + [g.num_nodes for g in graphs[:-1]]).tolist()
    fields: dict[str, Any] = {
        name: jnp.concatenate([getattr(g, name) for g in graphs], axis=0)
        for name in _FIELDS
        if name not in ("senders", "receivers")
    }
    for name in ("senders", "receivers"):
        fields[name] = jnp.concatenate(
            [getattr(g, name) + o for g, o in zip(graphs, offsets, strict=True)], axis=0
        )
    return Graph(**fields)


def _padding_sizes(
    sizes: tuple[int, int, int], n_node: int, n_edge: int, n_graph: int
) -> tuple[int, int, int]:
    """The numbers of padding nodes, edges and graphs that reach a budget (see `pad_graph`),
    or a `ValueError` saying why the budget cannot hold the graph."""
    nodes, edges, graphs = sizes
    too_small = [
        f"{name}={budget} < {have} {what}"
        for name, budget, have, what in (
            ("n_node", n_node, nodes, "nodes"),
            ("n_edge", n_edge, edges, "edges"),
            ("n_graph", n_graph, graphs, "graphs"),
        )
        if budget < have
    ]
    if too_small:
        raise ValueError(
            "pad_graph: the budget is too small for the graph: "
            + ", ".join(too_small)
            + f". Need n_node >= {nodes}, n_edge >= {edges}, n_graph >= {graphs}."
        )
    pad_nodes, pad_edges, pad_graphs = n_node - nodes, n_edge - edges, n_graph - graphs
    if pad_edges > 0 and pad_nodes == 0:
        raise ValueError(
            f"pad_graph: n_node={n_node} leaves no padding node to hold the {pad_edges} padding "
            f"edges (self-loops on a padding node); need n_node >= {nodes + 1}."
        )
    if pad_nodes > 0 and pad_graphs == 0:
        raise ValueError(
            f"pad_graph: n_graph={n_graph} leaves no padding graph to hold the {pad_nodes} "
            f"padding nodes; need n_graph >= {graphs + 1}."
        )
    return pad_nodes, pad_edges, pad_graphs


def _padding(nodes: int, pads: tuple[int, int, int], dtypes: dict) -> dict:
    """The padding appended to each field of a graph with `nodes` nodes: `{field: NumPy
    constant}` given `{field: dtype}`. The one statement of the padding convention, for
    `pad_graph` and the host-side batching of `eqmlip.data`. (Plain `dict` hints: the runtime
    checker samples the items of parametrised ones with `random`, which Hypothesis forbids
    while drawing.)"""
    pad_nodes, pad_edges, pad_graphs = pads

    def like(name: str, shape: Collection[int], value: int | bool = 0) -> np.ndarray:
        return np.full(tuple(shape), value, dtype=dtypes[name])

    counts_node = [pad_nodes] + [0] * (pad_graphs - 1) if pad_graphs else []
    counts_edge = [pad_edges] + [0] * (pad_graphs - 1) if pad_graphs else []
    return {
        "positions": like("positions", (pad_nodes, 3)),
        "atomic_numbers": like("atomic_numbers", (pad_nodes,)),
        "senders": like("senders", (pad_edges,), nodes),
        "receivers": like("receivers", (pad_edges,), nodes),
        "shifts": like("shifts", (pad_edges, 3)),
        "cell": like("cell", (pad_graphs, 3, 3)),
        "pbc": like("pbc", (pad_graphs, 3), False),
        "n_node": np.asarray(counts_node, dtype=dtypes["n_node"]),
        "n_edge": np.asarray(counts_edge, dtype=dtypes["n_edge"]),
        "node_mask": like("node_mask", (pad_nodes,), False),
        "edge_mask": like("edge_mask", (pad_edges,), False),
        "graph_mask": like("graph_mask", (pad_graphs,), False),
        "dataset_idx": like("dataset_idx", (pad_graphs,)),
        "charge": like("charge", (pad_graphs,)),
    }


def pad_graph(graph: Graph, n_node: int, n_edge: int, n_graph: int) -> Graph:
    """Pad a graph (or batch) to fixed sizes, so that one compiled model serves every batch.

    Appends `n_node - nodes` padding nodes (position 0, atomic number 0), `n_edge - edges`
    padding edges (zero-length self-loops on the first padding node, shift 0) and
    `n_graph - graphs` padding graphs (cell 0, `pbc` False, charge 0, `dataset_idx` 0). The
    first padding graph owns every padding node and edge; the others are empty. Masks are
    `False` on padding. Padding edges and nodes therefore need at least one padding node and
    one padding graph: `n_node >= nodes + 1` when `n_edge > edges`, and `n_graph >= graphs + 1`
    when `n_node > nodes`. Equal sizes return an unpadded copy with all masks `True`.

    Runs in `jax.numpy` (also under `jax.jit`, the sizes being static); a graph of NumPy
    arrays is padded in NumPy. Replaces
    `mlip.graph.batching_helpers.pad_with_graphs`, which always adds a padding graph and
    leaves masks implicit.

    **Arguments:**

    - `graph`: the `Graph` to pad.
    - `n_node`, `n_edge`, `n_graph`: the padded sizes (budgets).

    **Returns:** a `Graph` with exactly `n_node` nodes, `n_edge` edges and `n_graph` graphs.
    """
    _refuse_long_range([graph], "pad_graph")
    sizes = (graph.num_nodes, graph.num_edges, graph.num_graphs)
    pads = _padding_sizes(sizes, n_node, n_edge, n_graph)
    current = {name: getattr(graph, name) for name in _FIELDS}
    padding = _padding(graph.num_nodes, pads, {k: v.dtype for k, v in current.items()})
    # NumPy fields (a host graph, e.g. from `Graph.from_atoms`) are padded on the host: an
    # eager `jnp.concatenate` compiles once per new edge count, i.e. on most MD steps.
    xp: Any = np if all(isinstance(v, np.ndarray) for v in current.values()) else jnp
    fields: dict[str, Any] = {
        name: xp.concatenate([current[name], padding[name]], axis=0) for name in _FIELDS
    }
    return Graph(**fields)
