"""Pure functions for e3x's feature layout, built from e3nn-jax (no e3x, no sympy).

e3x stores equivariant features as arrays of shape `(..., P, (L+1)**2, F)`:

- `P` is the parity axis. With `P=2`, index 0 holds the even irreps `0e, 1e, 2e, ...` and
    index 1 the odd irreps `0o, 1o, 2o, ...`. With `P=1` only the "proper" irreps
    `0e, 1o, 2e, 3o, ...` (parity `(-1)^l`) are stored.
- The degree axis holds the blocks `l**2 : (l+1)**2` for `l = 0..L`. Within a block, the
    default `cartesian_order=True` orders the components `m = +l, -l, +(l-1), -(l-1), ..., 0`
    (so that degree 1 is `(x, y, z)`); `cartesian_order=False` uses `m = -l..l`.
- `F` is the feature (channel) axis.

Rotations act on the degree axis from the right: `Y(r @ R) = Y(r) @ wigner_d(R)`.

The spherical harmonics, Clebsch-Gordan coefficients and Wigner matrices of e3x are built here
from e3nn-jax's, using the relations (checked in the tests against e3x to rounding):

$$Y^{\\mathrm{e3x}}_l(x, y, z) = Y^{\\mathrm{e3nn}}_l(y, z, x), \\qquad
C^{\\mathrm{e3x}}_{l_1 l_2 l_3} = \\sqrt{2 l_3 + 1}\\, C^{\\mathrm{e3nn}}_{l_1 l_2 l_3}$$

(in standard order, then permuted to Cartesian order), and e3nn's `"norm"`, `"component"` and
`"integral"` normalisations for e3x's `"racah"`, `"4pi"` and `"orthonormal"`.

The layer maths of `e3x.nn.Dense`, `Tensor` and `FusedTensor` is here too (`e3x_dense`,
`e3x_tensor`, `e3x_fused_tensor`); `eqmlip.nn.Dense`, `Tensor` and `FusedTensor` hold the
parameters and call these. Constants are built with NumPy in float64 and cast to the dtype of
the data, so outputs always have the dtype of the inputs.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

Normalization = Literal["racah", "schmidt", "4pi", "orthonormal"]
ReciprocalKind = Literal["shifted", "damped", "cuspless"]
Scalar = float | int | Float[Array, ""]
Precision = Any  # anything `jax.lax.dot_general` accepts as `precision`

_E3NN_NORMALIZATION = {
    "racah": "norm",
    "schmidt": "norm",
    "4pi": "component",
    "orthonormal": "integral",
}

# e3x's truncated normal initialisers divide by the standard deviation of a standard normal
# truncated to (-2, 2), so that the drawn values have the requested variance.
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


# --------------------------------------------------------------------------------------------
# Shapes and orders
# --------------------------------------------------------------------------------------------


def _check_degree(name: str, degree: int) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int | np.integer) or degree < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {degree!r}.")


def feature_shape(shape: Sequence[int], *, caller: str = "e3x layout") -> tuple[int, int, int]:
    """Read `(P, L, F)` off the shape `(..., P, (L+1)**2, F)` of e3x features.

    **Arguments:**

    - `shape`: an array shape with at least three axes.
    - `caller`: name used at the start of error messages.

    **Returns:** `(num_parity, max_degree, num_features)`.

    **Raises:** `ValueError` if there are fewer than three axes, `P` is not 1 or 2, or the
    degree axis is not a perfect square.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3:
        raise ValueError(
            f"{caller}: e3x features have shape (..., P, (L+1)**2, F), got shape {shape} "
            "with fewer than three axes."
        )
    num_parity, dim, features = shape[-3:]
    if num_parity not in (1, 2):
        raise ValueError(
            f"{caller}: axis -3 of e3x features is the parity axis and must have size 1 or 2, "
            f"got shape {shape}."
        )
    max_degree = math.isqrt(dim) - 1
    if dim == 0 or (max_degree + 1) ** 2 != dim:
        raise ValueError(
            f"{caller}: axis -2 of e3x features must have size (L+1)**2 for some L >= 0, "
            f"got shape {shape}."
        )
    return num_parity, max_degree, features


@functools.cache
def _block_permutation(degree: int) -> tuple[int, ...]:
    """Standard-order index of each Cartesian-order slot of degree `degree`.

    Slot `2k` holds `m = l - k`, slot `2k + 1` holds `m = -(l - k)`, the last slot `m = 0`.
    """
    order: list[int] = []
    for k in range(degree):
        order += [2 * degree - k, k]
    order.append(degree)
    return tuple(order)


@functools.cache
def cartesian_permutation(max_degree: int) -> np.ndarray:
    """Indices that reorder e3x features from standard to Cartesian order.

    `x_cartesian = x_standard[..., p, :]` along the degree axis, with
    `p = concat_l(p_l + l**2)` and `p_l = [2l, 0, 2l-1, 1, ..., l]` (equal to e3x's
    internal `_cartesian_permutation`).

    **Arguments:**

    - `max_degree`: the largest degree `L`.

    **Returns:** a read-only integer NumPy array of shape `((L+1)**2,)`.
    """
    _check_degree("cartesian_permutation: max_degree", max_degree)
    p = np.concatenate(
        [
            np.asarray(_block_permutation(deg), dtype=np.int64) + deg * deg
            for deg in range(max_degree + 1)
        ]
    )
    p.flags.writeable = False
    return p


def _index(indices: Sequence[int] | np.ndarray) -> Array:
    """Constant int32 indices for gathers from JAX arrays.

    (NumPy's int64 index arrays can meet int32 bounds in JAX's index normalisation, which
    strict dtype promotion rejects when x64 is switched on and off in one process.)
    """
    return jnp.asarray(np.asarray(indices), dtype=jnp.int32)


def _degree_of_index(max_degree: int) -> np.ndarray:
    """`l` of each slot of the degree axis, `[0, 1, 1, 1, 2, ...]`."""
    return np.repeat(np.arange(max_degree + 1), 2 * np.arange(max_degree + 1) + 1)


def _parity_of_channel(num_parity: int, channel: int, degree: int) -> int:
    """0 (even) or 1 (odd): the parity of degree `degree` stored in parity channel `channel`."""
    return channel if num_parity == 2 else degree % 2


# --------------------------------------------------------------------------------------------
# Clebsch-Gordan coefficients and spherical harmonics
# --------------------------------------------------------------------------------------------


