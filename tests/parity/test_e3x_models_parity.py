"""eqmlip.nn.Embed and TensorDense side by side with e3x 1.0.2."""

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip.interop import from_flax
from eqmlip.nn import Embed, TensorDense

from ..helpers import relative_error, tolerance
from .test_e3x_parity import K, _apply, _call, _features, _random_variables, _skeleton

pytestmark = pytest.mark.parity


def test_embed_matches_e3x(x64):
    dtype = jnp.result_type(float)
    z = jnp.asarray([[0, 3, 5], [5, 1, 1]], jnp.int32)
    flax_module = e3x.nn.Embed(num_embeddings=6, features=4, param_dtype=dtype)
    module = _skeleton(lambda: Embed(6, 4, key=K(0)))
    variables = _random_variables(module, 3)
    expected = _apply(flax_module, variables, z)
    actual = _call(from_flax(module, variables), z)
    assert actual.shape == expected.shape == (2, 3, 1, 1, 4)
    assert actual.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(actual, expected)
    assert np.max(np.abs(np.asarray(expected))) > 0.1
    init = jax.eval_shape(flax_module.init, K(0), z)
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, variables)


def test_embed_initialiser_equals_e3x(x64):
    dtype = jnp.result_type(float)
    module = Embed(7, 5, key=K(2))
    expected = e3x.nn.modules.default_embed_init(K(2), (7, 1, 1, 5), dtype)
    assert module.embedding.dtype == dtype
    np.testing.assert_array_equal(module.embedding, expected)


# (id, P_in, L_in, F_in, features, max_degree, use_bias, pseudo, cartesian, fused)
TENSOR_DENSE_CASES = [
    ("P2-defaults", 2, 1, 3, None, None, True, True, True, False),
    ("P1-up-no-bias", 1, 1, 2, 3, 2, False, True, True, False),
    ("P2-down-no-pseudo-standard", 2, 2, 3, 2, 1, True, False, False, False),
    ("P1-scalars", 1, 0, 4, 3, None, True, True, True, False),
    ("fused-P2", 2, 1, 3, 4, 2, True, True, True, True),
    ("fused-P1-no-pseudo-standard", 1, 2, 3, None, None, True, False, False, True),
]


@pytest.mark.parametrize(
    "p, lmax, fin, features, max_degree, use_bias, pseudo, cartesian, fused",
    [case[1:] for case in TENSOR_DENSE_CASES],
    ids=[case[0] for case in TENSOR_DENSE_CASES],
)
def test_tensor_dense_matches_e3x(
    x64, p, lmax, fin, features, max_degree, use_bias, pseudo, cartesian, fused
):
    dtype = jnp.result_type(float)
    x = _features(1, p, lmax, fin)
    flax_module = e3x.nn.TensorDense(
        features=features,
        max_degree=max_degree,
        use_bias=use_bias,
        include_pseudotensors=pseudo,
        cartesian_order=cartesian,
        use_fused_tensor=fused,
        param_dtype=dtype,
    )
    module = _skeleton(
        lambda: TensorDense(
            in_num_parity=p,
            in_max_degree=lmax,
            in_features=fin,
            features=features,
            max_degree=max_degree,
            use_bias=use_bias,
            include_pseudotensors=pseudo,
            cartesian_order=cartesian,
            use_fused_tensor=fused,
            key=K(0),
        )
    )
    variables = _random_variables(module, 5)  # e3x's apply checks names and shapes
    expected = jax.jit(flax_module.apply)(variables, x)
    actual = _call(from_flax(module, variables), x)
    assert actual.shape == expected.shape
    assert actual.shape[-3:] == (module.num_parity, (module.max_degree + 1) ** 2, module.features)
    assert actual.dtype == expected.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)
    assert np.max(np.abs(np.asarray(expected))) > 0.1


@pytest.mark.parametrize("fused", [False, True], ids=["tensor", "fused"])
def test_tensor_dense_parameter_tree_equals_e3x_init(fused):
    """Names and shapes of the parameters are e3x's, no more and no fewer."""
    x = _features(0, 1, 2, 3)
    flax_module = e3x.nn.TensorDense(features=4, max_degree=1, use_fused_tensor=fused)
    expected = jax.tree.map(jnp.shape, jax.eval_shape(flax_module.init, K(0), x))
    module = _skeleton(
        lambda: TensorDense(
            in_num_parity=1,
            in_max_degree=2,
            in_features=3,
            features=4,
            max_degree=1,
            use_fused_tensor=fused,
            key=K(0),
        )
    )
    assert jax.tree.map(jnp.shape, _random_variables(module, 0)) == expected
