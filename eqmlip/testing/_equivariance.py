"""Equivariance checks: compare `fn(g.x)` with `g.fn(x)` for one orthogonal matrix `g`."""

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

Matrix = Float[np.ndarray, "3 3"] | Float[Array, "3 3"]


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


def _is_irreps_array(x: Any) -> bool:
    return isinstance(x, e3nn.IrrepsArray)


@functools.cache
def _cg_basis(degree: int) -> Float[np.ndarray, "in out"]:
    """e3nn's Clebsch-Gordan map `(degree-1) x 1 -> degree`, with orthonormal columns."""
    c = np.asarray(e3nn.clebsch_gordan(degree - 1, 1, degree), dtype=np.float64)
    c = c.reshape(-1, 2 * degree + 1)
    return c / np.linalg.norm(c[:, 0])


def _wigner_ds(lmax: int, rotation: Float[np.ndarray, "3 3"]) -> list:
    """Wigner matrices `D^l(R)` in e3nn's real basis for `l <= lmax`, in float64 on the host.

    `D^0 = 1` and `D^1 = R` (degree 1 is `(x, y, z)`); `D^l` is the restriction of
    `D^(l-1) (x) D^1` to the image of the Clebsch-Gordan map. This agrees with
    `e3nn.Irrep(l, p).D_from_matrix(R)` to rounding, without compiling anything.
    """
    ds = [np.ones((1, 1)), rotation]
    for degree in range(2, lmax + 1):
        c = _cg_basis(degree)
        ds.append(c.T @ np.kron(ds[-1], rotation) @ c)
    return ds[: lmax + 1]