@functools.cache
def clebsch_gordan(
    max_degree1: int, max_degree2: int, max_degree3: int, *, cartesian_order: bool = True
) -> np.ndarray:
    """Clebsch-Gordan coefficients for all degrees at once, in e3x's layout.

    Equal to `e3x.so3.clebsch_gordan(max_degree1, max_degree2, max_degree3, cartesian_order)`
    (to 3e-16). The block `(l_1, l_2, l_3)` is

    $$C[l_1^2{:}(l_1+1)^2,\\ l_2^2{:}(l_2+1)^2,\\ l_3^2{:}(l_3+1)^2] =
      \\sqrt{2 l_3 + 1}\\; C^{\\mathrm{e3nn}}_{l_1 l_2 l_3}$$

    for `|l1 - l2| <= l3 <= l1 + l2` (parity-odd blocks with `l1 + l2 + l3` odd included; for
    example `(1, 1, 1)` is the cross product) and zero otherwise, so each `m3` slice of a block
    has unit Frobenius norm. With `cartesian_order`, every axis is permuted by
    [`eqmlip.ops.e3x.cartesian_permutation`][].

    Computed once per argument tuple with NumPy in float64 and cached; the returned array is
    read-only (copy it to modify it).

    **Arguments:**

    - `max_degree1`, `max_degree2`, `max_degree3`: the largest degrees of the two factors
        and of the product.
    - `cartesian_order`: Cartesian (`True`, e3x's default) or standard order of `m`.

    **Returns:** a float64 NumPy array of shape
    `((max_degree1+1)**2, (max_degree2+1)**2, (max_degree3+1)**2)`.
    """
    for name, degree in (
        ("max_degree1", max_degree1),
        ("max_degree2", max_degree2),
        ("max_degree3", max_degree3),
    ):
        _check_degree(f"clebsch_gordan: {name}", degree)
    cg = np.zeros(((max_degree1 + 1) ** 2, (max_degree2 + 1) ** 2, (max_degree3 + 1) ** 2))
    for l1 in range(max_degree1 + 1):
        for l2 in range(max_degree2 + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, max_degree3) + 1):
                block = math.sqrt(2 * l3 + 1) * np.asarray(
                    e3nn.clebsch_gordan(l1, l2, l3), dtype=np.float64
                )
                cg[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2] = (
                    block
                )
    if cartesian_order:
        p1 = cartesian_permutation(max_degree1)
        p2 = cartesian_permutation(max_degree2)
        p3 = cartesian_permutation(max_degree3)
        cg = cg[p1][:, p2][:, :, p3]
    cg = np.ascontiguousarray(cg)
    cg.flags.writeable = False
    return cg


def _e3nn_sh_numpy(max_degree: int, points: np.ndarray) -> np.ndarray:
    """e3nn's spherical harmonics (`"norm"` normalisation, unnormalised input) in float64 NumPy.

    The same recursion as e3nn-jax's `recursive` algorithm: degree `l` is the Clebsch-Gordan
    product of degrees `l - k` and `k` (`k` the largest power of two below `l`), divided by
    the (positive) norm of that product at the pole, so the result equals e3nn's exactly up to
    rounding. Used for host-side constants only.
    """
    values = {0: np.ones(points.shape[:-1] + (1,)), 1: np.asarray(points, dtype=np.float64)}
    for deg in range(2, max_degree + 1):
        l2 = 2 ** ((deg - 1).bit_length() - 1)
        l1 = deg - l2
        c = np.asarray(e3nn.clebsch_gordan(l1, l2, deg), dtype=np.float64)
        scale = np.linalg.norm(c[l1, l2, :])  # the product of the two poles
        values[deg] = np.einsum("...i,...j,ijk->...k", values[l1], values[l2], c) / scale
    return np.concatenate([values[deg] for deg in range(max_degree + 1)], axis=-1)


def _e3x_sh_numpy(max_degree: int, points: np.ndarray, cartesian_order: bool) -> np.ndarray:
    """e3x's Racah-normalised spherical harmonics of `points` in float64 NumPy (host constants)."""
    y = _e3nn_sh_numpy(max_degree, points[..., [1, 2, 0]])
    return y[..., cartesian_permutation(max_degree)] if cartesian_order else y


@functools.cache
def _sphere_points(max_degree: int) -> np.ndarray:
    """`2 (L+1)**2` unit vectors on a Fibonacci lattice: every degree block of the spherical
    harmonics on them is well conditioned (condition number below about 1.2 for `L <= 12`)."""
    n = 2 * (max_degree + 1) ** 2
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + math.sqrt(5.0)) * i
    return np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], -1
    )


def _snap(matrix: np.ndarray) -> np.ndarray:
    """Round entries within 1e-12 of 0 or +-1 to those values (exact signed permutations)."""
    out = matrix.copy()
    for value in (0.0, 1.0, -1.0):
        out[np.abs(out - value) < 1e-12] = value
    return out


@functools.cache
def _to_e3nn_matrix(degree: int, cartesian_order: bool) -> np.ndarray:
    """Orthogonal `M` with `x_e3nn = M @ x_e3x` for one degree block (`M = Q^T Pi`).

    `Q` is the change of basis `Y_e3x_standard(r) = Q Y_e3nn(r)` (e3nn's Wigner matrix of the
    cyclic permutation `(x, y, z) -> (y, z, x)`), found by least squares on well-spread points;
    `Pi` undoes the Cartesian permutation. The identity for `l <= 1` in Cartesian order.
    """
    points = _sphere_points(max(degree, 1))
    block = slice(degree * degree, (degree + 1) ** 2)
    y_e3x = _e3nn_sh_numpy(degree, points[:, [1, 2, 0]])[:, block]
    y_e3nn = _e3nn_sh_numpy(degree, points)[:, block]
    q_transposed, *_ = np.linalg.lstsq(y_e3nn, y_e3x, rcond=None)
    # The nearest orthogonal matrix (polar factor) removes the least-squares rounding.
    u, _, vt = np.linalg.svd(q_transposed)
    matrix = u @ vt  # Q^T
    if cartesian_order:
        # x_standard = Pi x_cartesian with Pi[j, argsort(p)[j]] = 1.
        undo = np.argsort(np.asarray(_block_permutation(degree)))
        matrix = matrix @ np.eye(2 * degree + 1)[undo]
    matrix = _snap(matrix)
    matrix.flags.writeable = False
    return matrix


@functools.cache
def _wigner_projectors(max_degree: int, cartesian_order: bool) -> tuple[np.ndarray, ...]:
    """Per degree, the pseudo-inverse of the spherical harmonics block on `_sphere_points`."""
    points = _sphere_points(max_degree)
    y = _e3x_sh_numpy(max_degree, points, cartesian_order)
    return tuple(np.linalg.pinv(y[:, deg * deg : (deg + 1) ** 2]) for deg in range(max_degree + 1))


def _normalize_like_e3x(r: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3"]:
    """`r / |r|`, leaving `r` unchanged where `|r|**2 <= tiny` (as `e3x.ops.normalize`).

    Both branches are finite, so values and gradients are finite everywhere (the gradient at
    `r = 0` is the identity, as in e3x).
    """
    r2 = jnp.sum(r * r, axis=-1, keepdims=True)
    large = r2 > jnp.finfo(r.dtype).tiny
    return r / jnp.where(large, jnp.sqrt(jnp.where(large, r2, 1.0)), 1.0)


def _safe_norm(r: Float[Array, "*batch 3"]) -> Float[Array, " *batch"]:
    """`|r|` with a zero (not NaN) gradient at `r = 0`, as `e3x.ops.norm`."""
    r2 = jnp.sum(r * r, axis=-1)
    positive = r2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, r2, 1.0)), 0.0)


