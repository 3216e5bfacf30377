"""e3x's feature layout: shapes, component orders and changes of degree or parity axis.

e3x stores equivariant features as arrays of shape `(..., P, (L+1)**2, F)`:

- `P` is the parity axis. With `P=2`, index 0 holds the even irreps `0e, 1e, 2e, ...` and
    index 1 the odd irreps `0o, 1o, 2o, ...`. With `P=1` only the "proper" irreps
    `0e, 1o, 2e, 3o, ...` (parity `(-1)^l`) are stored.
- The degree axis holds the blocks `l**2 : (l+1)**2` for `l = 0..L`. Within a block, the
    default `cartesian_order=True` orders the components `m = +l, -l, +(l-1), -(l-1), ..., 0`
    (so that degree 1 is `(x, y, z)`); `cartesian_order=False` uses `m = -l..l`.
- `F` is the feature (channel) axis.

Conversions to and from e3nn's `IrrepsArray` are in `eqmlip.ops.conversions`.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

Precision = Any  # anything `jax.lax.dot_general` accepts as `precision`


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


def even_degree_mask(max_degree: int) -> Bool[Array, "{(max_degree+1)**2} 1"]:
    """`True` on the slots of the degree axis with even `l` (e3x's `nn.even_degree_mask`).

    Shape `((L+1)**2, 1)`, so that it broadcasts against features `(..., P, (L+1)**2, F)`.
    """
    _check_degree("even_degree_mask: max_degree", max_degree)
    return jnp.asarray(_degree_of_index(max_degree)[:, None] % 2 == 0)


def odd_degree_mask(max_degree: int) -> Bool[Array, "{(max_degree+1)**2} 1"]:
    """`True` on the slots of the degree axis with odd `l` (e3x's `nn.odd_degree_mask`);
    shape `((L+1)**2, 1)`."""
    _check_degree("odd_degree_mask: max_degree", max_degree)
    return jnp.asarray(_degree_of_index(max_degree)[:, None] % 2 == 1)


def _parity_of_channel(num_parity: int, channel: int, degree: int) -> int:
    """0 (even) or 1 (odd): the parity of degree `degree` stored in parity channel `channel`."""
    return channel if num_parity == 2 else degree % 2


def change_max_degree_or_type(
    x: Float[Array, "*batch p dim f"],
    max_degree: int | None = None,
    include_pseudotensors: bool | None = None,
) -> Float[Array, "*batch q dim2 f"]:
    """Change the degree `L` and/or the parity axis `P` of e3x features
    (e3x's `nn.change_max_degree_or_type`).

    Lower degrees are cut off and higher ones padded with zeros. `P=2 -> 1` keeps, for each
    degree `l`, the channel of parity `(-1)^l`; `P=1 -> 2` puts each degree into the channel
    of its parity and zeros into the other.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.
    - `max_degree`: the new `L` (default: unchanged).
    - `include_pseudotensors`: `True` for `P=2`, `False` for `P=1` (default: unchanged).

    **Returns:** `(..., P', (L'+1)**2, F)`.
    """
    num_parity, in_degree, _ = feature_shape(x.shape, caller="change_max_degree_or_type")
    degree = in_degree if max_degree is None else max_degree
    pseudo = num_parity == 2 if include_pseudotensors is None else include_pseudotensors
    dim = (degree + 1) ** 2
    if degree < in_degree:
        x = x[..., :dim, :]
    elif degree > in_degree:
        pad = [(0, 0)] * x.ndim
        pad[-2] = (0, dim - (in_degree + 1) ** 2)
        x = jnp.pad(x, pad)
    odd = _degree_of_index(degree) % 2 == 1
    if num_parity == 2 and not pseudo:
        # Channel (-1)^l of each degree, picked by a constant index.
        flat = np.where(odd, dim + np.arange(dim), np.arange(dim))
        merged = jnp.reshape(x, (*x.shape[:-3], 2 * dim, x.shape[-1]))
        return jnp.take(merged, _index(flat), axis=-2)[..., None, :, :]
    if num_parity == 1 and pseudo:
        zero = jnp.zeros((), x.dtype)
        even = jnp.where(jnp.asarray(~odd)[:, None], x[..., 0, :, :], zero)
        odd_part = jnp.where(jnp.asarray(odd)[:, None], x[..., 0, :, :], zero)
        return jnp.stack([even, odd_part], axis=-3)
    return x


def add(*inputs: Float[Array, "*batch _p _dim f"]) -> Float[Array, "*batch q dim2 f"]:
    """Sum e3x features of different degrees and parity axes (e3x's `nn.add`).

    $$y = \\sum_i \\mathrm{change\\_max\\_degree\\_or\\_type}(x_i,\\ L, P)$$

    with `L` the largest input degree and `P = 2` if any input has pseudotensors: each
    `(parity, degree)` block is added only to the same block of the others, where plain `+`
    would fail or, worse, broadcast an axis of size 1 into the wrong blocks.

    **Arguments:**

    - `*inputs`: one or more feature arrays `(..., P_i, (L_i+1)**2, F)` with the same batch
        axes, feature count `F` and dtype.

    **Returns:** `(..., P, (L+1)**2, F)`, dtype of the inputs.
    """
    if not inputs:
        raise ValueError("add: expected at least one input, got none.")
    first = inputs[0]
    num_parity, max_degree = 1, 0
    for i, x in enumerate(inputs):
        p, degree, features = feature_shape(x.shape, caller=f"add: input {i}")
        if tuple(x.shape[:-3]) != tuple(first.shape[:-3]) or features != first.shape[-1]:
            raise ValueError(
                f"add: every input needs the batch axes and feature count of input 0, shape "
                f"{(*first.shape[:-3], '.', '.', first.shape[-1])}; input {i} has shape "
                f"{x.shape}."
            )
        if x.dtype != first.dtype:
            raise TypeError(
                f"add: every input needs the dtype of input 0 ({first.dtype}); input {i} has "
                f"dtype {x.dtype}."
            )
        num_parity, max_degree = max(num_parity, p), max(max_degree, degree)
    total = change_max_degree_or_type(first, max_degree, num_parity == 2)
    for x in inputs[1:]:
        total = total + change_max_degree_or_type(x, max_degree, num_parity == 2)
    return total
