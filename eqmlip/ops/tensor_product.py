"""Tensor products of e3x features (`e3x.nn.Tensor`, `FusedTensor`): shape rules, allowed
paths and the two products, one implementation each for any number of rows."""

import functools
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .layouts import Precision, _degree_of_index, _index, _parity_of_channel, feature_shape
from .so3 import clebsch_gordan


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


def tensor_path_allowed(d1: int, d2: int, d3: int, l1: int, l2: int, l3: int) -> bool:
    """Whether e3x's `Tensor` couples parities `d1, d2 -> d3` (0 even, 1 odd) and degrees
    `l1, l2 -> l3`: `(d1 + d2) % 2 == d3` and `|l1 - l2| <= l3 <= l1 + l2`."""
    return (d1 + d2) % 2 == d3 and abs(l1 - l2) <= l3 <= l1 + l2


def tensor_kernel_mask(
    num_parity1: int,
    max_degree1: int,
    num_parity2: int,
    max_degree2: int,
    num_parity3: int,
    max_degree3: int,
) -> np.ndarray:
    """Boolean `(P1, L1+1, P2, L2+1, P3, L3+1)`: the kernel entries of `Tensor` that are used.

    An entry is used when its path is allowed ([`eqmlip.ops.tensor_product.tensor_path_allowed`][]);
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


def _fold_batch(x: Array, batch: tuple[int, ...]) -> Array:
    """`x` broadcast to the batch axes `batch`, which are then folded into one axis."""
    return jnp.broadcast_to(x, (*batch, *x.shape[-3:])).reshape(-1, *x.shape[-3:])


# Largest number of non-zero Clebsch-Gordan terms (with parities) for which `e3x_tensor`
# writes the product out term by term (up to L = 2 against a P=1 input: 274 terms). The terms
# fuse into a few element-wise kernels that read each input once; the folded contraction
# materialises an `(..., F, D1, P3 D3)` intermediate (415 MB for MessagePass at 20,000 edges,
# F = 32, L = 2) and, on small inputs, spends most of its time in transposes of a few µs each.
# Compile time grows with the terms (8 s at 274 against 3 s), so larger products keep the
# contraction.
TENSOR_UNROLL_MAX_TERMS = 320


@functools.cache
def _tensor_terms(
    num_parity1: int,
    max_degree1: int,
    num_parity2: int,
    max_degree2: int,
    num_parity3: int,
    max_degree3: int,
    cartesian_order: bool,
) -> tuple[tuple[tuple[int, int, int, int, int, int], ...], np.ndarray, np.ndarray]:
    """The non-zero terms of `e3x_tensor`: `(c3, k) -> ((c1, i, c2, j, t), ...)` flattened in
    output order, with each term's flat kernel index (over `(P1, L1+1, P2, L2+1, P3, L3+1)`)
    and Clebsch-Gordan coefficient (float64) at position `t`."""
    mask = tensor_kernel_mask(
        num_parity1, max_degree1, num_parity2, max_degree2, num_parity3, max_degree3
    )
    cg = clebsch_gordan(max_degree1, max_degree2, max_degree3, cartesian_order=cartesian_order)
    d1, d2, d3 = (_degree_of_index(d) for d in (max_degree1, max_degree2, max_degree3))
    terms = []
    for c3 in range(num_parity3):
        for k in range(d3.size):
            for i, j in zip(*np.nonzero(cg[:, :, k]), strict=True):
                for c1 in range(num_parity1):
                    for c2 in range(num_parity2):
                        if mask[c1, d1[i], c2, d2[j], c3, d3[k]]:
                            terms.append((c3, k, c1, int(i), c2, int(j)))
    index = np.asarray(
        [
            np.ravel_multi_index((c1, d1[i], c2, d2[j], c3, d3[k]), mask.shape)
            for c3, k, c1, i, c2, j in terms
        ],
        dtype=np.int64,
    )
    coefficients = np.asarray([cg[i, j, k] for _, k, _, i, _, j in terms], dtype=np.float64)
    return tuple(terms), index, coefficients


def _e3x_tensor_unrolled(
    x1: Array, x2: Array, kernel: Array, terms: tuple, index: np.ndarray, coefficients: np.ndarray
) -> Array:
    """`e3x_tensor` term by term: `z[c3, k] = sum_paths w_path sum_terms C x1[c1, i] x2[c2, j]`
    over the non-zero terms of each path `(c1, l1, c2, l2, c3, l3)` into `(c3, k)`."""
    batch = jnp.broadcast_shapes(x1.shape[:-3], x2.shape[:-3])
    _, _, _, _, p3, l3, features = kernel.shape
    # Components by `split`, not by indexing: the gradient of a split is one concatenation,
    # that of each index a zero-padded copy of the whole input, all summed.
    parts1, parts2 = (
        [
            part[..., 0, :]
            for part in jnp.split(
                x.reshape(*x.shape[:-3], -1, x.shape[-1]), x.shape[-3] * x.shape[-2], axis=-2
            )
        ]
        for x in (x1, x2)
    )
    dim1, dim2 = x1.shape[-2], x2.shape[-2]
    # Each path's weight multiplies all its orders `m3` at once, so that the weight gradient
    # is one reduction per path, not one per term.
    by_path: dict[int, dict[int, Array]] = {}
    for t, (_, k, c1, i, c2, j) in enumerate(terms):
        term = float(coefficients[t]) * parts1[c1 * dim1 + i] * parts2[c2 * dim2 + j]
        orders = by_path.setdefault(int(index[t]), {})
        orders[k] = orders[k] + term if k in orders else term
    paths = list(by_path)
    weights = jnp.split(
        jnp.take(kernel.reshape(-1, features), _index(paths), axis=0), len(paths), axis=0
    )
    zeros = jnp.zeros((*batch, features), x1.dtype)
    by_output: dict[tuple[int, int], Array] = {}
    shape6 = kernel.shape[:-1]
    for path, weight in zip(paths, weights, strict=True):
        c3, deg3 = (int(v) for v in np.unravel_index(path, shape6)[4:])
        orders = by_path[path]
        block = range(deg3 * deg3, (deg3 + 1) ** 2)
        stacked = jnp.stack(
            [jnp.broadcast_to(orders.get(k, zeros), (*batch, features)) for k in block], axis=-2
        )
        weighted = jnp.split(stacked * weight, len(block), axis=-2)
        for k, part in zip(block, weighted, strict=True):
            if k in orders:
                part = part[..., 0, :]
                by_output[c3, k] = by_output[c3, k] + part if (c3, k) in by_output else part
    outputs = [
        jnp.broadcast_to(by_output.get((c3, k), zeros), (*batch, features))
        for c3 in range(p3)
        for k in range(l3 * l3)
    ]
    return jnp.stack(outputs, axis=-2).reshape(*batch, p3, l3 * l3, features)


def e3x_tensor(
    x1: Float[Array, "*batch p1 d1 f"],
    x2: Float[Array, "*batch p2 d2 f"],
    kernel: Float[Array, "p1 l1 p2 l2 p3 l3 f"],
    *,
    cartesian_order: bool = True,
    precision: Precision = None,
) -> Float[Array, "*batch p3 d3 f"]:
    """The map of `e3x.nn.Tensor`: all allowed Clebsch-Gordan couplings, one weight per path
    and feature.

    $$z[\\ldots, c_3, (l_3 m_3), f] = \\sum_{(c_1 l_1, c_2 l_2) \\to c_3 l_3}
      w[c_1, l_1, c_2, l_2, c_3, l_3, f] \\sum_{m_1 m_2} C[(l_1 m_1), (l_2 m_2), (l_3 m_3)]\\,
      x_1[\\ldots, c_1, (l_1 m_1), f]\\, x_2[\\ldots, c_2, (l_2 m_2), f]$$

    over the allowed paths: `|l1 - l2| <= l3 <= l1 + l2` and parity `d1 + d2 = d3 (mod 2)`,
    where the parity `d` of a block is its channel when `P=2` and `l % 2` when `P=1`
    ([`eqmlip.ops.tensor_product.tensor_kernel_mask`][]). Forbidden kernel entries are
    multiplied by 0, as in e3x (the term-by-term form below skips them). `P3` and `L3` are read
    from the kernel's shape.

    Products of at most `TENSOR_UNROLL_MAX_TERMS` non-zero terms are written out term by term:
    per path, `sum C x1 x2` over its non-zero coefficients, times the path's weight, summed
    into each output component. XLA fuses this into a few element-wise kernels that read each
    input once, without the per-row intermediate of the contraction below.

    Larger products fold the path weights, their mask and the Clebsch-Gordan coefficients into one
    constant-size tensor `T[c1, i, c2, j, c3, k, f] = w[c1, l(i), c2, l(j), c3, l(k), f]
    C[i, j, k]`, then `z[..., c3, k, f] = sum x1[..., c1, i, f] x2[..., c2, j, f]
    T[c1, i, c2, j, c3, k, f]` is one einsum. Folding costs nothing per row (per edge in
    message passing) and leaves a three-operand contraction, which XLA runs faster than e3x's
    four-operand einsum (kernel and Clebsch-Gordan apart) or than one contraction per pair of
    degrees (measured in `benchmarks/message_pass.py`). The summation order differs from
    e3x's, so results agree to rounding.

    **Arguments:**

    - `x1`, `x2`: features `(..., P1, (L1+1)**2, F)` and `(..., P2, (L2+1)**2, F)`, same
        dtype; the batch axes broadcast.
    - `kernel`: `(P1, L1+1, P2, L2+1, P3, L3+1, F)`, in the dtype of the inputs.
    - `cartesian_order`: order of the components of the inputs and output.
    - `precision`: passed to the contraction.

    **Returns:** `(..., P3, (L3+1)**2, F)`.
    """
    p1, l1max, f1 = feature_shape(x1.shape, caller="e3x_tensor")
    p2, l2max, f2 = feature_shape(x2.shape, caller="e3x_tensor")
    kp1, kl1, kp2, kl2, p3, kl3, kf = kernel.shape
    if (kp1, kl1 - 1, kp2, kl2 - 1, kf) != (p1, l1max, p2, l2max, f1) or f1 != f2:
        raise ValueError(
            f"e3x_tensor: kernel of shape {kernel.shape} does not fit inputs of "
            f"shapes {x1.shape} and {x2.shape}."
        )
    l3max = kl3 - 1
    check_tensor_degrees("e3x_tensor", l1max, l2max, l3max)
    batch = jnp.broadcast_shapes(x1.shape[:-3], x2.shape[:-3])
    if len(batch) > 1:
        # One batch axis: see `e3x_fused_tensor`.
        z = e3x_tensor(
            _fold_batch(x1, batch),
            _fold_batch(x2, batch),
            kernel,
            cartesian_order=cartesian_order,
            precision=precision,
        )
        return z.reshape(*batch, *z.shape[1:])
    terms, index, coefficients = _tensor_terms(
        p1, l1max, p2, l2max, p3, l3max, bool(cartesian_order)
    )
    if len(terms) <= TENSOR_UNROLL_MAX_TERMS:
        return _e3x_tensor_unrolled(x1, x2, kernel, terms, index, coefficients)
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
    ([`eqmlip.ops.tensor_product.tensor_num_parity`][]).

    Products of at most `FUSED_UNROLL_MAX_TERMS` multiplications (`L <= 2`: `3 x 3`
    matrices) are written out component by component: one multiplication of each input and of
    the output by its per-degree weights, the Clebsch-Gordan maps and the matrix products over
    their non-zero terms, which XLA fuses into a few element-wise kernels over the rows (every
    edge in message passing), with the features minor throughout.

    Larger products fold each per-degree kernel, with the even/odd selection of `P=1` inputs
    and outputs, into its constant-size Clebsch-Gordan block `G[a, b, n] w[l(n), f]`, so every
    row takes two-operand contractions only: one einsum per matrix and per product. Parts that
    are structurally zero (the odd part of a `P=1, L=0` input) are skipped in both forms.
    Results agree with e3x's to rounding.

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
    if f1 != f2 or any(
        getattr(kernels, name).shape != (degree + 1, f1)
        for name, degree in zip(
            FusedKernels._fields, (l1max, l1max, l2max, l2max, *(4 * (l3max,))), strict=True
        )
    ):
        raise ValueError(
            f"e3x_fused_tensor: kernels of shapes "
            f"{[k.shape for k in kernels]} do not fit inputs of shapes {x1.shape} and "
            f"{x2.shape}."
        )
    check_tensor_degrees("e3x_fused_tensor", l1max, l2max, l3max)
    batch = jnp.broadcast_shapes(x1.shape[:-3], x2.shape[:-3])
    if len(batch) > 1:
        # Jitted, XLA's shape verifier rejects some of these batched matrix products when
        # they have two or more leading batch axes (e3x's FusedTensor fails on inputs of
        # shapes (2, 2, 1, 4, 3) and (2, 2, 1, 1, 3)); with the batch folded into one axis
        # they compile, and each row's sums are the same.
        z = e3x_fused_tensor(
            _fold_batch(x1, batch),
            _fold_batch(x2, batch),
            kernels,
            include_pseudotensors=include_pseudotensors,
            cartesian_order=cartesian_order,
            precision=precision,
        )
        return z.reshape(*batch, *z.shape[1:])
    p3 = tensor_num_parity(p1, l1max, p2, l2max, l3max, include_pseudotensors)
    k = fused_matrix_degree(l1max, l2max, l3max)
    lm = max(l1max, l2max, l3max)
    g = clebsch_gordan(k, k, lm, cartesian_order=cartesian_order)[
        k * k : (k + 1) ** 2, k * k : (k + 1) ** 2, :
    ]
    if _fused_num_terms(g) <= FUSED_UNROLL_MAX_TERMS:
        return _e3x_fused_tensor_unrolled(x1, x2, kernels, g, p3)
    return _e3x_fused_tensor_folded(x1, x2, kernels, g, p3, precision)


def _e3x_fused_tensor_folded(
    x1: Array, x2: Array, kernels: FusedKernels, g: np.ndarray, p3: int, precision: Precision
) -> Array:
    """`e3x_fused_tensor` with one einsum per matrix, product and projection, each
    per-degree kernel folded into its Clebsch-Gordan block `G[a, b, n] w[l(n), f]`."""
    batch = jnp.broadcast_shapes(x1.shape[:-3], x2.shape[:-3])
    p1, l1max, f1 = feature_shape(x1.shape)
    p2, l2max, _ = feature_shape(x2.shape)
    l3max = kernels.eee.shape[0] - 1
    dtype = x1.dtype

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


# Largest number of multiplications (Clebsch-Gordan terms of the four matrices and the four
# projections, plus the four matrix products) for which `e3x_fused_tensor` writes the product
# out component by component (L <= 2: 3 x 3 matrices, 268 terms; L = 3, 4: 5 x 5, over 1,000).
# The einsums of the folded form run each contraction batched over the features, which XLA's
# CPU dot needs leading: a transpose of every per-row operand and result, forward and backward.
FUSED_UNROLL_MAX_TERMS = 400


def _fused_num_terms(g: np.ndarray) -> int:
    """The multiplications per row and feature of the component-by-component fused product."""
    return 8 * int(np.count_nonzero(g)) + 4 * g.shape[0] ** 3


def _fused_scales(g: np.ndarray) -> np.ndarray:
    """Per component `n`, the smallest non-zero `|G[:, :, n]|` (1 where none): dividing it out
    leaves coefficients of +-1 (and one +-2 at `L = 2`), so most terms are additions; the scale
    goes into the per-degree weights, which multiply anyway."""
    magnitudes = np.where(g != 0, np.abs(g), np.inf).reshape(-1, g.shape[-1]).min(axis=0)
    return np.where(np.isfinite(magnitudes), magnitudes, 1.0)


def _add_term(total, coefficient: float, y: Array) -> Array:
    """`total + coefficient * y` (`total` may be `None`), without multiplying by +-1."""
    if coefficient == 1.0:
        return y if total is None else total + y
    if coefficient == -1.0:
        return -y if total is None else total - y
    term = coefficient * y
    return term if total is None else total + term


def _fused_components(
    x: Array, kernels: tuple[Array, Array], even: np.ndarray, scales: np.ndarray
) -> list:
    """The components of `x` `(..., P, D, F)` times their per-degree weight and `scales[n]`:
    `kernels[0]` on even parts (channel 0 when `P=2`, even degrees when `P=1`), `kernels[1]`
    on odd ones.

    **Returns:** `[(is_even, component (..., F)), ...]` in `(P, D)` order; one multiplication
    for all, so that the gradient of each kernel is one reduction over the rows.
    """
    num_parity, dim, features = x.shape[-3:]
    degrees = _index(_degree_of_index(round(math.sqrt(dim)) - 1))
    even_w, odd_w = (jnp.take(k, degrees, axis=0) for k in kernels)
    if num_parity == 2:
        weights = jnp.stack([even_w, odd_w])
        parity = np.repeat([True, False], dim)
    else:
        weights = jnp.where(jnp.asarray(even[:, None]), even_w, odd_w)[None]
        parity = even
    weights = weights * jnp.asarray(scales[:dim, None], x.dtype)
    scaled = (x * weights).reshape(*x.shape[:-3], num_parity * dim, features)
    parts = [part[..., 0, :] for part in jnp.split(scaled, num_parity * dim, axis=-2)]
    return list(zip(parity.tolist(), parts, strict=True))


def _fused_matrix(parts: list, g: np.ndarray) -> list | None:
    """`X[a, b] = sum_n G[a, b, n] y[n]` over the given components `[(n, y_n), ...]`, as a
    flat list of `(2k+1)**2` entries (`None` where structurally zero); `None` if no part."""
    if not parts:
        return None
    size = g.shape[0]
    entries: list = [None] * size * size
    for n, y in parts:
        for a, b in zip(*np.nonzero(g[:, :, n]), strict=True):
            entries[a * size + b] = _add_term(entries[a * size + b], float(g[a, b, n]), y)
    return entries


def _fused_product(a: list | None, b: list | None, size: int) -> list | None:
    """The matrix product of two flat lists of entries (`None` entries are zero)."""
    if a is None or b is None:
        return None
    entries: list = []
    for i in range(size):
        for j in range(size):
            total = None
            for m in range(size):
                x, y = a[i * size + m], b[m * size + j]
                if x is not None and y is not None:
                    total = x * y if total is None else total + x * y
            entries.append(total)
    return entries


def _fused_projection(z: list | None, g: np.ndarray, n: int):
    """`sum_ab G[a, b, n] Z[a, b]` (`None` if zero)."""
    if z is None:
        return None
    size = g.shape[0]
    total = None
    for a, b in zip(*np.nonzero(g[:, :, n]), strict=True):
        entry = z[a * size + b]
        if entry is not None:
            total = _add_term(total, float(g[a, b, n]), entry)
    return total


def _e3x_fused_tensor_unrolled(
    x1: Array, x2: Array, kernels: FusedKernels, g: np.ndarray, p3: int
) -> Array:
    """`e3x_fused_tensor` component by component: the per-degree weights multiply the inputs
    and outputs as arrays, the Clebsch-Gordan maps and matrix products are written out over
    their non-zero terms, which XLA fuses into a few element-wise kernels."""
    batch = jnp.broadcast_shapes(x1.shape[:-3], x2.shape[:-3])
    features = x1.shape[-1]
    l3max = kernels.eee.shape[0] - 1
    dim3 = (l3max + 1) ** 2
    size = g.shape[0]
    scales = _fused_scales(g)
    g = g / scales  # +-1 (and +-2), exactly: each component's values share one magnitude
    matrices = []
    for x, pair in ((x1, (kernels.e1, kernels.o1)), (x2, (kernels.e2, kernels.o2))):
        dim = x.shape[-2]
        even = _degree_of_index(round(math.sqrt(dim)) - 1) % 2 == 0
        parts = _fused_components(x, pair, even, scales)
        # Slot `n` of each part within its channel: `P=2` stacks two channels of `D`.
        indexed = [(i % dim, is_even, part) for i, (is_even, part) in enumerate(parts)]
        matrices.append(
            tuple(
                _fused_matrix([(n, y) for n, e, y in indexed if e == parity], g)
                for parity in (True, False)
            )
        )
    (e1, o1), (e2, o2) = matrices
    # The two products that reach even outputs, then the two that reach odd ones.
    products = {
        True: (_fused_product(e1, e2, size), _fused_product(o1, o2, size)),
        False: (_fused_product(e1, o2, size), _fused_product(o1, e2, size)),
    }
    zeros = jnp.zeros((*batch, features), x1.dtype)
    degree3 = _degree_of_index(l3max)
    stacks: tuple[list, list] = ([], [])
    parities = []
    for c3 in range(p3):
        for n in range(dim3):
            is_even = c3 == 0 if p3 == 2 else degree3[n] % 2 == 0
            parities.append(is_even)
            for stack, z in zip(stacks, products[bool(is_even)], strict=True):
                value = _fused_projection(z, g, n)
                stack.append(zeros if value is None else jnp.broadcast_to(value, zeros.shape))
    parity3 = jnp.asarray(np.asarray(parities).reshape(p3, dim3, 1))
    degrees3 = _index(degree3)
    scales3 = jnp.asarray(scales[:dim3, None], x1.dtype)
    first_w, second_w = (
        jnp.where(parity3, jnp.take(even_k, degrees3, axis=0), jnp.take(odd_k, degrees3, axis=0))
        * scales3
        for even_k, odd_k in ((kernels.eee, kernels.eoo), (kernels.ooe, kernels.oeo))
    )
    first, second = (
        jnp.stack(stack, axis=-2).reshape(*batch, p3, dim3, features) for stack in stacks
    )
    return first * first_w + second * second_w
