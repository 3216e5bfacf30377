"""Sums, gathers and softmaxes over index lists, row masks, and norms that are safe at zero.

The indexed operations of e3x's message passing and attention accept two index forms, as
`e3x.ops` does:

- **sparse**: `dst_idx` and `src_idx` of shape `(..., E)`. Edge `e` carries a message from
    node `src_idx[e]` to node `dst_idx[e]`. Padding edges use a destination outside
    `[0, num_segments)`: they are dropped from every sum (as by `jax.ops.segment_sum`).
- **dense**: `adj_idx` of shape `(..., N, M)`: row `i` lists the `M` neighbours of node `i`,
    padded with an index `>= N`. `where` (default `adj_idx < N`) says which entries count.

Gathers use NumPy indexing, so out-of-range padding indices are clamped: the padded entries
are computed from real data and then excluded, never read as garbage. Leading batch axes
`...` are shared by the features and the indices.
"""

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Integer, Real, Shaped


def safe_norm(vectors: Float[Array, "*batch 3"]) -> Float[Array, " *batch"]:
    """`|v|` over the last axis, with value and gradient 0 at `v = 0` (mlip's `safe_norm`,
    e3x's `ops.norm`), so that zero-length padding edges stay finite."""
    squared = jnp.sum(vectors * vectors, axis=-1)
    zero = squared == 0.0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, squared)))


Axis = int | tuple[int, ...] | None


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def norm(x: Float[Array, "..."], axis: Axis = None, keepdims: bool = False) -> Float[Array, "..."]:
    """Euclidean norm over `axis` (all axes by default), safe at 0 (e3x's `ops.norm`).

    $$\\lVert x \\rVert = a \\sqrt{\\textstyle\\sum (x / a)^2}, \\qquad a = \\max |x|$$

    The scaling by the largest entry `a` keeps huge entries from overflowing and tiny ones
    from underflowing; the derivative is `x / |x|`, and 0 where `|x| = 0` (no NaN).

    Difference from e3x: `a` is the maximum over the reduced axes of each norm, not over the
    whole array (the same norms up to rounding, and no vector is lost to underflow because
    another one in the batch is huge).

    **Arguments:**

    - `x`: input array.
    - `axis`: axis or axes to reduce; `None` for all.
    - `keepdims`: keep the reduced axes with size 1.

    **Returns:** the norms, dtype of `x`.
    """
    scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    scaled = x / scale
    out = scale * jnp.sqrt(jnp.sum(scaled * scaled, axis=axis, keepdims=True))
    return out if keepdims else jnp.squeeze(out, axis=axis)


@norm.defjvp
def _norm_jvp(axis: Axis, keepdims: bool, primals: tuple, tangents: tuple) -> tuple:
    (x,), (x_dot,) = primals, tangents
    n = norm(x, axis, True)
    direction = x / jnp.where(n > 0, n, jnp.ones_like(n))
    tangent = jnp.sum(x_dot * direction, axis=axis, keepdims=True)
    if not keepdims:
        n, tangent = jnp.squeeze(n, axis=axis), jnp.squeeze(tangent, axis=axis)
    return n, tangent


