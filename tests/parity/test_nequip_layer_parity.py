"""eqmlip's NequIP embedding block and layer side by side with mlip 0.2.5's, on real edges."""

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule
from mlip.data.chemical_system import ChemicalSystem
from mlip.graph import Graph as MlipGraph
from mlip.models.nequip.blocks import NequipEmbeddingBlock as MlipEmbeddingBlock
from mlip.models.nequip.layer import NequipLayer as MlipLayer
from mlip.models.options import Activation, RadialEnvelope

from eqmlip.interop.mlip import nequip_embedding_from_mlip, nequip_layer_from_mlip
from eqmlip.models.nequip import NequipEmbeddingBlock, NequipLayer
from eqmlip.ops.nequip import SCALAR

from ..helpers import relative_error
from .test_nequip_parity import FAST_COMPILE, FAST_JIT, random_draws

pytestmark = pytest.mark.parity

K = jax.random.key
CUTOFF = 3.0
SPECIES = (1, 6, 8)


def _tolerance(dtype) -> float:
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-6


def _mlip_graph(name: str) -> MlipGraph:
    atoms = molecule(name)
    system = ChemicalSystem(atomic_numbers=atoms.numbers, positions=atoms.positions)
    graph = MlipGraph.from_chemical_system(system, CUTOFF)
    species = np.searchsorted(np.asarray(SPECIES), atoms.numbers).astype(np.int32)
    return graph.update_node_features(species=jnp.asarray(species))


def _random_variables(module, graph: MlipGraph, seed: int) -> dict:
    """`module`'s variables with `init`'s shapes (from `eval_shape`: mlip's initialisers are
    not compiled) and `random_draws`' values, plain Flax kernels fan-in scaled."""
    shapes = jax.eval_shape(module.init, K(0), graph)
    draws = random_draws(shapes, seed, lambda _, name: name == "kernel")
    return jax.tree.map(lambda d, leaf: d.astype(leaf.dtype), draws, shapes)


# (id, x64, target irreps, l_max, layers, eqmlip/mlip keyword arguments). Compiling mlip's
# layers dominates, so each case runs in one precision, the main one in both.
CASES = [
    ("x64-small-3-layers", True, "8x0e+8x0o+4x1o+4x1e+2x2e+2x2o", 2, 3, dict(radial_mlp_hidden=[16, 16], avg_num_neighbors=7.0)),
    ("f32-l3-odd-avg-no-residual", False, "6x0e+3x1o+3x2e+3x3o", 3, 2, dict(radial_mlp_hidden=[12], avg_num_neighbors=3.7, use_residual_connection=False)),
    ("x64-silu-gates-soft-envelope", True, "4x0e+2x0o+2x1o+2x1e", 1, 3, dict(radial_mlp_hidden=[8, 8], avg_num_neighbors=5.0, gate_even="silu", radial_mlp_activation="tanh", envelope="soft_envelope")),
    ("f32-scalars-only-target", False, "5x0e", 2, 2, dict(radial_mlp_hidden=[8], avg_num_neighbors=2.0)),
]  # fmt: skip


