"""eqmlip's MACE product-basis block (symmetric contraction, species-wise gate, linear) side by
side with mlip 0.2.5's `EquivariantProductBasisBlock`, from the same weights."""

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule
from mlip.data.chemical_system import ChemicalSystem
from mlip.graph import Graph as MlipGraph
from mlip.models.mace.blocks import EquivariantProductBasisBlock as MlipBlock

from eqmlip.interop.mlip import product_basis_from_mlip
from eqmlip.models.mace import EquivariantProductBasisBlock

from ..helpers import relative_error

pytestmark = pytest.mark.parity

K = jax.random.key
SPECIES = (1, 6, 8)

# (id, x64, channels, interaction irreps, node irreps, correlation, gate_nodes). The mlip block
# is traced once per case (e3j builds its coefficients then), so each runs in one precision;
# irreps differ from the symmetric-contraction parity cases (e3j caches across precisions).
CASES = [
    ("l2-node-symmetry-1-corr2-gated-f32", False, 3, "0e+1o+2e", "0e+1o", 2, True),
    ("l1-last-layer-corr3-x64", True, 2, "0e+1o", "0e", 3, False),
]  # fmt: skip


def _tolerance(dtype) -> float:
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-6


@pytest.mark.parametrize(
    "x64, channels, interaction, node, correlation, gate_nodes",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_product_basis_matches_mlip(x64, channels, interaction, node, correlation, gate_nodes):
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        atoms = molecule("CH3CH2OH")
        system = ChemicalSystem(atomic_numbers=atoms.numbers, positions=atoms.positions)
        graph = MlipGraph.from_chemical_system(system, 3.0)
        species = jnp.asarray(np.searchsorted(np.asarray(SPECIES), atoms.numbers), jnp.int32)
        source = channels * e3nn.Irreps(interaction)
        target = channels * e3nn.Irreps(node)
        x = jax.random.normal(K(0), (len(atoms), source.dim), dtype)
        graph = graph.update_node_features(latent=e3nn.IrrepsArray(source, x), species=species)
        mlip = MlipBlock(
            source_irreps=source,
            target_irreps=target,
            correlation=correlation,
            num_species=len(SPECIES),
            num_channels=channels,
            gate_nodes=gate_nodes,
        )
        shapes = jax.eval_shape(mlip.init, K(1), graph)
        flat, treedef = jax.tree_util.tree_flatten(shapes)
        keys = jax.random.split(K(2), len(flat))
        params = jax.tree.unflatten(
            treedef,
            [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, flat, strict=True)],
        )
        expected = jax.jit(mlip.apply)(params, graph).nodes.features["latent"]

        block = eqx.filter_eval_shape(
            EquivariantProductBasisBlock,
            source,
            target,
            correlation=correlation,
            num_species=len(SPECIES),
            num_channels=channels,
            gate_nodes=gate_nodes,
            key=K(3),
        )
        block = product_basis_from_mlip(block, params["params"])
        out = eqx.filter_jit(block)(e3nn.IrrepsArray(source, x), species)
        assert out.irreps == expected.irreps == target
        assert out.dtype == dtype
        assert relative_error(out.array, expected.array) <= _tolerance(dtype)
        assert np.max(np.abs(np.asarray(expected.array))) > 1e-2
