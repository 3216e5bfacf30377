"""eqmlip.nn readouts side by side with mlip.models.readout (mlip 0.2.5)."""

from typing import Any

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlip.graph import Graph as MlipGraph
from mlip.graph.graph import GraphEdges, GraphGlobals, GraphNodes
from mlip.models import readout as mlip_readout
from mlip.models.options import GradientScaledKernelInit

from eqmlip.interop import from_flax
from eqmlip.nn import MultiHeadReadoutBlock, ReadoutBlock, select_head

from ..helpers import relative_error, tolerance

pytestmark = pytest.mark.parity

K = jax.random.PRNGKey
IRREPS_IN = "8x0e+2x0o+4x1o+2x2e"
N_NODE = (2, 3, 1)


def _graph(latent, dataset_idx=None) -> Any:
    """A minimal mlip Graph holding node features (the readouts read only these)."""
    n_graph = len(N_NODE)
    return MlipGraph(
        nodes=GraphNodes(features={"latent": latent}),
        edges=GraphEdges(),
        globals=GraphGlobals(
            cell=jnp.zeros((n_graph, 3, 3)), weight=jnp.ones(n_graph), dataset_idx=dataset_idx
        ),
        n_node=jnp.array(N_NODE),
        n_edge=jnp.zeros(n_graph, int),
        senders=jnp.zeros(0, int),
        receivers=jnp.zeros(0, int),
    )


