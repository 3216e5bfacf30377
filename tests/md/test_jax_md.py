"""eqmlip potentials inside JAX-MD: energy, forces and stress equal eqmlip's own, the edge
vectors have eqmlip's sign, and a JAX-MD NVE run equals `eqmlip.md.simulate`."""

import ase
import ase.units
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

import eqmlip
from eqmlip import InputError
from eqmlip.graph import Graph
from eqmlip.md import jax_md_energy_fn, simulate
from eqmlip.md._engine import maxwell_boltzmann
from eqmlip.models import AbstractPotential
from eqmlip.potential import predict

from ..helpers import tiny_model
from ._morse import Morse, copper

# JAX-MD relies on implicit int/float promotion, which the suite's strict mode rejects.
with jax.numpy_dtype_promotion("standard"):
    jax_md = pytest.importorskip("jax_md")


# JAX-MD's neighbour list scatters int64 into int32 under x64 (its warning, not eqmlip's).
pytestmark = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types")


@pytest.fixture(autouse=True)
def _standard_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


class Chiral(AbstractPotential):
    """`E_i = w (sum_(edges j -> i) D_z (1 - r/c)^2)^3`: odd under inversion, so an
    edge-vector sign error flips its energy (a sum of odd pair terms would cancel)."""

    weight: Float[Array, ""]
    species: tuple[int, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)

    def __init__(self, cutoff: float = 4.0, *, dtype=None, key=None):
        self.weight = jnp.asarray(0.1, dtype)
        self.species = (29,)
        self.cutoff = cutoff

    def hyperparameters(self):
        return {"cutoff": self.cutoff}

    def __call__(self, graph: eqmlip.Graph) -> Float[Array, " nodes"]:
        vectors = graph.edge_vectors()
        squared = jnp.sum(vectors**2, axis=-1)
        r = jnp.sqrt(jnp.where(squared > 0, squared, 1.0))
        envelope = jnp.where(graph.edge_mask & (r < self.cutoff), (1 - r / self.cutoff) ** 2, 0.0)
        polar = (
            jnp.zeros(graph.num_nodes, r.dtype).at[graph.receivers].add(vectors[:, 2] * envelope)
        )
        return jnp.where(graph.node_mask, self.weight * polar**3, 0.0)


def _jax_md_setup(atoms: ase.Atoms, cutoff: float, fmt):
    box = jnp.asarray(atoms.cell.array.T)  # JAX-MD: lattice vectors as columns
    displacement, shift = jax_md.space.periodic_general(box, fractional_coordinates=False)
    neighbor_fn = jax_md.partition.neighbor_list(
        displacement, box, cutoff, format=fmt, fractional_coordinates=False
    )
    return box, displacement, shift, neighbor_fn


def _triclinic_copper() -> ase.Atoms:
    atoms = copper((3, 3, 3), a=3.55)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0, 0], [1.2, 0, 0], [0.5, -0.7, 0]]), True)
    atoms.rattle(0.1, seed=3)
    return atoms