def spherical_harmonics(
    r: Float[Array, "*batch 3"],
    max_degree: int,
    *,
    r_is_normalized: bool = False,
    normalization: Normalization = "racah",
    cartesian_order: bool = True,
) -> Float[Array, "*batch {(max_degree+1)**2}"]:
    """Real spherical harmonics `Y_l^m(r)` for `l = 0..L`, in e3x's order and normalisation.

    Equal to `e3x.so3.spherical_harmonics(r, max_degree, r_is_normalized, cartesian_order,
    normalization)`. Computed with e3nn-jax as

    $$Y^{\\mathrm{e3x}}(x, y, z) = Y^{\\mathrm{e3nn}}(y, z, x)$$

    with e3nn's `"norm"` (`"racah"`, also called `"schmidt"`: `sum_m Y_lm**2 = 1` on the unit
    sphere), `"component"` (`"4pi"`) or `"integral"` (`"orthonormal"`) normalisation, then
    permuted to Cartesian order. Both libraries evaluate homogeneous polynomials of degree `l`
    in the (normalised) components of `r`.

    Unless `r_is_normalized`, `r` is first divided by its norm; vectors with
    `|r|**2 <= finfo.tiny` are left as they are (as in e3x), so `r = 0` gives `Y_00` and zeros
    for `l > 0`, with finite values and gradients. (e3x rescales by the largest component
    before squaring; here the norm is computed directly, so float32 vectors longer than about
    `1e19` overflow.)

    **Arguments:**

    - `r`: Cartesian vectors, shape `(..., 3)`.
    - `max_degree`: the largest degree `L`.
    - `r_is_normalized`: skip the normalisation (the caller promises unit vectors; other
        vectors give the homogeneous polynomials, as in e3x).
    - `normalization`: `"racah"` (default, as e3x's `basis`), `"schmidt"` (the same),
        `"4pi"` or `"orthonormal"`.
    - `cartesian_order`: Cartesian (`True`) or standard order of `m`.

    **Returns:** an array of shape `(..., (L+1)**2)` with the dtype of `r`.
    """
    _check_degree("spherical_harmonics: max_degree", max_degree)
    if normalization not in _E3NN_NORMALIZATION:
        raise ValueError(
            "spherical_harmonics: normalization must be one of "
            f"{tuple(_E3NN_NORMALIZATION)}, got {normalization!r}."
        )
    if not r_is_normalized:
        r = _normalize_like_e3x(r)
    # e3nn's defaults (algorithm, normalisation) are global config; pass both explicitly.
    algorithm = (
        ("recursive", "dense", "custom_jvp")
        if max_degree <= 8
        else ("legendre", "dense", "custom_jvp")
    )
    y = e3nn.sh(
        list(range(max_degree + 1)),
        r[..., _index((1, 2, 0))],
        normalize=False,
        normalization=_E3NN_NORMALIZATION[normalization],
        algorithm=algorithm,
    )
    if cartesian_order:
        y = y[..., _index(cartesian_permutation(max_degree))]
    return y


def wigner_d(
    rotation_matrix: Float[Array, "*batch 3 3"],
    max_degree: int,
    *,
    cartesian_order: bool = True,
) -> Float[Array, "*batch {(max_degree+1)**2} {(max_degree+1)**2}"]:
    """Wigner D-matrices in e3x's layout: `Y(r @ R) = Y(r) @ wigner_d(R)`.

    Equal to `e3x.so3.wigner_d(rot, max_degree, cartesian_order)` for rotations `R`, and for
    rotoinversions `-R` (both give `(-1)**l D_l(R)`, since their entries are homogeneous
    polynomials of degree `l` in `R`). The matrix is block diagonal; block `l` is

    $$D_l(R) = Y_l(P)^{+}\\, Y_l(P R)$$

    for a fixed set `P` of well-spread unit vectors (rows) and the pseudo-inverse `Y_l(P)^+`,
    computed in float64 on the host. This is exact for orthogonal `R` and, like e3x's, a
    polynomial in the entries of `R` (smooth gradients). For non-orthogonal matrices the two
    polynomials may differ.

    **Arguments:**

    - `rotation_matrix`: orthogonal matrices, shape `(..., 3, 3)`, acting on row vectors
        (`r @ R`).
    - `max_degree`: the largest degree `L`.
    - `cartesian_order`: Cartesian (`True`) or standard order of `m`.

    **Returns:** an array of shape `(..., (L+1)**2, (L+1)**2)` with the dtype of the input.
    """
    _check_degree("wigner_d: max_degree", max_degree)
    dtype = rotation_matrix.dtype
    points = jnp.asarray(_sphere_points(max_degree), dtype)
    moved = points @ rotation_matrix  # (..., n, 3)
    y = spherical_harmonics(
        moved, max_degree, r_is_normalized=True, cartesian_order=cartesian_order
    )
    projectors = _wigner_projectors(max_degree, cartesian_order)
    batch = rotation_matrix.shape[:-2]
    dim = (max_degree + 1) ** 2
    rows = []
    for deg, projector in enumerate(projectors):
        block = jnp.einsum(
            "kn,...nj->...kj", jnp.asarray(projector, dtype), y[..., deg * deg : (deg + 1) ** 2]
        )
        left = jnp.zeros((*batch, 2 * deg + 1, deg * deg), dtype)
        right = jnp.zeros((*batch, 2 * deg + 1, dim - (deg + 1) ** 2), dtype)
        rows.append(jnp.concatenate([left, block, right], axis=-1))
    return jnp.concatenate(rows, axis=-2)


def rotate(
    x: Float[Array, "*batch p dim f"],
    wigner: Float[Array, "dim dim"] | Float[Array, "*batch dim dim"],
) -> Float[Array, "*batch p dim f"]:
    """Rotate e3x features: `x @ D` on the degree axis, as `e3x.nn.rotate`.

    $$y[\\ldots, p, j, f] = \\sum_i x[\\ldots, p, i, f]\\, D[\\ldots, i, j]$$

    With `D = wigner_d(R)`, features built from positions `r` become those built from
    `r @ R` (for example `spherical_harmonics(r @ R) = spherical_harmonics(r) @ D`).

    **Arguments:**

    - `x`: features of shape `(..., P, (L+1)**2, F)`.
    - `wigner`: one matrix `((L+1)**2, (L+1)**2)`, or one per batch element
        `(..., (L+1)**2, (L+1)**2)` with the batch shape of `x`.

    **Returns:** the rotated features, shape and dtype of `x`.
    """
    _, max_degree, _ = feature_shape(x.shape, caller="rotate")
    dim = (max_degree + 1) ** 2
    if wigner.shape[-2:] != (dim, dim):
        raise ValueError(
            f"rotate: expected a Wigner matrix of shape (..., {dim}, {dim}) for features of "
            f"shape {x.shape}, got {wigner.shape}."
        )
    if wigner.ndim == 2:
        return jnp.einsum("...pif,ij->...pjf", x, wigner)
    if wigner.shape[:-2] != x.shape[:-3]:
        raise ValueError(
            f"rotate: a batch of Wigner matrices {wigner.shape} must have the batch shape "
            f"{x.shape[:-3]} of the features {x.shape}."
        )
    return jnp.einsum("...pif,...ij->...pjf", x, wigner)


