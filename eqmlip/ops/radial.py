"""Radial bases of distances (e3x's families, NequIP's Bessel embedding) and e3x's
radial-angular basis."""

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .cutoffs import ENVELOPE_FUNCTIONS, ENVELOPES, Scalar, smooth_switch
from .layouts import _check_degree
from .segment import safe_norm
from .so3 import spherical_harmonics

ReciprocalKind = Literal["shifted", "damped", "cuspless"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _bernstein(x: Float[Array, "*shape"], num: int) -> Float[Array, "*shape {num}"]:
    """`B_{v,n}(x) = binom(n, v) x^v (1-x)^(n-v)`, `n = num - 1`, `v = 0..n`.

    Inputs below `epsneg` count as 0 and above `1 - epsneg` as 1 (as in e3x), which also
    extends the basis constantly outside `[0, 1]`. Evaluated as products of integer powers:
    no logarithms, so no NaN anywhere.
    """
    if num < 1:
        raise ValueError(f"bernstein: num must be >= 1, got {num}.")
    if num == 1:
        return jnp.ones_like(x)[..., None]
    n = num - 1
    eps = jnp.finfo(x.dtype).epsneg
    x = jnp.where(x < eps, 0.0, jnp.where(x > 1 - eps, 1.0, x)).astype(x.dtype)
    y = 1 - x
    powers_x = [jnp.ones_like(x)]
    powers_y = [jnp.ones_like(x)]
    for _ in range(n):
        powers_x.append(powers_x[-1] * x)
        powers_y.append(powers_y[-1] * y)
    terms = [math.comb(n, v) * powers_x[v] * powers_y[n - v] for v in range(n + 1)]
    return jnp.stack(terms, axis=-1)


@_bernstein.defjvp
def _bernstein_jvp(num: int, primals: tuple, tangents: tuple) -> tuple:
    # d/dx B_{v,n} = n (B_{v-1,n-1} - B_{v,n-1}), with B_{-1,n-1} = B_{n,n-1} = 0.
    (x,), (x_dot,) = primals, tangents
    out = _bernstein(x, num)
    if num == 1:
        return out, jnp.zeros_like(out)
    lower = _bernstein(x, num - 1)
    zero = jnp.zeros_like(lower[..., :1])
    derivative = (num - 1) * (
        jnp.concatenate([zero, lower], axis=-1) - jnp.concatenate([lower, zero], axis=-1)
    )
    return out, derivative * x_dot[..., None]


def basic_bernstein(
    x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0
) -> Float[Array, "*shape {num}"]:
    """Bernstein polynomials on `[0, limit]`, as `e3x.nn.basic_bernstein`.

    $$b_k(x) = \\binom{K-1}{k} \\left(\\frac{x}{l}\\right)^k
        \\left(1 - \\frac{x}{l}\\right)^{K-1-k}, \\qquad k = 0..K-1$$

    with `K = num` and `l = limit`; below 0 the basis is `(1, 0, ..., 0)` and above `limit`
    `(0, ..., 0, 1)`. The derivative is the analytic one (a custom JVP, as in e3x).

    **Arguments:**

    - `x`: input values, any shape.
    - `num`: number of basis functions `K >= 1`.
    - `limit`: right end of the interval.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _bernstein(x / limit, num)


def reciprocal_mapping(
    x: Float[Array, "*shape"], kind: ReciprocalKind = "shifted"
) -> Float[Array, "*shape"]:
    """Map `[0, inf)` to `(0, 1]`, as `e3x.nn.reciprocal_mapping`.

    `"shifted"`: `1 / (x + 1)`; `"damped"`: `(1 - exp(-x)) / x` (a Taylor expansion below
    `eps`); `"cuspless"`: `1 / (x + exp(-x))`.

    **Arguments:**

    - `x`: input values.
    - `kind`: `"shifted"`, `"damped"` or `"cuspless"`.

    **Returns:** shape and dtype of `x`.
    """
    if kind == "shifted":
        return 1 / (x + 1)
    if kind == "damped":
        small = x < jnp.finfo(x.dtype).eps
        safe = jnp.where(small, 1.0, x).astype(x.dtype)
        return jnp.where(small, 1 - x / 2 + x * x / 6, -jnp.expm1(-safe) / safe)
    if kind == "cuspless":
        return 1 / (x + jnp.exp(-x))
    raise ValueError(
        f"reciprocal_mapping: kind must be 'shifted', 'damped' or 'cuspless', got {kind!r}."
    )


def exponential_mapping(
    x: Float[Array, "*shape"], gamma: Scalar = 1.0, cuspless: bool = False
) -> Float[Array, "*shape"]:
    """Map `[0, inf)` to `(0, 1]` by `exp(-gamma x)`, as `e3x.nn.exponential_mapping`.

    With `cuspless`, `x` is first replaced by `x + exp(-x) - 1` (zero slope at 0).

    **Arguments:**

    - `x`: input values.
    - `gamma`: decay constant.
    - `cuspless`: remove the cusp at 0.

    **Returns:** shape and dtype of `x`.
    """
    if cuspless:
        x = x + jnp.exp(-x) - 1
    return jnp.exp(-gamma * x)


def _of_mapping(
    fn: Callable[[Array, int], Array], mapping: Array, num: int, weighting: bool
) -> Array:
    """`fn(1 - mapping, num)`, times `mapping` with `weighting`: e3x's mapped radial bases."""
    out = fn(1 - mapping, num)
    return out * mapping[..., None] if weighting else out


def reciprocal_bernstein(
    x: Float[Array, "*shape"],
    num: int,
    kind: ReciprocalKind = "shifted",
    use_reciprocal_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Bernstein polynomials of `1 - reciprocal_mapping(x)`, as `e3x.nn.reciprocal_bernstein`.

    $$g_k(x) = b_k\\big(1 - \\rho(x)\\big) \\quad\\text{or}\\quad
      \\rho(x)\\, b_k\\big(1 - \\rho(x)\\big)$$

    (the second with `use_reciprocal_weighting`), `rho` the reciprocal mapping of `kind`.
    A common radial basis of e3x models; at `x = 0` it is `(1, 0, ..., 0)`.

    **Arguments:**

    - `x`: input values (distances), any shape.
    - `num`: number of basis functions.
    - `kind`: the reciprocal mapping, `"shifted"` (default), `"damped"` or `"cuspless"`.
    - `use_reciprocal_weighting`: multiply by the mapping.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _of_mapping(_bernstein, reciprocal_mapping(x, kind), num, use_reciprocal_weighting)


def exponential_bernstein(
    x: Float[Array, "*shape"],
    num: int,
    gamma: Scalar = 1.0,
    cuspless: bool = False,
    use_exponential_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Bernstein polynomials of `1 - exp(-gamma x)`, as `e3x.nn.exponential_bernstein`.

    $$g_k(x) = b_k\\big(1 - e^{-\\gamma x}\\big)$$

    (times `exp(-gamma x)` with `use_exponential_weighting`; see `exponential_mapping` for
    `cuspless`).

    **Arguments:**

    - `x`: input values, any shape.
    - `num`: number of basis functions.
    - `gamma`: decay constant.
    - `cuspless`: use the cuspless exponential mapping.
    - `use_exponential_weighting`: multiply by the mapping.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _of_mapping(
        _bernstein, exponential_mapping(x, gamma, cuspless), num, use_exponential_weighting
    )


def _gaussian(x: Float[Array, "*shape"], num: int) -> Float[Array, "*shape {num}"]:
    if num < 1:
        raise ValueError(f"gaussian: num must be >= 1, got {num}.")
    # Constants computed in the dtype of `x`, as e3x computes them in its default dtype.
    centers = jnp.linspace(0.0, 1.0, num, dtype=x.dtype)
    gamma = jnp.sqrt(jnp.asarray(2 * num, x.dtype)) * (num - 1)
    return jnp.exp(-gamma * (x[..., None] - centers) ** 2)


def basic_gaussian(
    x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0
) -> Float[Array, "*shape {num}"]:
    """Gaussians centred on `linspace(0, limit, num)`, as `e3x.nn.basic_gaussian`.

    $$g_k(x) = \\exp\\big(-\\gamma (x / l - \\mu_k)^2\\big), \\quad
      \\mu_k = \\tfrac{k}{K-1}, \\quad \\gamma = \\sqrt{2K}\\,(K-1)$$

    **Arguments:**

    - `x`: input values.
    - `num`: number of functions `K`.
    - `limit`: the last centre `l`.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _gaussian(x / limit, num)


def reciprocal_gaussian(
    x: Float[Array, "*shape"],
    num: int,
    kind: ReciprocalKind = "shifted",
    use_reciprocal_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Gaussians of `1 - reciprocal_mapping(x)`, as `e3x.nn.reciprocal_gaussian`.

    See `basic_gaussian` and `reciprocal_bernstein` for the pieces.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _of_mapping(_gaussian, reciprocal_mapping(x, kind), num, use_reciprocal_weighting)


def exponential_gaussian(
    x: Float[Array, "*shape"],
    num: int,
    gamma: Scalar = 1.0,
    cuspless: bool = False,
    use_exponential_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Gaussians of `1 - exponential_mapping(x)`, as `e3x.nn.exponential_gaussian`.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _of_mapping(
        _gaussian, exponential_mapping(x, gamma, cuspless), num, use_exponential_weighting
    )


def _fourier(x: Float[Array, "*shape"], num: int) -> Float[Array, "*shape {num}"]:
    if num < 1:
        raise ValueError(f"fourier: num must be >= 1, got {num}.")
    # pi * k rounded in the dtype of `x`, as e3x computes it (this matters at large k x).
    frequencies = jnp.asarray(np.pi, x.dtype) * jnp.arange(num, dtype=x.dtype)
    return jnp.cos(frequencies * x[..., None])


def basic_fourier(
    x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0
) -> Float[Array, "*shape {num}"]:
    """Cosines `cos(pi k x / limit)`, `k = 0..num-1`, as `e3x.nn.basic_fourier`.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _fourier(x / limit, num)


def reciprocal_fourier(
    x: Float[Array, "*shape"],
    num: int,
    kind: ReciprocalKind = "shifted",
    use_reciprocal_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Cosines of `1 - reciprocal_mapping(x)`, as `e3x.nn.reciprocal_fourier`.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _of_mapping(_fourier, reciprocal_mapping(x, kind), num, use_reciprocal_weighting)


def exponential_fourier(
    x: Float[Array, "*shape"],
    num: int,
    gamma: Scalar = 1.0,
    cuspless: bool = False,
    use_exponential_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Cosines of `1 - exponential_mapping(x)`, as `e3x.nn.exponential_fourier`.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _of_mapping(
        _fourier, exponential_mapping(x, gamma, cuspless), num, use_exponential_weighting
    )


def sinc(x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0) -> Float[Array, "*shape {num}"]:
    """`sinc(k x / limit)`, `k = 1..num`, zero beyond `limit`, as `e3x.nn.sinc`.

    $$g_k(x) = \\frac{\\sin(\\pi k x / l)}{\\pi k x / l} \\ (x \\le l), \\qquad 0 \\ (x > l)$$

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    scaled = (x / limit)[..., None]
    k = jnp.arange(1, num + 1, dtype=x.dtype)
    return jnp.where(scaled <= 1.0, jnp.sinc(k * scaled), 0.0).astype(x.dtype)


def _chebyshev(x: Float[Array, "*shape"], num: int) -> Float[Array, "*shape {num}"]:
    """`T_k(x) = cos(k arccos x)`, `k = 0..num-1`, for `x` in `[-1, 1]`.

    Within `epsneg` of `+-1`, where `arccos` has an infinite slope, the second-order Taylor
    expansions `T_k(1 + d) = 1 + k^2 d + k^2 (k^2 - 1) d^2 / 6` (and its mirror at -1) are used,
    as in e3x, so values and derivatives are finite.
    """
    if num < 1:
        raise ValueError(f"chebyshev: num must be >= 1, got {num}.")
    x = x[..., None]
    if num == 1:
        return jnp.ones_like(x)
    k = np.arange(num)
    k2 = jnp.asarray(k * k, x.dtype)
    sign = jnp.asarray((-1.0) ** k, x.dtype)
    edge = 1 - jnp.finfo(x.dtype).epsneg
    low, high = x < -edge, x > edge
    inside = jnp.where(low | high, jnp.zeros_like(x), x)
    d_low, d_high = x + 1, x - 1
    near_low = sign * (1 - k2 * d_low + k2 * (k2 - 1) / 6 * d_low * d_low)
    near_high = 1 + k2 * d_high + k2 * (k2 - 1) / 6 * d_high * d_high
    cosines = jnp.cos(jnp.asarray(k, x.dtype) * jnp.arccos(inside))
    return jnp.where(low, near_low, jnp.where(high, near_high, cosines))


def basic_chebyshev(
    x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0
) -> Float[Array, "*shape {num}"]:
    """Chebyshev polynomials on `[0, limit]`, as `e3x.nn.basic_chebyshev`.

    $$g_k(x) = T_k\\big(2x/l - 1\\big) = \\cos\\big(k \\arccos(2x/l - 1)\\big), \\qquad
      k = 0..K-1$$

    continued constantly outside `[0, l]` (`(-1)^k` below 0, `1` above `l`).

    **Arguments:**

    - `x`: input values, any shape.
    - `num`: number of basis functions `K >= 1`.
    - `limit`: right end `l` of the interval.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    t = 2 * x / limit - 1
    outside = jnp.where(t[..., None] < 0, -1.0, 1.0).astype(x.dtype) ** jnp.arange(num)
    return jnp.where(jnp.abs(t[..., None]) <= 1, _chebyshev(t, num), outside.astype(x.dtype))


def _chebyshev_of_mapping(mapping: Array, num: int, weighting: bool) -> Array:
    """`T_k(2 mapping - 1)`, times `mapping` with `weighting`: e3x's mapped Chebyshev bases."""
    out = _chebyshev(2 * mapping - 1, num)
    return out * mapping[..., None] if weighting else out


def reciprocal_chebyshev(
    x: Float[Array, "*shape"],
    num: int,
    kind: ReciprocalKind = "shifted",
    use_reciprocal_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Chebyshev polynomials of `2 rho(x) - 1`, `rho` the reciprocal mapping, as
    `e3x.nn.reciprocal_chebyshev`.

    $$g_k(x) = T_k\\big(2\\rho(x) - 1\\big) \\quad\\text{or}\\quad
      \\rho(x)\\, T_k\\big(2\\rho(x) - 1\\big)$$

    (the second with `use_reciprocal_weighting`).

    **Arguments:**

    - `x`: input values (distances), any shape.
    - `num`: number of basis functions.
    - `kind`: the reciprocal mapping, `"shifted"` (default), `"damped"` or `"cuspless"`.
    - `use_reciprocal_weighting`: multiply by the mapping.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    return _chebyshev_of_mapping(reciprocal_mapping(x, kind), num, use_reciprocal_weighting)


def exponential_chebyshev(
    x: Float[Array, "*shape"],
    num: int,
    gamma: Scalar = 1.0,
    cuspless: bool = False,
    use_exponential_weighting: bool = False,
) -> Float[Array, "*shape {num}"]:
    """Chebyshev polynomials of `2 exp(-gamma x) - 1`, as `e3x.nn.exponential_chebyshev`.

    $$g_k(x) = T_k\\big(2 e^{-\\gamma x} - 1\\big)$$

    (times `exp(-gamma x)` with `use_exponential_weighting`; see `exponential_mapping` for
    `cuspless`).

    **Arguments:**

    - `x`: input values, any shape.
    - `num`: number of basis functions.
    - `gamma`: decay constant.
    - `cuspless`: use the cuspless exponential mapping.
    - `use_exponential_weighting`: multiply by the mapping.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    mapping = exponential_mapping(x, gamma, cuspless)
    return _chebyshev_of_mapping(mapping, num, use_exponential_weighting)


def _window_edges(num: int, limit: Scalar, dtype: Any) -> Array:
    """`num + 1` equally spaced points from 0 to `limit`."""
    if num < 1:
        raise ValueError(f"window: num must be >= 1, got {num}.")
    return jnp.linspace(0.0, limit, num + 1, dtype=dtype)


def rectangular_window(
    x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0
) -> Float[Array, "*shape {num}"]:
    """Indicators of `num` equal intervals of `[0, limit]`, as `e3x.nn.rectangular_window`.

    $$g_k(x) = [\\,k l / K \\le x \\le (k+1) l / K\\,], \\qquad k = 0..K-1$$

    (both ends included, so a point on a boundary is in both intervals).

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    edges = _window_edges(num, limit, x.dtype)
    x = x[..., None]
    return ((x >= edges[:-1]) & (x <= edges[1:])).astype(x.dtype)


def triangular_window(
    x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0
) -> Float[Array, "*shape {num}"]:
    """Hat functions centred on `k l / K` with half-width `l / K`, as
    `e3x.nn.triangular_window`.

    $$g_k(x) = \\max\\big(0,\\ 1 - |x - k l / K| \\,K / l\\big), \\qquad k = 0..K-1$$

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    centres = _window_edges(num, limit, x.dtype)[:-1]
    width = jnp.asarray(limit, x.dtype) / num
    x = x[..., None]
    # The rising and the falling edge, the smaller of the two, clipped at 0 (at a kink the
    # derivative is the mean of the two sides, as e3x's).
    rising, falling = (x - (centres - width)) / width, ((centres + width) - x) / width
    return jnp.maximum(jnp.minimum(rising, falling), 0)


def smooth_window(
    x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0
) -> Float[Array, "*shape {num}"]:
    """Smooth bumps built from [`eqmlip.ops.cutoffs.smooth_switch`][], as
    `e3x.nn.smooth_window`.

    $$g_k(x) = s(u_k + 1) - s(u_k), \\qquad u_k = \\frac{K}{l}\\Big(x - \\frac{k l}{K}\\Big)$$

    Bump `k` rises over `[(k-1) l/K, k l/K]` and falls over `[k l/K, (k+1) l/K]`.

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    centres = _window_edges(num, limit, x.dtype)[:-1]
    u = num / limit * (x[..., None] - centres)
    return smooth_switch(u + 1) - smooth_switch(u)


@overload
def basis(
    r: Float[Array, "*batch 3"],
    *,
    max_degree: int,
    num: int,
    radial_fn: Callable[[Array, int], Array],
    angular_fn: Callable[..., Array] | None = None,
    cutoff_fn: Callable[[Array], Array] | None = None,
    return_cutoff: Literal[False] = False,
    return_norm: Literal[False] = False,
    damping_fn: Callable[[Array], Array] | None = None,
    cartesian_order: bool = True,
) -> Float[Array, "*batch 1 {(max_degree+1)**2} {num}"]: ...


@overload
def basis(
    r: Float[Array, "*batch 3"],
    *,
    max_degree: int,
    num: int,
    radial_fn: Callable[[Array, int], Array],
    angular_fn: Callable[..., Array] | None = None,
    cutoff_fn: Callable[[Array], Array] | None = None,
    return_cutoff: bool = False,
    return_norm: bool = False,
    damping_fn: Callable[[Array], Array] | None = None,
    cartesian_order: bool = True,
) -> Float[Array, "*batch 1 {(max_degree+1)**2} {num}"] | tuple[Float[Array, "..."], ...]: ...


def basis(
    r: Float[Array, "*batch 3"],
    *,
    max_degree: int,
    num: int,
    radial_fn: Callable[[Array, int], Array],
    angular_fn: Callable[..., Array] | None = None,
    cutoff_fn: Callable[[Array], Array] | None = None,
    return_cutoff: bool = False,
    return_norm: bool = False,
    damping_fn: Callable[[Array], Array] | None = None,
    cartesian_order: bool = True,
) -> Float[Array, "*batch 1 {(max_degree+1)**2} {num}"] | tuple[Float[Array, "..."], ...]:
    """Radial-angular basis functions of vectors, as `e3x.nn.basis`.

    $$B_{n l m}(\\vec r) = g_n(r)\\, c(r)\\, d(r)^{[l > 0]}\\; Y_l^m(\\vec r / r)$$

    with `r = |r|`, `g = radial_fn(r, num)`, the optional cutoff `c = cutoff_fn(r)` and damping
    `d = damping_fn(r)`, and Racah-normalised spherical harmonics. For `r = 0` the direction
    is taken as zero (so only `l = 0` survives) and the gradient of `|r|` is zero, as in e3x:
    everything is finite. This is the `basis` argument of e3x's `MessagePass`.

    **Arguments:**

    - `r`: vectors, shape `(..., 3)`.
    - `max_degree`: the largest degree `L` of the spherical harmonics.
    - `num`: number of radial functions.
    - `radial_fn`: `(norm, num) -> (..., num)`, for example `reciprocal_bernstein`.
    - `angular_fn`: the angular part `A_l^m` of the unit vectors, called as e3x calls it
        (`angular_fn(r=..., max_degree=..., cartesian_order=...)`); default: Racah-normalised
        spherical harmonics.
    - `cutoff_fn`: optional `norm -> (...)`, e.g. `functools.partial(smooth_cutoff, cutoff=5.0)`.
    - `return_cutoff`: also return `cutoff_fn(norm)` (needs `cutoff_fn`).
    - `return_norm`: also return the norms `|r|`.
    - `damping_fn`: optional `norm -> (...)`, applied to `l > 0`.
    - `cartesian_order`: Cartesian (`True`) or standard order of `m`.

    **Returns:** shape `(..., 1, (L+1)**2, num)` (a parity axis of size 1), dtype of `r`;
    with `return_cutoff` and/or `return_norm`, the tuple `(basis, cutoff, norm)` with only
    the requested entries, each of shape `(...)`.
    """
    _check_degree("basis: max_degree", max_degree)
    if return_cutoff and cutoff_fn is None:
        raise ValueError("basis: return_cutoff=True needs a cutoff_fn, got cutoff_fn=None.")
    norm = safe_norm(r)
    direction = r / jnp.where(norm > 0, norm, 1.0).astype(r.dtype)[..., None]
    radial = radial_fn(norm, num)
    cutoff = None
    if cutoff_fn is not None:
        cutoff = cutoff_fn(norm)
        radial = radial * cutoff[..., None]
    if angular_fn is None:
        angular = spherical_harmonics(
            direction, max_degree, r_is_normalized=True, cartesian_order=cartesian_order
        )
    else:
        angular = angular_fn(r=direction, max_degree=max_degree, cartesian_order=cartesian_order)
    out = angular[..., :, None] * radial[..., None, :]
    if damping_fn is not None:
        damping = damping_fn(norm)[..., None, None]
        out = jnp.concatenate([out[..., :1, :], out[..., 1:, :] * damping], axis=-2)
    out = out[..., None, :, :]
    extras = [cutoff] if return_cutoff and cutoff is not None else []
    if return_norm:
        extras.append(norm)
    return (out, *extras) if extras else out


def bessel_basis(r: Float[Array, " edges"], num: int, cutoff: float) -> Float[Array, "edges {num}"]:
    """`B_n(r) = sqrt(2/c) sin(n pi r / c) / r`, `n = 1..num` (e3nn's `bessel`), finite at 0."""
    r = r[:, None]
    n = jnp.arange(1, num + 1, dtype=r.dtype)
    nonzero = jnp.where(r == 0.0, 1.0, r)
    return math.sqrt(2.0 / cutoff) * jnp.where(
        r == 0.0, n * math.pi / cutoff, jnp.sin(n * math.pi / cutoff * nonzero) / nonzero
    )


def radial_embedding(
    r: Float[Array, " edges"], num: int, cutoff: float, envelope: str = "polynomial_envelope"
) -> Float[Array, "edges {num}"]:
    """mlip's non-learnable Bessel `RadialEmbeddingBlock`: `B(r) u(r)`, set to 0 where `r = 0`
    (so zero-length padding edges carry nothing), gradient-safe everywhere."""
    if envelope not in ENVELOPE_FUNCTIONS:
        raise ValueError(
            f"radial_embedding: unknown radial envelope {envelope!r}; expected one of {ENVELOPES}."
        )
    basis = bessel_basis(r, num, cutoff) * ENVELOPE_FUNCTIONS[envelope](r, cutoff)[:, None]
    return jnp.where((r == 0.0)[:, None], 0.0, basis)