@pytest.mark.parametrize("name", ["nequip", "chiral"])
@pytest.mark.parametrize("fmt", ["Sparse", "Dense"])
def test_energy_forces_stress_equal_predict(name, fmt, alloy_structures):
    with jax.enable_x64(True):
        if name == "nequip":
            model = tiny_model(alloy_structures)
            model = jax.tree.map(
                lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model
            )
            # JAX-MD's periodic spaces take the minimum image: cells at least 2 cutoffs wide.
            atoms = alloy_structures[5].to_atoms().repeat((1, 2, 2))
        else:
            model, atoms = Chiral(), _triclinic_copper()
        box, displacement, _, neighbor_fn = _jax_md_setup(
            atoms, model.cutoff, getattr(jax_md.partition.NeighborListFormat, fmt)
        )
        position = jnp.asarray(atoms.positions)
        neighbors = neighbor_fn.allocate(position)
        energy_fn = jax_md_energy_fn(model, atoms.numbers, displacement)

        # Jitted, as JAX-MD's functions are meant to be used (op by op, each of these takes
        # seconds of dispatch and per-op compiles).
        @jax.jit
        def jax_md_quantities(position, neighbors):
            energy = energy_fn(position, neighbors)
            forces = jax_md.quantity.force(energy_fn)(position, neighbors)
            stress = jax_md.quantity.stress(energy_fn, position, box, neighbor=neighbors)
            return energy, forces, stress

        expected = eqx.filter_jit(predict)(model, Graph.from_atoms(atoms, model.cutoff))
        energy, forces, stress = jax_md_quantities(position, neighbors)
        assert abs(float(expected.energy[0])) > 1e-3  # a sign error could not hide in a zero
        np.testing.assert_allclose(energy, expected.energy[0], rtol=1e-12)
        assert expected.forces is not None
        np.testing.assert_allclose(forces, expected.forces, atol=1e-11)
        assert expected.stress is not None
        # JAX-MD's sign is the opposite of ASE's; eqmlip's strain is symmetrised (the chiral
        # potential is not rotation invariant, so only its symmetric part agrees).
        np.testing.assert_allclose(-0.5 * (stress + stress.T), expected.stress[0], atol=1e-11)


def test_jax_md_nve_equals_eqmlip_simulate():
    with jax.enable_x64(True):
        model = Morse()
        atoms = copper((3, 3, 3), a=3.5)
        atoms.rattle(0.05, seed=2)
        atoms.set_momenta(maxwell_boltzmann(atoms.get_masses(), 600.0, seed=1))
        # JAX-MD rounds the time step to float32: take one it represents exactly (~1.9 fs).
        dt = 0.1875
        ours = simulate(model, atoms, steps=50, timestep=dt / ase.units.fs, chunk=50).atoms[0]

        box, displacement, shift, neighbor_fn = _jax_md_setup(
            atoms, model.cutoff + 0.5, jax_md.partition.NeighborListFormat.Sparse
        )
        energy_fn = jax_md_energy_fn(model, atoms.numbers, displacement)
        init, apply = jax_md.simulate.nve(energy_fn, shift, dt)
        position = jnp.asarray(atoms.positions)
        neighbors = neighbor_fn.allocate(position)
        masses = jnp.asarray(atoms.get_masses())[:, None]
        state = init(jax.random.key(0), position, kT=0.0, mass=masses, neighbor=neighbors)
        state = state.set(momentum=jnp.asarray(atoms.get_momenta()))

        @jax.jit
        def step(state, neighbors):
            neighbors = neighbors.update(state.position)
            return apply(state, neighbor=neighbors), neighbors

        for _ in range(50):
            state, neighbors = step(state, neighbors)
        assert not bool(neighbors.did_buffer_overflow)
        # JAX-MD wraps positions into the cell; eqmlip keeps them unwrapped, as ASE does. The
        # two sum the edges in different orders: float64 round-off, grown by the dynamics
        # over 50 steps to ~1e-12 (a wrong sign or unit would differ at O(1)).
        difference = np.linalg.solve(
            atoms.cell.array.T, (np.asarray(state.position) - ours.positions).T
        ).T
        np.testing.assert_allclose(difference, np.round(difference), atol=1e-11)
        np.testing.assert_allclose(state.momentum, ours.get_momenta(), atol=1e-10)


def test_bad_inputs_are_refused():
    displacement, _ = jax_md.space.free()
    with pytest.raises(InputError, match=r"element Au \(Z=79, atom 1\) is not among"):
        jax_md_energy_fn(Morse(), [29, 79], displacement)
    energy_fn = jax_md_energy_fn(Morse(), [29, 29], displacement)
    neighbor_fn = jax_md.partition.neighbor_list(
        displacement, 10.0, 4.5, format=jax_md.partition.NeighborListFormat.OrderedSparse
    )
    position = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, 2.5]])
    with pytest.raises(InputError, match="OrderedSparse keeps one direction per pair"):
        energy_fn(position, neighbor_fn.allocate(position))
    with pytest.raises(InputError, match=r"position has shape \(3, 3\), expected \(2, 3\)"):
        energy_fn(jnp.zeros((3, 3)), None)
