import functools
import io

import e3nn_jax as e3nn
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import testing
from eqmlip.nn import MultiLayerPerceptron

from ..helpers import CountingApply

K = jr.PRNGKey


@eqx.filter_jit
def _apply(model, x):
    return model(x)


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(
    matrix=testing.o3_matrices(),
    x=st.integers(0, 2**31 - 1).map(lambda seed: np.random.default_rng(seed).normal(size=(3, 4))),
)
def test_mlp_is_invariant_on_scalars(x64, matrix, x):
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        mlp = MultiLayerPerceptron(4, (8, 3), act=jax.nn.silu, with_bias=True, key=K(0))
        inputs = e3nn.IrrepsArray("4x0e", jnp.asarray(x, dtype))
        out = _apply(mlp, inputs)
        assert out.irreps == e3nn.Irreps("3x0e") and out.dtype == dtype
        testing.assert_equivariant(functools.partial(_apply, mlp), inputs, matrix=matrix)


@pytest.mark.parametrize(
    "act, output_activation, neurons",
    [
        (jax.nn.silu, False, (32, 24, 8)),
        (jnp.tanh, False, (32, 8)),
        (None, True, (32, 24, 8)),
        (jax.nn.silu, True, (8,)),
        (jax.nn.gelu, True, (8,)),
    ],
    ids=["silu-linear-out", "tanh-linear-out", "linear", "one-silu-layer", "one-gelu-layer"],
)
@pytest.mark.parametrize("gradient_normalization", ["path", "element"])
def test_init_statistics(act, output_activation, neurons, gradient_normalization):
    """Fresh MLPs keep unit second moment; a linear last layer also gives mean 0.

    e3nn's activation constant normalises Gaussian pre-activations, which is exact for a
    single layer on unit normal inputs (deeper activated layers are only close to it).
    """
    n_models, n_inputs = 300, 32
    models = eqx.filter_vmap(
        lambda k: MultiLayerPerceptron(
            16,
            neurons,
            act=act,
            output_activation=output_activation,
            gradient_normalization=gradient_normalization,
            key=k,
        )
    )(jr.split(K(0), n_models))
    x = jr.normal(K(1), (n_models, n_inputs, 16))
    y = np.asarray(eqx.filter_vmap(lambda m, xi: m(xi))(models, x))
    assert abs((y**2).mean() - 1.0) < 0.1, (y**2).mean()
    if act is None or output_activation is False:
        assert abs(y.mean()) < 0.05, y.mean()


def test_structure_retrace_and_serialisation():
    a = MultiLayerPerceptron(3, (5, 2), act=jax.nn.gelu, with_bias=True, key=K(0))
    b = MultiLayerPerceptron(3, (5, 2), act=jax.nn.gelu, with_bias=True, key=K(1))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    apply = CountingApply()
    x = jr.normal(K(2), (4, 3))
    assert not np.allclose(apply(a, x), apply(b, x))
    assert apply.traces == 1

    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, a)
    buffer.seek(0)
    loaded = eqx.tree_deserialise_leaves(buffer, b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(u, v)


def test_jit_vmap_grad():
    model = MultiLayerPerceptron(3, (5, 2), act=jax.nn.silu, with_bias=True, key=K(0))
    x = jr.normal(K(2), (4, 3))
    np.testing.assert_allclose(
        np.asarray(jax.vmap(model)(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6
    )
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(model)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == 4
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.max(jnp.abs(grads.kernels[0]))) > 0


def test_output_dtype_follows_input():
    model = MultiLayerPerceptron(3, (2,), act=jax.nn.silu, key=K(0))
    with jax.enable_x64(True):
        assert model(jnp.ones((2, 3), jnp.float32)).dtype == jnp.float32
        assert model(jnp.ones((2, 3), jnp.float64)).dtype == jnp.float64


def test_bad_inputs_raise_clear_errors():
    model = MultiLayerPerceptron(3, (2,), act=jax.nn.silu, key=K(0))
    with pytest.raises(ValueError, match="all 0e scalars"):
        model(e3nn.normal("2x0e+0o", K(1), (2,)))
    with pytest.raises((ValueError, TypeError), match=r"3|in_features"):
        model(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="at least one layer"):
        MultiLayerPerceptron(3, (), key=K(0))
    with pytest.raises(TypeError, match="output_activation"):
        MultiLayerPerceptron(3, (2,), output_activation="relu", key=K(0))  # type: ignore[arg-type]
