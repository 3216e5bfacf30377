"""Conversion between e3x's feature layout and e3nn's `IrrepsArray`."""

from typing import Any

import e3nn_jax as e3nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .layouts import _check_degree, feature_shape
from .so3 import _to_e3nn_matrix


def _proper_first_channels(num_parity: int, degree: int) -> list[tuple[int, int]]:
    """`(channel, e3nn parity)` of degree `degree`, proper parity first (e3nn's sort order)."""
    proper = (-1) ** degree
    if num_parity == 1:
        return [(0, proper)]
    channel_of = {1: 0, -1: 1}
    return [(channel_of[proper], proper), (channel_of[-proper], -proper)]


def e3nn_irreps(num_parity: int, max_degree: int, features: int) -> e3nn.Irreps:
    """The irreps of [`eqmlip.ops.conversions.to_irreps_array`][]: `F x l p` for every stored
    `(l, p)`.

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
    them (see [`eqmlip.ops.conversions.e3nn_irreps`][]). Copy `u` of `l p` is the block
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
    are zeros. Exactly inverse to [`eqmlip.ops.conversions.to_irreps_array`][] (up to rounding
    of the orthogonal basis change for `l >= 2`; bit for bit for `l <= 1` in Cartesian order).

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
