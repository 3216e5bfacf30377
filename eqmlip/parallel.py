"""Graph parallelism: the energy, forces and stress of one structure too large for one
device, with its edges and nodes sharded across a mesh.

The edge arrays (senders, receivers, shifts) and the node arrays (positions, species) are
split into equal contiguous blocks along the mesh axis with `NamedSharding`; the model's
parameters and the per-structure arrays are replicated. `jax.jit` (GSPMD) then partitions
the whole computation: every per-edge tensor (spherical harmonics, radial MLP, messages,
their gradients) lives only on the device that owns the edge, node features are gathered
where edges need them, and the scatter-sums of messages become partial sums followed by a
reduction. Results equal the unsharded computation up to the order of floating-point sums.

**When it pays off:** when the per-edge activations (edges x edge-feature width x layers,
kept for the backward pass of the forces) do not fit on one device -- typically hundreds of
thousands of atoms with tens of neighbours each and a wide model. Below that, one device is
faster: every layer pays a gather of node features and a reduction of messages across the
devices. For many small structures use data parallelism
([`eqmlip.training.data_parallel_step`][]) instead.
"""

import math
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .graph import _FIELDS, Graph, pad_graph, species_index
from .potential import Prediction, predict
from .training._parallel import make_mesh as make_mesh

_NODE_FIELDS = ("positions", "atomic_numbers", "node_mask")
_EDGE_FIELDS = ("senders", "receivers", "shifts", "edge_mask")


def shard_graph(graph: Graph, mesh: Mesh) -> Graph:
    """`graph` padded so that its nodes and edges divide evenly over the mesh, with its node
    and edge arrays sharded along the mesh's (only) axis and its per-graph arrays
    replicated.

    Padding follows [`eqmlip.pad_graph`][] (one padding graph is appended, holding at least
    one padding node), so the real nodes, edges and graphs keep their indices.

    **Arguments:**

    - `graph`: a host (NumPy) or device graph.
    - `mesh`: a 1-D mesh (e.g. [`eqmlip.parallel.make_mesh`][]).

    **Returns:** the padded graph as sharded JAX arrays.
    """
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"shard_graph: expected a 1-D mesh, got axes {mesh.axis_names}; build one with "
            "eqmlip.parallel.make_mesh."
        )
    (axis,) = mesh.axis_names
    size = mesh.devices.size
    n_node = size * math.ceil((graph.num_nodes + 1) / size)
    n_edge = size * max(math.ceil(graph.num_edges / size), 1)
    host = jax.tree.map(np.asarray, graph)
    padded = pad_graph(host, n_node, n_edge, graph.num_graphs + 1)
    split = NamedSharding(mesh, PartitionSpec(axis))
    whole = NamedSharding(mesh, PartitionSpec())
    fields = {
        name: jax.device_put(
            getattr(padded, name), split if name in _NODE_FIELDS + _EDGE_FIELDS else whole
        )
        for name in _FIELDS
    }
    return Graph(**fields)


@eqx.filter_jit
def _predict(model: Any, graph: Graph, forces: bool, stress: bool) -> Prediction:
    return predict(model, graph, forces=forces, stress=stress)


def sharded_predict(
    model: Any,
    graph: Graph,
    mesh: Mesh | None = None,
    *,
    forces: bool = True,
    stress: bool = True,
) -> Prediction:
    """[`eqmlip.potential.predict`][] of one large graph with its nodes and edges sharded
    over `mesh` (see the module docstring).

    **Arguments:**

    - `model`: the potential; its parameters are replicated on the mesh.
    - `graph`: an unpadded (or padded) graph, typically one big periodic structure.
    - `mesh`: a 1-D mesh (default: all local devices).
    - `forces`, `stress`: as in `predict`.

    **Returns:** a [`eqmlip.potential.Prediction`][] for the graphs and nodes of `graph`
    (the padding added for sharding removed).

    **Raises:** `ValueError` naming the first element of `graph` that is not among
    `model.species`, before anything is sharded or compiled.
    """
    if mesh is None:
        mesh = make_mesh()
    # Species are checked on the host, before sharding: an error raised inside the sharded
    # program stops one device while the others wait for it, and XLA then aborts the process.
    host = jax.tree.map(np.asarray, graph)
    species_index(host.atomic_numbers, model.species, host.node_mask)
    sharded = shard_graph(host, mesh)
    params = jax.device_put(eqx.filter(model, eqx.is_array), NamedSharding(mesh, PartitionSpec()))
    model = eqx.combine(params, eqx.filter(model, eqx.is_array, inverse=True))
    out = _predict(model, sharded, forces, stress)
    nodes, graphs = graph.num_nodes, graph.num_graphs
    per_node = {"node_energies", "forces", "partial_charges"}
    trimmed: dict[str, Any] = {
        name: None if value is None else (value[:nodes] if name in per_node else value[:graphs])
        for name, value in out._asdict().items()
    }
    return Prediction(**trimmed)
