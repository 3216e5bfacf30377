"""The strategies of `eqmlip.testing` produce what their docstrings promise."""

import e3nn_jax as e3nn
import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis.errors import NoSuchExample

from eqmlip import testing
from eqmlip.testing._strategies import _uniform_rotation

# `_find` looks for an example (failing with NoSuchExample after this many draws), unshrunk;
# `_minimal` shrinks it, to check the documented shrink targets.
FIND = hypothesis.settings(max_examples=200, database=None, phases=[hypothesis.Phase.generate])
SHRINK = hypothesis.settings(max_examples=300, database=None)


def _find(strategy, condition):
    return hypothesis.find(strategy, condition, settings=FIND)


def _minimal(strategy, condition):
    return hypothesis.find(strategy, condition, settings=SHRINK)


# --- irreps ------------------------------------------------------------------------------------


IRREPS_ARGUMENTS = [
    pytest.param({}, id="defaults"),
    pytest.param({"max_l": 0, "max_mul": 1, "max_entries": 1}, id="tiny"),
    pytest.param({"max_l": 4, "max_mul": 7, "max_entries": 6, "min_entries": 2}, id="large"),
    pytest.param({"min_entries": 3, "max_entries": 3}, id="exact-length"),
    pytest.param({"parities": "even"}, id="even"),
    pytest.param({"parities": "odd"}, id="odd"),
    pytest.param({"parities": "proper", "max_l": 3}, id="proper"),
    pytest.param({"allow_zero_mul": False, "max_mul": 2}, id="no-zero-mul"),
]


def _parity_ok(l: int, p: int, parities: str) -> bool:  # noqa: E741
    return {
        "both": p in (1, -1),
        "even": p == 1,
        "odd": p == -1,
        "proper": p == (-1) ** l,
    }[parities]


@pytest.mark.parametrize("kwargs", IRREPS_ARGUMENTS)
@hypothesis.given(data=st.data())
def test_irreps_respect_arguments(kwargs, data):
    irreps = data.draw(testing.irreps(**kwargs))
    max_l = kwargs.get("max_l", 2)
    max_mul = kwargs.get("max_mul", 4)
    min_mul = 0 if kwargs.get("allow_zero_mul", True) else 1
    parities = kwargs.get("parities", "both")

    assert isinstance(irreps, e3nn.Irreps)
    assert kwargs.get("min_entries", 0) <= len(irreps) <= kwargs.get("max_entries", 4)
    for mul, ir in irreps:
        assert min_mul <= mul <= max_mul
        assert 0 <= ir.l <= max_l
        assert _parity_ok(ir.l, ir.p, parities), (ir, parities)
    assert irreps.dim == sum(mul * (2 * ir.l + 1) for mul, ir in irreps)


def _has_zero_mul(irreps):
    return any(mul == 0 for mul, _ in irreps)


def _has_repeated_irrep(irreps):
    irs = [ir for _, ir in irreps]
    return len(set(irs)) < len(irs)


def _is_unsorted(irreps):
    return tuple(irreps) != tuple(irreps.sort().irreps)


@pytest.mark.parametrize(
    "condition",
    [
        pytest.param(lambda i: len(i) == 0, id="empty"),
        pytest.param(lambda i: i.dim == 0 and len(i) > 0, id="only-zero-mul"),
        pytest.param(lambda i: _has_zero_mul(i) and i.dim > 0, id="zero-mul-entry"),
        pytest.param(_has_repeated_irrep, id="repeated"),
        pytest.param(lambda i: _has_repeated_irrep(i) and _is_unsorted(i), id="repeated-unsorted"),
        pytest.param(lambda i: any(ir.l == 2 for _, ir in i), id="max-l"),
        pytest.param(lambda i: any(m == 4 for m, _ in i), id="max-mul"),
        pytest.param(lambda i: len(i) == 4, id="max-entries"),
        pytest.param(lambda i: "0o" in i and "1e" in i, id="pseudo"),
    ],
)
def test_irreps_edge_cases_occur(condition):
    assert condition(_find(testing.irreps(), condition))


def test_irreps_shrink_to_documented_targets():
    assert _minimal(testing.irreps(), lambda i: True) == e3nn.Irreps("")
    assert _minimal(testing.irreps(min_entries=1), lambda i: True) == e3nn.Irreps("0x0e")
    assert _minimal(testing.irreps(allow_zero_mul=False), lambda i: i.dim > 0) == e3nn.Irreps("0e")
    # The shrunk example of a repeated entry is itself a repeated entry.
    assert _minimal(testing.irreps(allow_zero_mul=False), _has_repeated_irrep) == e3nn.Irreps(
        "0e+0e"
    )


