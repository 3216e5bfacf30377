"""SO(3) tables: Clebsch-Gordan coefficients, spherical harmonics and Wigner D-matrices.

Two conventions are served. e3x's (`clebsch_gordan`, `spherical_harmonics`, `wigner_d`,
`rotate`, `reflect`) are built here from e3nn-jax's (no e3x, no sympy), using the relations
(checked in the tests against e3x to rounding):

$$Y^{\\mathrm{e3x}}_l(x, y, z) = Y^{\\mathrm{e3nn}}_l(y, z, x), \\qquad
C^{\\mathrm{e3x}}_{l_1 l_2 l_3} = \\sqrt{2 l_3 + 1}\\, C^{\\mathrm{e3nn}}_{l_1 l_2 l_3}$$

(in standard order, then permuted to Cartesian order), and e3nn's `"norm"`, `"component"` and
`"integral"` normalisations for e3x's `"racah"`, `"4pi"` and `"orthonormal"`. e3nn's own
(`e3nn_spherical_harmonics`, used by NequIP) is e3nn-jax's, called with explicit settings.
Rotations act on e3x's degree axis from the right: `Y(r @ R) = Y(r) @ wigner_d(R)`.

Constants are built with NumPy in float64 and cast to the dtype of the data, so outputs always
have the dtype of the inputs.
"""

import functools
import math
from typing import Literal

import e3nn_jax as e3nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .layouts import (
    _block_permutation,
    _check_degree,
    _degree_of_index,
    _index,
    cartesian_permutation,
    feature_shape,
)

Normalization = Literal["racah", "schmidt", "4pi", "orthonormal"]

_E3NN_NORMALIZATION = {
    "racah": "norm",
    "schmidt": "norm",
    "4pi": "component",
    "orthonormal": "integral",
}


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
    [`eqmlip.ops.layouts.cartesian_permutation`][].

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


def e3nn_spherical_harmonics(
    vectors: Float[Array, "*batch 3"], l_max: int
) -> Float[Array, "*batch sh_dim"]:
    """`Y^0 .. Y^{l_max}` of the unit vectors in e3nn's basis and layout, as NequIP (mlip) uses
    them: `"component"` normalisation (`Y^0 = 1`, `|Y^l|^2 = 2l+1`; `Y^1 = sqrt(3) (x, y, z)`).
    A zero vector gives `Y^0 = 1`, `Y^l = 0`. For e3x's basis and layout see
    [`eqmlip.ops.so3.spherical_harmonics`][]."""
    irreps = e3nn.Irreps.spherical_harmonics(l_max)
    return e3nn.spherical_harmonics(
        irreps,
        vectors,
        normalize=True,
        normalization="component",
        algorithm=("recursive", "dense", "custom_jvp"),
    ).array


def sh_irreps(l_max: int) -> e3nn.Irreps:
    """`1x0e + 1x1o + ... + 1x{l_max}`, the irreps of the spherical harmonics."""
    return e3nn.Irreps.spherical_harmonics(l_max)