def _act(irreps: e3nn.Irreps, array: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`IrrepsArray(irreps, array).transform_by_matrix(matrix).array`, in float64 on the host.

    For `matrix = s R` with `s = det(matrix) = +-1` and `R` a rotation, a `mul x lp` chunk is
    multiplied by `p^((1-s)/2) D^l(R)`.
    """
    sign = 1.0 if np.linalg.det(matrix) > 0 else -1.0
    lmax = max((ir.l for mul, ir in irreps if mul > 0), default=0)
    ds = _wigner_ds(lmax, sign * matrix)
    out = np.empty_like(array)
    lead = array.shape[:-1]
    for (mul, ir), chunk in zip(irreps, irreps.slices(), strict=True):
        if mul == 0:
            continue
        d = ds[ir.l] * (ir.p if sign < 0 else 1)
        x = array[..., chunk].reshape(lead + (mul, ir.dim))
        out[..., chunk] = np.einsum("ij,...uj->...ui", d, x).reshape(lead + (mul * ir.dim,))
    return out


def _transform_input(x: e3nn.IrrepsArray, matrix: np.ndarray, name: str) -> e3nn.IrrepsArray:
    dtype = np.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} is an IrrepsArray of dtype {dtype}; only real floating IrrepsArrays can "
            "be transformed. Pass it as a plain array if it is invariant."
        )
    # Transform in float64, then round once to the input's dtype (so no float64 matrix ever
    # meets float32 data, which strict dtype promotion forbids).
    array = _act(x.irreps, np.asarray(x.array, dtype=np.float64), matrix).astype(dtype)
    if isinstance(x.array, np.ndarray):  # e3nn also accepts NumPy-backed IrrepsArrays
        return e3nn.IrrepsArray(x.irreps, array)  # type: ignore[arg-type]
    # Keep a float64 input float64 even if x64 is off (it was made with x64 on).
    with jax.enable_x64(True) if dtype.itemsize == 8 else contextlib.nullcontext():
        return e3nn.IrrepsArray(x.irreps, jnp.asarray(array))


def _describe(x: Any) -> str:
    if isinstance(x, e3nn.IrrepsArray):
        return f"IrrepsArray {x.irreps}, shape {x.shape}, {x.dtype}"
    return f"array, shape {np.shape(x)}, {np.asarray(x).dtype}"


@dataclasses.dataclass(frozen=True)
class _LeafComparison:
    name: str
    description: str
    actual: np.ndarray  # fn(g.x), float64
    expected: np.ndarray  # g.fn(x), float64 (for plain arrays fn(x): they must be invariant)
    dtype: np.dtype

    def abs_error(self) -> np.ndarray:
        return np.abs(self.actual - self.expected)


def _as_float64(name: str, x: Any) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind not in "biufc":
        raise TypeError(
            f"{name} is not numeric (got {type(x).__name__} of dtype {array.dtype}); fn must "
            "return IrrepsArrays, arrays or numbers (in any pytree)."
        )
    return array.astype(np.complex128 if array.dtype.kind == "c" else np.float64)


def _compare(caller: str, fn: Callable[..., Any], inputs: tuple, matrix: Any) -> list:
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
    matrix = u @ vt

    def transform_input(path: Any, x: Any) -> Any:
        if _is_irreps_array(x):
            return _transform_input(x, matrix, f"input{jax.tree_util.keystr(path)}")
        return x

    g_inputs = jax.tree_util.tree_map_with_path(transform_input, inputs, is_leaf=_is_irreps_array)
    out_of_g = fn(*g_inputs)
    out = fn(*inputs)

    leaves_of_g, tree_of_g = jax.tree_util.tree_flatten_with_path(
        out_of_g, is_leaf=_is_irreps_array
    )
    leaves, tree = jax.tree_util.tree_flatten_with_path(out, is_leaf=_is_irreps_array)
    if tree_of_g != tree:
        raise AssertionError(
            "fn(g.x) and fn(x) have different pytree structures:\n"
            f"  fn(g.x): {tree_of_g}\n  fn(x):   {tree}"
        )

    comparisons = []
    for (path, a), (_, b) in zip(leaves_of_g, leaves, strict=True):
        name = f"output{jax.tree_util.keystr(path)}"
        if _is_irreps_array(b):
            if not _is_irreps_array(a) or a.irreps != b.irreps:
                raise AssertionError(
                    f"{name}: fn(g.x) gives {_describe(a)} but fn(x) gives {_describe(b)}."
                )
            if not jnp.issubdtype(b.dtype, jnp.floating):
                raise TypeError(
                    f"{name} is an IrrepsArray of dtype {b.dtype}; only real floating "
                    "IrrepsArrays can be transformed."
                )
            b_array = _act(b.irreps, np.asarray(b.array, dtype=np.float64), matrix)
            a_array = a.array
        else:
            a_array, b_array = a, b
        if np.shape(a_array) != np.shape(b_array):
            raise AssertionError(
                f"{name}: fn(g.x) has shape {np.shape(a_array)} but fn(x) has shape "
                f"{np.shape(b_array)}."
            )
        comparisons.append(
            _LeafComparison(
                name=name,
                description=_describe(b),
                actual=_as_float64(name, a_array),
                expected=_as_float64(name, b_array),
                dtype=np.dtype(b.dtype) if _is_irreps_array(b) else np.asarray(b).dtype,
            )
        )
    return comparisons


def equivariance_error(
    fn: Callable[..., Any],
    *inputs: Any,
    matrix: Matrix,
) -> float:
    """The largest equivariance error of `fn` under the orthogonal matrix `g = matrix`.

    Computes `max |fn(g.x) - g.fn(x)|` over every component of every output. The action
    `g.x` on an `e3nn.IrrepsArray` is that of `x.transform_by_matrix(g)`: a rotation `R` acts on
    each `mul x lp` chunk by the Wigner matrix `D^l(R)`, and a rotoinversion `-R` additionally
    multiplies it by its parity `p`. Inputs and outputs may be pytrees:

    - input leaves that are `IrrepsArray`s are transformed; any other leaf (arrays, numbers,
        an Equinox module, a PRNG key, ...) is passed through unchanged, i.e. treated as
        invariant;
    - output `IrrepsArray`s are compared with `g.fn(x)`; other output leaves (plain arrays,
        numbers) must be invariant: they are compared with `fn(x)`.

    The group action is computed on the host in float64, from e3nn's Wigner matrices (equal to
    `x.transform_by_matrix(g)` to rounding), so it compiles nothing and adds no error of its
    own: `g.x` is rounded once to the input's dtype, and `g.fn(x)` is compared in float64. A
    float32 `matrix` is snapped to the nearest orthogonal matrix first. `fn` is called twice,
    eagerly; pass a jitted function (`jax.jit(f)`, `eqx.filter_jit(model)`) defined once
    outside the test, so that it compiles once for all examples.

    **Arguments:**

    - `fn`: the function to test, `fn(*inputs)`.
    - `*inputs`: its positional arguments.
    - `matrix`: the group element, a `(3, 3)` rotation or rotoinversion (see
        [`eqmlip.testing.o3_matrices`][]), as a NumPy or JAX array.

    **Returns:** the error, a Python float (`0.0` when the outputs are empty; NaN if an output
    is NaN).

    **Example:**

    ```python
    import e3nn_jax as e3nn
    import hypothesis
    import jax
    from eqmlip import testing

    cross = jax.jit(lambda x, y: e3nn.tensor_product(x, y, filter_ir_out=["1e"]))

    @hypothesis.given(
        testing.irreps_arrays("1o"), testing.irreps_arrays("1o"), testing.o3_matrices()
    )
    def test_cross_product(x, y, matrix):
        assert testing.equivariance_error(cross, x, y, matrix=matrix) < 1e-4
    ```
    """
    comparisons = _compare("equivariance_error", fn, inputs, matrix)
    # np.max, unlike max(), propagates NaN.
    return float(np.max([np.max(c.abs_error(), initial=0.0) for c in comparisons], initial=0.0))


def _leaf_failure(c: _LeafComparison, atol: float, rtol: float) -> str | None:
    error = c.abs_error()
    allowed = atol + rtol * np.abs(c.expected)
    bad = ~(error <= allowed)  # NaN fails
    if not bad.any():
        return None
    excess = np.where(bad, np.nan_to_num(error - allowed, nan=np.inf), -np.inf)
    index = np.unravel_index(np.argmax(excess), excess.shape)
    idx = tuple(int(i) for i in index)
    return (
        f"  {c.name} ({c.description}): {int(bad.sum())} of {bad.size} components exceed the "
        f"tolerance; max |fn(g.x) - g.fn(x)| = {np.max(error, initial=0.0):.3g}. Worst at "
        f"index {idx}: fn(g.x) = {c.actual[index]:.8g}, g.fn(x) = {c.expected[index]:.8g}, "
        f"error {error[index]:.3g} > atol + rtol*|g.fn(x)| = {atol:.3g} + {rtol:.3g}*"
        f"{abs(c.expected[index]):.3g} = {allowed[index]:.3g}."
    )


def assert_equivariant(
    fn: Callable[..., Any],
    *inputs: Any,
    matrix: Matrix,
    atol: float | int | None = None,
    rtol: float | int | None = None,
) -> None:
    """Assert that `fn(g.x) == g.fn(x)` for the orthogonal matrix `g = matrix`.

    Transforms inputs and outputs as [`eqmlip.testing.equivariance_error`][] does, and checks
    every output component with `|fn(g.x) - g.fn(x)| <= atol + rtol * |g.fn(x)|` (as
    `numpy.allclose`). Plain-array outputs are checked for invariance. Use rotations and
    rotoinversions (`o3_matrices()`): only the latter detect wrong output parities.

    The relative term is per component, so a component that is small by cancellation, such as
    a product of large float32 inputs (`e3nn.tensor_product` with `|x| ~ 10` can reach the
    default `1e-5`), needs a larger `atol` or smaller inputs (`irreps_arrays(...,
    max_value=1.0)`).

    **Arguments:**

    - `fn`: the function to test, `fn(*inputs)`.
    - `*inputs`: its positional arguments; `IrrepsArray` leaves are transformed, other leaves
        are passed through unchanged.
    - `matrix`: a `(3, 3)` rotation `R` or rotoinversion `-R`.
    - `atol`, `rtol`: absolute and relative tolerances. `None` gives
        [`eqmlip.testing.default_tolerance`][] of each output's dtype (`1e-5` in float32,
        `1e-12` in float64).

    **Returns:** `None`.

    **Raises:** `AssertionError` naming each failing output (its pytree path, irreps, shape
    and dtype), the error, the tolerance and the worst component; also when `fn(g.x)` and
    `fn(x)` differ in structure, irreps or shape.

    **Example:**

    ```python
    import equinox as eqx
    import hypothesis
    import jax.random as jr
    import eqmlip
    from eqmlip import testing

    layer = eqmlip.nn.Linear("2x0e + 1o", "0e + 2x1o", key=jr.PRNGKey(0))
    apply = eqx.filter_jit(lambda layer, x: layer(x))

    @hypothesis.given(testing.irreps_arrays("2x0e + 1o"), testing.o3_matrices())
    def test_linear_is_equivariant(x, matrix):
        testing.assert_equivariant(apply, layer, x, matrix=matrix)
    ```
    """
    comparisons = _compare("assert_equivariant", fn, inputs, matrix)
    failures = []
    for c in comparisons:
        leaf_atol = default_tolerance(c.dtype) if atol is None else float(atol)
        leaf_rtol = default_tolerance(c.dtype) if rtol is None else float(rtol)
        failure = _leaf_failure(c, leaf_atol, leaf_rtol)
        if failure is not None:
            failures.append(failure)
    if not failures:
        return
    det = float(np.linalg.det(np.asarray(matrix, dtype=np.float64)))
    kind = "rotation" if det > 0 else "rotoinversion"
    message = [
        f"assert_equivariant: fn is not equivariant under a {kind} (det {det:+.0f}): "
        f"{len(failures)} of {len(comparisons)} output leaves differ.",
        *failures,
    ]
    if det < 0:
        message.append(
            "  Under a rotoinversion each irrep picks up its parity: check the parities "
            "(e/o) of the output irreps."
        )
    raise AssertionError("\n".join(message))
