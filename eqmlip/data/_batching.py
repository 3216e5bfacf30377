"""Static-shape batches: structures packed to node/edge/graph budgets, padded to a few buckets."""

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import numpy as np
from jaxtyping import Array, Bool, Float

from ..graph import _FIELDS, Graph, _Arr, _padding, _padding_sizes, _to_device
from ._structure import Structure, _host_fields, _neighbours


class Budget(NamedTuple):
    """Padded sizes of a batch: nodes, edges and graphs (padding included)."""

    n_node: int
    n_edge: int
    n_graph: int


class Batch(eqx.Module):
    """A padded batch of structures: the model input and the targets, with masks.

    Targets that a structure lacks, and all targets of padding graphs and nodes, are stored as
    0 with a `False` mask, never NaN, so that masked losses stay finite. Fields are JAX arrays
    (the constructor converts NumPy inputs, as [`eqmlip.Graph`][] does);
    [`eqmlip.data.GraphLoader`][] builds each batch on the host and converts it once.

    **Fields:**

    - `graph`: the padded [`eqmlip.Graph`][] (`graph.graph_mask` marks real structures).
    - `energy`: `[graphs]` total energies (eV).
    - `forces`: `[nodes, 3]` forces (eV/Å).
    - `stress`: `[graphs, 3, 3]` stresses (eV/Å³, ASE's sign convention).
    - `weight`: `[graphs]` structure weights (0 on padding graphs).
    - `has_energy`, `has_forces`, `has_stress`: `[graphs]` booleans, `True` where a real
        structure has that target. Per-node force masks are
        `has_forces[graph.node_graph_index()] & graph.node_mask`.
    """

    graph: Graph
    energy: Float[Array, " graphs"]
    forces: Float[Array, "nodes 3"]
    stress: Float[Array, "graphs 3 3"]
    weight: Float[Array, " graphs"]
    has_energy: Bool[Array, " graphs"]
    has_forces: Bool[Array, " graphs"]
    has_stress: Bool[Array, " graphs"]

    def __init__(
        self,
        graph: Graph,
        energy: Float[_Arr, " graphs"],
        forces: Float[_Arr, "nodes 3"],
        stress: Float[_Arr, "graphs 3 3"],
        weight: Float[_Arr, " graphs"],
        has_energy: Bool[_Arr, " graphs"],
        has_forces: Bool[_Arr, " graphs"],
        has_stress: Bool[_Arr, " graphs"],
    ):
        self.graph = graph
        self.energy = _to_device(energy)
        self.forces = _to_device(forces)
        self.stress = _to_device(stress)
        self.weight = _to_device(weight)
        self.has_energy = _to_device(has_energy)
        self.has_forces = _to_device(has_forces)
        self.has_stress = _to_device(has_stress)

    def __check_init__(self):
        nodes, graphs = self.graph.num_nodes, self.graph.num_graphs
        expected = {
            "energy": (graphs,),
            "forces": (nodes, 3),
            "stress": (graphs, 3, 3),
            "weight": (graphs,),
            "has_energy": (graphs,),
            "has_forces": (graphs,),
            "has_stress": (graphs,),
        }
        for name, shape in expected.items():
            actual = tuple(np.shape(getattr(self, name)))
            if actual != shape:
                raise ValueError(
                    f"Batch: {name} has shape {actual}, expected {shape} for a graph with "
                    f"{nodes} nodes and {graphs} graphs."
                )

    @property
    def budget(self) -> Budget:
        """The padded sizes of this batch."""
        g = self.graph
        return Budget(g.num_nodes, g.num_edges, g.num_graphs)


