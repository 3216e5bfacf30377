"""Indexed operations of e3x's message passing and attention, as pure functions.

Two index forms are accepted, as in `e3x.ops`:

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
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Integer, Shaped

from .e3x import (
    FusedKernels,
    _degree_of_index,
    _index,
    check_tensor_degrees,
    clebsch_gordan,
    feature_shape,
    fused_matrix_degree,
    tensor_kernel_mask,
    tensor_num_parity,
)


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


def indexed_sum(
    x: Shaped[Array, "..."],
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

    **Returns:** `(..., N, *rest)` (dense) or `(..., num_segments, *rest)` (sparse).
    """
    if adj_idx is not None:
        if dst_idx is not None:
            raise ValueError("indexed_sum: pass exactly one of adj_idx and dst_idx.")
        axis = adj_idx.ndim - 1
        if where is None:
            return jnp.sum(x, axis=axis)
        mask = jnp.reshape(where, (*where.shape, *(1,) * (x.ndim - where.ndim)))
        return jnp.sum(jnp.where(mask, x, jnp.zeros((), x.dtype)), axis=axis)
    if dst_idx is None or num_segments is None:
        raise ValueError("indexed_sum: sparse sums need dst_idx and num_segments.")

    def segment_sum(values: Array, idx: Array) -> Array:
        return jax.ops.segment_sum(
            values, idx, num_segments=num_segments, indices_are_sorted=indices_are_sorted
        )

    return _batched(segment_sum, dst_idx.ndim - 1)(x, dst_idx)


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
    if adj_idx is not None:
        axis = adj_idx.ndim - 1
        maximum = jnp.max(masked, axis=axis, keepdims=True)
    else:
        assert dst_idx is not None and num_segments is not None

        def segment_max(values: Array, i: Array) -> Array:
            top = jax.ops.segment_max(
                values, i, num_segments=num_segments, indices_are_sorted=indices_are_sorted
            )
            return top[i]

        maximum = _batched(segment_max, dst_idx.ndim - 1)(masked, dst_idx)
    # Padding entries are excluded before `exp`, so nothing overflows and no NaN gradient
    # comes back through them.
    shifted = jnp.where(valid, logits - jax.lax.stop_gradient(maximum), 0.0)
    numerator = jnp.where(valid, jnp.exp(shifted), 0.0)
    if multiplicative_mask is not None:
        numerator = numerator * jnp.reshape(
            multiplicative_mask, (*multiplicative_mask.shape, *extra)
        )
    if adj_idx is not None:
        denominator = jnp.sum(numerator, axis=adj_idx.ndim - 1, keepdims=True)
    else:
        assert dst_idx is not None and num_segments is not None

        def segment_total(values: Array, i: Array) -> Array:
            total = jax.ops.segment_sum(
                values, i, num_segments=num_segments, indices_are_sorted=indices_are_sorted
            )
            return total[i]

        denominator = _batched(segment_total, dst_idx.ndim - 1)(numerator, dst_idx)
    # A node whose every edge has mask 0 gets weights 0 (e3x: 0/0 = NaN).
    safe = jnp.where(denominator > 0, denominator, jnp.ones((), denominator.dtype))
    return numerator / safe


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