def normalize_and_return_norm(
    x: Float[Array, "..."], axis: Axis = None, keepdims: bool = False
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """`(x / |x|, |x|)` with the norm of [`eqmlip.ops.segment.norm`][] (e3x's
    `ops.normalize_and_return_norm`).

    Where `|x|^2` is below the smallest normal number of the dtype, `x` is returned unchanged
    (dividing by such a norm is unstable), so values and gradients stay finite at `x = 0`.

    **Arguments:**

    - `x`: input array.
    - `axis`: axis or axes of the norm; `None` for all.
    - `keepdims`: keep the reduced axes of the norm with size 1 (the normalised array always
        has the shape of `x`).

    **Returns:** the normalised array (shape of `x`) and the norm.
    """
    n = norm(x, axis, True)
    unit = x / jnp.where(n * n > jnp.finfo(x.dtype).tiny, n, jnp.ones_like(n))
    return unit, (n if keepdims else jnp.squeeze(n, axis=axis))


def normalize(x: Float[Array, "..."], axis: Axis = None) -> Float[Array, "..."]:
    """`x / |x|` over `axis`, `x` itself where `|x|` is about 0 (e3x's `ops.normalize`).

    **Returns:** shape and dtype of `x`.
    """
    return normalize_and_return_norm(x, axis, True)[0]


def dense_pairwise_indices(num: int, mask_self: bool = True) -> Int[Array, "{num} _m"]:
    """Dense indices of all pairs of `num` nodes (e3x's `ops.dense_pairwise_indices`): row `i`
    lists `0..num-1`, without `i` itself if `mask_self`.

    **Arguments:**

    - `num`: the number of nodes, at least 1.
    - `mask_self`: leave out self-pairs `(i, i)`.

    **Returns:** int32 `adj_idx` of shape `(num, num - 1)` (`mask_self`) or `(num, num)`.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"dense_pairwise_indices: num must be an int >= 1, got {num!r}.")
    columns = np.tile(np.arange(num), (num, 1))
    if mask_self:
        columns = columns[~np.eye(num, dtype=bool)].reshape(num, num - 1)
    return jnp.asarray(columns, jnp.int32)


def sparse_pairwise_indices(
    num: int, mask_self: bool = True
) -> tuple[Int[Array, " edges"], Int[Array, " edges"]]:
    """Sparse indices of all pairs of `num` nodes (e3x's `ops.sparse_pairwise_indices`), in
    row-major order: `(dst_idx, src_idx)` runs over `(0, 0), (0, 1), ..., (num-1, num-1)`,
    without the pairs `(i, i)` if `mask_self`.

    **Arguments:**

    - `num`: the number of nodes, at least 1.
    - `mask_self`: leave out self-pairs.

    **Returns:** int32 `dst_idx` and `src_idx`, each of length `num (num - 1)` (`mask_self`)
    or `num**2`.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"sparse_pairwise_indices: num must be an int >= 1, got {num!r}.")
    dst, src = np.divmod(np.arange(num * num), num)
    if mask_self:
        keep = dst != src
        dst, src = dst[keep], src[keep]
    return jnp.asarray(dst, jnp.int32), jnp.asarray(src, jnp.int32)


def mask_rows(
    x: Float[Array, " rows *rest"], mask: Bool[Array, " rows"] | None
) -> Float[Array, " rows *rest"]:
    """`where(mask, x, 0)` along the first axis (no-op without a mask)."""
    if mask is None:
        return x
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, 0.0)


def _scatter_add_rows(
    operand: Float[Array, " rows *rest"],
    rows: Int[Array, " items"],
    data: Float[Array, " items *rest"],
    mode: jax.lax.GatherScatterMode,
) -> Float[Array, " rows *rest"]:
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=tuple(range(1, data.ndim)),
        inserted_window_dims=(0,),
        scatter_dims_to_operand_dims=(0,),
    )
    return jax.lax.scatter_add(operand, rows[:, None], data, dims, mode=mode)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _scatter_rows(
    data: Float[Array, " items *rest"], rows: Int[Array, " items"], num_segments: int
) -> Float[Array, " {num_segments} *rest"]:
    """`segment_sum` for `rows` in `0..num_segments`, the last value meaning dropped.

    The value is one scatter-add into `num_segments` rows that skips the dropped items (XLA
    skips out-of-bounds updates). The tangent adds into one extra row, cut off, so that its
    transpose (the gradient) is a zero row padded onto the cotangent and a gather promised in
    bounds; only the tangent pays the cut-off copy, and reverse mode never computes it.
    """
    zeros = jnp.zeros((num_segments, *data.shape[1:]), data.dtype)
    return _scatter_add_rows(zeros, rows, data, jax.lax.GatherScatterMode.FILL_OR_DROP)


