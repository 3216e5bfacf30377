"""`eqmlip.testing.assert_equivariant` accepts equivariant functions and rejects the others."""

from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqmlip
from eqmlip import testing
from eqmlip.testing._actions import _act

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="x64")]

# Jitted once at import: Hypothesis examples reuse the compilation (one per irreps and dtype).
norm = jax.jit(e3nn.norm)
double = jax.jit(lambda x: x * 2)
double_array = jax.jit(lambda x: e3nn.IrrepsArray(x.irreps, 2 * x.array))  # `x * 2` needs l > 0
tensor_square = jax.jit(lambda x: e3nn.tensor_product(x, x))
two_inputs = jax.jit(lambda x, y: (e3nn.tensor_product(x, y), jnp.sum(e3nn.norm(y).array, axis=-1)))
pytree_io = jax.jit(
    lambda d: {
        "scaled": e3nn.IrrepsArray(d["x"].irreps, d["x"].array * d["scale"]),
        "cross": e3nn.tensor_product(d["x"], d["x"], filter_ir_out=[e3nn.Irrep(1, 1)]),
    }
)
# 1o in, 1e out: rotation-equivariant, but the inversion flips the input and not the output.
wrong_parity = jax.jit(lambda x: e3nn.IrrepsArray("1e", x.array))
swap_xy = jax.jit(lambda x: e3nn.IrrepsArray("1o", x.array[..., jnp.array([1, 0, 2])]))
add_constant = jax.jit(lambda x: x + e3nn.IrrepsArray("1o", jnp.array([1.0, 0.5, -2.0], x.dtype)))
plain_vector = jax.jit(lambda x: x.array)  # a 1o returned as a plain array: not invariant


# name: (function, input irreps, whether it multiplies inputs, out_actions). Products lose about
# eps * |x|^2 to cancellation in float32; with |x| <= 10 that comes close to the default 1e-5
# on small components (0.8 of it in a 300-example search), so their float32 inputs are <= 1.
EQUIVARIANT = {
    "norm": (norm, ("1o + 2x0e + 2e + 0o + 1e",), False, None),
    "double": (double, ("2x1o + 0e + 1x1o",), False, None),
    "tensor-square": (tensor_square, ("0e + 1o + 2e",), True, None),
    "two-inputs": (two_inputs, ("1o + 0e", "1e + 2o"), True, (None, "invariant")),
}


