"""Any eqmlip potential as a JAX-MD energy function (`jax-md` itself is not imported)."""

from collections.abc import Callable, Sequence
from typing import Any

import ase.data
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._errors import InputError
from ..graph import Graph
from ..models._potential import AbstractPotential, node_energies_of


def jax_md_energy_fn(
    model: AbstractPotential,
    atomic_numbers: "Sequence[int] | Int[np.ndarray, ' nodes']",
    displacement_fn: Callable[..., Array],
    *,
    dataset_idx: int = 0,
    charge: int = 0,
) -> Callable[..., Float[Array, ""]]:
    """`energy_fn(position, neighbor, **kwargs)` for `jax_md.simulate`, `jax_md.quantity.force`
    and `jax_md.quantity.stress`.

    Each edge `i -> j` of the neighbour list gets the vector
    `displacement_fn(R[j], R[i], **kwargs)` (`R_j - R_i` under JAX-MD's convention), which is
    eqmlip's (and ASE's) `D = x_j - x_i + S C`: mlip's JAX-MD path instead uses `R_i - R_j`,
    which flips every edge vector and changes the energy of any potential that is not
    invariant under inversion. Keyword arguments (`box=`, and the `perturbation=` that
    `jax_md.quantity.stress` passes) go to `displacement_fn`, so the stress follows from
    JAX-MD's own strain derivative (JAX-MD's sign: positive under compression, the opposite of
    ASE's).

    **Arguments:**

    - `model`: any [`eqmlip.models.AbstractPotential`][].
    - `atomic_numbers`: `[nodes]` atomic numbers of the simulated atoms (checked against the
        model's species here, once).
    - `displacement_fn`: the displacement function of a JAX-MD space (`space.free()`,
        `space.periodic_general(box, fractional_coordinates=False)`, ...), in Å.
    - `dataset_idx`, `charge`: readout head and total charge of the structure.

    **Returns:** `energy_fn(position, neighbor, **kwargs)`, the energy in eV of positions
    `[nodes, 3]` (Å) with a `jax_md.partition.NeighborList` of `Sparse` or `Dense` format whose
    cutoff is at least the model's (`OrderedSparse` holds one direction per pair and is
    refused).
    """
    numbers = np.asarray(atomic_numbers)
    if numbers.ndim != 1 or numbers.dtype.kind not in "iu":
        raise InputError(
            f"jax_md_energy_fn: atomic_numbers must be a 1-d integer array, got dtype "
            f"{numbers.dtype} and shape {numbers.shape}."
        )
    unknown = ~np.isin(numbers, model.species)
    if unknown.any():
        atom = int(np.argmax(unknown))
        raise InputError(
            f"jax_md_energy_fn: element {ase.data.chemical_symbols[numbers[atom]]} (Z="
            f"{numbers[atom]}, atom {atom}) is not among the model's species "
            f"{[ase.data.chemical_symbols[z] for z in model.species]}."
        )
    nodes = len(numbers)
    padded_numbers = jnp.asarray(np.append(numbers, 0), jnp.int32)

    def edge_indices(neighbor: Any) -> tuple[Int[Array, " edges"], Int[Array, " edges"]]:
        fmt = getattr(neighbor, "format", None)
        name = getattr(fmt, "name", str(fmt))
        idx = neighbor.idx
        if name == "Sparse":
            return idx[1], idx[0]  # both directions of every pair are listed
        if name == "Dense":
            receivers = jnp.repeat(jnp.arange(nodes, dtype=idx.dtype), idx.shape[1])
            return idx.reshape(-1), receivers
        raise InputError(
            f"jax_md_energy_fn: neighbour list format {name} is not supported; build it with "
            "format=partition.Sparse (or Dense): OrderedSparse keeps one direction per pair."
        )

    def energy_fn(position: Float[Array, "nodes 3"], neighbor: Any, **kwargs: Any):
        if position.shape != (nodes, 3):
            raise InputError(
                f"jax_md_energy_fn: position has shape {position.shape}, expected ({nodes}, 3) "
                "for the atomic numbers given."
            )
        senders, receivers = edge_indices(neighbor)
        real = (senders < nodes) & (receivers < nodes)
        order = jnp.argsort(~real, stable=True)  # real edges first, as a Graph expects
        senders = jnp.where(real, senders, nodes)[order].astype(jnp.int32)
        receivers = jnp.where(real, receivers, nodes)[order].astype(jnp.int32)
        real = real[order]
        count = jnp.sum(real, dtype=jnp.int32)
        dtype = position.dtype
        positions = jnp.concatenate([position, jnp.zeros((1, 3), dtype)])
        vectors = jax.vmap(lambda a, b: displacement_fn(a, b, **kwargs))(
            positions[receivers], positions[senders]
        )
        vectors = jnp.where(real[:, None], vectors, 0.0)
        # The graph reads geometry only through edge_vectors() = x_r - x_s + shifts @ cell:
        # with an identity cell, these shifts make it the displacement function's vectors
        # (gradients reach the positions through them).
        shifts = vectors - (positions[receivers] - positions[senders])
        edges = senders.shape[0]
        graph = Graph(
            positions=positions,
            atomic_numbers=padded_numbers,
            senders=senders,
            receivers=receivers,
            shifts=shifts,
            cell=jnp.stack([jnp.eye(3, dtype=dtype), jnp.zeros((3, 3), dtype)]),
            pbc=jnp.zeros((2, 3), bool),
            n_node=jnp.array([nodes, 1], jnp.int32),
            n_edge=jnp.stack([count, edges - count]).astype(jnp.int32),
            node_mask=jnp.arange(nodes + 1, dtype=jnp.int32) < nodes,
            edge_mask=real,
            graph_mask=jnp.array([True, False]),
            dataset_idx=jnp.array([dataset_idx, 0], jnp.int32),
            charge=jnp.array([charge, 0], jnp.int32),
        )
        node_energies, _ = node_energies_of(model(graph), "jax_md_energy_fn")
        return jnp.sum(jnp.where(graph.node_mask, node_energies, 0.0))

    return energy_fn
