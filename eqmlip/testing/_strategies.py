"""Hypothesis strategies for irreps, irreps arrays and O(3) matrices."""

import functools
import itertools
import math
from typing import Any, Literal

import e3nn_jax as e3nn
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis.strategies import SearchStrategy
from jaxtyping import Float

Parities = Literal["both", "even", "odd", "proper"]
_PARITIES = ("both", "even", "odd", "proper")


# Helpers called while drawing must not have variadic container hints (`tuple[int, ...]`): the
# runtime checker samples their items with the `random` module, which Hypothesis forbids there.
def _parity_choices(degree: int, parities: str) -> tuple[int] | tuple[int, int]:
    if parities == "both":
        return (1, -1)
    if parities == "even":
        return (1,)
    if parities == "odd":
        return (-1,)
    return ((-1) ** degree,)


def _make_irreps(entries: list) -> e3nn.Irreps:
    items: list[Any] = [(mul, e3nn.Irrep(degree, parity)) for mul, (degree, parity) in entries]
    return e3nn.Irreps(items)


def irreps(
    *,
    max_l: int = 2,
    max_mul: int = 4,
    max_entries: int = 4,
    min_entries: int = 0,
    parities: Parities = "both",
    allow_zero_mul: bool = True,
) -> SearchStrategy[e3nn.Irreps]:
    """A strategy for `e3nn.Irreps`, edge cases included.

    Each drawn irreps is a list of `min_entries` to `max_entries` entries `mul x l p`, with
    `0 <= l <= max_l` and `0 <= mul <= max_mul` (`1 <= mul` without `allow_zero_mul`). The
    entries are neither sorted nor merged, so the strategy produces the cases that layers get
    wrong: the empty irreps `""`, zero multiplicities (`"0x0e"`, `"2x1o+0x2e"`) and repeated,
    unsorted entries (`"2x0e+1x1o+1x0e"`). It shrinks towards fewer entries with smaller `l`
    and `mul` (to `""`, or `"0x0e"` when `min_entries=1`). Call `.simplify()` or `.regroup()`
    on the result if your code needs a canonical form.

    **Arguments:**

    - `max_l`: largest degree `l`.
    - `max_mul`: largest multiplicity.
    - `max_entries`: largest number of entries (as in `len(irreps)`).
    - `min_entries`: smallest number of entries; `0` allows the empty irreps.
    - `parities`: which parities `p` to draw: `"both"` (`e` and `o`), `"even"` (`e` only),
        `"odd"` (`o` only) or `"proper"` (`p = (-1)^l`: `0e, 1o, 2e, 3o, ...`, the irreps of
        e3x's `P=1` features and of spherical harmonics).
    - `allow_zero_mul`: allow entries with multiplicity `0`.

    **Returns:** a `SearchStrategy[e3nn.Irreps]`.

    **Example:**

    ```python
    import hypothesis
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.irreps(max_l=3, parities="proper"))
    def test_dim(irreps):
        assert irreps.dim == sum(mul * (2 * ir.l + 1) for mul, ir in irreps)
    ```
    """
    if max_l < 0:
        raise ValueError(f"irreps: max_l must be >= 0, got {max_l}.")
    min_mul = 0 if allow_zero_mul else 1
    if max_mul < min_mul:
        raise ValueError(
            f"irreps: max_mul must be >= {min_mul} (allow_zero_mul={allow_zero_mul}), "
            f"got {max_mul}."
        )
    if not 0 <= min_entries <= max_entries:
        raise ValueError(
            "irreps: need 0 <= min_entries <= max_entries, got "
            f"min_entries={min_entries}, max_entries={max_entries}."
        )
    if parities not in _PARITIES:
        raise ValueError(f"irreps: parities must be one of {_PARITIES}, got {parities!r}.")

    def entry(degree: int) -> SearchStrategy[tuple[int, tuple[int, int]]]:
        return st.tuples(
            st.integers(min_mul, max_mul),
            st.tuples(st.just(degree), st.sampled_from(_parity_choices(degree, parities))),
        )

    entries = st.lists(
        st.integers(0, max_l).flatmap(entry), min_size=min_entries, max_size=max_entries
    )
    return entries.map(_make_irreps)


def _elements(dtype: np.dtype, max_value: float) -> SearchStrategy[float]:
    """Finite, normal (or zero) floats in `[-max_value, max_value]` that fit `dtype`."""
    # Hypothesis wants bounds that are exactly representable at the drawn width.
    bound = float(np.asarray(max_value, dtype=dtype))
    if bound > max_value:
        bound = float(np.nextafter(np.asarray(bound, dtype=dtype), np.asarray(0, dtype=dtype)))
    return st.floats(
        min_value=-bound,
        max_value=bound,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
        width=8 * dtype.itemsize,  # type: ignore[arg-type]
    )


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(np.float64) == np.dtype(np.float64)


def _irreps_array(irreps: e3nn.Irreps, array: np.ndarray) -> e3nn.IrrepsArray:
    if array.dtype == np.float64 and not _x64_enabled():
        # Otherwise the array would be float64 while every computation on it ran in float32,
        # and a float64-only error would pass at the float32 tolerance.
        raise ValueError(
            "irreps_arrays: dtype float64 needs jax_enable_x64 on while Hypothesis draws and "
            "while the test runs; enable it for the whole test (`jax.config.update("
            "'jax_enable_x64', True)`, a fixture around the test, or draw inside `with "
            "jax.enable_x64(True):` with `data.draw`), or draw float32."
        )
    return e3nn.IrrepsArray(irreps, jnp.asarray(array))