@pytest.mark.parametrize("name", EQUIVARIANT)
@pytest.mark.parametrize("dtype", DTYPES)
@hypothesis.given(data=st.data(), matrix=testing.o3_matrices())
def test_equivariant_functions_pass(name, dtype, data, matrix):
    fn, irreps, product, out_actions = EQUIVARIANT[name]
    max_value = 1.0 if product and dtype == np.float32 else 10.0
    with jax.enable_x64(dtype == np.float64):
        inputs = [
            data.draw(
                testing.irreps_arrays(ir, leading_shape=(3,), dtype=dtype, max_value=max_value),
                label=f"x{i}",
            )
            for i, ir in enumerate(irreps)
        ]
        testing.assert_equivariant(fn, *inputs, matrix=matrix, out_actions=out_actions)
        error = testing.equivariance_error(fn, *inputs, matrix=matrix, out_actions=out_actions)
    assert 0.0 <= error < (1e-3 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@hypothesis.given(data=st.data(), matrix=testing.o3_matrices())
def test_pytree_inputs_and_outputs(dtype, data, matrix):
    scale = np.asarray(data.draw(st.floats(-2, 2, width=32)), dtype)
    with jax.enable_x64(dtype == np.float64):
        x = data.draw(testing.irreps_arrays("1o", leading_shape=(2,), dtype=dtype, max_value=1.0))
        testing.assert_equivariant(pytree_io, {"x": x, "scale": jnp.asarray(scale)}, matrix=matrix)


@hypothesis.given(
    x=testing.irreps_arrays(testing.irreps(max_l=2), leading_shape=(2,)),
    matrix=testing.o3_matrices(),
)
def test_edge_case_irreps_pass(x, matrix):
    # Empty irreps, 0x entries and repeated, unsorted entries.
    testing.assert_equivariant(double_array, x, matrix=matrix)
    testing.assert_equivariant(norm, x, matrix=matrix)
    if x.irreps.dim == 0:
        assert testing.equivariance_error(norm, x, matrix=matrix) == 0.0


_apply = eqx.filter_jit(lambda layer, x: layer(x))


@hypothesis.given(x=testing.irreps_arrays("2x0e + 1o + 1e"), matrix=testing.o3_matrices())
def test_equinox_module_is_passed_through(x, matrix):
    layer = eqmlip.nn.Linear("2x0e + 1o + 1e", "3x0e + 2x1o + 1e", key=jr.PRNGKey(0))
    testing.assert_equivariant(_apply, layer, x, matrix=matrix)


ALL_IRREPS = e3nn.Irreps("0e + 0o + 2x1o + 1e + 2e + 2o + 3o + 3e + 4e + 4o + 0x2e + 1o + 0e")
_e3nn_transform = jax.jit(lambda x, m: x.transform_by_matrix(m))


@hypothesis.given(matrix=testing.o3_matrices())
def test_group_action_matches_e3nn(matrix):
    # The host-side float64 action equals e3nn's `transform_by_matrix` for every irrep up to l=4,
    # zero multiplicities and repeated, unsorted entries included. e3nn goes through Euler
    # angles, with beta = arccos(R[1, 1]), and loses about eps / sin(beta) near the y axis (3e-8
    # for a rotation by 3e-8); so the comparison keeps away from it, and the group law below
    # checks every matrix.
    proper = np.sign(np.linalg.det(matrix)) * matrix
    hypothesis.assume(abs(proper[1, 1]) < 0.999)
    array = np.random.default_rng(0).normal(size=(2, ALL_IRREPS.dim))
    with jax.enable_x64(True):
        x = e3nn.IrrepsArray(ALL_IRREPS, jnp.asarray(array))
        expected = np.asarray(_e3nn_transform(x, jnp.asarray(matrix)).array)
    np.testing.assert_allclose(_act(ALL_IRREPS, array, matrix), expected, rtol=0, atol=1e-12)


@hypothesis.given(g=testing.o3_matrices(), h=testing.o3_matrices())
def test_group_action_is_a_representation(g, h):
    array = np.random.default_rng(1).normal(size=(2, ALL_IRREPS.dim))
    composed = _act(ALL_IRREPS, _act(ALL_IRREPS, array, h), g)
    np.testing.assert_allclose(_act(ALL_IRREPS, array, g @ h), composed, rtol=0, atol=1e-13)
    # and orthogonal: norms are kept
    np.testing.assert_allclose(
        np.linalg.norm(_act(ALL_IRREPS, array, g), axis=-1), np.linalg.norm(array, axis=-1)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformed_inputs_keep_their_dtype_and_backend(dtype):
    seen = []

    def record(x, y):
        seen.append((type(x.array), x.dtype, type(y.array), y.dtype))
        return x

    with jax.enable_x64(dtype == np.float64):
        x = e3nn.IrrepsArray("1o", jnp.asarray(np.ones(3, dtype)))
        y = e3nn.IrrepsArray("1o", np.ones(3, dtype))  # type: ignore[arg-type]
        testing.assert_equivariant(record, x, y, matrix=-np.eye(3, dtype=np.float32))
    assert seen == [(type(x.array), dtype, np.ndarray, dtype)] * 2


# --- functions that are not equivariant --------------------------------------------------------
# For 1o in e3nn's (x, y, z) layout, g.x = M @ x for both M = R and M = -R: the expected errors
# below are computed from that, independently of e3nn's transform.

SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
CONSTANT = np.array([1.0, 0.5, -2.0])


@hypothesis.given(x=testing.irreps_arrays("1o"), matrix=testing.o3_matrices())
def test_mixing_components_fails(x, matrix):
    v = np.asarray(x.array, np.float64)
    expected = np.abs(SWAP @ matrix @ v - matrix @ SWAP @ v).max()
    hypothesis.assume(expected > 1e-2)
    with pytest.raises(AssertionError, match=r"output \(IrrepsArray 1x1o"):
        testing.assert_equivariant(swap_xy, x, matrix=matrix)
    error = testing.equivariance_error(swap_xy, x, matrix=matrix)
    assert error == pytest.approx(expected, rel=1e-4, abs=1e-4)


@hypothesis.given(x=testing.irreps_arrays("1o"), matrix=testing.o3_matrices())
def test_adding_a_constant_vector_fails(x, matrix):
    expected = np.abs(CONSTANT - matrix @ CONSTANT).max()
    hypothesis.assume(expected > 1e-2)
    with pytest.raises(AssertionError, match="not equivariant"):
        testing.assert_equivariant(add_constant, x, matrix=matrix)
    error = testing.equivariance_error(add_constant, x, matrix=matrix)
    assert error == pytest.approx(expected, rel=1e-4, abs=1e-4)


@hypothesis.given(x=testing.irreps_arrays("1o"), matrix=testing.rotations())
def test_plain_array_outputs_must_be_invariant(x, matrix):
    v = np.asarray(x.array, np.float64)
    hypothesis.assume(np.abs(matrix @ v - v).max() > 1e-2)
    with pytest.raises(
        AssertionError, match=r"output \(array, shape \(3,\), float32, declared 'inv"
    ):
        testing.assert_equivariant(plain_vector, x, matrix=matrix, out_actions="invariant")
    # Declared a vector it passes, and so does the invariant norm declared invariant.
    testing.assert_equivariant(plain_vector, x, matrix=matrix, out_actions="vector")
    testing.assert_equivariant(lambda x: norm(x).array, x, matrix=matrix, out_actions="invariant")


@hypothesis.given(x=testing.irreps_arrays("1o"), matrix=testing.rotations())
def test_plain_array_inputs_are_not_transformed(x, matrix):
    # A plain vector input is passed unchanged, so echoing it as a 1o is not equivariant.
    v = np.array([0.3, -1.0, 2.0], np.float32)
    expected = np.abs(v - matrix @ v).max()
    hypothesis.assume(expected > 1e-2)

    def echo(x, v):
        return x, e3nn.IrrepsArray("1o", jnp.asarray(v))

    with pytest.raises(AssertionError, match=r"output\[1\]"):
        testing.assert_equivariant(echo, x, v, matrix=matrix)
    assert testing.equivariance_error(echo, x, v, matrix=matrix) == pytest.approx(
        expected, rel=1e-4, abs=1e-5
    )


@pytest.mark.parametrize("dtype", DTYPES)
@hypothesis.given(data=st.data(), rotation=testing.o3_matrices(inversion=False))
def test_wrong_parity_passes_rotations_fails_inversions(dtype, data, rotation):
    with jax.enable_x64(dtype == np.float64):
        x = data.draw(testing.irreps_arrays("1o", leading_shape=(2,), dtype=dtype))
        v = np.asarray(x.array, np.float64)
        testing.assert_equivariant(wrong_parity, x, matrix=rotation)
        hypothesis.assume(np.abs(v).max() > 1e-2)
        with pytest.raises(AssertionError, match=r"rotoinversion(.|\n)*parities"):
            testing.assert_equivariant(wrong_parity, x, matrix=-rotation)
        error = testing.equivariance_error(wrong_parity, x, matrix=-rotation)
    # fn(-R x) = -R x but -R . fn(x) = R x for a 1e output.
    expected = 2 * np.abs(v @ rotation.T).max()
    assert error == pytest.approx(expected, rel=1e-5, abs=1e-5)


# --- tolerances and messages -------------------------------------------------------------------

INVERSION = -np.eye(3)


def _vector(dtype: Any = np.float32) -> e3nn.IrrepsArray:
    return e3nn.IrrepsArray("1o", jnp.asarray(np.array([1.0, 2.0, 3.0], dtype)))


def test_tolerance_is_atol_plus_rtol_times_expected():
    # Under x -> -x, fn(g.x) = -x and g.fn(x) = x: |a - b| = (2, 4, 6), |b| = (1, 2, 3).
    x = _vector()
    assert testing.equivariance_error(wrong_parity, x, matrix=INVERSION) == 6.0
    testing.assert_equivariant(wrong_parity, x, matrix=INVERSION, atol=6.01, rtol=0)
    testing.assert_equivariant(wrong_parity, x, matrix=INVERSION, atol=0, rtol=2.01)
    # Both terms count: 1 + 1.67 * 3 >= 6 at the last component, 1 + 1.66 * 3 < 6.
    testing.assert_equivariant(wrong_parity, x, matrix=INVERSION, atol=1.0, rtol=1.67)
    for atol, rtol in [(5.99, 0), (0, 1.99), (1.0, 1.66)]:
        with pytest.raises(AssertionError):
            testing.assert_equivariant(wrong_parity, x, matrix=INVERSION, atol=atol, rtol=rtol)


def test_default_tolerance_follows_output_dtype():
    # A non-equivariant perturbation of 1e-9: invisible in float32, caught in float64.
    def nearly(x):
        return x + 1e-9 * swap_xy(x)

    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    v = np.array([1.0, 2.0, 3.0])
    expected = 1e-9 * np.abs(SWAP @ rotation @ v - rotation @ SWAP @ v).max()  # 4e-9
    testing.assert_equivariant(nearly, _vector(), matrix=rotation)
    with jax.enable_x64(True):
        x = _vector(dtype=np.float64)
        with pytest.raises(AssertionError, match=r"1e-12"):
            testing.assert_equivariant(nearly, x, matrix=rotation)
        error = testing.equivariance_error(nearly, x, matrix=rotation)
    assert error == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.float16, 1e-5),
        (jnp.bfloat16, 1e-5),
        (np.float32, 1e-5),
        (np.float64, 1e-12),
        (np.complex64, 1e-5),
        (np.complex128, 1e-12),
        (np.int32, 0.0),
        ("float32", 1e-5),
    ],
    ids=str,
)
def test_default_tolerance(dtype, expected):
    assert testing.default_tolerance(dtype) == expected


