"""Hypothesis strategies for rotations and O(3) matrices (NumPy only: no e3nn import)."""

import itertools
import math
from typing import Any

import hypothesis.strategies as st
import numpy as np
from hypothesis.strategies import SearchStrategy
from jaxtyping import Float


def _quaternion_to_matrix(q: Float[np.ndarray, "4"]) -> Float[np.ndarray, "3 3"]:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=np.float64,
    )


def _uniform_rotation(u1: float, u2: float, u3: float) -> Float[np.ndarray, "3 3"]:
    # Shoemake's map from the unit cube to unit quaternions: uniform (Haar) rotations for
    # uniform u, and the identity at u = 0, which is where Hypothesis shrinks to.
    a, b = math.sqrt(1.0 - u1), math.sqrt(u1)
    t2, t3 = 2.0 * math.pi * u2, 2.0 * math.pi * u3
    q = np.array([a * math.cos(t2), a * math.sin(t2), b * math.sin(t3), b * math.cos(t3)])
    return _quaternion_to_matrix(q)


def _cube_rotations() -> tuple:
    """The 24 proper rotations that map the coordinate axes onto themselves (exact 0/+-1)."""
    out = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), order] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    # The identity first: Hypothesis shrinks a sampled element towards the first.
    out.sort(key=lambda m: -np.trace(m))
    return tuple(out)


_CUBE = _cube_rotations()


def _axis_rotation(axis: int, angle: float) -> Float[np.ndarray, "3 3"]:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _near_axis(index: int, axis: int, exponent: float, sign: float) -> Float[np.ndarray, "3 3"]:
    # A rotation by +-10**exponent rad about a coordinate axis, after a rotation of the cube:
    # close to (but not exactly) one that maps the axes onto themselves.
    return _axis_rotation(axis, sign * 10.0**exponent) @ _CUBE[index]


def _check_float_dtype(name: str, dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"{name}: dtype must be a floating dtype, got {dtype}.")
    return dtype


def rotations(dtype: Any = np.float64) -> SearchStrategy[Float[np.ndarray, "3 3"]]:
    """A strategy for proper rotation matrices `R` (`R^T R = 1`, `det R = +1`).

    Half the draws are uniform (Haar-distributed) for uniform draws: three floats in `[0, 1]`
    are mapped to a unit quaternion by Shoemake's method, then to a matrix, in float64.
    Hypothesis also tries the boundary values, which give the identity (the shrink target) and
    rotations by `pi` about the coordinate axes. The other half are the rotations that uniform
    draws almost never reach and that break code built on angles or divisions (Euler angles,
    `arccos`, axis-angle conversions): a quarter are exact rotations by multiples of 90 degrees
    that map the coordinate axes onto themselves (entries exactly 0 and +-1), and a quarter
    are such a rotation followed by a small rotation (`1e-9` to `1e-1` rad) about a
    coordinate axis.

    **Arguments:**

    - `dtype`: NumPy floating dtype of the result. The matrix is computed in float64 and then
        cast, so in float32 it is orthogonal only to about `1e-7`.

    **Returns:** a `SearchStrategy` of NumPy arrays of shape `(3, 3)`.

    **Example:**

    ```python
    import e3nn_jax as e3nn
    import hypothesis
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.irreps_arrays("1o"), testing.rotations(dtype="float32"))
    def test_rotation_keeps_the_norm(x, rotation):
        y = x.transform_by_matrix(rotation)
        assert abs(e3nn.norm(y).array - e3nn.norm(x).array).max() < 1e-4
    ```
    """
    dtype = _check_float_dtype("rotations", dtype)
    unit = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    uniform = st.tuples(unit, unit, unit).map(lambda u: _uniform_rotation(*u))
    cube = st.sampled_from(range(len(_CUBE))).map(lambda i: _CUBE[i])
    near_axis = st.builds(
        _near_axis,
        st.sampled_from(range(len(_CUBE))),
        st.sampled_from((2, 0, 1)),
        st.floats(-9.0, -1.0),
        st.sampled_from((1.0, -1.0)),
    )
    # Half uniform, a quarter each exact and near-axis; shrinks towards uniform, then identity.
    kind = st.sampled_from((0, 0, 1, 2))
    return kind.flatmap(lambda k: (uniform, cube, near_axis)[k]).map(
        lambda r: r.astype(dtype, copy=False)
    )


def o3_matrices(
    *, inversion: bool | None = None, dtype: Any = np.float64
) -> SearchStrategy[Float[np.ndarray, "3 3"]]:
    """A strategy for orthogonal matrices: rotations `R`, rotoinversions `-R`, or both.

    `R` is drawn by [`eqmlip.testing.rotations`][]; a rotoinversion `-R` (`det = -1`) is the
    rotation followed by the inversion `x -> -x`, under which an irrep of parity `p` picks up a
    factor `p`. Testing with both catches parity errors (for instance a `1o` input written to
    a `1e` output), which rotations alone cannot see.

    **Arguments:**

    - `inversion`: `False` for rotations only, `True` for rotoinversions only, `None` (default)
        for either.
    - `dtype`: NumPy floating dtype of the result (computed in float64, then cast).

    **Returns:** a `SearchStrategy` of NumPy arrays of shape `(3, 3)` with determinant `+1`
    or `-1` as requested.

    **Example:**

    ```python
    import e3nn_jax as e3nn
    import hypothesis
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.irreps_arrays("1o + 2e"), testing.o3_matrices())
    def test_norm_is_invariant(x, matrix):
        testing.assert_equivariant(e3nn.norm, x, matrix=matrix)
    ```
    """
    dtype = _check_float_dtype("o3_matrices", dtype)
    if inversion is None:
        signs: SearchStrategy[float] = st.sampled_from((1.0, -1.0))
    else:
        signs = st.just(-1.0 if inversion else 1.0)
    return st.tuples(rotations(np.float64), signs).map(
        lambda rs: (rs[1] * rs[0]).astype(dtype, copy=False)
    )
