"""A Morse pair potential for copper written as a user would (not part of eqmlip): a smooth,
physical potential for the MD tests, where an untrained network would have no stable lattice."""

import ase.build
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

import eqmlip
from eqmlip.models import AbstractPotential


class Morse(AbstractPotential):
    """`E = 1/2 sum_ij phi(r_ij)`, `phi(r) = D ((1 - e^{-a (r - r0)})^2 - 1)` shifted so that
    `phi` and `phi'` vanish at the cutoff (Girifalco and Weizer's copper parameters)."""

    parameters: Float[Array, " 3"]  # D (eV), a (1/Å), r0 (Å)
    species: tuple[int, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)

    def __init__(self, cutoff: float = 4.5, *, dtype=None, key=None):
        self.parameters = jnp.asarray([0.3429, 1.3588, 2.866], dtype)
        self.species = (29,)
        self.cutoff = cutoff

    def hyperparameters(self):
        return {"cutoff": self.cutoff}

    def _phi(self, r):
        depth, a, r0 = self.parameters
        return depth * ((1 - jnp.exp(-a * (r - r0))) ** 2 - 1)

    def __call__(self, graph: eqmlip.Graph) -> Float[Array, " nodes"]:
        squared = jnp.sum(graph.edge_vectors() ** 2, axis=-1)
        r = jnp.sqrt(jnp.where(squared > 0, squared, 1.0))
        c = jnp.asarray(self.cutoff, r.dtype)
        slope = (self._phi(c + 1e-4) - self._phi(c - 1e-4)) / 2e-4
        pair = self._phi(r) - self._phi(c) - (r - c) * slope
        pair = jnp.where(graph.edge_mask & (squared > 0) & (r < c), pair, 0.0)
        energies = 0.5 * jnp.zeros(graph.num_nodes, r.dtype).at[graph.receivers].add(pair)
        return jnp.where(graph.node_mask, energies, 0.0)


def copper(repeat=(2, 2, 2), a: float = 3.61):
    return ase.build.bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