def test_failure_message_names_leaf_error_and_tolerance():
    fn = jax.jit(lambda x: (norm(x), wrong_parity(x)))
    with pytest.raises(AssertionError) as info:
        testing.assert_equivariant(fn, _vector(), matrix=INVERSION)
    message = str(info.value)
    assert "1 of 2 output leaves differ" in message
    assert "rotoinversion (det -1)" in message
    assert "output[1] (IrrepsArray 1x1e, shape (3,), float32, declared irreps 1x1e)" in message
    assert "max |fn(g.x) - g.fn(x)| = 6" in message
    assert "3 of 3 components" in message
    assert "index (2,)" in message  # the largest excess: 6 > 1e-5 + 1e-5 * 3
    assert "1e-05 + 1e-05*3" in message
    assert "output[0]" not in message
    assert "M = [[-1., -0., -0.], [-0., -1., -0.], [-0., -0., -1.]]" in message
    assert "only the inversion fails: check the parities" in message


def test_mismatched_outputs_fail():
    flip_structure = lambda x: (x,) if x.array[0] > 0 else (x, x)  # noqa: E731
    with pytest.raises(AssertionError, match="pytree structures"):
        testing.assert_equivariant(flip_structure, _vector(), matrix=INVERSION)
    flip_irreps = lambda x: x if x.array[0] > 0 else e3nn.IrrepsArray("1e", x.array)  # noqa: E731
    with pytest.raises(AssertionError, match="fn\\(g.x\\) gives IrrepsArray 1x1e"):
        testing.assert_equivariant(flip_irreps, _vector(), matrix=INVERSION)
    flip_shape = lambda x: x.array if x.array[0] > 0 else x.array[:2]  # noqa: E731
    with pytest.raises(AssertionError, match="shape"):
        testing.assert_equivariant(flip_shape, _vector(), matrix=INVERSION, out_actions="1o")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="orthogonal"):
        testing.assert_equivariant(norm, _vector(), matrix=2 * np.eye(3))
    with pytest.raises(ValueError, match="equivariance_error: matrix must be orthogonal"):
        testing.equivariance_error(norm, _vector(), matrix=np.ones((3, 3)))
    integer = e3nn.IrrepsArray("1o", jnp.array([1, 2, 3]))
    with pytest.raises(
        TypeError,
        match=r"input\[0\] \(IrrepsArray 1x1o, shape \(3,\), int32\) is declared irreps 1x1o, but only real floating",
    ):
        testing.assert_equivariant(lambda x: x, integer, matrix=INVERSION)
    with pytest.raises(TypeError, match="not numeric"):
        testing.assert_equivariant(lambda x: "label", _vector(), matrix=INVERSION)


def test_identity_and_numpy_inputs():
    # Everything passes the identity; NumPy-backed IrrepsArrays and jax matrices are accepted.
    x = e3nn.IrrepsArray("1o", np.array([1.0, 2.0, 3.0], np.float32))  # type: ignore[arg-type]
    testing.assert_equivariant(swap_xy, x, matrix=jnp.eye(3))
    assert testing.equivariance_error(swap_xy, x, matrix=np.eye(3)) == 0.0
