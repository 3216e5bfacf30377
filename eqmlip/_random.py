"""Random draws for parameter initialisation that compile once per size bucket, not per shape.

Eager `jax.random.normal(key, shape)` and `jax.random.split(key, num)` compile a new program for
every distinct shape or count, and building a potential asks for dozens: under load that is
most of a model's construction time. With the default threefry generator in its partitionable
form (the default since JAX 0.5), element `i` of a draw depends only on the key and on `i`
(row-major), so a draw of shape `s` is the first `prod(s)` elements of a longer draw. The
functions here draw one of a few lengths, in one compiled program per length, then cut and
scale the result on the host in numpy (`jax.device_put` back, which compiles nothing, where
`jnp.asarray` compiles a copy per shape), and return what the direct `jax.random` computation
returns, bit for bit (tests/test_random.py checks this). Under tracing (`jax.jit`,
`equinox.filter_eval_shape`), or with another generator, they call `jax.random` directly.

A normal draw is `sqrt(2) erfinv(u)` with `u` uniform in `(-1, 1)` (jax's `_normal_real`); the
sampler returns `erfinv(u)` so that the product with `sqrt(2)` can be taken as jax takes it:
on its own for an eager draw, or folded with a constant factor, as XLA folds
`sqrt(2) * erfinv(u) * std` when both factors are compile-time constants of one program.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax
from jax.core import Tracer
from jaxtyping import Array, PRNGKeyArray

# Lengths drawn: 4096 * 8**k, so that a model's many small arrays share one compiled sampler
# and its few large ones a couple more (at most 8 times the elements needed are drawn).
_MIN_BUCKET, _BUCKET_FACTOR = 4096, 8


def _bucket(size: int, minimum: int = _MIN_BUCKET) -> int:
    bucket = minimum
    while bucket < size:
        bucket *= _BUCKET_FACTOR
    return bucket


def _is_typed(key: Any) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _prefix_draws(key: Any) -> bool:
    """Whether draws from `key` can be cut from a longer draw: a concrete threefry key (typed,
    or raw `uint32[2]` under the default threefry implementation), partitionable threefry."""
    if isinstance(key, Tracer) or not isinstance(key, jax.Array):
        return False
    if not key.is_fully_addressable:  # parts on other processes: not readable here
        return False
    config = cast(Any, jax.config)  # its flags are attributes the type checker cannot see
    if not config.jax_threefry_partitionable:
        return False
    if _is_typed(key):
        return key.shape == () and str(jr.key_impl(key)) == "threefry2x32"
    return (
        key.shape == (2,)
        and key.dtype == jnp.uint32
        and str(config.jax_default_prng_impl) == "threefry2x32"
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _flat_erfinv(key: PRNGKeyArray, size: int, dtype: Any) -> Array:
    """`erfinv(u)` of `jax.random.normal(key, (size,), dtype)`: its draw before the `sqrt(2)`."""
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    u = jr.uniform(key, (size,), dtype, lo, np.array(1.0, dtype))
    return lax.erf_inv(u)


@functools.partial(jax.jit, static_argnums=1)
def _flat_split(key: PRNGKeyArray, num: int) -> Array:
    keys = jr.split(key, num)
    return jr.key_data(keys) if _is_typed(keys) else keys


@functools.partial(jax.jit, static_argnums=1)
def _divide(x: Array, divisor: float) -> Array:
    # As an eager `x / divisor` (a weakly typed Python float) computes it, whatever XLA makes
    # of a division by a constant.
    return x / divisor


def _erfinv(key: PRNGKeyArray, size: int, dtype: Any) -> np.ndarray:
    """The first `size` elements of `_flat_erfinv`, on the host (in the dtype jax draws in)."""
    return np.asarray(_flat_erfinv(key, _bucket(size), np.dtype(dtype)))[:size]


def _sqrt2(dtype: Any) -> np.ndarray:
    return np.asarray(np.sqrt(2), dtype)


def normal(
    key: PRNGKeyArray,
    shape: Sequence[int],
    dtype: Any,
    std: float | None = None,
    *,
    divisor: float | None = None,
) -> Array:
    """`jax.random.normal(key, shape, dtype)`, times `jnp.asarray(std, dtype)` or divided by
    the Python float `divisor` (neither when both are `None`), each an eager operation, bit for
    bit, without compiling a sampler for this shape."""
    if std is not None and divisor is not None:
        raise ValueError(f"normal: give std or divisor, not both (got {std} and {divisor}).")
    shape = tuple(int(d) for d in shape)
    if not _prefix_draws(key):
        x = jr.normal(key, shape, dtype)
        if std is not None:
            return x * jnp.asarray(std, dtype)
        return x if divisor is None else x / divisor
    size = math.prod(shape)
    e = _erfinv(key, size, dtype)
    # Each product in the draw's dtype, as jax's `lax.mul` and `x * jnp.asarray(std, dtype)`.
    x = _sqrt2(e.dtype) * e
    if std is not None:
        x = x * np.asarray(std, x.dtype)
    elif divisor is not None:
        # Divided on the device at the bucket's length: one small program per divisor.
        padded = np.zeros(_bucket(size), x.dtype)
        padded[:size] = x
        x = np.asarray(_divide(jax.device_put(padded), float(divisor)))[:size]
    return jax.device_put(x.reshape(shape))


def normal_pieces(
    key: PRNGKeyArray, shapes: Sequence[Sequence[int]], stds: Sequence[float], dtype: Any
) -> tuple[Array, ...]:
    """Independent `N(0, std**2)` arrays of the given shapes, cut in order from one normal
    draw of their total size: bit for bit what one jitted program computes from
    `jax.random.normal(key, (total,), dtype)` by slicing each piece, reshaping it and
    multiplying it by `jnp.asarray(std, dtype)`. There XLA folds `sqrt(2) * std` into one
    constant for a piece that spans the whole draw (its slice is the identity); other pieces
    are plain products."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    stds = [float(s) for s in stds]
    if len(shapes) != len(stds):
        raise ValueError(f"normal_pieces: got {len(shapes)} shapes and {len(stds)} stds.")
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    if not _prefix_draws(key):
        return _normal_pieces_jit(key, tuple(shapes), tuple(stds), np.dtype(dtype))
    e = _erfinv(key, total, dtype)
    sqrt2 = _sqrt2(e.dtype)
    flat = sqrt2 * e
    out = []
    start = 0
    for shape, size, std in zip(shapes, sizes, stds, strict=True):
        c = np.asarray(std, e.dtype)
        if size == total:
            piece = e.reshape(shape) * (sqrt2 * c)
        else:
            piece = flat[start : start + size].reshape(shape) * c
        out.append(jax.device_put(piece))
        start += size
    return tuple(out)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _normal_pieces_jit(
    key: PRNGKeyArray, shapes: tuple[tuple[int, ...], ...], stds: tuple[float, ...], dtype: Any
) -> tuple[Array, ...]:
    flat = jr.normal(key, (sum(math.prod(s) for s in shapes),), dtype)
    out = []
    start = 0
    for shape, std in zip(shapes, stds, strict=True):
        size = math.prod(shape)
        out.append(flat[start : start + size].reshape(shape) * jnp.asarray(std, dtype))
        start += size
    return tuple(out)


def split(key: PRNGKeyArray, num: int = 2) -> tuple[PRNGKeyArray, ...]:
    """The keys of `jax.random.split(key, num)`, bit for bit, as a tuple (what unpacking or
    iterating the split gives), without compiling a split for this `num`."""
    num = int(num)
    if not _prefix_draws(key):
        return tuple(jr.split(key, num))
    data = np.asarray(_flat_split(key, _bucket(num, 64)))[:num]
    if _is_typed(key):
        impl = jr.key_impl(key)
        return tuple(jr.wrap_key_data(row, impl=impl) for row in data)
    return tuple(jax.device_put(row) for row in data)