def head_split(x: Float[Array, "*batch f"], num_heads: int) -> Float[Array, "*batch fh h"]:
    """Split the last axis into `(F/H, H)`: feature `f` belongs to head `f % H` (e3x's
    query/key grouping)."""
    return jnp.reshape(x, (*x.shape[:-1], x.shape[-1] // num_heads, num_heads))


def head_broadcast(w: Float[Array, "*batch h"], features: int) -> Float[Array, "*batch f"]:
    """Repeat per-head weights to `features`: feature `f` gets head `f // (F/H)` (e3x's value
    grouping, which differs from `head_split`'s)."""
    return jnp.repeat(w, features // w.shape[-1], axis=-1)


def attention_scale(num_parity: int, max_degree: int, features_per_head: int) -> float:
    """`sqrt(P (L+1)^2 F/H)`: e3x divides queries by it."""
    return math.sqrt(num_parity * (max_degree + 1) ** 2 * features_per_head)


def tensor_product_edges(
    x1: Float[Array, "*batch p1 d1 f"],
    x2: Float[Array, "*batch p2 d2 f"],
    kernel: Float[Array, "p1 l1 p2 l2 p3 l3 f"],
    *,
    cartesian_order: bool = True,
    precision: Any = None,
) -> Float[Array, "*batch p3 d3 f"]:
    """The map of [`eqmlip.ops.e3x.e3x_tensor`][] (`e3x.nn.Tensor`), arranged for many rows
    (one per edge in message passing).

    Same result to rounding. The path weights, their mask of allowed paths and the
    Clebsch-Gordan coefficients are first folded into one constant-size tensor
    `T[c1, i, c2, j, c3, k, f] = w[c1, l(i), c2, l(j), c3, l(k), f] C[i, j, k]`, then
    `z[..., c3, k, f] = sum x1[..., c1, i, f] x2[..., c2, j, f] T[c1, i, c2, j, c3, k, f]`
    is one einsum. Folding costs nothing per row and leaves a three-operand contraction,
    which XLA runs faster than e3x's four-operand einsum (kernel and Clebsch-Gordan apart) or
    than one contraction per pair of degrees (measured in `benchmarks/message_pass.py`).

    **Arguments:** as [`eqmlip.ops.e3x.e3x_tensor`][].

    **Returns:** `(..., P3, (L3+1)**2, F)`.
    """
    p1, l1max, f1 = feature_shape(x1.shape, caller="tensor_product_edges")
    p2, l2max, f2 = feature_shape(x2.shape, caller="tensor_product_edges")
    kp1, kl1, kp2, kl2, p3, kl3, kf = kernel.shape
    if (kp1, kl1 - 1, kp2, kl2 - 1, kf) != (p1, l1max, p2, l2max, f1) or f1 != f2:
        raise ValueError(
            f"tensor_product_edges: kernel of shape {kernel.shape} does not fit inputs of "
            f"shapes {x1.shape} and {x2.shape}."
        )
    l3max = kl3 - 1
    check_tensor_degrees("tensor_product_edges", l1max, l2max, l3max)
    dtype = x1.dtype
    mask = tensor_kernel_mask(p1, l1max, p2, l2max, p3, l3max)
    cg = clebsch_gordan(l1max, l2max, l3max, cartesian_order=cartesian_order)
    d1, d2, d3 = _degree_of_index(l1max), _degree_of_index(l2max), _degree_of_index(l3max)
    # Per component: the mask of allowed paths times the Clebsch-Gordan coefficient (float64,
    # folded on the host), then the weights expanded from degrees to components.
    coefficients = mask[:, d1][:, :, :, d2][:, :, :, :, :, d3] * cg[None, :, None, :, None, :]
    weights = jnp.take(kernel, _index(d1), axis=1)
    weights = jnp.take(weights, _index(d2), axis=3)
    weights = jnp.take(weights, _index(d3), axis=5)
    folded = weights * jnp.asarray(coefficients[..., None], dtype)
    return jnp.einsum(
        "...pif,...qjf,piqjrkf->...rkf",
        x1,
        x2,
        folded,
        precision=precision,
        optimize="optimal",
    )


def fused_tensor_product_edges(
    x1: Float[Array, "*batch p1 d1 f"],
    x2: Float[Array, "*batch p2 d2 f"],
    kernels: FusedKernels,
    *,
    include_pseudotensors: bool = True,
    cartesian_order: bool = True,
    precision: Any = None,
) -> Float[Array, "*batch p3 d3 f"]:
    """The map of [`eqmlip.ops.e3x.e3x_fused_tensor`][] (`e3x.nn.FusedTensor`), arranged for
    many rows (one per edge in message passing).

    Same result to rounding. Each per-degree kernel is folded, with the even/odd selection of
    `P=1` inputs and outputs, into its constant-size Clebsch-Gordan block
    `G[a, b, n] w[l(n), f]`, so every row takes two-operand contractions only: no gathers or
    masks over the rows, and a single einsum per matrix and per product.

    **Arguments:** as [`eqmlip.ops.e3x.e3x_fused_tensor`][].

    **Returns:** `(..., P3, (L3+1)**2, F)`.
    """
    p1, l1max, f1 = feature_shape(x1.shape, caller="fused_tensor_product_edges")
    p2, l2max, f2 = feature_shape(x2.shape, caller="fused_tensor_product_edges")
    l3max = kernels.eee.shape[0] - 1
    if f1 != f2 or any(
        getattr(kernels, name).shape != (degree + 1, f1)
        for name, degree in zip(
            FusedKernels._fields, (l1max, l1max, l2max, l2max, *(4 * (l3max,))), strict=True
        )
    ):
        raise ValueError(
            f"fused_tensor_product_edges: kernels of shapes "
            f"{[k.shape for k in kernels]} do not fit inputs of shapes {x1.shape} and "
            f"{x2.shape}."
        )
    check_tensor_degrees("fused_tensor_product_edges", l1max, l2max, l3max)
    p3 = tensor_num_parity(p1, l1max, p2, l2max, l3max, include_pseudotensors)
    dtype = x1.dtype
    k = fused_matrix_degree(l1max, l2max, l3max)
    lm = max(l1max, l2max, l3max)
    g = clebsch_gordan(k, k, lm, cartesian_order=cartesian_order)[
        k * k : (k + 1) ** 2, k * k : (k + 1) ** 2, :
    ]

    def folded(kernel: Array, max_degree: int, select: np.ndarray) -> Array:
        """`G[a, b, n] w[l(n), f]`, zero where `select[n]` is false: `(2k+1, 2k+1, D, F)`."""
        dim = (max_degree + 1) ** 2
        coefficients = g[:, :, :dim] * select[None, None, :]
        weights = jnp.take(kernel, _index(_degree_of_index(max_degree)), axis=0)
        return jnp.asarray(coefficients[..., None], dtype) * weights

    def selection(num_parity: int, max_degree: int, parity: int) -> np.ndarray:
        degrees = _degree_of_index(max_degree)
        return np.ones(degrees.size) if num_parity == 2 else (degrees % 2 == parity) * 1.0

    def to_matrix(x: Array, num_parity: int, max_degree: int, parity: int, kernel: Array):
        select = selection(num_parity, max_degree, parity)
        if not select.any():
            return None  # the odd part of a `P=1, L=0` input is structurally zero
        values = x[..., parity if num_parity == 2 else 0, :, :]
        return jnp.einsum(
            "...nf,abnf->...abf",
            values,
            folded(kernel, max_degree, select),
            precision=precision,
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
    all_degrees = np.ones((l3max + 1) ** 2)
    batch = jnp.broadcast_shapes(x1.shape[:-3], x2.shape[:-3])

    def to_vector(terms: list, select: np.ndarray) -> Array | None:
        total = None
        for z, kernel in terms:
            if z is None:
                continue
            y = jnp.einsum(
                "...abf,abnf->...nf", z, folded(kernel, l3max, select), precision=precision
            )
            total = y if total is None else total + y
        return total

    def zeros() -> Array:
        return jnp.zeros((*batch, (l3max + 1) ** 2, f1), dtype)

    if p3 == 2:
        even = to_vector(even_terms, all_degrees)
        odd = to_vector(odd_terms, all_degrees)
        return jnp.stack([zeros() if even is None else even, zeros() if odd is None else odd], -3)
    # One channel: even output degrees from the even products, odd ones from the odd.
    even = to_vector(even_terms, selection(1, l3max, 0))
    odd = to_vector(odd_terms, selection(1, l3max, 1))
    parts = [part for part in (even, odd) if part is not None]
    total = functools.reduce(jnp.add, parts) if parts else zeros()
    return total[..., None, :, :]