@_scatter_rows.defjvp
def _scatter_rows_jvp(num_segments: int, primals: tuple, tangents: tuple) -> tuple:
    (data, rows), (data_dot, _) = primals, tangents
    zeros = jnp.zeros((num_segments + 1, *data.shape[1:]), data_dot.dtype)
    extra = _scatter_add_rows(zeros, rows, data_dot, jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return _scatter_rows(data, rows, num_segments), extra[:num_segments]


def segment_sum(
    data: Float[Array, " items *rest"],
    segment_ids: Int[Array, " items"],
    num_segments: int,
    *,
    deterministic: bool = False,
) -> Float[Array, " {num_segments} *rest"]:
    """`out[s] = sum_{i: ids[i] = s} data[i]`; ids outside `0..num_segments-1` are dropped.

    `deterministic=False` gives the sums of `jax.ops.segment_sum` with one scatter-add (whose
    summation order on GPU depends on thread timing). Its gradient is a gather from the
    cotangent padded with a zero row, which out-of-range ids read: promised in bounds, so XLA
    emits neither bounds checks nor the items-sized select that would drop those entries
    (`jax.ops.segment_sum`'s gradient has both). `deterministic=True` sorts
    the items by segment (stable), takes a segmented inclusive scan (`jax.lax.associative_scan`,
    a fixed reduction tree) and reads the last item of each segment: bit-for-bit reproducible
    on every backend, and so is its gradient (a gather and scans; the only scatters write
    distinct indices).

    **Arguments:**

    - `data`: the items `(items, *rest)`.
    - `segment_ids`: integer segment of each item `(items,)`.
    - `num_segments`: the number of segments (static).
    - `deterministic`: use the sorted scan instead of a scatter-add.

    **Returns:** `(num_segments, *rest)` in the dtype of `data`.
    """
    if not deterministic:
        rows = jnp.where(
            (segment_ids >= 0) & (segment_ids < num_segments), segment_ids, num_segments
        ).astype(jnp.int32)
        return _scatter_rows(data, rows, num_segments)
    items = data.shape[0]
    if items == 0:
        return jnp.zeros((num_segments, *data.shape[1:]), data.dtype)
    ids = jnp.where(
        (segment_ids >= 0) & (segment_ids < num_segments), segment_ids, num_segments
    ).astype(jnp.int32)
    order = jnp.argsort(ids, stable=True)
    sorted_ids = ids[order]
    values = data[order]
    starts = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
    flat = values.reshape(items, -1)

    def combine(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
        va, fa = a
        vb, fb = b
        return jnp.where(fb[:, None], vb, va + vb), fa | fb

    scanned, _ = jax.lax.associative_scan(combine, (flat, starts))
    segments = jnp.arange(num_segments, dtype=jnp.int32)
    last = jnp.searchsorted(sorted_ids, segments, side="right").astype(jnp.int32) - 1
    present = (last >= 0) & (sorted_ids[jnp.clip(last, 0, items - 1)] == segments)
    out = jnp.where(present[:, None], scanned[jnp.clip(last, 0, items - 1)], 0.0)
    return out.reshape(num_segments, *data.shape[1:])


def check_indices(
    caller: str,
    *,
    adj_idx: Array | None,
    dst_idx: Array | None,
    src_idx: Array | None,
    where: Array | None = None,
) -> str:
    """Which index form is given: `"dense"` or `"sparse"`.

    Raises `ValueError` naming `caller` unless exactly one form is complete (`adj_idx`, or
    both `dst_idx` and `src_idx`), and `TypeError` for non-integer indices.
    """
    sparse = dst_idx is not None or src_idx is not None
    if adj_idx is not None and sparse:
        raise ValueError(
            f"{caller}: got both adj_idx (dense) and dst_idx/src_idx (sparse); pass one index "
            "form only."
        )
    if adj_idx is None and not sparse:
        raise ValueError(
            f"{caller}: no indices given; pass adj_idx=(..., N, M) (dense) or "
            "dst_idx=(..., E) and src_idx=(..., E) (sparse)."
        )
    for name, idx in (("adj_idx", adj_idx), ("dst_idx", dst_idx), ("src_idx", src_idx)):
        if idx is not None and not jnp.issubdtype(idx.dtype, jnp.integer):
            raise TypeError(f"{caller}: {name} must have an integer dtype, got {idx.dtype}.")
    if adj_idx is not None:
        if adj_idx.ndim < 2:
            raise ValueError(
                f"{caller}: adj_idx must have shape (..., N, M), got shape {adj_idx.shape}."
            )
        if where is not None and where.shape != adj_idx.shape:
            raise ValueError(
                f"{caller}: where must have the shape of adj_idx {adj_idx.shape}, got "
                f"{where.shape}."
            )
        return "dense"
    if dst_idx is None or src_idx is None:
        missing = "dst_idx" if dst_idx is None else "src_idx"
        raise ValueError(
            f"{caller}: sparse indices need both dst_idx and src_idx; {missing} is None."
        )
    if where is not None:
        raise ValueError(f"{caller}: where is only used with dense indices (adj_idx).")
    if dst_idx.shape != src_idx.shape or dst_idx.ndim < 1:
        raise ValueError(
            f"{caller}: dst_idx and src_idx must have the same shape (..., E), got "
            f"{dst_idx.shape} and {src_idx.shape}."
        )
    return "sparse"


def _batched(fn: Any, num_batch: int) -> Any:
    """`fn` mapped over `num_batch` leading axes of every argument."""
    for _ in range(num_batch):
        fn = jax.vmap(fn)
    return fn


def gather_src(
    x: Shaped[Array, "..."],
    *,
    adj_idx: Integer[Array, "*batch n m"] | None = None,
    src_idx: Integer[Array, "*batch edges"] | None = None,
) -> Shaped[Array, "..."]:
    """Values of the source of each edge (e3x's `ops.gather_src`).

    **Arguments:**

    - `x`: per-node values `(..., N_src, *rest)`.
    - `adj_idx`: dense indices `(..., N, M)`, or
    - `src_idx`: sparse source indices `(..., E)`.

    **Returns:** `(..., N, M, *rest)` (dense) or `(..., E, *rest)` (sparse).
    """
    idx = adj_idx if adj_idx is not None else src_idx
    if idx is None or (adj_idx is not None and src_idx is not None):
        raise ValueError("gather_src: pass exactly one of adj_idx and src_idx.")
    num_batch = idx.ndim - (2 if adj_idx is not None else 1)
    if tuple(x.shape[:num_batch]) != tuple(idx.shape[:num_batch]):
        raise ValueError(
            f"gather_src: indices of shape {idx.shape} do not share the batch axes of values "
            f"of shape {x.shape}."
        )
    return _batched(lambda v, i: v[i], num_batch)(x, idx)


def gather_dst(
    x: Shaped[Array, "..."],
    *,
    adj_idx: Integer[Array, "*batch n m"] | None = None,
    dst_idx: Integer[Array, "*batch edges"] | None = None,
) -> Shaped[Array, "..."]:
    """Values of the destination of each edge (e3x's `ops.gather_dst`).

    Dense indices give `x` with a neighbour axis of size 1 (it broadcasts against
    `gather_src`); sparse ones give `x[..., dst_idx, ...]`.

    **Returns:** `(..., N, 1, *rest)` (dense) or `(..., E, *rest)` (sparse).
    """
    if adj_idx is not None and dst_idx is None:
        return jnp.expand_dims(x, adj_idx.ndim - 1)
    if dst_idx is None or adj_idx is not None:
        raise ValueError("gather_dst: pass exactly one of adj_idx and dst_idx.")
    num_batch = dst_idx.ndim - 1
    return _batched(lambda v, i: v[i], num_batch)(x, dst_idx)


def _valid_edges(
    *,
    adj_idx: Array | None,
    where: Array | None,
    dst_idx: Array | None,
    num_segments: int | None,
    num_nodes: int,
) -> Bool[Array, "..."]:
    """Which entries of the index list take part in the sums."""
    if adj_idx is not None:
        return adj_idx < num_nodes if where is None else where
    assert dst_idx is not None and num_segments is not None
    return (dst_idx >= 0) & (dst_idx < num_segments)


def _indexed_reduce(
    mode: str,
    x: Shaped[Array, "..."],
    keepdims: bool,
    adj_idx: Array | None,
    where: Array | None,
    dst_idx: Array | None,
    num_segments: int | None,
    indices_are_sorted: bool,
) -> Shaped[Array, "..."]:
    """Sum, minimum or maximum over the neighbours of each node (see `indexed_sum`)."""
    caller = f"indexed_{mode}"
    if mode != "sum" and not (
        jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
    ):
        raise TypeError(f"{caller}: inputs must be floating point or integers, got {x.dtype}.")
    if adj_idx is not None:
        if dst_idx is not None:
            raise ValueError(f"{caller}: pass exactly one of adj_idx and dst_idx.")
        axis = adj_idx.ndim - 1
        mask = None
        if where is not None:
            mask = jnp.reshape(where, (*where.shape, *(1,) * (x.ndim - where.ndim)))
        if mode == "sum":
            if mask is not None:
                x = jnp.where(mask, x, jnp.zeros((), x.dtype))
            return jnp.sum(x, axis=axis, keepdims=keepdims)
        # As e3x: the dtype's extreme value starts the reduction, so a row without entries
        # gives it (not an infinity), and so does a row whose entries are all beyond it.
        info = jnp.finfo(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype)
        reduce, initial = (jnp.max, info.min) if mode == "max" else (jnp.min, info.max)
        return reduce(x, axis=axis, keepdims=keepdims, where=mask, initial=initial)
    if dst_idx is None or num_segments is None:
        raise ValueError(f"{caller}: sparse reductions need dst_idx and num_segments.")
    segment_reduce = {
        "sum": jax.ops.segment_sum,
        "max": jax.ops.segment_max,
        "min": jax.ops.segment_min,
    }[mode]

    def reduce_segments(values: Array, idx: Array) -> Array:
        total = segment_reduce(
            values, idx, num_segments=num_segments, indices_are_sorted=indices_are_sorted
        )
        return total[idx] if keepdims else total

    return _batched(reduce_segments, dst_idx.ndim - 1)(x, dst_idx)


def indexed_sum(
    x: Shaped[Array, "..."],
    keepdims: bool = False,
    *,
    adj_idx: Integer[Array, "*batch n m"] | None = None,
    where: Bool[Array, "*batch n m"] | None = None,
    dst_idx: Integer[Array, "*batch edges"] | None = None,
    num_segments: int | None = None,
    indices_are_sorted: bool = False,
) -> Shaped[Array, "..."]:
    """Sum edge values into their destinations (e3x's `ops.indexed_sum`).

    Dense: `sum_m x[..., n, m, ...]` over the entries where `where` holds (default: all).
    Sparse: `jax.ops.segment_sum` by `dst_idx` into `num_segments` rows; destinations outside
    `[0, num_segments)` are dropped.

    With `keepdims` (e3x's `keepdims`), the sums come back in a shape that broadcasts against
    `x`: dense keeps the neighbour axis with size 1, sparse gives each edge the sum of its
    destination.

    **Returns:** `(..., N, *rest)` (dense) or `(..., num_segments, *rest)` (sparse); with
    `keepdims`, `(..., N, 1, *rest)` or `(..., E, *rest)`.
    """
    return _indexed_reduce(
        "sum", x, keepdims, adj_idx, where, dst_idx, num_segments, indices_are_sorted
    )


def indexed_max(
    x: Real[Array, "..."],
    keepdims: bool = False,
    *,
    adj_idx: Integer[Array, "*batch n m"] | None = None,
    where: Bool[Array, "*batch n m"] | None = None,
    dst_idx: Integer[Array, "*batch edges"] | None = None,
    num_segments: int | None = None,
    indices_are_sorted: bool = False,
) -> Real[Array, "..."]:
    """Maximum of the edge values into each destination (e3x's `ops.indexed_max`); indices,
    `keepdims` and shapes as for `indexed_sum`.

    A node without edges gets what e3x gives it: the lowest value of the dtype (dense, e.g.
    `-3.4e38` in float32) or `-inf` (sparse, `jax.ops.segment_max`'s identity; the dtype's
    lowest value for integers).

    **Raises:** `TypeError` for inputs that are neither floating point nor integers.
    """
    return _indexed_reduce(
        "max", x, keepdims, adj_idx, where, dst_idx, num_segments, indices_are_sorted
    )


def indexed_min(
    x: Real[Array, "..."],
    keepdims: bool = False,
    *,
    adj_idx: Integer[Array, "*batch n m"] | None = None,
    where: Bool[Array, "*batch n m"] | None = None,
    dst_idx: Integer[Array, "*batch edges"] | None = None,
    num_segments: int | None = None,
    indices_are_sorted: bool = False,
) -> Real[Array, "..."]:
    """Minimum of the edge values into each destination (e3x's `ops.indexed_min`); indices,
    `keepdims` and shapes as for `indexed_sum`.

    A node without edges gets the largest value of the dtype (dense) or `+inf` (sparse), as
    in e3x.

    **Raises:** `TypeError` for inputs that are neither floating point nor integers.
    """
    return _indexed_reduce(
        "min", x, keepdims, adj_idx, where, dst_idx, num_segments, indices_are_sorted
    )


def _concrete(caller: str, name: str, indices: Any) -> np.ndarray:
    """Indices as a NumPy integer array; these conversions run on the host, outside jit."""
    try:
        array = np.asarray(indices)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            f"{caller}: {name} must be concrete (the conversion runs on the host, outside "
            "jax.jit and jax.vmap), got a traced array."
        ) from None
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{caller}: {name} must be integers, got dtype {array.dtype}.")
    return array


PadIndex = int | np.integer | Integer[Array, ""] | None


def _check_pad_idx(caller: str, pad_idx: Any) -> int | None:
    """`pad_idx` as a Python int (any concrete integer scalar, as e3x takes), or None."""
    if pad_idx is None:
        return None
    try:
        value = None if isinstance(pad_idx, bool) else operator.index(pad_idx)
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"{caller}: pad_idx must be an int >= 1 or None, got {pad_idx!r}.")
    return value


