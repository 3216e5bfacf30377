"""Argument checks and default tolerances shared by the equivariance and potential checks (no
e3nn import, so that `assert_potential_symmetries` does not load it)."""

from typing import Any

import jax.numpy as jnp
import numpy as np


def default_tolerance(dtype: Any) -> float:
    """The default `atol` and `rtol` of [`eqmlip.testing.assert_equivariant`][] for a dtype.

    `1e-5` for float32 and narrower floats, `1e-12` for float64 (e3x's tests use `1e-5`; the
    Flax reference layers measure about `5e-7` and `1e-15` with random inputs). Complex
    dtypes use the tolerance of their real part; integer and boolean dtypes get `0.0` (they
    must match exactly).

    **Arguments:**

    - `dtype`: anything `numpy.dtype` accepts, e.g. `jnp.float32` or `x.dtype`.

    **Returns:** the tolerance, a Python float.

    **Example:**

    ```python
    import hypothesis
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.irreps_arrays("1o"), testing.o3_matrices())
    def test_double(x, matrix):
        tol = 10 * testing.default_tolerance(x.dtype)
        testing.assert_equivariant(lambda x: 2 * x, x, matrix=matrix, atol=tol, rtol=tol)
    ```
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "biu":
        return 0.0
    if dtype.kind == "c":
        dtype = np.dtype(f"f{dtype.itemsize // 2}")
    if not jnp.issubdtype(dtype, jnp.floating):  # jnp also knows bfloat16 and float8 types
        raise TypeError(f"default_tolerance: expected a numeric dtype, got {dtype}.")
    return 1e-12 if jnp.finfo(dtype).bits >= 64 else 1e-5


def _check_matrix(caller: str, matrix: Any) -> np.ndarray:
    matrix = np.asarray(matrix)
    if not jnp.issubdtype(matrix.dtype, jnp.floating) or matrix.shape != (3, 3):
        raise ValueError(
            f"{caller}: matrix must be a real 3x3 matrix, got shape {matrix.shape} and dtype "
            f"{matrix.dtype}."
        )
    matrix = matrix.astype(np.float64)
    deviation = np.max(np.abs(matrix.T @ matrix - np.eye(3)))
    if not deviation <= 1e-4:
        raise ValueError(
            f"{caller}: matrix must be orthogonal (a rotation R or a rotoinversion -R), but "
            f"max |M^T M - 1| = {deviation:.3g}; draw it with eqmlip.testing.o3_matrices()."
        )
    # Snap to the nearest orthogonal matrix, so that a float32 matrix can test float64 code.
    u, _, vt = np.linalg.svd(matrix)
    return u @ vt


def _check_translation(caller: str, translation: Any) -> np.ndarray:
    if translation is None:
        return np.zeros(3)
    shift = np.asarray(translation)
    if shift.shape != (3,) or not jnp.issubdtype(shift.dtype, jnp.number):
        raise ValueError(
            f"{caller}: translation must be a vector of shape (3,), got shape {shift.shape} and "
            f"dtype {shift.dtype}."
        )
    return shift.astype(np.float64)
