"""eqmlip.ops.conversions: e3x features to and from e3nn's IrrepsArray."""

import functools

import e3nn_jax as e3nn
import hypothesis
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import ops, testing
from eqmlip.testing._equivariance import _act

K = jr.PRNGKey


def _assert_close(actual, expected, dtype):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected), initial=0.0), 1.0)
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= testing.default_tolerance(dtype) * scale, (error, scale)


@functools.cache
def _conversion_inputs(num_parity: int, dtype):
    return jr.normal(K(num_parity), (3, num_parity, 9, 2), dtype)


@pytest.mark.parametrize("cartesian", [True, False], ids=["cartesian", "standard"])
@pytest.mark.parametrize("num_parity", [1, 2], ids=["P1", "P2"])
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(rotation=testing.o3_matrices())
def test_irreps_array_conversion_commutes_with_the_group(x64, num_parity, cartesian, rotation):
    """rotate(x, D(R)) is transform_by_matrix(R.T); reflect is transform_by_matrix(-I)."""
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        x = _conversion_inputs(num_parity, dtype)
        converted = ops.to_irreps_array(x, cartesian_order=cartesian)
        expected_irreps = "2x0e+2x1o+2x2e" if num_parity == 1 else "2x0e+2x0o+2x1o+2x1e+2x2e+2x2o"
        assert converted.irreps == e3nn.Irreps(expected_irreps)
        assert converted.dtype == dtype
        proper = bool(np.linalg.det(rotation) > 0)
        actual = _converted_transform(
            x, jnp.asarray(rotation, dtype), proper=proper, cartesian=cartesian
        )
        # e3nn's action in float64 on the host (transform_by_matrix goes through Euler angles,
        # which loses half the digits near the identity).
        expected = _act(converted.irreps, np.asarray(converted.array, np.float64), rotation.T)
        _assert_close(actual, expected, dtype)


@functools.partial(jax.jit, static_argnames=("proper", "cartesian"))
def _converted_transform(x, matrix, *, proper, cartesian):
    """`to_e3nn(g.x)` for `g = matrix`: `x @ D(R)` for a rotation, reflected for `-R`."""
    rotation = matrix if proper else -matrix
    moved = ops.rotate(x, ops.wigner_d(rotation, 2, cartesian_order=cartesian))
    if not proper:
        moved = ops.reflect(moved)
    return ops.to_irreps_array(moved, cartesian_order=cartesian).array


@pytest.mark.parametrize("cartesian", [True, False], ids=["cartesian", "standard"])
def test_irreps_array_round_trip(x64, cartesian):
    dtype = jnp.result_type(float)
    for num_parity in (1, 2):
        x = _conversion_inputs(num_parity, dtype)
        back = ops.from_irreps_array(
            ops.to_irreps_array(x, cartesian_order=cartesian), cartesian_order=cartesian
        )
        assert back.shape == x.shape and back.dtype == dtype
        # Orthogonal basis changes for l >= 2: equal up to a few units in the last place.
        atol = 4 * float(jnp.finfo(dtype).eps) * float(jnp.max(jnp.abs(x)))
        np.testing.assert_allclose(back, x, rtol=0, atol=atol)
        if cartesian:  # l <= 1 needs no basis change: bit for bit
            np.testing.assert_array_equal(back[..., :4, :], x[..., :4, :])


def test_from_irreps_array_fills_absent_irreps_and_checks():
    x = e3nn.normal("3x1e + 3x0e", K(0), (2,))
    features = ops.from_irreps_array(x, max_degree=2)
    assert features.shape == (2, 2, 9, 3)  # 1e is improper, so P=2
    assert not np.any(features[:, 1]) and not np.any(features[:, 0, 4:])
    assert ops.to_irreps_array(features).filter(
        keep=e3nn.Irreps("0e+1e")
    ).irreps.simplify() == e3nn.Irreps("3x0e+3x1e")
    proper = ops.from_irreps_array(e3nn.normal("2x1o", K(1), (4,)))
    assert proper.shape == (4, 1, 4, 2) and not np.any(proper[:, :, 0])
    with pytest.raises(ValueError, match="same multiplicity"):
        ops.from_irreps_array(e3nn.normal("2x0e + 3x1o", K(0), (2,)))
    with pytest.raises(ValueError, match="max_degree=0 is smaller"):
        ops.from_irreps_array(e3nn.normal("2x1o", K(0), (2,)), max_degree=0)
    with pytest.raises(ValueError, match="include_pseudotensors=False"):
        ops.from_irreps_array(e3nn.normal("2x1e", K(0), (2,)), include_pseudotensors=False)