def _host_batch(
    structures: Sequence[Structure], fields: Sequence[Mapping[str, np.ndarray]], budget: Budget
) -> Batch:
    """The batch of structures whose host graph fields are `fields`, concatenated and padded
    on the host (NumPy), then converted to JAX arrays once, one transfer per field."""
    if len(structures) != len(fields) or not structures:
        raise ValueError(
            f"make_batch: got {len(structures)} structures and {len(fields)} graphs; need the "
            "same non-zero number."
        )
    nodes = [len(f["positions"]) for f in fields]
    for k, s in enumerate(structures):
        if s.num_atoms != nodes[k]:
            raise ValueError(
                f"make_batch: structure {k} has {s.num_atoms} atoms but its graph has "
                f"{nodes[k]} nodes."
            )
    offsets = np.cumsum([0] + nodes[:-1]).tolist()
    sizes = (
        sum(nodes),
        sum(len(f["senders"]) for f in fields),
        sum(len(f["n_node"]) for f in fields),
    )
    pads = _padding_sizes(sizes, *budget)
    padding = _padding(sizes[0], pads, {name: fields[0][name].dtype for name in _FIELDS})
    host = {}
    for name in _FIELDS:
        parts = [f[name] for f in fields]
        if name in ("senders", "receivers"):
            parts = [p + o for p, o in zip(parts, offsets, strict=True)]
        host[name] = np.concatenate([*parts, padding[name]], axis=0)
    graph = Graph(**host)

    energy = np.zeros(budget.n_graph)
    stress = np.zeros((budget.n_graph, 3, 3))
    weight = np.zeros(budget.n_graph)
    has_energy = np.zeros(budget.n_graph, dtype=bool)
    has_forces = np.zeros(budget.n_graph, dtype=bool)
    has_stress = np.zeros(budget.n_graph, dtype=bool)
    forces = np.zeros((budget.n_node, 3))
    start = 0
    for k, s in enumerate(structures):
        if s.energy is not None:
            energy[k], has_energy[k] = s.energy, True
        if s.forces is not None:
            forces[start : start + s.num_atoms] = s.forces
            has_forces[k] = True
        if s.stress is not None:
            stress[k], has_stress[k] = s.stress, True
        weight[k] = s.weight
        start += s.num_atoms
    return Batch(
        graph=graph,
        energy=energy,
        forces=forces,
        stress=stress,
        weight=weight,
        has_energy=has_energy,
        has_forces=has_forces,
        has_stress=has_stress,
    )


def make_batch(structures: Sequence[Structure], graphs: Sequence[Graph], budget: Budget) -> Batch:
    """Batch structures and their graphs (one per structure), padded to `budget`.

    The graphs are batched and padded on the host as [`eqmlip.batch_graphs`][] and
    [`eqmlip.pad_graph`][] would, then converted once.

    **Arguments:**

    - `structures`: the structures, at least one.
    - `graphs`: their graphs (e.g. from [`eqmlip.data.structure_graph`][]), in the same order.
    - `budget`: the padded sizes; `n_node` above the real node count, `n_graph` above the
        real graph count (one padding graph holds the padding nodes and edges).

    **Returns:** a [`eqmlip.data.Batch`][] of JAX arrays.
    """
    fields = [{name: np.asarray(getattr(g, name)) for name in _FIELDS} for g in graphs]
    return _host_batch(structures, fields, budget)


def _pack(
    order: np.ndarray,
    nodes: np.ndarray,
    edges: np.ndarray,
    batch_size: int,
    max_nodes: int,
    max_edges: int,
) -> list[np.ndarray]:
    """Greedy packing in the given order: a batch closes when the next structure would exceed
    `batch_size` graphs, `max_nodes` nodes or `max_edges` edges."""
    batches, current, n_sum, e_sum = [], [], 0, 0
    for i in order:
        n, e = int(nodes[i]), int(edges[i])
        if current and (
            len(current) == batch_size or n_sum + n > max_nodes or e_sum + e > max_edges
        ):
            batches.append(np.array(current))
            current, n_sum, e_sum = [], 0, 0
        current.append(int(i))
        n_sum += n
        e_sum += e
    if current:
        batches.append(np.array(current))
    return batches


def _smallest_fitting(budgets: Sequence[Budget], nodes: int, edges: int) -> Budget | None:
    """The first budget (sorted by nodes) with a spare node for padding and room for the edges."""
    for budget in budgets:
        if nodes < budget.n_node and edges <= budget.n_edge:
            return budget
    return None


def _round_up(value: int, multiple: int) -> int:
    return int(multiple * math.ceil(value / multiple))