def dense_to_sparse_indices(
    adj_idx: Integer[Array, "*batch n m"] | np.ndarray, pad_idx: PadIndex = None
) -> tuple[Integer[Array, "*batch edges"], Integer[Array, "*batch edges"]]:
    """Sparse indices from dense ones (e3x's `ops.dense_to_sparse_indices`).

    Every entry `adj_idx[..., i, k] < pad_idx` becomes an edge `(dst, src) = (i, adj_idx[...,
    i, k])`, in row-major order. Batches with fewer edges than the largest are padded with
    `(pad_idx, pad_idx)`. Runs on the host (the edge count depends on the values), so the
    indices must be concrete, as in e3x.

    **Arguments:**

    - `adj_idx`: dense indices `(..., N, M)`.
    - `pad_idx`: entries `>= pad_idx` are padding; `None`: none are, and `max(adj_idx) + 1`
        pads the batches.

    **Returns:** `(dst_idx, src_idx)`, each `(..., E)` in the dtype of `adj_idx`.
    """
    caller = "dense_to_sparse_indices"
    adj = _concrete(caller, "adj_idx", adj_idx)
    pad_idx = _check_pad_idx(caller, pad_idx)
    if adj.ndim < 2:
        raise ValueError(f"{caller}: adj_idx must have shape (..., N, M), got {adj.shape}.")
    batch = adj.shape[:-2]
    if adj.size == 0:
        empty = jnp.asarray(np.zeros((*batch, 0), adj.dtype))
        return empty, empty
    pad = int(adj.max()) + 1 if pad_idx is None else pad_idx
    pairs = []
    for rows in adj.reshape(-1, *adj.shape[-2:]):
        dst, column = np.nonzero(rows < pad)
        pairs.append((dst, rows[dst, column]))
    size = max(len(dst) for dst, _ in pairs)
    out = np.full((2, len(pairs), size), pad, adj.dtype)
    for b, (dst, src) in enumerate(pairs):
        out[0, b, : len(dst)], out[1, b, : len(src)] = dst, src
    out = out.reshape(2, *batch, size)
    return jnp.asarray(out[0]), jnp.asarray(out[1])