@pytest.mark.parametrize(
    "x64, target, l_max, num_layers, kwargs", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_embedding_and_layers_match_mlip(x64, target, l_max, num_layers, kwargs):
    with jax.enable_x64(x64):
        _check_embedding_and_layers(target, l_max, num_layers, kwargs)


def _check_embedding_and_layers(target, l_max, num_layers, kwargs):
    kwargs = dict(kwargs)
    envelope = kwargs.pop("envelope", "polynomial_envelope")
    gate_even = kwargs.pop("gate_even", "swish")
    radial_act = kwargs.pop("radial_mlp_activation", "swish")
    use_residual = kwargs.pop("use_residual_connection", True)
    hidden, avg = kwargs.pop("radial_mlp_hidden"), kwargs.pop("avg_num_neighbors")
    assert not kwargs
    dtype = jnp.result_type(float)

    graph = _mlip_graph("CH3CH2OH")
    mlip_embed = MlipEmbeddingBlock(
        num_species=len(SPECIES),
        num_charges=None,
        target_irreps=target,
        l_max=l_max,
        num_rbf=8,
        r_max=CUTOFF,
        avg_r_min=None,
        radial_envelope=RadialEnvelope(envelope),
        activation_fn=None,
    )
    variables = _random_variables(mlip_embed, graph, seed=0)
    graph = jax.jit(mlip_embed.apply, compiler_options=FAST_COMPILE)(variables, graph)
    # Built abstractly (no sampling to compile): every parameter comes from mlip.
    embed = eqx.filter_eval_shape(
        NequipEmbeddingBlock,
        len(SPECIES),
        target,
        l_max=l_max,
        num_rbf=8,
        cutoff=CUTOFF,
        radial_envelope=envelope,
        key=K(1),
    )
    embed = nequip_embedding_from_mlip(embed, variables["params"])

    species = jnp.asarray(graph.nodes.features["species"])
    senders, receivers = jnp.asarray(graph.senders), jnp.asarray(graph.receivers)
    h, radial, sh = eqx.filter_jit(embed, **FAST_JIT)(species, jnp.asarray(graph.edge_vectors()))
    assert h.irreps == graph.nodes.features["embedding"].irreps
    assert h.dtype == radial.dtype == sh.dtype == dtype
    assert relative_error(h.array, graph.nodes.features["embedding"].array) <= _tolerance(dtype)
    assert relative_error(radial, graph.edges.features["radial_embedding"].array) <= _tolerance(
        dtype
    )
    assert relative_error(sh, graph.edges.features["spherical_embedding"].array) <= _tolerance(
        dtype
    )
    assert np.all(
        np.asarray(radial)[np.asarray(jnp.linalg.norm(graph.edge_vectors(), axis=-1)) > 0].any(
            axis=-1
        )
    )

    source = e3nn.Irreps(target).filter(keep=[SCALAR])
    x = h
    for i in range(num_layers):
        mlip_layer = MlipLayer(
            target_irreps=e3nn.Irreps(target),
            source_node_irreps=source,
            l_max=l_max,
            num_species=len(SPECIES),
            num_rbf=8,
            use_residual_connection=use_residual,
            nonlinearities={"e": Activation(gate_even), "o": Activation.TANH},
            radial_mlp_activation=Activation(radial_act),
            radial_mlp_hidden=hidden,
            radial_mlp_variance_scale=4.0,
            avg_num_neighbors=avg,
        )
        variables = _random_variables(mlip_layer, graph, seed=10 + i)
        graph = jax.jit(mlip_layer.apply, compiler_options=FAST_COMPILE)(variables, graph)
        expected = graph.nodes.features["latent"]
        for scalars_only in (False, True):
            layer = eqx.filter_eval_shape(
                NequipLayer,
                source,
                target,
                l_max=l_max,
                num_species=len(SPECIES),
                num_rbf=8,
                avg_num_neighbors=avg,
                radial_mlp_hidden=hidden,
                radial_mlp_activation=radial_act,
                use_residual_connection=use_residual,
                gate_even=gate_even,
                scalars_only=scalars_only,
                key=K(2),
            )
            layer = nequip_layer_from_mlip(layer, variables["params"])
            out = eqx.filter_jit(layer, **FAST_JIT)(x, species, radial, sh, senders, receivers)
            assert out.dtype == dtype
            if scalars_only:
                n = expected.irreps.count(SCALAR)
                assert out.irreps == e3nn.Irreps(f"{n}x0e")
                assert relative_error(out.array, expected.array[:, :n]) <= _tolerance(dtype)
            else:
                assert out.irreps == expected.irreps
                assert relative_error(out.array, expected.array) <= _tolerance(dtype)
                assert np.max(np.abs(np.asarray(expected.array))) > 1e-3
                next_x = out
        x, source = next_x, expected.irreps
    assert num_layers < 3 or "0o" not in target or x.irreps.count(e3nn.Irrep(0, -1)) > 0


def test_layer_loader_refuses_mismatched_parameters():
    graph = _mlip_graph("CH4")
    mlip_embed = MlipEmbeddingBlock(
        num_species=3, num_charges=None, target_irreps="4x0e+2x1o", l_max=1, num_rbf=8,
        r_max=CUTOFF, avg_r_min=None, radial_envelope=RadialEnvelope.POLYNOMIAL, activation_fn=None,
    )  # fmt: skip
    graph = jax.jit(mlip_embed.apply)(_random_variables(mlip_embed, graph, seed=0), graph)
    mlip_layer = MlipLayer(
        target_irreps=e3nn.Irreps("4x0e+2x1o"), source_node_irreps=e3nn.Irreps("4x0e"), l_max=1,
        num_species=3, num_rbf=8, use_residual_connection=True,
        nonlinearities={"e": Activation.SWISH, "o": Activation.TANH},
        radial_mlp_activation=Activation.SWISH, radial_mlp_hidden=[8], radial_mlp_variance_scale=4.0,
        avg_num_neighbors=3.0,
    )  # fmt: skip
    params = _random_variables(mlip_layer, graph, seed=1)["params"]
    layer = NequipLayer(
        "4x0e", "4x0e+2x1o", l_max=1, num_species=3, num_rbf=8, avg_num_neighbors=3.0,
        radial_mlp_hidden=[8], key=K(2),
    )  # fmt: skip
    nequip_layer_from_mlip(layer, params)  # loads

    missing = {**params, "residual_block": {}}
    with pytest.raises(ValueError, match="missing: residual_block/weight0_0_1"):
        nequip_layer_from_mlip(layer, missing)
    extra = {**params, "extra": {"w": np.zeros(3)}}
    with pytest.raises(ValueError, match="unexpected: extra/w"):
        nequip_layer_from_mlip(layer, extra)
    radial = dict(params["convolution_block"]["radial_mlp"])
    radial["layers_0"] = {"kernel": np.zeros((8, 9))}
    wrong = {**params, "convolution_block": {**params["convolution_block"], "radial_mlp": radial}}
    with pytest.raises(
        ValueError, match=r"radial_mlp/layers_0/kernel has shape \(8, 9\), expected \(8, 8\)"
    ):
        nequip_layer_from_mlip(layer, wrong)
