"""eqmlip.nn.Linear and MultiLayerPerceptron side by side with their e3nn_jax.flax originals."""

from typing import Any

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e3nn_jax import flax as e3nn_flax

from eqmlip.interop import from_flax
from eqmlip.nn import Linear, MultiLayerPerceptron

from ..helpers import relative_error, tolerance

pytestmark = pytest.mark.parity

K = jax.random.PRNGKey


def _apply(flax_module, variables, *args) -> Any:
    """`flax_module.apply`, typed loosely (Flax's overloads return a union with a tuple)."""
    return flax_module.apply(variables, *args)


def _randomise(variables, seed):
    """Replace every leaf by N(0, 1) values, so zero-initialised biases are exercised too.
    NumPy draws them: `jax.random.normal` would compile once per leaf shape."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), variables)


# (id, Flax kwargs, eqmlip-only kwargs, input irreps, input leading shape, call weights)
LINEAR_CASES = [
    ("vanilla-biases", dict(irreps_out="3x0e+2x1o+0e+2e", biases=True), {}, "2x0e+3x1o+1x2e+1x0e", (5,), None),
    ("unsorted-repeated", dict(irreps_out="2x1o+0o+3x0e+1e"), {}, "1x1o+2x0e+1x0o+2x1o+1x0e", (4,), None),
    ("zero-multiplicity", dict(irreps_out="0x0e+2x0e+3x1o", biases=True), {}, "0x1o+2x0e+0x0e+1x1o", (3,), None),
    ("scalars-only", dict(irreps_out="6x0e", biases=True), {}, "4x0e", (2, 3), None),
    ("force-irreps-out", dict(irreps_out="3x0e+2x1o+1x3o+1x1o", force_irreps_out=True), {}, "2x0e+3x1o", (5,), None),
    ("filtered-to-empty", dict(irreps_out="2x2e+1x3o"), {}, "2x0e+3x1o", (5,), None),
    ("path-normalization", dict(irreps_out="4x0e+2x1o", path_normalization="path"), {}, "2x0e+3x1o+1x0e", (5,), None),
    ("element-gradients", dict(irreps_out="4x0e+2x1o", gradient_normalization="element"), {}, "2x0e+3x1o", (5,), None),
    ("float-normalizations", dict(irreps_out="4x0e+2x1o", gradient_normalization=0.3, path_normalization=0.7), {}, "2x0e+1x1o+3x0e+2x1o", (5,), None),
    ("indexed", dict(irreps_out="4x0e+2x1o", num_indexed_weights=3, biases=True), {}, "2x0e+3x1o", (5,), "int"),
    ("indexed-broadcast", dict(irreps_out="4x0e+2x1o", num_indexed_weights=3), {}, "2x0e+3x1o", (2, 5), "int-broadcast"),
    ("mixed", dict(irreps_out="4x0e+2x1o", biases=True), dict(weights_dim=4), "2x0e+3x1o", (5,), "float"),
    ("mixed-element", dict(irreps_out="4x0e+2x1o+1e", gradient_normalization="element"), dict(weights_dim=4), "2x0e+3x1o+1e", (5,), "float"),
    ("mixed-per-channel", dict(irreps_out="4x0e+2x1o", weights_per_channel=True, biases=True), dict(weights_dim=4, channel_in=2), "2x0e+3x1o", (5, 2), "float"),
    ("channel-out", dict(irreps_out="4x0e+2x1o", channel_out=3, biases=True), dict(channel_in=2), "2x0e+3x1o", (5, 2), None),
    ("channel-out-mixed", dict(irreps_out="4x0e+2x1o", channel_out=3), dict(channel_in=2, weights_dim=4), "1x1o+2x0e", (5, 2), "float"),
    ("instructions", dict(irreps_out=e3nn.Irreps("4x0e+2x1o+1x0e"), irreps_in=e3nn.Irreps("2x0e+3x1o+1x0e"), instructions=[(0, 0), (1, 1), (2, 0), (0, 2)], simplify_irreps_internally=False), {}, "2x0e+3x1o+1x0e", (5,), None),
    ("no-simplify", dict(irreps_out="1x0e+1x0e+2x1o", simplify_irreps_internally=False, biases=True), {}, "1x0e+1x0e+3x1o", (5,), None),
]  # fmt: skip


def _call_args(kind, irreps_in, shape):
    x = e3nn.normal(irreps_in, K(1), shape)
    if kind is None:
        return (x,)
    if kind == "int":
        return (jax.random.randint(K(2), shape[:1], 0, 3), x)
    if kind == "int-broadcast":
        return (jax.random.randint(K(2), (shape[-1],), 0, 3), x)  # broadcasts over axis 0
    return (jax.random.normal(K(2), (shape[0], 4)), x)


@pytest.mark.parametrize(
    "flax_kwargs, extra, irreps_in, shape, weights",
    [case[1:] for case in LINEAR_CASES],
    ids=[case[0] for case in LINEAR_CASES],
)
def test_linear_matches_flax(x64, flax_kwargs, extra, irreps_in, shape, weights):
    args = _call_args(weights, irreps_in, shape)
    flax_module = e3nn_flax.Linear(**flax_kwargs)
    variables = _randomise(flax_module.init(K(0), *args), seed=7)
    expected = _apply(flax_module, variables, *args)

    kwargs = {k: v for k, v in flax_kwargs.items() if k not in ("irreps_in", "irreps_out")}
    module = Linear(irreps_in, flax_kwargs["irreps_out"], key=K(3), **kwargs, **extra)
    module = from_flax(module, variables)
    actual = module(*args)

    assert actual.irreps == expected.irreps
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype == jnp.result_type(float)
    assert relative_error(actual.array, expected.array) <= tolerance(actual.dtype)
    # The output is a real function of the weights, not zeros.
    if expected.irreps.dim:
        assert np.max(np.abs(np.asarray(expected.array))) > 0.1


def test_linear_parameter_initializer_matches_flax():
    x = e3nn.normal("2x0e+3x1o", K(1), (4,))
    init = lambda: jax.nn.initializers.constant(0.25)  # noqa: E731
    flax_module = e3nn_flax.Linear(
        e3nn.Irreps("4x0e+1x1o"), biases=True, parameter_initializer=init
    )
    variables = flax_module.init(K(0), x)
    module = Linear("2x0e+3x1o", "4x0e+1x1o", biases=True, parameter_initializer=init, key=K(3))
    # Both initialisers are deterministic, so the fresh parameters agree without any loading.
    ours = {"w": module.weights, "b": module.biases}
    assert all(np.all(np.asarray(w) == 0.25) for w in jax.tree.leaves(ours))
    # eqmlip folds path weights into the weight matrices (faster), so rounding differs slightly.
    expected = _apply(flax_module, variables, x).array
    assert relative_error(module(x).array, expected) <= tolerance(expected.dtype)


def test_linear_init_shapes_match_flax():
    x = e3nn.normal("2x0e+1x1o+3x0e", K(1), (4, 2))
    flax_module = e3nn_flax.Linear(e3nn.Irreps("3x0e+1o"), channel_out=3, biases=True)
    shapes = jax.tree.map(jnp.shape, flax_module.init(K(0), x))
    module = Linear("2x0e+1x1o+3x0e", "3x0e+1o", channel_in=2, channel_out=3, biases=True, key=K(0))
    loaded = from_flax(module, flax_module.init(K(0), x))
    assert shapes == {
        "params": {"w[0,0] 10x0e,9x0e": (10, 9), "w[1,1] 2x1o,3x1o": (2, 3), "b[0] 9x0e": (9,)}
    }
    assert [w.shape for w in loaded.weights] == [(10, 9), (2, 3)]


MLP_ACTIVATIONS = [("silu", jax.nn.silu), ("gelu", jax.nn.gelu), ("tanh", jnp.tanh), ("none", None)]


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize(
    "output_activation", [True, False, jax.nn.sigmoid], ids=["out-act", "out-none", "out-sigmoid"]
)
@pytest.mark.parametrize(
    "act", [a for _, a in MLP_ACTIVATIONS], ids=[n for n, _ in MLP_ACTIVATIONS]
)
def test_mlp_matches_flax(x64, act, with_bias, output_activation):
    x = jax.random.normal(K(1), (7, 5))
    flax_module = e3nn_flax.MultiLayerPerceptron(
        (8, 6, 3), act, with_bias=with_bias, output_activation=output_activation
    )
    variables = _randomise(flax_module.init(K(0), x), seed=11)
    expected = _apply(flax_module, variables, x)
    module = MultiLayerPerceptron(
        5, (8, 6, 3), act=act, with_bias=with_bias, output_activation=output_activation, key=K(2)
    )
    actual = from_flax(module, variables)(x)
    assert actual.dtype == expected.dtype
    assert relative_error(actual, expected) <= tolerance(actual.dtype)


@pytest.mark.parametrize("gradient_normalization", ["element", "path", 0.5])
def test_mlp_irreps_array_and_normalizations_match_flax(gradient_normalization):
    x = e3nn.normal("5x0e", K(1), (3,))
    flax_module = e3nn_flax.MultiLayerPerceptron(
        (4, 2), jax.nn.silu, gradient_normalization=gradient_normalization, with_bias=True
    )
    variables = _randomise(flax_module.init(K(0), x), seed=3)
    expected = _apply(flax_module, variables, x)
    module = MultiLayerPerceptron(
        5,
        (4, 2),
        act=jax.nn.silu,
        gradient_normalization=gradient_normalization,
        with_bias=True,
        key=K(2),
    )
    actual = from_flax(module, variables)(x)
    assert actual.irreps == expected.irreps == e3nn.Irreps("2x0e")
    assert relative_error(actual.array, expected.array) <= tolerance(actual.dtype)
