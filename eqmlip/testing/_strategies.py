"""Hypothesis strategies for irreps, irreps arrays and O(3) matrices."""

import functools
import math
from typing import Any, Literal

import e3nn_jax as e3nn
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis.strategies import SearchStrategy

from ._rotations import (
    _uniform_rotation as _uniform_rotation,
    o3_matrices as o3_matrices,
    rotations as rotations,
)

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
