"""eqmlip.ops.so3: spherical harmonics and Wigner D-matrices in e3x's layout."""

import functools

import e3nn_jax as e3nn
import hypothesis
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from eqmlip import ops, testing

K = jr.PRNGKey


def _assert_close(actual, expected, dtype):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected), initial=0.0), 1.0)
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= testing.default_tolerance(dtype) * scale, (error, scale)


def test_spherical_harmonics_are_e3nns_in_another_basis(x64):
    """Converted to e3nn's layout, e3x's harmonics are e3nn's (normalize=True, "norm")."""
    dtype = jnp.result_type(float)
    r = jr.normal(K(0), (7, 3), dtype)
    for cartesian in (True, False):
        y = ops.spherical_harmonics(r, 3, cartesian_order=cartesian)
        converted = ops.to_irreps_array(y[:, None, :, None], cartesian_order=cartesian)
        expected = e3nn.spherical_harmonics(
            e3nn.Irreps("0e+1o+2e+3o"), r, normalize=True, normalization="norm"
        )
        _assert_close(converted.array, expected.array, dtype)
    # Degree 1 in Cartesian order is the unit vector itself.
    y = ops.spherical_harmonics(r, 1)
    _assert_close(y[:, 1:], r / jnp.linalg.norm(r, axis=-1, keepdims=True), dtype)


@hypothesis.given(first=testing.o3_matrices(), second=testing.o3_matrices())
def test_wigner_d_is_an_orthogonal_representation(first, second):
    with jax.enable_x64(True):
        a, b = jnp.asarray(first), jnp.asarray(second)
        da, db, dab = ops.wigner_d(a, 3), ops.wigner_d(b, 3), ops.wigner_d(a @ b, 3)
        _assert_close(dab, da @ db, jnp.float64)
        _assert_close(da @ da.T, jnp.eye(16), jnp.float64)
        r = jr.normal(K(0), (4, 3), jnp.float64)
        _assert_close(
            ops.spherical_harmonics(r @ a, 3), ops.spherical_harmonics(r, 3) @ da, jnp.float64
        )


def test_spherical_harmonics_and_basis_are_finite_at_zero():
    r = jnp.zeros((2, 3))
    y, grad = jax.jit(jax.value_and_grad(lambda r: jnp.sum(ops.spherical_harmonics(r, 2) ** 2)))(r)
    assert np.isfinite(y) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(ops.spherical_harmonics(r, 2)[0], np.eye(9)[0])

    def basis_sum(r):
        b = ops.basis(
            r,
            max_degree=2,
            num=4,
            radial_fn=ops.reciprocal_bernstein,
            cutoff_fn=functools.partial(ops.smooth_cutoff, cutoff=3.0),
            damping_fn=ops.smooth_damping,
        )
        return jnp.sum(b**2)

    value, grad = jax.jit(jax.value_and_grad(basis_sum))(r)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