class GraphLoader:
    """Iterates over padded, static-shape [`eqmlip.data.Batch`][]es of a dataset, epoch by epoch.

    Neighbour lists are found once, and each structure's graph kept on the host (NumPy);
    each batch is concatenated and padded there and converted to JAX arrays once. Each epoch,
    structures (shuffled by `seed` and the epoch number, or in order) are packed greedily into
    batches of at most `batch_size` structures, `max_nodes` nodes and `max_edges` edges. Each
    batch is padded to the smallest of at most `num_buckets` budgets (`self.budgets`) that
    holds it, so a training run compiles at most `num_buckets` times whatever the epoch. The
    budgets are fixed at construction: the largest holds any batch (`max_nodes + 1` nodes,
    `max_edges` edges); the smaller ones are quantiles of the batch sizes of a few simulated
    epochs, rounded up to multiples of 8, kept when they save at least 10% of the nodes or
    edges of the next larger one. Every budget has `batch_size + 1` graphs (at least one
    padding graph) and at least one padding node.

    Shuffling is reproducible and resumable: the order of epoch `e` depends only on `seed`
    and `e`. `iter(loader)` yields the batches of epoch `loader.epoch` and then advances it;
    `loader.set_epoch(e)` or [`eqmlip.data.GraphLoader.batches`][] (which can also start in the
    middle of an epoch) choose the epoch explicitly.

    **Arguments:**

    - `structures`: the structures.
    - `cutoff`: neighbour cutoff (Å) for the graphs.
    - `batch_size`: the maximum number of real structures per batch.
    - `shuffle`: shuffle the structures each epoch (else keep their order).
    - `seed`: the shuffling seed.
    - `num_buckets`: the maximum number of distinct budgets (padded shapes).
    - `drop_last`: drop the last batch of an epoch when it has fewer than `batch_size`
        structures.
    - `max_nodes`, `max_edges`: node and edge limits of one batch; by default those of the
        `batch_size` largest structures, so every batch but the last has `batch_size`
        structures. Each must hold the largest single structure.
    - `graphs`: the structures' graphs at `cutoff`, if already built.

    **Attributes:** `structures`, `species` (their atomic numbers), `budgets`, `max_nodes`,
    `max_edges`, `epoch`, and `graphs`: each structure's unpadded [`eqmlip.Graph`][] (the ones
    given, else built on first use).
    """

    def __init__(
        self,
        structures: Sequence[Structure],
        cutoff: float,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_buckets: int = 4,
        drop_last: bool = False,
        max_nodes: int | None = None,
        max_edges: int | None = None,
        graphs: Sequence[Graph] | None = None,
    ):
        self.structures = list(structures)
        if not self.structures:
            raise ValueError("GraphLoader: got no structures.")
        for s in self.structures:
            if not isinstance(s, Structure):
                raise TypeError(f"GraphLoader: expected Structures, got {type(s).__name__}.")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(
                f"GraphLoader: batch_size must be a positive integer, got {batch_size}."
            )
        if int(num_buckets) != num_buckets or num_buckets < 1:
            raise ValueError(
                f"GraphLoader: num_buckets must be a positive integer, got {num_buckets}."
            )
        self.cutoff = float(cutoff)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_buckets = int(num_buckets)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._cache: tuple[int, list[np.ndarray]] = (-1, [])
        # Host copies of each structure's graph fields: batches are built from them in NumPy,
        # never from many small device arrays.
        self._graphs: list[Graph] | None
        if graphs is None:
            self._graphs = None
            self._host = [_host_fields(s, _neighbours(s, self.cutoff)) for s in self.structures]
        else:
            self._graphs = list(graphs)
            if len(self._graphs) != len(self.structures):
                raise ValueError(
                    f"GraphLoader: got {len(self._graphs)} graphs for {len(self.structures)} "
                    "structures."
                )
            self._host = [{name: np.asarray(getattr(g, name)) for name in _FIELDS} for g in graphs]
        self._nodes = np.array([len(f["positions"]) for f in self._host], dtype=np.int64)
        self._edges = np.array([len(f["senders"]) for f in self._host], dtype=np.int64)
        largest = min(self.batch_size, len(self.structures))
        self.max_nodes = (
            int(np.sort(self._nodes)[-largest:].sum()) if max_nodes is None else int(max_nodes)
        )
        self.max_edges = (
            int(np.sort(self._edges)[-largest:].sum()) if max_edges is None else int(max_edges)
        )
        for name, limit, sizes in (
            ("max_nodes", self.max_nodes, self._nodes),
            ("max_edges", self.max_edges, self._edges),
        ):
            if sizes.max() > limit:
                k = int(np.argmax(sizes))
                raise ValueError(
                    f"GraphLoader: {name}={limit} is smaller than structure {k}, which has "
                    f"{int(sizes[k])} {name[4:]}; raise {name} to at least {int(sizes.max())}."
                )
        self.budgets = self._choose_budgets()

    @functools.cached_property
    def species(self) -> frozenset[int]:
        """The atomic numbers found in the loader's structures (computed once)."""
        return frozenset(int(z) for s in self.structures for z in np.unique(s.atomic_numbers))

    @property
    def graphs(self) -> list[Graph]:
        """Each structure's unpadded graph (JAX arrays): the graphs given to the constructor,
        else built from the host copies on first use."""
        if self._graphs is None:
            host: list[dict[str, Any]] = list(self._host)
            self._graphs = [Graph(**fields) for fields in host]
        return self._graphs

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.structures)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _batches_of_epoch(self, epoch: int) -> list[np.ndarray]:
        batches = _pack(
            self._order(epoch),
            self._nodes,
            self._edges,
            self.batch_size,
            self.max_nodes,
            self.max_edges,
        )
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        return batches

    def _choose_budgets(self) -> tuple[Budget, ...]:
        n_graph = self.batch_size + 1
        top = Budget(self.max_nodes + 1, self.max_edges, n_graph)
        if self.num_buckets == 1:
            return (top,)
        # Batch sizes over a few epochs: the smaller budgets are their quantiles.
        sizes = [
            (int(self._nodes[b].sum()), int(self._edges[b].sum()))
            for epoch in range(4 if self.shuffle else 1)
            for b in self._batches_of_epoch(epoch)
        ]
        nodes = np.array([n for n, _ in sizes])
        edges = np.array([e for _, e in sizes])
        budgets = {top}  # a set: equal quantiles give one budget, never more than num_buckets
        for k in range(1, self.num_buckets):
            q = k / self.num_buckets
            n = min(_round_up(int(np.quantile(nodes, q, method="higher")) + 1, 8), top.n_node)
            e = min(_round_up(int(np.quantile(edges, q, method="higher")), 8), top.n_edge)
            budgets.add(Budget(n, e, n_graph))
        # Keep a smaller budget only if it saves at least 10% of the nodes or edges of the next
        # larger one kept: another compilation is not worth less.
        kept = [top]
        for budget in sorted(budgets, reverse=True)[1:]:
            larger = kept[-1]
            if budget.n_node <= 0.9 * larger.n_node or budget.n_edge <= 0.9 * larger.n_edge:
                kept.append(budget)
        ordered = sorted(kept)
        # Drop the budgets that no simulated batch would use (the largest always stays, as it
        # holds any batch), so that the simulated epochs compile once per budget.
        used = {_smallest_fitting(ordered, n, e) for n, e in sizes}
        return tuple(b for b in ordered if b in used or b == top)

    def budget_for(self, indices: Sequence[int] | np.ndarray) -> Budget:
        """The smallest budget (fewest nodes, then edges) that holds these structures."""
        n = int(self._nodes[np.asarray(indices)].sum())
        e = int(self._edges[np.asarray(indices)].sum())
        if len(indices) > self.batch_size:
            raise ValueError(
                f"GraphLoader.budget_for: {len(indices)} structures exceed batch_size="
                f"{self.batch_size}."
            )
        budget = _smallest_fitting(self.budgets, n, e)
        if budget is None:
            raise ValueError(
                f"GraphLoader.budget_for: {n} nodes and {e} edges exceed the largest budget "
                f"{self.budgets[-1]}."
            )
        return budget

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose batches `iter(loader)` yields next."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"GraphLoader.set_epoch: epoch must be an integer >= 0, got {epoch}.")
        self.epoch = int(epoch)

    def batch_indices(self, epoch: int | None = None) -> list[np.ndarray]:
        """The structure indices of each batch of an epoch (default: `self.epoch`)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache[0] != epoch:  # packing is O(structures): keep the last epoch's
            self._cache = (epoch, self._batches_of_epoch(epoch))
        return list(self._cache[1])

    def batch(self, indices: Sequence[int] | np.ndarray, budget: Budget | None = None) -> Batch:
        """The batch of the structures at `indices`, padded to `budget` (default: the smallest
        of the loader's budgets that holds them), batched on the host and converted once."""
        return _host_batch(
            [self.structures[i] for i in indices],
            [self._host[i] for i in indices],
            self.budget_for(indices) if budget is None else budget,
        )

    def batches(self, epoch: int | None = None, start: int = 0) -> Iterator[Batch]:
        """The batches of one epoch (default: `self.epoch`), from batch number `start` on (to
        resume in the middle of an epoch). Does not change `self.epoch`."""
        for indices in self.batch_indices(epoch)[start:]:
            yield self.batch(indices)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        yield from self.batches(epoch)
        self.epoch = epoch + 1

    def __len__(self) -> int:
        """The number of batches in epoch `self.epoch`."""
        return len(self.batch_indices())
