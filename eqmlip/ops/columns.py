"""Column ranges of the last axis taken with one `lax.split` instead of separate slices.

Under reverse-mode differentiation the transpose of a slice is a pad to the full width, so an
array read in `k` column ranges gets `k` full-width pads and `k - 1` adds in its cotangent;
XLA:CPU fuses such chains with the neighbouring matmuls into slow kernels. The transpose of
`lax.split` is one concatenation of the pieces' cotangents (zeros for unread pieces), which
copies each column once.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def split_columns(
    x: Float[Array, "*batch dim"], ranges: Sequence[tuple[int, int]]
) -> list[Float[Array, "*batch _"]]:
    """`[x[..., start : start + width] for start, width in ranges]`, as one split.

    The last axis is cut at every range boundary (and at `0` and `dim`), so the pieces tile it
    and columns outside every range cost nothing. A range that spans several pieces (ranges
    may overlap) is their concatenation. Widths may be 0.
    """
    dim = x.shape[-1]
    for start, width in ranges:
        if start < 0 or width < 0 or start + width > dim:
            raise ValueError(
                f"split_columns: range ({start}, {width}) lies outside the {dim} columns."
            )
    cuts = sorted({0, dim, *(s for s, _ in ranges), *(s + w for s, w in ranges)})
    sizes = [b - a for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    pieces = jax.lax.split(x, sizes, axis=x.ndim - 1) if len(sizes) > 1 else [x]
    where = {a: i for i, a in enumerate(cuts[:-1])}
    out = []
    for start, width in ranges:
        if width == 0:
            out.append(jnp.zeros((*x.shape[:-1], 0), x.dtype))
            continue
        first, last = where[start], cuts.index(start + width)
        parts = pieces[first:last]
        out.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1))
    return out


def split_sizes(
    x: Float[Array, "*batch dim"], sizes: Sequence[int]
) -> list[Float[Array, "*batch _"]]:
    """The last axis cut into consecutive pieces of `sizes` (which sum to it), as one split."""
    if sum(sizes) != x.shape[-1]:
        raise ValueError(
            f"split_sizes: sizes {list(sizes)} sum to {sum(sizes)}, expected the last axis "
            f"({x.shape[-1]})."
        )
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return split_columns(x, list(zip(starts, sizes, strict=True)))
