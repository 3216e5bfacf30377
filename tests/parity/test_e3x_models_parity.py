"""eqmlip.nn.Embed, TensorDense and ExponentialBasis side by side with e3x 1.0.2."""

import functools
from typing import Any

import e3x
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import ops
from eqmlip.interop import from_flax
from eqmlip.nn import Embed, ExponentialBasis, TensorDense

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


def test_embed_initialiser_statistics_match_e3x():
    """Over 8 seeds, both initialisers draw untruncated normals of variance 1 / features.

    8 x 64 x 16 = 8192 entries each: the sample std has a relative standard error of
    1 / sqrt(2n) = 0.8% and the kurtosis (3 for a normal; 1.8 uniform, about 2.6 for a normal
    truncated at 2 std) one of sqrt(24 / n) = 0.054; the bounds are 4 standard errors.
    """
    num_embeddings, features = 64, 16
    z = jnp.arange(num_embeddings)
    flax_module = e3x.nn.Embed(num_embeddings=num_embeddings, features=features)
    init = jax.jit(flax_module.init)
    ours = np.concatenate(
        [np.ravel(Embed(num_embeddings, features, key=K(s)).embedding) for s in range(8)]
    )
    theirs = np.concatenate(
        [np.ravel(init(K(100 + s), z)["params"]["embedding"]) for s in range(8)]
    )
    n = ours.size
    assert n == theirs.size == 8192
    for sample in (ours, theirs):
        std = np.std(sample)
        assert abs(std * np.sqrt(features) - 1) <= 4 / np.sqrt(2 * n), std
        assert abs(np.mean(sample)) <= 4 * std / np.sqrt(n)
        kurtosis = np.mean((sample - sample.mean()) ** 4) / std**4
        assert abs(kurtosis - 3) <= 4 * np.sqrt(24 / n), kurtosis
    # The two samples' variances agree within their joint standard error.
    ratio = np.var(ours) / np.var(theirs)
    assert abs(ratio - 1) <= 4 * np.sqrt(2 / n + 2 / n), ratio


# The exponentially mapped radial functions (the ones with a gamma), ours and e3x's; Bernstein
# with num < 8, where e3x's betaln is exact (see docs/porting-e3x.md).
EXPONENTIAL_RADIALS = {
    "chebyshev": (ops.exponential_chebyshev, e3x.nn.exponential_chebyshev),
    "bernstein": (ops.exponential_bernstein, e3x.nn.exponential_bernstein),
    "gaussian": (ops.exponential_gaussian, e3x.nn.exponential_gaussian),
    "fourier": (ops.exponential_fourier, e3x.nn.exponential_fourier),
}


@functools.cache
def _exponential_bases(x64: bool):
    """Per radial function: ours and e3x's values and, entry by entry, derivatives along theta
    and along a direction of r (a gradient of a sum would add up rounding of terms of both
    signs); all radial functions in one compile per library."""
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        rng = np.random.default_rng(4)
        r = jnp.asarray(rng.standard_normal((12, 3)) * 2.0, dtype).at[0].set(0.0)  # and r = 0
        direction = jnp.asarray(rng.standard_normal(r.shape), dtype)
        kwargs: dict[str, Any] = dict(max_degree=2, num=5, return_cutoff=True)
        flax_module = e3x.nn.ExponentialBasis(param_dtype=dtype)
        # A trained gamma: softplus(theta) = 1.7.
        variables = {"params": {"gamma": jnp.asarray(np.log(np.expm1(1.7)), dtype)}}
        module = from_flax(ExponentialBasis(), variables)
        one = jnp.ones((), dtype)

        def theirs(radial_fn, variables, r):
            return flax_module.apply(
                variables,
                r,
                radial_fn=radial_fn,
                cutoff_fn=functools.partial(e3x.nn.smooth_cutoff, cutoff=4.0),
                **kwargs,
            )

        def ours(radial_fn, module, r):
            return module(
                r,
                radial_fn=radial_fn,
                cutoff_fn=functools.partial(ops.smooth_cutoff, cutoff=4.0),
                **kwargs,
            )

        def evaluate(fn, radial_fn, params, params_tangent):
            call = functools.partial(fn, radial_fn)
            values, along_theta = jax.jvp(lambda p: call(p, r), (params,), (params_tangent,))
            _, along_r = jax.jvp(lambda x: call(params, x), (r,), (direction,))
            return values, along_theta, along_r

        def run_ours(module):
            tangent = eqx.tree_at(lambda m: m.gamma, module, one)
            return {
                k: evaluate(ours, fns[0], module, tangent) for k, fns in EXPONENTIAL_RADIALS.items()
            }

        def run_theirs(variables):
            tangent = {"params": {"gamma": one}}
            return {
                k: evaluate(theirs, fns[1], variables, tangent)
                for k, fns in EXPONENTIAL_RADIALS.items()
            }

        actual = jax.device_get(eqx.filter_jit(run_ours)(module))
        expected = jax.device_get(jax.jit(run_theirs)(variables))
        return actual, expected, dtype


@pytest.mark.parametrize("radial", list(EXPONENTIAL_RADIALS))
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
def test_exponential_basis_matches_e3x(x64, radial):
    actual, expected, dtype = _exponential_bases(x64)
    leaves = jax.tree.leaves(actual[radial])
    assert len(leaves) == 6  # (basis, cutoff) x (values, along theta, along r)
    for a, e in zip(leaves, jax.tree.leaves(expected[radial]), strict=True):
        assert a.shape == e.shape and a.dtype == dtype
        assert relative_error(a, e) <= tolerance(dtype)
    (basis, _), (basis_along_theta, _), _ = actual[radial]
    assert basis.shape == (12, 1, 9, 5)
    assert np.max(np.abs(basis_along_theta)) > 1e-2  # gamma shapes the basis


def test_exponential_basis_initial_parameter_equals_e3x(x64):
    dtype = jnp.result_type(float)
    flax_module = e3x.nn.ExponentialBasis(initial_gamma=0.7, param_dtype=dtype)
    init = functools.partial(
        flax_module.init, radial_fn=e3x.nn.exponential_chebyshev, max_degree=1, num=4
    )
    expected = jax.jit(init)(K(0), jnp.ones((2, 3), dtype))["params"]["gamma"]
    module = ExponentialBasis(0.7)
    assert module.gamma.dtype == expected.dtype == dtype
    assert relative_error(module.gamma, expected) <= tolerance(dtype)


def test_exponential_basis_parameter_tree_equals_e3x():
    flax_module = e3x.nn.ExponentialBasis()
    init = functools.partial(
        flax_module.init, radial_fn=e3x.nn.exponential_chebyshev, max_degree=1, num=4
    )
    variables = jax.eval_shape(init, K(0), jnp.zeros((3, 3)))
    module = eqx.filter_eval_shape(ExponentialBasis)
    assert jax.tree.map(jnp.shape, variables) == {"params": {"gamma": ()}}
    assert module.gamma.shape == ()


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
