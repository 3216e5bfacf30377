"""From per-atom energies to the properties of a potential: energies per structure, forces,
virials and stresses (by automatic differentiation), per-atom energies, charges and dipoles.

The model is any [`eqmlip.models.AbstractPotential`][]: `model(graph)` returns per-atom
energies `[nodes]` or a [`eqmlip.models.PotentialOutputs`][] (whose `partial_charges`, if any,
are passed on).

Forces and stress come from one backward pass through a homogeneous deformation: with a
symmetric strain `eps_g` per structure,

$$r_i \\to r_i (1 + \\varepsilon_{g(i)}), \\qquad C_g \\to C_g (1 + \\varepsilon_g),$$

$$F_i = -\\frac{\\partial E}{\\partial r_i}, \\qquad
  W_g = -\\frac{\\partial E}{\\partial \\varepsilon_g}\\Big|_0, \\qquad
  \\sigma_g = -W_g / |\\det C_g|$$

(`W` is the virial, `sigma` the stress in eV/Angstrom^3, ASE's sign: positive under tension).
This is mlip's `ConservativePredictor`, except that structures without a periodic direction
(molecules) and padding graphs get zero stress (mlip divides by `det(C)` replaced by 1 there,
which reports the virial, in eV, as a "stress").
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .graph import Graph
from .models._potential import AbstractPotential, node_energies_of as _node_energies_of
from .ops.segment import segment_sum


class Prediction(NamedTuple):
    """The properties [`eqmlip.potential.predict`][] computes.

    - `energy`: `[graphs]` energy of each structure (eV); 0 for padding graphs.
    - `node_energies`: `[nodes]` per-atom energies, summing to `energy`; 0 on padding.
    - `forces`: `[nodes, 3]` `-dE/dr` (eV/Angstrom), 0 on padding; `None` if not computed.
    - `virial`: `[graphs, 3, 3]` `-dE/d(strain)` (eV); `None` if not computed.
    - `stress`: `[graphs, 3, 3]` `-virial / volume` (eV/Angstrom^3) for periodic structures,
        0 for the others (see `has_stress`); `None` if not computed.
    - `has_stress`: `[graphs]` whether the structure has a stress (some periodic direction and
        a non-degenerate cell).
    - `partial_charges`: `[nodes]` or `None`; `dipole`: `[graphs, 3]`
        `sum_i q_i (r_i - mean_j r_j)` or `None`.
    """

    energy: Float[Array, " graphs"]
    node_energies: Float[Array, " nodes"]
    forces: Float[Array, "nodes 3"] | None
    virial: Float[Array, "graphs 3 3"] | None
    stress: Float[Array, "graphs 3 3"] | None
    has_stress: Bool[Array, " graphs"]
    partial_charges: Float[Array, " nodes"] | None
    dipole: Float[Array, "graphs 3"] | None


def strain(
    graph: Graph,
    positions: Float[Array, "nodes 3"],
    cell: Float[Array, "graphs 3 3"],
    strains: Float[Array, "graphs 3 3"],
) -> tuple[Float[Array, "nodes 3"], Float[Array, "graphs 3 3"]]:
    """Deform positions and cells by the symmetrised `strains` (one per graph):
    `r + r eps_{g(r)}` and `C + C eps` (mlip's `_apply_strains`)."""
    symmetric = 0.5 * (strains + jnp.swapaxes(strains, 1, 2))
    per_node = symmetric[graph.node_graph_index()]
    return (
        positions + jnp.einsum("ni,nij->nj", positions, per_node),
        cell + cell @ symmetric,
    )


def predict(
    model: AbstractPotential,
    graph: Graph,
    *,
    forces: bool = True,
    stress: bool = True,
    deterministic: bool | None = None,
) -> Prediction:
    """Energies, forces, virials and stresses of every structure in `graph`.

    The strain reaches the model as a graph: its positions and cell are replaced by strained
    copies (`eqx.tree_at`), so every edge set of the graph (long-range edges too) moves with
    one strain.

    **Arguments:**

    - `model`: the potential, any [`eqmlip.models.AbstractPotential`][] (e.g. a
        [`eqmlip.models.nequip.Nequip`][]).
    - `graph`: an [`eqmlip.Graph`][], padded or not.
    - `forces`: compute forces (one backward pass). Without it only energies are computed.
    - `stress`: compute virials and stresses too (same backward pass; needs `forces`).
    - `deterministic`: sum per-atom energies per structure with the reproducible segment sum;
        `None` takes the model's `deterministic_scatter`.

    **Returns:** a [`eqmlip.potential.Prediction`][] in the dtype of the positions.

    Use under `eqx.filter_jit`, with the model as an argument:
    `eqx.filter_jit(predict)(model, graph)`.
    """
    if not isinstance(model, AbstractPotential):
        raise TypeError(
            "predict: model must be an eqmlip.models.AbstractPotential (subclass it to run your "
            f"own potential), got {type(model).__name__}."
        )
    if stress and not forces:
        raise ValueError("predict: stress=True needs forces=True (both come from one gradient).")
    if deterministic is None:
        deterministic = model.deterministic_scatter
    positions = graph.positions
    dtype = positions.dtype
    cell = graph.cell.astype(dtype)
    node_graph = graph.node_graph_index()
    num_graphs = graph.num_graphs
    node_mask = graph.node_mask

    def energy(pos: Array, eps: Array) -> tuple[Array, tuple[Array, Array | None]]:
        strained = eqx.tree_at(
            lambda g: (g.positions, g.cell), graph, strain(graph, pos, cell, eps)
        )
        node_energies, charges = _node_energies_of(model(strained), "predict")
        return jnp.sum(node_energies), (node_energies, charges)

    strains = jnp.zeros((num_graphs, 3, 3), dtype)
    force = virial = stress_out = None
    if forces:
        (grad_pos, grad_eps), (node_energies, charges) = jax.grad(
            energy, argnums=(0, 1), has_aux=True
        )(positions, strains)
        force = jnp.where(node_mask[:, None], -grad_pos, 0.0)
        if stress:
            virial = -grad_eps
    else:
        _, (node_energies, charges) = energy(positions, strains)

    energies = segment_sum(node_energies, node_graph, num_graphs, deterministic=deterministic)
    volume = jnp.abs(jnp.linalg.det(cell))
    has_stress = jnp.any(graph.pbc, axis=-1) & (volume > 0.0)
    has_stress = has_stress & graph.graph_mask
    if virial is not None:
        safe_volume = jnp.where(has_stress, volume, 1.0)
        stress_out = jnp.where(has_stress[:, None, None], -virial / safe_volume[:, None, None], 0.0)

    dipole = None
    if charges is not None:
        counts = graph.n_node.astype(dtype)
        centre = (
            segment_sum(jnp.where(node_mask[:, None], positions, 0.0), node_graph, num_graphs)
            / jnp.where(counts == 0, 1.0, counts)[:, None]
        )
        moments = charges[:, None] * (positions - centre[node_graph])
        dipole = segment_sum(
            jnp.where(node_mask[:, None], moments, 0.0),
            node_graph,
            num_graphs,
            deterministic=deterministic,
        )
    return Prediction(
        energy=energies,
        node_energies=node_energies,
        forces=force,
        virial=virial,
        stress=stress_out,
        has_stress=has_stress,
        partial_charges=charges,
        dipole=dipole,
    )