def _reflection_signs(num_parity: int, max_degree: int) -> np.ndarray:
    if num_parity == 2:
        return np.array([1.0, -1.0])[:, None, None]
    return ((-1.0) ** _degree_of_index(max_degree))[None, :, None]


def reflect(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Mirror image of e3x features (the action of the inversion `r -> -r`), as `e3x.nn.reflect`.

    Odd-parity components change sign: parity channel 1 when `P=2`, the odd degrees when
    `P=1`. With features built from positions `r`, this gives the features of `-r`.

    **Arguments:**

    - `x`: features of shape `(..., P, (L+1)**2, F)`.

    **Returns:** the reflected features, shape and dtype of `x`.
    """
    num_parity, max_degree, _ = feature_shape(x.shape, caller="reflect")
    return x * jnp.asarray(_reflection_signs(num_parity, max_degree), x.dtype)


# --------------------------------------------------------------------------------------------
# Conversion to and from e3nn
# --------------------------------------------------------------------------------------------


def _proper_first_channels(num_parity: int, degree: int) -> list[tuple[int, int]]:
    """`(channel, e3nn parity)` of degree `degree`, proper parity first (e3nn's sort order)."""
    proper = (-1) ** degree
    if num_parity == 1:
        return [(0, proper)]
    channel_of = {1: 0, -1: 1}
    return [(channel_of[proper], proper), (channel_of[-proper], -proper)]


def e3nn_irreps(num_parity: int, max_degree: int, features: int) -> e3nn.Irreps:
    """The irreps of [`eqmlip.ops.e3x.to_irreps_array`][]: `F x l p` for every stored `(l, p)`.

    Sorted as e3nn sorts irreps (`0e, 0o, 1o, 1e, 2e, 2o, ...`); `P=1` keeps only the proper
    irreps `0e, 1o, 2e, ...`.

    **Returns:** an `e3nn.Irreps`.
    """
    if num_parity not in (1, 2):
        raise ValueError(f"e3nn_irreps: num_parity must be 1 or 2, got {num_parity}.")
    _check_degree("e3nn_irreps: max_degree", max_degree)
    items: list[Any] = [
        (features, e3nn.Irrep(deg, p))
        for deg in range(max_degree + 1)
        for _, p in _proper_first_channels(num_parity, deg)
    ]
    return e3nn.Irreps(items)


def to_irreps_array(
    x: Float[Array, "*batch p dim f"], *, cartesian_order: bool = True
) -> e3nn.IrrepsArray:
    """Convert e3x features `(..., P, (L+1)**2, F)` to an `e3nn.IrrepsArray`.

    The irreps are `F x l p` for every stored degree `l` and parity `p`, sorted as e3nn sorts
    them (see [`eqmlip.ops.e3x.e3nn_irreps`][]). Copy `u` of `l p` is the block
    `x[..., c, l**2:(l+1)**2, u]` of parity channel `c`, moved to e3nn's real basis:

    $$x^{\\mathrm{e3nn}}_u = Q_l^\\top\\, \\Pi_l\\, x[\\ldots, c, l, u]$$

    where `Pi_l` undoes the Cartesian order and `Q_l` is e3nn's Wigner matrix of the cyclic
    permutation `(x, y, z) -> (y, z, x)` (`Q_l = 1` for `l <= 1`). The map commutes with the
    group actions: `rotate(x, wigner_d(R))` becomes `transform_by_matrix(R.T)`, and
    `reflect(x)` becomes `transform_by_matrix(-I)`. Spherical harmonics map to e3nn's
    (`"norm"` normalisation).

    **Arguments:**

    - `x`: e3x features.
    - `cartesian_order`: whether `x` is in Cartesian order (e3x's default).

    **Returns:** an `IrrepsArray` of shape `(..., irreps.dim)` with the dtype of `x`.
    """
    num_parity, max_degree, features = feature_shape(x.shape, caller="to_irreps_array")
    batch = x.shape[:-3]
    chunks = []
    for deg in range(max_degree + 1):
        matrix = _to_e3nn_matrix(deg, cartesian_order)
        for channel, _ in _proper_first_channels(num_parity, deg):
            block = x[..., channel, deg * deg : (deg + 1) ** 2, :]
            if np.array_equal(matrix, np.eye(2 * deg + 1)):
                moved = jnp.swapaxes(block, -1, -2)
            else:
                moved = jnp.einsum("km,...mf->...fk", jnp.asarray(matrix, x.dtype), block)
            chunks.append(moved.reshape(*batch, features * (2 * deg + 1)))
    return e3nn.IrrepsArray(
        e3nn_irreps(num_parity, max_degree, features), jnp.concatenate(chunks, axis=-1)
    )


def from_irreps_array(
    x: e3nn.IrrepsArray,
    max_degree: int | None = None,
    *,
    include_pseudotensors: bool | None = None,
    cartesian_order: bool = True,
) -> Float[Array, "*batch p dim f"]:
    """Convert an `e3nn.IrrepsArray` to e3x features, the inverse of `to_irreps_array`.

    The irreps are regrouped (sorted and merged) first; every irrep that is present must then
    have the same multiplicity `F`, the feature count. Degrees and parities that are absent
    are zeros. Exactly inverse to [`eqmlip.ops.e3x.to_irreps_array`][] (up to rounding of the
    orthogonal basis change for `l >= 2`; bit for bit for `l <= 1` in Cartesian order).

    **Arguments:**

    - `x`: an `IrrepsArray` of shape `(..., dim)`.
    - `max_degree`: the degree `L` of the result; at least the largest degree in `x`, which
        is the default.
    - `include_pseudotensors`: `True` for `P=2`, `False` for `P=1` (only possible if every
        irrep is proper, `p = (-1)^l`); `None` chooses `P=1` exactly when every irrep is proper.
    - `cartesian_order`: produce Cartesian (`True`) or standard order.

    **Returns:** an array of shape `(..., P, (L+1)**2, F)` with the dtype of `x`.
    """
    regrouped = x.regroup()
    entries = [(mul, ir) for mul, ir in regrouped.irreps if mul > 0]
    if not entries:
        raise ValueError(
            f"from_irreps_array: cannot infer the feature count F from irreps {x.irreps}; "
            "at least one irrep with multiplicity > 0 is needed."
        )
    muls = {mul for mul, _ in entries}
    if len(muls) != 1:
        raise ValueError(
            f"from_irreps_array: every irrep must have the same multiplicity F (the feature "
            f"count) after regrouping, got {regrouped.irreps}."
        )
    features = muls.pop()
    lmax = max(ir.l for _, ir in entries)
    degree_out: int = lmax if max_degree is None else max_degree
    _check_degree("from_irreps_array: max_degree", degree_out)
    if degree_out < lmax:
        raise ValueError(
            f"from_irreps_array: max_degree={degree_out} is smaller than the largest degree "
            f"{lmax} of {x.irreps}; pass max_degree >= {lmax}."
        )
    all_proper = all(ir.p == (-1) ** ir.l for _, ir in entries)
    if include_pseudotensors is None:
        num_parity = 1 if all_proper else 2
    elif include_pseudotensors:
        num_parity = 2
    else:
        if not all_proper:
            raise ValueError(
                f"from_irreps_array: include_pseudotensors=False keeps only proper irreps "
                f"(0e, 1o, 2e, ...), but {x.irreps} has others; pass True or None."
            )
        num_parity = 1

    array = regrouped.array
    batch = array.shape[:-1]
    present = {}
    for (mul, ir), s in zip(regrouped.irreps, regrouped.irreps.slices(), strict=True):
        if mul > 0:
            present[(ir.l, ir.p)] = array[..., s]
    channels: list[list[Array]] = [[] for _ in range(num_parity)]
    for deg in range(degree_out + 1):
        matrix = _to_e3nn_matrix(deg, cartesian_order)
        for channel, p in _proper_first_channels(num_parity, deg):
            chunk = present.get((deg, p))
            if chunk is None:
                block = jnp.zeros((*batch, 2 * deg + 1, features), array.dtype)
            else:
                chunk = chunk.reshape(*batch, features, 2 * deg + 1)
                if np.array_equal(matrix, np.eye(2 * deg + 1)):
                    block = jnp.swapaxes(chunk, -1, -2)
                else:
                    block = jnp.einsum("km,...fk->...mf", jnp.asarray(matrix, array.dtype), chunk)
            channels[channel].append(block)
    return jnp.stack([jnp.concatenate(blocks, axis=-2) for blocks in channels], axis=-3)


# --------------------------------------------------------------------------------------------
# Radial functions, cutoffs and the radial-angular basis
# --------------------------------------------------------------------------------------------


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
    mapping = reciprocal_mapping(x, kind)
    out = _bernstein(1 - mapping, num)
    if use_reciprocal_weighting:
        out = out * mapping[..., None]
    return out


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
    mapping = exponential_mapping(x, gamma, cuspless)
    out = _bernstein(1 - mapping, num)
    if use_exponential_weighting:
        out = out * mapping[..., None]
    return out


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
    mapping = reciprocal_mapping(x, kind)
    out = _gaussian(1 - mapping, num)
    if use_reciprocal_weighting:
        out = out * mapping[..., None]
    return out


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
    mapping = exponential_mapping(x, gamma, cuspless)
    out = _gaussian(1 - mapping, num)
    if use_exponential_weighting:
        out = out * mapping[..., None]
    return out


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
    mapping = reciprocal_mapping(x, kind)
    out = _fourier(1 - mapping, num)
    if use_reciprocal_weighting:
        out = out * mapping[..., None]
    return out


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
    mapping = exponential_mapping(x, gamma, cuspless)
    out = _fourier(1 - mapping, num)
    if use_exponential_weighting:
        out = out * mapping[..., None]
    return out


def sinc(x: Float[Array, "*shape"], num: int, limit: Scalar = 1.0) -> Float[Array, "*shape {num}"]:
    """`sinc(k x / limit)`, `k = 1..num`, zero beyond `limit`, as `e3x.nn.sinc`.

    $$g_k(x) = \\frac{\\sin(\\pi k x / l)}{\\pi k x / l} \\ (x \\le l), \\qquad 0 \\ (x > l)$$

    **Returns:** shape `x.shape + (num,)`, dtype of `x`.
    """
    scaled = (x / limit)[..., None]
    k = jnp.arange(1, num + 1, dtype=x.dtype)
    return jnp.where(scaled <= 1.0, jnp.sinc(k * scaled), 0.0).astype(x.dtype)


def _check_positive(name: str, value: Scalar) -> None:
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"{name} must be larger than 0, got {value}.")


def smooth_cutoff(x: Float[Array, "*shape"], cutoff: Scalar = 1.0) -> Float[Array, "*shape"]:
    """Infinitely smooth cutoff, as `e3x.nn.smooth_cutoff`.

    $$c(x) = \\exp\\Big(1 - \\frac{1}{1 - (x/x_c)^2}\\Big) \\ (x < x_c), \\qquad 0 \\ (x \\ge x_c)$$

    with `c(0) = 1`; values and gradients are finite everywhere.

    **Arguments:**

    - `x`: input values (distances).
    - `cutoff`: the cutoff `x_c > 0`.

    **Returns:** shape and dtype of `x`.
    """
    _check_positive("smooth_cutoff: cutoff", cutoff)
    x = x / cutoff
    inside = x < 1
    safe = jnp.where(inside, x, 0.0).astype(x.dtype)
    return jnp.where(inside, jnp.exp(1 - 1 / (1 - safe * safe)), 0.0).astype(x.dtype)


def cosine_cutoff(x: Float[Array, "*shape"], cutoff: Scalar = 1.0) -> Float[Array, "*shape"]:
    """Cosine cutoff `(cos(pi x / x_c) + 1) / 2` below `x_c`, zero above, as
    `e3x.nn.cosine_cutoff`.

    **Arguments:**

    - `x`: input values.
    - `cutoff`: the cutoff `x_c > 0`.

    **Returns:** shape and dtype of `x`.
    """
    _check_positive("cosine_cutoff: cutoff", cutoff)
    x = x / cutoff
    return jnp.where(x < 1, 0.5 * jnp.cos(jnp.pi * x) + 0.5, 0.0).astype(x.dtype)


def smooth_damping(x: Float[Array, "*shape"], gamma: Scalar = 1.0) -> Float[Array, "*shape"]:
    """Smooth damping `exp(-e / (1 - e))`, `e = exp(-gamma x)`, as `e3x.nn.smooth_damping`.

    Zero (with all derivatives) at `x = 0`, tending to 1 for large `x`; used to damp the
    `l > 0` basis functions of short vectors (see [`eqmlip.ops.e3x.basis`][]).

    **Arguments:**

    - `x`: input values.
    - `gamma`: decay constant.

    **Returns:** shape and dtype of `x`.
    """
    e = jnp.exp(-gamma * x)
    denominator = 1 - e
    ok = denominator * denominator > 0
    return jnp.where(ok, jnp.exp(-e / jnp.where(ok, denominator, 1.0)), 0.0).astype(x.dtype)


def basis(
    r: Float[Array, "*batch 3"],
    *,
    max_degree: int,
    num: int,
    radial_fn: Callable[[Array, int], Array],
    cutoff_fn: Callable[[Array], Array] | None = None,
    damping_fn: Callable[[Array], Array] | None = None,
    cartesian_order: bool = True,
) -> Float[Array, "*batch 1 {(max_degree+1)**2} {num}"]:
    """Radial-angular basis functions of vectors, as `e3x.nn.basis` with its default `angular_fn`.

    $$B_{n l m}(\\vec r) = g_n(r)\\, c(r)\\, d(r)^{[l > 0]}\\; Y_l^m(\\vec r / r)$$

    with `r = |r|`, `g = radial_fn(r, num)`, the optional cutoff `c = cutoff_fn(r)` and damping
    `d = damping_fn(r)`, and Racah-normalised spherical harmonics. For `r = 0` the direction
    is taken as zero (so only `l = 0` survives) and the gradient of `|r|` is zero, as in e3x:
    everything is finite. This is the `basis` argument of e3x's `MessagePass`.

    `e3x.nn.basis`'s `return_cutoff`/`return_norm` and custom `angular_fn` are not offered:
    call `cutoff_fn` on the norm yourself.

    **Arguments:**

    - `r`: vectors, shape `(..., 3)`.
    - `max_degree`: the largest degree `L` of the spherical harmonics.
    - `num`: number of radial functions.
    - `radial_fn`: `(norm, num) -> (..., num)`, for example `reciprocal_bernstein`.
    - `cutoff_fn`: optional `norm -> (...)`, e.g. `functools.partial(smooth_cutoff, cutoff=5.0)`.
    - `damping_fn`: optional `norm -> (...)`, applied to `l > 0`.
    - `cartesian_order`: Cartesian (`True`) or standard order of `m`.

    **Returns:** shape `(..., 1, (L+1)**2, num)` (a parity axis of size 1), dtype of `r`.
    """
    _check_degree("basis: max_degree", max_degree)
    norm = _safe_norm(r)
    direction = r / jnp.where(norm > 0, norm, 1.0).astype(r.dtype)[..., None]
    radial = radial_fn(norm, num)
    if cutoff_fn is not None:
        radial = radial * cutoff_fn(norm)[..., None]
    angular = spherical_harmonics(
        direction, max_degree, r_is_normalized=True, cartesian_order=cartesian_order
    )
    out = angular[..., :, None] * radial[..., None, :]
    if damping_fn is not None:
        damping = damping_fn(norm)[..., None, None]
        out = jnp.concatenate([out[..., :1, :], out[..., 1:, :] * damping], axis=-2)
    return out[..., None, :, :]


# --------------------------------------------------------------------------------------------
# Layers: Dense, Tensor, FusedTensor
# --------------------------------------------------------------------------------------------


def dense_parameter_names(num_parity: int, max_degree: int) -> tuple[str, ...]:
    """Flax names `"{l}+"`/`"{l}-"` of the kernels of `e3x.nn.Dense`, in `(channel, l)` order.

    With `P=2`, channel 0 is `+` and channel 1 is `-`; with `P=1` the sign is that of `(-1)^l`.
    """
    if num_parity == 2:
        return tuple(f"{deg}{sign}" for sign in "+-" for deg in range(max_degree + 1))
    return tuple(f"{deg}{'+-'[deg % 2]}" for deg in range(max_degree + 1))


def e3x_dense(
    x: Float[Array, "*batch p dim fin"],
    kernels: Sequence[Float[Array, "fin fout"]],
    bias: Float[Array, " fout"] | None = None,
    *,
    precision: Precision = None,
) -> Float[Array, "*batch p dim fout"]:
    """The map of `e3x.nn.Dense`: one matrix per degree and parity, a bias on `0e` only.

    $$y[\\ldots, c, l, m, :] = x[\\ldots, c, l, m, :]\\, W_{c,l} + b\\,[c = 0, l = 0]$$

    Each block is a `lax.dot_general` over the feature axis, as in Flax's `nn.Dense`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F_in)`.
    - `kernels`: `P (L+1)` matrices `(F_in, F_out)` ordered by `(channel, l)`
        (names in [`eqmlip.ops.e3x.dense_parameter_names`][]), in the dtype of `x`.
    - `bias`: optional `(F_out,)` for the `0e` block.
    - `precision`: passed to `lax.dot_general`.

    **Returns:** `(..., P, (L+1)**2, F_out)`.
    """
    num_parity, max_degree, _ = feature_shape(x.shape, caller="e3x_dense")
    if len(kernels) != num_parity * (max_degree + 1):
        raise ValueError(
            f"e3x_dense: expected {num_parity * (max_degree + 1)} kernels for features of "
            f"shape {x.shape}, got {len(kernels)}."
        )
    channels = []
    for channel in range(num_parity):
        blocks = []
        for deg in range(max_degree + 1):
            block = x[..., channel, deg * deg : (deg + 1) ** 2, :]
            kernel = kernels[channel * (max_degree + 1) + deg]
            y = jax.lax.dot_general(
                block, kernel, (((block.ndim - 1,), (0,)), ((), ())), precision=precision
            )
            if bias is not None and channel == 0 and deg == 0:
                y = y + bias
            blocks.append(y)
        channels.append(jnp.concatenate(blocks, axis=-2))
    return jnp.stack(channels, axis=-3)


def tensor_num_parity(
    num_parity1: int,
    max_degree1: int,
    num_parity2: int,
    max_degree2: int,
    max_degree3: int,
    include_pseudotensors: bool,
) -> int:
    """The parity-axis size `P3` of a (fused) tensor product, by e3x's rule.

    `P3 = 2` if `include_pseudotensors`, else 1; but when both inputs have `P=1` and one of
    the three degrees is 0, no pseudotensor can arise and `P3 = 1` regardless.
    """
    if num_parity1 == num_parity2 == 1 and min(max_degree1, max_degree2, max_degree3) == 0:
        return 1
    return 2 if include_pseudotensors else 1


def check_tensor_degrees(caller: str, max_degree1: int, max_degree2: int, max_degree3: int) -> None:
    """e3x's check `L3 <= L1 + L2` (`ValueError` naming `caller` otherwise)."""
    if max_degree3 > max_degree1 + max_degree2:
        raise ValueError(
            f"{caller}: max_degree of the tensor product of inputs with max_degree "
            f"{max_degree1} and {max_degree2} can be at most {max_degree1 + max_degree2}, "
            f"got max_degree={max_degree3}."
        )


class _Pair(NamedTuple):
    """The paths of `Tensor` from input degrees `(l1, l2)` into output degrees `lo..hi`."""

    l1: int
    l2: int
    lo: int
    hi: int
    cg: np.ndarray  # (2 l1 + 1, 2 l2 + 1, (hi+1)**2 - lo**2), float64
    mask: np.ndarray  # (P1, P2, P3, hi - lo + 1): 1.0 where the path is allowed


def tensor_path_allowed(d1: int, d2: int, d3: int, l1: int, l2: int, l3: int) -> bool:
    """Whether e3x's `Tensor` couples parities `d1, d2 -> d3` (0 even, 1 odd) and degrees
    `l1, l2 -> l3`: `(d1 + d2) % 2 == d3` and `|l1 - l2| <= l3 <= l1 + l2`."""
    return (d1 + d2) % 2 == d3 and abs(l1 - l2) <= l3 <= l1 + l2


@functools.cache
def _tensor_plan(
    num_parity1: int,
    max_degree1: int,
    num_parity2: int,
    max_degree2: int,
    num_parity3: int,
    max_degree3: int,
    cartesian_order: bool,
) -> tuple[_Pair, ...]:
    """The non-zero coupling paths of `Tensor`, grouped by input degrees `(l1, l2)`."""
    cg = clebsch_gordan(max_degree1, max_degree2, max_degree3, cartesian_order=cartesian_order)
    allowed = tensor_kernel_mask(
        num_parity1, max_degree1, num_parity2, max_degree2, num_parity3, max_degree3
    )
    pairs = []
    for l1 in range(max_degree1 + 1):
        for l2 in range(max_degree2 + 1):
            lo, hi = abs(l1 - l2), min(l1 + l2, max_degree3)
            if lo > hi:
                continue
            mask = allowed[:, l1, :, l2, :, lo : hi + 1].astype(np.float64)
            if not mask.any():
                continue
            block = cg[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, lo * lo : (hi + 1) ** 2]
            pairs.append(_Pair(l1, l2, lo, hi, np.ascontiguousarray(block), mask))
    return tuple(pairs)


def tensor_kernel_mask(
    num_parity1: int,
    max_degree1: int,
    num_parity2: int,
    max_degree2: int,
    num_parity3: int,
    max_degree3: int,
) -> np.ndarray:
    """Boolean `(P1, L1+1, P2, L2+1, P3, L3+1)`: the kernel entries of `Tensor` that are used.

    An entry is used when its path is allowed ([`eqmlip.ops.e3x.tensor_path_allowed`][]);
    the others are structurally zero (e3x's `tensor_lecun_normal` initialises them to 0).
    """
    mask = np.zeros(
        (num_parity1, max_degree1 + 1, num_parity2, max_degree2 + 1, num_parity3, max_degree3 + 1),
        dtype=bool,
    )
    for index in np.ndindex(*mask.shape):
        c1, l1, c2, l2, c3, l3 = index
        mask[index] = tensor_path_allowed(
            _parity_of_channel(num_parity1, c1, l1),
            _parity_of_channel(num_parity2, c2, l2),
            _parity_of_channel(num_parity3, c3, l3),
            l1,
            l2,
            l3,
        )
    return mask


def e3x_tensor(
    x1: Float[Array, "*batch p1 d1 f"],
    x2: Float[Array, "*batch p2 d2 f"],
    kernel: Float[Array, "p1 l1 p2 l2 p3 l3 f"],
    *,
    cartesian_order: bool = True,
    precision: Precision = None,
) -> Float[Array, "*batch p3 l3**2 f"]:
    """The map of `e3x.nn.Tensor`: all allowed Clebsch-Gordan couplings, one weight per path
    and feature.

    $$z[\\ldots, c_3, (l_3 m_3), f] = \\sum_{(c_1 l_1, c_2 l_2) \\to c_3 l_3}
      w[c_1, l_1, c_2, l_2, c_3, l_3, f] \\sum_{m_1 m_2} C[(l_1 m_1), (l_2 m_2), (l_3 m_3)]\\,
      x_1[\\ldots, c_1, (l_1 m_1), f]\\, x_2[\\ldots, c_2, (l_2 m_2), f]$$

    over the allowed paths: `|l1 - l2| <= l3 <= l1 + l2` and parity `d1 + d2 = d3 (mod 2)`,
    where the parity `d` of a block is its channel when `P=2` and `l % 2` when `P=1`. Forbidden
    kernel entries are never read (e3x multiplies them by 0). `P3` and `L3` are read from the
    kernel's shape.

    Only the allowed paths are computed: for each pair `(l1, l2)`, one contraction with the
    Clebsch-Gordan block of all the output degrees it reaches, then one weighting summed over
    the input parity channels. This costs about `sum_{l1,l2} P1 (2l1+1)(2l2+1) K F` per row
    (`K` the output components reached) instead of e3x's dense
    `P1 P2 P3 (L1+1)^2 (L2+1)^2 (L3+1)^2 F`. The summation order differs from e3x's einsum,
    so results agree to rounding.

    **Arguments:**

    - `x1`, `x2`: features `(..., P1, (L1+1)**2, F)` and `(..., P2, (L2+1)**2, F)`, same
        dtype.
    - `kernel`: `(P1, L1+1, P2, L2+1, P3, L3+1, F)`, in the dtype of the inputs.
    - `cartesian_order`: order of the components of the inputs and output.
    - `precision`: passed to the contractions.

    **Returns:** `(..., P3, (L3+1)**2, F)`.
    """
    p1, l1max, f1 = feature_shape(x1.shape, caller="e3x_tensor")
    p2, l2max, f2 = feature_shape(x2.shape, caller="e3x_tensor")
    kp1, kl1, kp2, kl2, p3, kl3, kf = kernel.shape
    if (kp1, kl1 - 1, kp2, kl2 - 1, kf) != (p1, l1max, p2, l2max, f1) or f1 != f2:
        raise ValueError(
            f"e3x_tensor: kernel of shape {kernel.shape} does not fit inputs of shapes "
            f"{x1.shape} and {x2.shape}."
        )
    l3max = kl3 - 1
    check_tensor_degrees("e3x_tensor", l1max, l2max, l3max)
    dtype = x1.dtype
    dim3 = (l3max + 1) ** 2
    terms = []
    for pair in _tensor_plan(p1, l1max, p2, l2max, p3, l3max, cartesian_order):
        a = x1[..., pair.l1 * pair.l1 : (pair.l1 + 1) ** 2, :]
        b = x2[..., pair.l2 * pair.l2 : (pair.l2 + 1) ** 2, :]
        coupled = jnp.einsum(  # (..., P1, P2, K, F)
            "...pif,...qjf,ijk->...pqkf",
            a,
            b,
            jnp.asarray(pair.cg, dtype),
            precision=precision,
            optimize="optimal",
        )
        weights = kernel[:, pair.l1, :, pair.l2, :, pair.lo : pair.hi + 1, :]
        if not pair.mask.all():
            weights = weights * jnp.asarray(pair.mask[..., None], dtype)
        repeats = 2 * np.arange(pair.lo, pair.hi + 1) + 1
        weights = jnp.repeat(  # (P1, P2, P3, K, F)
            weights, repeats, axis=3, total_repeat_length=int(repeats.sum())
        )
        term = jnp.sum(coupled[..., :, :, None, :, :] * weights, axis=(-5, -4))
        pad = [(0, 0)] * (term.ndim - 2) + [(pair.lo**2, dim3 - (pair.hi + 1) ** 2), (0, 0)]
        terms.append(jnp.pad(term, pad))
    return functools.reduce(jnp.add, terms)


class FusedKernels(NamedTuple):
    """The eight `(L+1, F)` kernels of `e3x.nn.FusedTensor` (Flax names `kernel_*`).

    `e1, o1` weight the even and odd degrees of the first input, `e2, o2` of the second;
    `eee, ooe, eoo, oeo` weight the output degrees of the four parity products.
    """

    e1: Array
    o1: Array
    e2: Array
    o2: Array
    eee: Array
    ooe: Array
    eoo: Array
    oeo: Array


def fused_matrix_degree(max_degree1: int, max_degree2: int, max_degree3: int) -> int:
    """`ceil(max(L1, L2, L3) / 2)`: the degree whose `(2l+1) x (2l+1)` matrices FusedTensor
    multiplies."""
    return math.ceil(max(max_degree1, max_degree2, max_degree3) / 2)


def e3x_fused_tensor(
    x1: Float[Array, "*batch p1 d1 f"],
    x2: Float[Array, "*batch p2 d2 f"],
    kernels: FusedKernels,
    *,
    include_pseudotensors: bool = True,
    cartesian_order: bool = True,
    precision: Precision = None,
) -> Float[Array, "*batch p3 d3 f"]:
    """The map of `e3x.nn.FusedTensor`: couple through products of `(2k+1) x (2k+1)` matrices.

    With `Lm = max(L1, L2, L3)`, `k = ceil(Lm / 2)` and `G = C[k-block, k-block, :]` (the
    Clebsch-Gordan coefficients into degrees `0..Lm`), each input is split into even and odd
    parts (channels when `P=2`, even/odd degrees when `P=1`) and turned into matrices

    $$X^{\\pm}_{ab, f} = \\sum_n G_{abn}\\, w^{\\pm}_{l(n), f}\\, x^{\\pm}_{n f},$$

    multiplied (`E1 E2`, `O1 O2` even; `E1 O2`, `O1 E2` odd) and projected back with
    per-degree weights:

    $$z^{+}_{n f} = \\sum_{ab} G_{abn}\\, \\big(w^{eee}_{l(n) f} (E_1 E_2)_{ab f} +
       w^{ooe}_{l(n) f} (O_1 O_2)_{ab f}\\big)$$

    and likewise `z-` from `eoo`, `oeo`. The output stacks `(z+, z-)` when `P3 = 2`; when
    `P3 = 1` it keeps `z+` on even and `z-` on odd degrees. `P3` follows e3x's rule
    ([`eqmlip.ops.e3x.tensor_num_parity`][]). Parts that are structurally zero (the odd part
    of a `P=1, L=0` input) are skipped, and `P=1` inputs contract only the degrees of each
    parity instead of multiplying by masks.

    **Arguments:**

    - `x1`, `x2`: features `(..., P1, (L1+1)**2, F)` and `(..., P2, (L2+1)**2, F)`.
    - `kernels`: the eight kernels, in the dtype of the inputs; `L3` is read from `eee`.
    - `include_pseudotensors`: e3x's flag (see above).
    - `cartesian_order`: order of the components.
    - `precision`: passed to the contractions.

    **Returns:** `(..., P3, (L3+1)**2, F)`.
    """
    p1, l1max, f1 = feature_shape(x1.shape, caller="e3x_fused_tensor")
    p2, l2max, f2 = feature_shape(x2.shape, caller="e3x_fused_tensor")
    l3max = kernels.eee.shape[0] - 1
    expected = {
        "e1": (l1max + 1, f1),
        "o1": (l1max + 1, f1),
        "e2": (l2max + 1, f1),
        "o2": (l2max + 1, f1),
        "eee": (l3max + 1, f1),
        "ooe": (l3max + 1, f1),
        "eoo": (l3max + 1, f1),
        "oeo": (l3max + 1, f1),
    }
    for name, shape in expected.items():
        if f1 != f2 or getattr(kernels, name).shape != shape:
            raise ValueError(
                f"e3x_fused_tensor: kernel {name} of shape {getattr(kernels, name).shape} does "
                f"not fit inputs of shapes {x1.shape} and {x2.shape} (expected {shape})."
            )
    check_tensor_degrees("e3x_fused_tensor", l1max, l2max, l3max)
    p3 = tensor_num_parity(p1, l1max, p2, l2max, l3max, include_pseudotensors)
    dtype = x1.dtype
    k = fused_matrix_degree(l1max, l2max, l3max)
    lm = max(l1max, l2max, l3max)
    g = clebsch_gordan(k, k, lm, cartesian_order=cartesian_order)[
        k * k : (k + 1) ** 2, k * k : (k + 1) ** 2, :
    ]

    def indices(max_degree: int, parity: int | None) -> np.ndarray:
        degrees = _degree_of_index(max_degree)
        if parity is None:
            return np.arange(degrees.size)
        return np.flatnonzero(degrees % 2 == parity)

    def expand(kernel: Array, max_degree: int) -> Array:
        repeats = 2 * np.arange(max_degree + 1) + 1
        return jnp.repeat(kernel, repeats, axis=0, total_repeat_length=(max_degree + 1) ** 2)

    def to_matrix(
        x: Array, num_parity: int, max_degree: int, parity: int, kernel: Array
    ) -> Array | None:
        if num_parity == 2:
            idx = indices(max_degree, None)
            values = x[..., parity, :, :]
        else:
            idx = indices(max_degree, parity)
            if idx.size == 0:
                return None
            values = x[..., 0, _index(idx), :]
        return jnp.einsum(
            "...nf,nf,abn->...abf",
            values,
            expand(kernel, max_degree)[_index(idx)],
            jnp.asarray(g[:, :, idx], dtype),
            precision=precision,
            optimize="optimal",
        )

    e1 = to_matrix(x1, p1, l1max, 0, kernels.e1)
    o1 = to_matrix(x1, p1, l1max, 1, kernels.o1)
    e2 = to_matrix(x2, p2, l2max, 0, kernels.e2)
    o2 = to_matrix(x2, p2, l2max, 1, kernels.o2)

    def product(a: Array | None, b: Array | None) -> Array | None:
        if a is None or b is None:
            return None
        return jnp.einsum("...abf,...bcf->...acf", a, b, precision=precision)

    even_terms = [(product(e1, e2), kernels.eee), (product(o1, o2), kernels.ooe)]
    odd_terms = [(product(e1, o2), kernels.eoo), (product(o1, e2), kernels.oeo)]
    batch = jnp.broadcast_shapes(x1.shape[:-3], x2.shape[:-3])

    def to_vector(terms: list, idx: np.ndarray) -> Array:
        total = None
        for z, kernel in terms:
            if z is None:
                continue
            y = jnp.einsum(
                "...abf,abn,nf->...nf",
                z,
                jnp.asarray(g[:, :, idx], dtype),
                expand(kernel, l3max)[_index(idx)],
                precision=precision,
                optimize="optimal",
            )
            total = y if total is None else total + y
        if total is None:
            return jnp.zeros((*batch, idx.size, f1), dtype)
        return total

    if p3 == 2:
        all_idx = indices(l3max, None)
        return jnp.stack([to_vector(even_terms, all_idx), to_vector(odd_terms, all_idx)], axis=-3)
    even = to_vector(even_terms, indices(l3max, 0))
    odd = to_vector(odd_terms, indices(l3max, 1))
    # Interleave the even- and odd-degree blocks back into degree order.
    blocks = []
    even_offset = odd_offset = 0
    for deg in range(l3max + 1):
        size = 2 * deg + 1
        if deg % 2 == 0:
            blocks.append(even[..., even_offset : even_offset + size, :])
            even_offset += size
        else:
            blocks.append(odd[..., odd_offset : odd_offset + size, :])
            odd_offset += size
    return jnp.concatenate(blocks, axis=-2)[..., None, :, :]