def sparse_to_dense_indices(
    dst_idx: Integer[Array, "*batch edges"] | np.ndarray,
    src_idx: Integer[Array, "*batch edges"] | np.ndarray,
    pad_idx: PadIndex = None,
) -> Integer[Array, "*batch n m"]:
    """Dense indices from sparse ones (e3x's `ops.sparse_to_dense_indices`).

    Row `i < pad_idx` lists the sources of the edges into `i`, in edge order, padded with
    `pad_idx` to the largest in-degree `M`; edges whose destination is outside `[0,
    pad_idx)` are dropped. Runs on the host (`M` depends on the values), so the indices must
    be concrete, as in e3x.

    **Arguments:**

    - `dst_idx`, `src_idx`: sparse indices `(..., E)`.
    - `pad_idx`: the number of rows `N` and the padding value; `None`: `max(dst_idx) + 1`.

    **Returns:** `adj_idx` of shape `(..., N, M)` in the dtype of `dst_idx`.
    """
    caller = "sparse_to_dense_indices"
    dst = _concrete(caller, "dst_idx", dst_idx)
    src = _concrete(caller, "src_idx", src_idx)
    pad_idx = _check_pad_idx(caller, pad_idx)
    if dst.shape != src.shape or dst.ndim < 1:
        raise ValueError(
            f"{caller}: dst_idx and src_idx must have the same shape (..., E), got {dst.shape} "
            f"and {src.shape}."
        )
    batch = dst.shape[:-1]
    if dst.size == 0:
        return jnp.asarray(np.zeros((*batch, 0, 0), dst.dtype))
    pad = int(dst.max()) + 1 if pad_idx is None else pad_idx
    rows = []
    for d, s in zip(dst.reshape(-1, dst.shape[-1]), src.reshape(-1, src.shape[-1]), strict=True):
        keep = (d >= 0) & (d < pad)
        d, s = d[keep], s[keep]
        order = np.argsort(d, kind="stable")  # keeps the edge order within each row
        d, s = d[order], s[order]
        slot = np.arange(len(d)) - np.searchsorted(d, d, side="left")
        rows.append((d, slot, s))
    width = max((int(slot.max()) + 1 for _, slot, _ in rows if len(slot)), default=0)
    out = np.full((len(rows), pad, width), pad, dst.dtype)
    for b, (d, slot, s) in enumerate(rows):
        out[b, d, slot] = s
    return jnp.asarray(out.reshape(*batch, pad, width))