def _randomise(variables, seed):
    """Replace every leaf by N(0, 1) values (zero-initialised biases included). NumPy draws them:
    `jax.random.normal` would compile once per leaf shape."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), variables)


def _apply(flax_module, variables, graph) -> Any:
    """`flax_module.apply`, typed loosely (Flax's overloads return a union with a tuple)."""
    return flax_module.apply(variables, graph)


def _outputs(flax_module, variables, graph) -> Any:
    return _apply(flax_module, variables, graph).nodes.features["outputs"]


# (id, features, activation)
EQUIVARIANT_CASES = [
    ("linear-scalars", ["4x0e", "1x0e"], None),
    ("linear-two-outputs", ["4x0e", "2x0e"], None),
    ("linear-vectors", ["6x0e+2x0o+2x1o+1x2e", "3x0e+1x1o"], None),
    ("silu-scalar-hidden", ["6x0e+2x0o", "1x0e"], jax.nn.silu),
    ("tanh-three-layers", ["6x0e", "5x0e", "1x0e"], jnp.tanh),
    ("one-layer-missing-block", ["2x0e+1x1e+1x3o"], None),
]


@pytest.mark.parametrize(
    "features, activation",
    [case[1:] for case in EQUIVARIANT_CASES],
    ids=[case[0] for case in EQUIVARIANT_CASES],
)
def test_equivariant_readout_matches_mlip(x64, features, activation):
    x = e3nn.normal(IRREPS_IN, K(0), (sum(N_NODE),))
    flax_module = mlip_readout.ReadoutBlock(
        features=features, activation=activation, use_equiv=True
    )
    variables = _randomise(flax_module.init(K(1), _graph(x)), seed=3)
    expected = _outputs(flax_module, variables, _graph(x))

    module = ReadoutBlock(IRREPS_IN, features, activation=activation, use_equiv=True, key=K(2))
    actual = from_flax(module, variables)(x)

    assert actual.irreps == expected.irreps
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype == jnp.result_type(float)
    assert relative_error(actual.array, expected.array) <= tolerance(actual.dtype)
    assert np.max(np.abs(np.asarray(expected.array))) > 0.1


def test_unsorted_features_are_labelled_by_their_layout():
    """mlip labels the output `features[-1]` as given, although e3j writes it regrouped; the
    numbers agree and eqmlip labels them with the regrouped irreps."""
    x = e3nn.normal(IRREPS_IN, K(0), (sum(N_NODE),))
    flax_module = mlip_readout.ReadoutBlock(features=[e3nn.Irreps("1x1o+1x0e")], use_equiv=True)
    variables = _randomise(flax_module.init(K(1), _graph(x)), seed=3)
    expected = _outputs(flax_module, variables, _graph(x))
    actual = from_flax(ReadoutBlock(IRREPS_IN, ["1x1o+1x0e"], use_equiv=True, key=K(2)), variables)(
        x
    )
    assert expected.irreps == e3nn.Irreps("1x1o+1x0e")
    assert actual.irreps == e3nn.Irreps("1x0e+1x1o")
    assert relative_error(actual.array, expected.array) <= tolerance(actual.dtype)


def test_gated_hidden_vectors_differ_from_mlip():
    """With non-scalars in a gated hidden layer, mlip feeds the gate's output to a linear built
    for the pre-gate irreps (slicing vector components into scalars). eqmlip builds the next
    linear for the gate's output, so mlip's weights do not fit and from_flax says so."""
    x = e3nn.normal(IRREPS_IN, K(0), (sum(N_NODE),))
    features = [e3nn.Irreps("6x0e+2x1o"), e3nn.Irreps("1x0e")]
    flax_module = mlip_readout.ReadoutBlock(
        features=features, activation=jax.nn.silu, use_equiv=True
    )
    variables = flax_module.init(K(1), _graph(x))
    module = ReadoutBlock(IRREPS_IN, features, activation=jax.nn.silu, use_equiv=True, key=K(2))
    with pytest.raises(
        ValueError, match=r"Linear_1/weight0_0_1 has shape \(1, 6\), expected \(1, 4\)"
    ):
        from_flax(module, variables)


MLP_INITS = [
    ("fan-in-normal", GradientScaledKernelInit.FAN_IN_NORMAL),
    ("lecun", jax.nn.initializers.lecun_normal()),
]


@pytest.mark.parametrize("activation", [None, jax.nn.silu], ids=["no-act", "silu"])
@pytest.mark.parametrize("init", [i for _, i in MLP_INITS], ids=[n for n, _ in MLP_INITS])
def test_mlp_readout_matches_mlip(x64, activation, init):
    x = jax.random.normal(K(0), (sum(N_NODE), 12))
    flax_module = mlip_readout.ReadoutBlock(
        features=[16, 8, 2], activation=activation, mlp_kernel_init=init
    )
    variables = _randomise(flax_module.init(K(1), _graph(x)), seed=5)
    expected = _outputs(flax_module, variables, _graph(x))
    module = ReadoutBlock(12, [16, 8, 2], activation=activation, mlp_kernel_init=init, key=K(2))
    actual = from_flax(module, variables)(x)
    assert actual.shape == expected.shape == (sum(N_NODE), 2)
    assert actual.dtype == expected.dtype
    assert relative_error(actual, expected) <= tolerance(actual.dtype)


@pytest.mark.parametrize("use_equiv", [True, False], ids=["equivariant", "mlp"])
def test_multi_head_readout_and_select_head_match_mlip(x64, use_equiv):
    dataset_idx = jnp.array([1, 0, 1])
    if use_equiv:
        x: Any = e3nn.normal(IRREPS_IN, K(0), (sum(N_NODE),))
        kwargs: dict = dict(features=["4x0e", "1x0e"], use_equiv=True)
        in_features: Any = IRREPS_IN
    else:
        x = jax.random.normal(K(0), (sum(N_NODE), 12))
        kwargs = dict(features=[8, 1], activation=jax.nn.silu, mlp_kernel_init="fan_in_normal")
        in_features = 12
    flax_module = mlip_readout.MultiHeadReadoutBlock(num_heads=2, **kwargs)
    graph = _graph(x, dataset_idx)
    variables = _randomise(flax_module.init(K(1), graph), seed=7)
    expected_graph = _apply(flax_module, variables, graph)
    expected = expected_graph.nodes.features["outputs"]
    selected: Any = mlip_readout.select_head(expected_graph).nodes.features["outputs"]

    features = kwargs.pop("features")
    module = from_flax(
        MultiHeadReadoutBlock(2, in_features, features, key=K(2), **kwargs), variables
    )
    actual: Any = module(x)
    array = lambda a: a.array if isinstance(a, e3nn.IrrepsArray) else a  # noqa: E731
    assert actual.shape == expected.shape == (sum(N_NODE), 2, 1)
    assert relative_error(array(actual), array(expected)) <= tolerance(array(actual).dtype)
    # The heads really differ, so selecting the wrong one would show.
    assert relative_error(array(actual)[:, 0], array(actual)[:, 1]) > 0.1

    picked = select_head(actual, dataset_idx, jnp.array(N_NODE))
    assert picked.shape == selected.shape == (sum(N_NODE), 1)
    assert relative_error(array(picked), array(selected)) <= tolerance(array(picked).dtype)
    # Without dataset_idx both take head 0.
    no_idx = mlip_readout.select_head(_apply(flax_module, variables, _graph(x)))
    np.testing.assert_array_equal(
        array(select_head(actual)), array(no_idx.nodes.features["outputs"])
    )