def _keep_one(widths: Any, array: np.ndarray, keep: Any) -> np.ndarray:
    """`array` with, in each row, only component `keep[row][k]` of the k-th irrep copy."""
    mask = np.zeros((math.prod(array.shape[:-1]), array.shape[-1]), dtype=bool)
    for row, kept in enumerate(keep):
        start = 0
        for width, k in zip(widths, kept, strict=True):
            mask[row, start + k] = True
            start += width
    return np.where(mask.reshape(array.shape), array, np.zeros((), array.dtype))


def irreps_arrays(
    irreps: e3nn.Irreps | str | SearchStrategy[e3nn.Irreps],
    *,
    leading_shape: tuple[int, ...] = (),
    dtype: Any = np.float32,
    max_value: float = 10.0,
) -> SearchStrategy[e3nn.IrrepsArray]:
    """A strategy for `e3nn.IrrepsArray`s with finite values.

    Every component is a finite float in `[-max_value, max_value]`: no NaN, no infinity and
    no subnormals, exactly representable in `dtype`. Values shrink towards zero, and many
    drawn arrays are sparse (most components exactly zero); half keep only one component
    of each irrep copy in every row (for `1o`, vectors along a coordinate axis), where code
    built on angles or divisions breaks.
    The array is a JAX array of shape `leading_shape + (irreps.dim,)` and exactly the requested
    `dtype`.
    Drawing float64 raises `ValueError` unless `jax_enable_x64` is on at the draw (JAX would
    otherwise compute in float32 and hide float64-only errors): enable it for the whole test.

    Pass fixed irreps where you can: a new irreps means a new shape, hence a new compilation
    of a jitted function, and compilation dominates the run time of small JAX tests.

    **Arguments:**

    - `irreps`: the irreps (an `e3nn.Irreps` or a string such as `"2x0e + 1o"`), or a
        strategy drawing them, such as [`eqmlip.testing.irreps`][].
    - `leading_shape`: the batch shape in front of the irreps axis.
    - `dtype`: a NumPy floating dtype: `float16`, `float32` or `float64`.
    - `max_value`: bound on the absolute value of every component; positive and finite.

    **Returns:** a `SearchStrategy[e3nn.IrrepsArray]`.

    **Example:**

    ```python
    import e3nn_jax as e3nn
    import hypothesis
    from eqmlip import testing

    @testing.hypothesis_settings()
    @hypothesis.given(testing.irreps_arrays("1o + 2e", leading_shape=(5,)))
    def test_norm_is_nonnegative(x):
        assert (e3nn.norm(x).array >= 0).all()
    ```
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"irreps_arrays: dtype must be float16, float32 or float64, got {dtype}.")
    if not (math.isfinite(max_value) and max_value > 0):
        raise ValueError(f"irreps_arrays: max_value must be positive and finite, got {max_value}.")
    if max_value > float(np.finfo(dtype).max):
        raise ValueError(
            f"irreps_arrays: max_value={max_value} does not fit {dtype} "
            f"(largest finite value {np.finfo(dtype).max})."
        )
    leading_shape = tuple(leading_shape)
    if any(n < 0 for n in leading_shape):
        raise ValueError(f"irreps_arrays: leading_shape must be non-negative, got {leading_shape}.")
    elements = _elements(dtype, max_value)

    def for_irreps(ir: e3nn.Irreps | str) -> SearchStrategy[e3nn.IrrepsArray]:
        ir = e3nn.Irreps(ir)
        # Zero fill: Hypothesis then draws sparse arrays too, such as vectors along an axis,
        # where code built on angles or divisions breaks.
        arrays = hnp.arrays(dtype, leading_shape + (ir.dim,), elements=elements, fill=st.just(0.0))
        # Half the draws keep one component of each irrep copy in every row: vectors along a
        # coordinate axis, which the sparse draws above reach only now and then (a bug that
        # only axis-aligned inputs reveal was caught in 65 of 100 random runs of 20 examples
        # with sparse draws alone, 99 of 100 with these).
        widths = [ir_.dim for mul, ir_ in ir for _ in range(mul)]
        rows = math.prod(leading_shape)
        keep = st.lists(
            st.tuples(*[st.integers(0, w - 1) for w in widths]), min_size=rows, max_size=rows
        )
        dense = hnp.arrays(dtype, leading_shape + (ir.dim,), elements=elements)
        aligned = st.tuples(dense, keep).map(lambda ak: _keep_one(widths, *ak))
        kind = st.sampled_from((0, 1))
        drawn = kind.flatmap(lambda k: aligned if k else arrays)
        return drawn.map(functools.partial(_irreps_array, ir))

    if isinstance(irreps, SearchStrategy):
        return irreps.flatmap(for_irreps)
    try:
        irreps = e3nn.Irreps(irreps)
    except ValueError as e:
        raise ValueError(f"irreps_arrays: cannot read irreps {irreps!r}: {e}") from e
    return for_irreps(irreps)


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