def indexed_softmax(
    logits: Float[Array, "..."],
    multiplicative_mask: Float[Array, "..."] | None = None,
    *,
    adj_idx: Integer[Array, "*batch n m"] | None = None,
    where: Bool[Array, "*batch n m"] | None = None,
    dst_idx: Integer[Array, "*batch edges"] | None = None,
    num_segments: int | None = None,
    num_nodes: int | None = None,
    indices_are_sorted: bool = False,
) -> Float[Array, "..."]:
    """Softmax over the edges into each destination (e3x's `ops.indexed_softmax`), with the
    trailing axes of `logits` (e.g. heads) handled independently.

    $$w_e = \\frac{c_e \\exp(s_e - \\max_{e' \\to i} s_{e'})}
                  {\\sum_{e' \\to i} c_{e'} \\exp(s_{e'} - \\max_{e' \\to i} s_{e'})}$$

    with `c` the optional `multiplicative_mask` (e.g. a smooth cutoff; the maximum is taken
    before it is applied and is not differentiated, as in e3x).

    Difference from e3x: when the denominator is 0 (every edge into a node has `c = 0`),
    the weights are 0 instead of NaN; padding entries get weight 0 and never produce
    infinities or NaN, in values or gradients.

    **Arguments:**

    - `logits`: `(..., E, *heads)` (sparse) or `(..., N, M, *heads)` (dense).
    - `multiplicative_mask`: `(..., E)` or `(..., N, M)`, or `None`.
    - `adj_idx`, `where`, `dst_idx`, `num_segments`, `indices_are_sorted`: the indices
        (see the module docstring).
    - `num_nodes`: dense only, the number of nodes gathered from (for the default `where`).

    **Returns:** weights of the shape of `logits`.
    """
    if adj_idx is not None:
        idx = adj_idx
        valid = _valid_edges(
            adj_idx=adj_idx,
            where=where,
            dst_idx=None,
            num_segments=None,
            num_nodes=adj_idx.shape[-2] if num_nodes is None else num_nodes,
        )
    elif dst_idx is not None and num_segments is not None:
        idx = dst_idx
        valid = _valid_edges(
            adj_idx=None, where=None, dst_idx=dst_idx, num_segments=num_segments, num_nodes=0
        )
    else:
        raise ValueError("indexed_softmax: pass adj_idx, or dst_idx and num_segments.")
    if tuple(logits.shape[: idx.ndim]) != tuple(idx.shape):
        raise ValueError(
            f"indexed_softmax: logits of shape {logits.shape} do not start with the index "
            f"shape {idx.shape}."
        )
    extra = (1,) * (logits.ndim - idx.ndim)
    valid = jnp.reshape(valid, (*valid.shape, *extra))
    lowest = jnp.asarray(jnp.finfo(logits.dtype).min, logits.dtype)
    masked = jnp.where(valid, logits, lowest)

    def per_destination(reduce: Any, segment_reduce: Any, values: Array) -> Array:
        """The reduction over the edges into each destination, back on every edge."""
        if adj_idx is not None:
            return reduce(values, axis=adj_idx.ndim - 1, keepdims=True)
        assert dst_idx is not None and num_segments is not None

        def one(v: Array, i: Array) -> Array:
            total = segment_reduce(
                v, i, num_segments=num_segments, indices_are_sorted=indices_are_sorted
            )
            return total[i]

        return _batched(one, dst_idx.ndim - 1)(values, dst_idx)

    maximum = per_destination(jnp.max, jax.ops.segment_max, masked)
    # Padding entries are excluded before `exp`, so nothing overflows and no NaN gradient
    # comes back through them.
    shifted = jnp.where(valid, logits - jax.lax.stop_gradient(maximum), 0.0)
    numerator = jnp.where(valid, jnp.exp(shifted), 0.0)
    if multiplicative_mask is not None:
        numerator = numerator * jnp.reshape(
            multiplicative_mask, (*multiplicative_mask.shape, *extra)
        )
    denominator = per_destination(jnp.sum, jax.ops.segment_sum, numerator)
    # A node whose every edge has mask 0 gets weights 0 (e3x: 0/0 = NaN).
    safe = jnp.where(denominator > 0, denominator, jnp.ones((), denominator.dtype))
    return numerator / safe