@pytest.mark.parametrize(
    ("kwargs", "condition"),
    [
        pytest.param({"allow_zero_mul": False}, _has_zero_mul, id="zero-mul"),
        pytest.param({"min_entries": 1}, lambda i: len(i) == 0, id="empty"),
        pytest.param({"parities": "even"}, lambda i: "0o" in i or "1o" in i, id="odd-in-even"),
        pytest.param({"parities": "proper"}, lambda i: "1e" in i or "0o" in i, id="improper"),
    ],
)
def test_irreps_excluded_cases_never_occur(kwargs, condition):
    with pytest.raises(NoSuchExample):
        _find(testing.irreps(**kwargs), condition)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_l": -1}, id="max_l"),
        pytest.param({"max_mul": 0, "allow_zero_mul": False}, id="max_mul"),
        pytest.param({"min_entries": 3, "max_entries": 2}, id="entries"),
        pytest.param({"min_entries": -1}, id="min_entries"),
        pytest.param({"parities": "all"}, id="parities"),
    ],
)
def test_irreps_reject_bad_arguments(kwargs):
    with pytest.raises((ValueError, TypeError), match="irreps"):
        testing.irreps(**kwargs)


# --- irreps_arrays -----------------------------------------------------------------------------


def _check_values(array: np.ndarray, dtype, max_value: float):
    assert array.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(array))
    assert np.all(np.abs(array.astype(np.float64)) <= max_value)
    nonzero = np.abs(array[array != 0])
    assert np.all(nonzero >= np.finfo(dtype).tiny), "subnormal values"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=str)
@pytest.mark.parametrize(
    ("irreps", "leading_shape"),
    [
        pytest.param("1o", (), id="1o"),
        pytest.param("2x0e + 1x1o + 1x0e", (3,), id="repeated"),
        pytest.param("0x0e + 2x1e", (2, 1), id="zero-mul"),
        pytest.param("", (2,), id="empty"),
        pytest.param("1o", (0,), id="no-rows"),
    ],
)
@hypothesis.given(data=st.data())
def test_irreps_arrays_shape_dtype_values(irreps, leading_shape, dtype, data):
    with jax.enable_x64(dtype == np.float64):
        x = data.draw(testing.irreps_arrays(irreps, leading_shape=leading_shape, dtype=dtype))
    assert isinstance(x, e3nn.IrrepsArray)
    assert isinstance(x.array, jax.Array)
    assert x.irreps == e3nn.Irreps(irreps)
    assert x.shape == leading_shape + (e3nn.Irreps(irreps).dim,)
    _check_values(np.asarray(x.array), dtype, 10.0)


@hypothesis.given(data=st.data())
def test_float64_needs_x64_while_drawing(data):
    # Without x64 a float64 array would compute in float32 and hide float64-only errors.
    with jax.enable_x64(False), pytest.raises(ValueError, match="float64 needs jax_enable_x64"):
        data.draw(testing.irreps_arrays("1o", dtype=np.float64))


@hypothesis.given(data=st.data())
def test_irreps_arrays_from_irreps_strategy(data):
    x = data.draw(testing.irreps_arrays(testing.irreps(max_l=1), leading_shape=(2,)))
    assert x.shape == (2, x.irreps.dim)
    assert all(ir.l <= 1 for _, ir in x.irreps)
    _check_values(np.asarray(x.array), np.float32, 10.0)


@pytest.mark.parametrize(
    ("dtype", "max_value"),
    [
        pytest.param(np.float32, 3.0, id="f32-3"),
        # 0.1 is not a float32; the bound is rounded down so that no value exceeds it.
        pytest.param(np.float32, 0.1, id="f32-0.1"),
        pytest.param(np.float16, 1000.0, id="f16-1000"),
    ],
)
def test_irreps_arrays_max_value_is_reached_not_exceeded(dtype, max_value):
    strategy = testing.irreps_arrays("2x1o", dtype=dtype, max_value=max_value)
    x = _find(strategy, lambda x: np.abs(np.asarray(x.array)).max() > 0.99 * max_value)
    _check_values(np.asarray(x.array), dtype, max_value)
    with pytest.raises(NoSuchExample):
        _find(strategy, lambda x: np.abs(np.asarray(x.array, np.float64)).max() > max_value)


def test_irreps_arrays_values_vary_and_shrink_to_zero():
    strategy = testing.irreps_arrays("1o + 1e", leading_shape=(2,))
    assert np.all(np.asarray(_minimal(strategy, lambda x: True).array) == 0)
    distinct = _find(strategy, lambda x: len(np.unique(np.asarray(x.array))) == 12)
    assert len(np.unique(np.asarray(distinct.array))) == 12
    _find(strategy, lambda x: np.any(np.asarray(x.array) < 0))


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        pytest.param(("1o",), {"dtype": np.int32}, TypeError, id="int-dtype"),
        pytest.param(("1o",), {"max_value": -1.0}, ValueError, id="negative-max"),
        pytest.param(("1o",), {"max_value": float("inf")}, ValueError, id="inf-max"),
        pytest.param(("1o",), {"dtype": np.float16, "max_value": 1e6}, ValueError, id="f16-max"),
        pytest.param(("1q",), {}, ValueError, id="bad-irreps"),
        pytest.param(("1o",), {"leading_shape": (-1,)}, ValueError, id="negative-shape"),
    ],
)
def test_irreps_arrays_reject_bad_arguments(args, kwargs, error):
    with pytest.raises(error, match="irreps_arrays"):
        testing.irreps_arrays(*args, **kwargs)


# --- rotations and o3_matrices -----------------------------------------------------------------


def _check_orthogonal(matrix, det: float, dtype, tol: float):
    assert isinstance(matrix, np.ndarray)
    assert matrix.shape == (3, 3)
    assert matrix.dtype == np.dtype(dtype)
    m = matrix.astype(np.float64)
    np.testing.assert_allclose(m.T @ m, np.eye(3), rtol=0, atol=tol)
    np.testing.assert_allclose(np.linalg.det(m), det, rtol=0, atol=tol)


@pytest.mark.parametrize(
    ("dtype", "tol"), [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["f64", "f32"]
)
@hypothesis.given(data=st.data())
def test_rotations_are_proper_rotations(dtype, tol, data):
    _check_orthogonal(data.draw(testing.rotations(dtype)), 1.0, dtype, tol)


@pytest.mark.parametrize(
    ("inversion", "det"), [(False, 1.0), (True, -1.0)], ids=["rotation", "rotoinversion"]
)
@pytest.mark.parametrize(
    ("dtype", "tol"), [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["f64", "f32"]
)
@hypothesis.given(data=st.data())
def test_o3_matrices_have_the_requested_determinant(inversion, det, dtype, tol, data):
    matrix = data.draw(testing.o3_matrices(inversion=inversion, dtype=dtype))
    _check_orthogonal(matrix, det, dtype, tol)


@hypothesis.given(testing.o3_matrices())
def test_o3_matrices_are_orthogonal(matrix):
    det = np.linalg.det(matrix)
    _check_orthogonal(matrix, np.sign(det), np.float64, 1e-12)


def test_o3_matrices_draw_both_determinants():
    strategy = testing.o3_matrices()
    assert np.linalg.det(_find(strategy, lambda m: np.linalg.det(m) < 0)) == pytest.approx(-1)
    assert np.linalg.det(_find(strategy, lambda m: np.linalg.det(m) > 0)) == pytest.approx(1)


def test_rotations_shrink_to_identity_and_vary():
    identity = _minimal(testing.rotations(), lambda r: True)
    np.testing.assert_allclose(identity, np.eye(3), atol=1e-15)
    # Far from the identity, and a generic rotation (no zero entries).
    _find(testing.rotations(), lambda r: np.trace(r) < -0.5)
    _find(testing.rotations(), lambda r: np.abs(r).min() > 0.1)


def test_rotation_map_is_uniform():
    # For Haar-distributed rotations, E[R] = 0 and tr(R) = 1 + 2 cos(angle) has mean 0 and
    # second moment 1 (the 3D representation is irreducible). A rotation from a normalised
    # vector in the unit cube fails the second test (E[tr(R)^2] ~ 0.71).
    u = np.random.default_rng(0).uniform(size=(20000, 3))
    r = np.stack([_uniform_rotation(*row) for row in u])
    traces = np.trace(r, axis1=1, axis2=2)
    assert np.abs(r.mean(axis=0)).max() < 0.02
    assert abs(traces.mean()) < 0.03
    assert abs((traces**2).mean() - 1.0) < 0.03


def _distance_to_the_cube(r) -> float:
    """How far `r` is from the nearest rotation mapping the axes onto themselves."""
    nearest = np.zeros((3, 3))
    nearest[range(3), np.argmax(np.abs(r), axis=1)] = 1.0
    return float(np.abs(r - nearest * np.sign(r)).max())


def test_rotations_reach_the_coordinate_axes():
    # Exact rotations by multiples of 90 degrees (not the identity), as uniform draws never do.
    quarter = _find(
        testing.rotations(), lambda r: _distance_to_the_cube(r) == 0.0 and np.trace(r) < 3.0
    )
    assert set(np.unique(quarter).tolist()) <= {-1.0, 0.0, 1.0}
    # Within 1e-6 of one, and not on it: a small rotation about an axis.
    near = _find(testing.rotations(), lambda r: 0.0 < _distance_to_the_cube(r) < 1e-6)
    _check_orthogonal(near, 1.0, np.float64, 1e-12)
    # About half the draws are uniform, a quarter exact, a quarter near-axis.
    kinds = {"exact": 0, "near": 0, "other": 0}

    @testing.hypothesis_settings(max_examples=200, database=None)
    @hypothesis.given(testing.rotations())
    def count(r):
        d = _distance_to_the_cube(r)
        kinds["exact" if d == 0.0 else "near" if d < 0.15 else "other"] += 1

    count()
    assert kinds["exact"] >= 25 and kinds["near"] >= 25 and kinds["other"] >= 60, kinds


def test_irreps_arrays_reach_axis_aligned_vectors():
    def aligned(x) -> bool:  # every row one non-zero component, every copy of 1o
        rows = np.asarray(x.array).reshape(2, 2, 3)
        return bool(((rows != 0).sum(axis=-1) == 1).all())

    x = _find(testing.irreps_arrays("2x1o", leading_shape=(2,)), aligned)
    assert np.count_nonzero(np.asarray(x.array)) == 4
