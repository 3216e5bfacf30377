"""Equivariant linear maps, as pure functions: e3nn-jax's `Linear`, e3j's block linear and
e3x's `Dense`.

An equivariant linear map sends each input chunk `mul_in x ir` to every output chunk of the same
irrep through a `(mul_in, mul_out)` matrix acting on the multiplicity index (Schur's lemma):

$$y_o[\\ldots, w, m] = \\sum_{p \\to o} c_p \\sum_u W_p[u, w]\\, x_{i(p)}[\\ldots, u, m]
   + b_o[w]\\,[\\mathrm{ir}_o = 0e]$$

with the path weights $c_p$ of e3nn-jax's `FunctionalLinear`.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float, Int

from .._misc import irreps_entry
from .columns import split_columns
from .layouts import Precision, feature_shape

# "element" (0.0), "path" (1.0) or a float; checked at run time with a message naming the options.
Normalization = str | float


class LinearPath(NamedTuple):
    """One weight matrix of an equivariant linear map: input chunk `i_in` to output chunk `i_out`.

    `path_weight` multiplies the path in the forward pass; `weight_std` is the standard deviation of
    its default initialisation. Both follow e3nn-jax's normalisation formula.
    """

    i_in: int
    i_out: int
    path_weight: float
    weight_std: float


def normalization_exponent(value: Normalization | None, name: str, default: float) -> float:
    """Read an e3nn-style normalisation (`"element"` = 0, `"path"` = 1, or a float).

    `None` gives `default` (e3nn-jax's documented default); e3nn's global `config` is never read,
    so no global state changes eqmlip's numerics.
    """
    if value is None:
        return default
    if isinstance(value, str):
        table = {"element": 0.0, "path": 1.0}
        if value not in table:
            raise ValueError(f"{name} must be 'element', 'path' or a float, got {value!r}.")
        return table[value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be 'element', 'path' or a float, got {value!r}.")
    return float(value)


def linear_paths(
    irreps_in: e3nn.Irreps,
    irreps_out: e3nn.Irreps,
    instructions: Sequence[tuple[int, int]] | None,
    path_normalization: float,
    gradient_normalization: float,
) -> tuple[LinearPath, ...]:
    """The paths of a linear map with their path weights and initialisation scales.

    Without `instructions`, every `(i_in, i_out)` pair of equal irreps is connected, with `i_in` as
    the outer loop. For path `p` into output `o`,
    `alpha_p = 1 / (mul_in(p)**pn * sum_{q -> o} mul_in(q)**(1 - pn))` (1 when that is 0),
    `path_weight = alpha_p**(gn/2)` and `weight_std = alpha_p**((1-gn)/2)`.
    """
    if instructions is None:
        pairs = [
            (i_in, i_out)
            for i_in, (_, ir_in) in enumerate(irreps_in)
            for i_out, (_, ir_out) in enumerate(irreps_out)
            if ir_in == ir_out
        ]
    else:
        pairs = [(int(i_in), int(i_out)) for i_in, i_out in instructions]
        for i_in, i_out in pairs:
            if not (0 <= i_in < len(irreps_in) and 0 <= i_out < len(irreps_out)):
                raise ValueError(
                    f"instruction ({i_in}, {i_out}) is out of range for irreps_in={irreps_in} "
                    f"({len(irreps_in)} entries) and irreps_out={irreps_out} "
                    f"({len(irreps_out)} entries)."
                )
            ir_in, ir_out = irreps_entry(irreps_in, i_in).ir, irreps_entry(irreps_out, i_out).ir
            if ir_in != ir_out:
                raise ValueError(
                    f"instruction ({i_in}, {i_out}) connects {ir_in} to {ir_out}; a linear map "
                    "can only connect equal irreps."
                )

    def alpha(i_in: int, i_out: int) -> float:
        fan = sum(
            irreps_entry(irreps_in, j).mul ** (1.0 - path_normalization)
            for j, o in pairs
            if o == i_out
        )
        denominator = irreps_entry(irreps_in, i_in).mul ** path_normalization * fan
        return 1.0 / denominator if denominator > 0 else 1.0

    return tuple(
        LinearPath(
            i_in=i_in,
            i_out=i_out,
            path_weight=math.sqrt(alpha(i_in, i_out)) ** gradient_normalization,
            weight_std=math.sqrt(alpha(i_in, i_out)) ** (1.0 - gradient_normalization),
        )
        for i_in, i_out in pairs
    )


def bias_outputs(irreps_out: e3nn.Irreps, biases: bool | Sequence[bool]) -> tuple[int, ...]:
    """Indices of the output chunks that get a bias. Only `0e` chunks may have one."""
    if isinstance(biases, bool):
        return tuple(i for i, (_, ir) in enumerate(irreps_out) if biases and ir.is_scalar())
    flags = tuple(biases)
    if len(flags) != len(irreps_out):
        raise ValueError(
            f"biases has {len(flags)} entries but irreps_out={irreps_out} has "
            f"{len(irreps_out)}; give one bool per output entry, or a single bool."
        )
    for i, (flag, (_, ir)) in enumerate(zip(flags, irreps_out, strict=True)):
        if flag and not ir.is_scalar():
            raise ValueError(
                f"biases[{i}] is True for output {irreps_entry(irreps_out, i)}; only 0e outputs "
                "can have a bias."
            )
    return tuple(i for i, flag in enumerate(flags) if flag)


def _contract_multiplicity(
    chunk: Float[Array, "*batch mul_in ir_dim"], w: Float[Array, "*_ mul_in mul_out"]
) -> Float[Array, "*batch mul_out ir_dim"]:
    """`out[..., w, m] = sum_u chunk[..., u, m] W[..., u, w]`, shaped for XLA:CPU's matmul.

    An einsum over the middle axis makes XLA copy around a strided dot (about 3x slower for
    scalars); a plain matmul on the last axis runs at full speed.
    """
    if w.ndim > 2:  # per-row weights (indexed or mixed): a batched matrix-vector product
        return jnp.einsum("...ui,...uw->...wi", chunk, w)
    *batch, mul_in, dim = chunk.shape
    rows = _contract_rows(chunk.reshape(math.prod(batch), mul_in, dim), w)
    return rows.reshape(*batch, w.shape[-1], dim)


def _rows_matmul(chunk: Float[Array, "n u m"], w: Float[Array, "u w"]) -> Float[Array, "n w m"]:
    """The contraction as a matmul on the last axis (the multiplicity axis moved last)."""
    if chunk.shape[-1] == 1:
        return (chunk[..., 0] @ w)[..., None]
    return jnp.swapaxes(jnp.swapaxes(chunk, -1, -2) @ w, -1, -2)


def _columns(chunk: Float[Array, "n u m"]) -> Float[Array, "u nm"]:
    """The input as a `(mul_in, rows * ir_dim)` matrix, materialised: without the barrier XLA
    folds the transpose into the dot's dimension numbers, and a dot whose operands are not
    both row-major goes to the generic kernel."""
    n, mul_in, dim = chunk.shape
    return jax.lax.optimization_barrier(jnp.transpose(chunk, (1, 0, 2)).reshape(mul_in, n * dim))


@jax.custom_jvp
def _contract_rows(chunk: Float[Array, "n u m"], w: Float[Array, "u w"]) -> Float[Array, "n w m"]:
    """`_rows_matmul`, differentiated so that the weight gradient is a plain matmul.

    Plain autodiff contracts the rows of the input with those of the output cotangent, a dot
    with a transposed operand that XLA:CPU runs on its generic (Eigen) kernel, 1.6x slower
    than its matmul kernel on these shapes, and on an extra transposed copy of the
    cotangent. Here, when the weight has a tangent, its term is written as `cols^T dW` with
    `cols = (mul_in, rows * ir_dim)` materialised; its transpose, the weight gradient, is
    then `cols @ G`, with `G` the `(rows * ir_dim, mul_out)` cotangent that the input
    gradient already uses. For `l > 0` the forward then takes `cols` too (`W^T @ cols`,
    transposed back: one transpose each way, as before). Without a weight tangent (forces,
    inference) it is the plain matmul.
    Forward mode, vmap and higher derivatives work as for any JAX function.
    """
    return _rows_matmul(chunk, w)


@functools.partial(_contract_rows.defjvp, symbolic_zeros=True)
def _contract_rows_jvp(
    primals: tuple[Array, Array], tangents: tuple[Any, Any]
) -> tuple[Array, Array]:
    chunk, w = primals
    d_chunk, d_w = tangents
    n, mul_in, dim = chunk.shape
    terms = []
    if isinstance(d_w, SymbolicZero):  # no weight gradient wanted: the plain forward
        y = _rows_matmul(chunk, w)
    else:
        cols = _columns(chunk)
        if dim == 1:
            y = _rows_matmul(chunk, w)
        else:
            wt = jax.lax.optimization_barrier(w.T)  # a plain (mul_out, mul_in) matmul operand
            y = jnp.transpose((wt @ cols).reshape(w.shape[1], n, dim), (1, 0, 2))
        dy = jax.lax.dot_general(cols, d_w, (((0,), (0,)), ((), ())))  # (rows * dim, mul_out)
        terms.append(jnp.swapaxes(dy.reshape(n, dim, w.shape[1]), 1, 2))
    if not isinstance(d_chunk, SymbolicZero):
        terms.append(_rows_matmul(d_chunk, w))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


def linear_contract(
    x: Float[Array, "*batch dim_in"],
    weights: Sequence[Float[Array, "*_ _ _"]],
    biases: Sequence[Float[Array, "*_ _"]],
    *,
    irreps_in: e3nn.Irreps,
    irreps_out: e3nn.Irreps,
    paths: Sequence[LinearPath],
    bias_indices: Sequence[int],
) -> Float[Array, "*batch dim_out"]:
    """Apply an equivariant linear map to an array in e3nn's layout.

    `weights[k]` belongs to `paths[k]`; its leading axes, if any, broadcast against the leading
    axes of `x` (per-row weights of indexed or mixed linears). `biases[k]` belongs to output
    `bias_indices[k]`. Outputs that no path reaches are zeros.
    """
    batch = x.shape[:-1]
    in_slices = irreps_in.slices()
    # Every input chunk a path reads, cut by one split (its cotangent is one concatenation,
    # not a full-width pad per chunk).
    read = sorted(
        {
            p.i_in
            for p in paths
            if irreps_entry(irreps_in, p.i_in).mul and irreps_entry(irreps_out, p.i_out).mul
        }
    )
    pieces = split_columns(
        x, [(in_slices[i].start, in_slices[i].stop - in_slices[i].start) for i in read]
    )
    in_chunks = dict(zip(read, pieces, strict=True))
    out_chunks = []
    for i_out, (mul_out, ir_out) in enumerate(irreps_out):
        total = None
        for path, w in zip(paths, weights, strict=True):
            if path.i_out != i_out:
                continue
            entry_in = irreps_entry(irreps_in, path.i_in)
            if entry_in.mul == 0 or mul_out == 0:
                continue
            chunk = in_chunks[path.i_in].reshape(*batch, entry_in.mul, entry_in.ir.dim)
            if w.ndim == 2:
                # Scale the small (mul_in, mul_out) matrix rather than the large output.
                term = _contract_multiplicity(chunk, path.path_weight * w)
            else:
                term = path.path_weight * _contract_multiplicity(chunk, w)
            total = term if total is None else total + term
        for i_bias, b in zip(bias_indices, biases, strict=True):
            if i_bias == i_out:
                total = b[..., None] if total is None else total + b[..., None]
        if total is None:
            out_chunks.append(jnp.zeros((*batch, mul_out * ir_out.dim), x.dtype))
        else:
            total = jnp.broadcast_to(total, (*batch, mul_out, ir_out.dim))
            out_chunks.append(total.reshape(*batch, mul_out * ir_out.dim))
    if not out_chunks:
        return jnp.zeros((*batch, 0), x.dtype)
    return jnp.concatenate(out_chunks, axis=-1)


def regroup_columns(
    x: Float[Array, "*batch dim"], irreps: e3nn.Irreps
) -> Float[Array, "*batch dim"]:
    """Reorder the columns of `x` from `irreps` to `irreps.regroup()` (stable sort by irrep).

    Returns `x` itself when the chunks are already sorted, so the common case costs nothing.
    """
    order = sorted(range(len(irreps)), key=lambda i: irreps_entry(irreps, i).ir)
    if order == list(range(len(irreps))):
        return x
    slices = irreps.slices()
    return jnp.concatenate([x[..., slices[i]] for i in order], axis=-1)


def per_channel_irreps(folded: e3nn.Irreps, channels: int) -> e3nn.Irreps:
    """The irreps of one channel, given the irreps `channels * irreps` of the folded array."""
    return e3nn.Irreps([(mul // channels, ir) for mul, ir in folded])


def fold_channels(
    x: Float[Array, "*batch channels dim"], irreps: e3nn.Irreps
) -> Float[Array, "*batch folded"]:
    """Fold a channel axis into the multiplicities, channel-major (e3nn's `axis_to_mul`).

    Chunk `mul x ir` becomes `(C*mul) x ir` with copy index `c*mul + u`.
    """
    *batch, channels, _ = x.shape
    chunks = [
        x[..., s].reshape(*batch, channels * mul * ir.dim)
        for s, (mul, ir) in zip(irreps.slices(), irreps, strict=True)
    ]
    if not chunks:
        return jnp.zeros((*batch, 0), x.dtype)
    return jnp.concatenate(chunks, axis=-1)


def unfold_channels(
    x: Float[Array, "*batch folded"], irreps: e3nn.Irreps, channels: int
) -> Float[Array, "*batch {channels} dim"]:
    """Inverse of `fold_channels`: `(C*mul) x ir` chunks back to `(..., C, dim)` with `mul x ir`."""
    batch = x.shape[:-1]
    folded = channels * irreps
    chunks = [
        x[..., s].reshape(*batch, channels, mul * ir.dim)
        for s, (mul, ir) in zip(folded.slices(), irreps, strict=True)
    ]
    if not chunks:
        return jnp.zeros((*batch, channels, 0), x.dtype)
    return jnp.concatenate(chunks, axis=-1)


# --- e3j's block linear (`e3j.linen.Linear`, `LinearIndexwise`; layout "E3NN") -----------------


class LinearBlock(NamedTuple):
    """One `(l, p)` block of an e3j linear: a `(mul_out, mul_in)` weight (scaled by
    [`eqmlip.ops.linear.block_scale`][] at run time) acting on the multiplicity index of the
    input columns `start_in : start_in + mul_in (2l+1)`."""

    l: int  # noqa: E741
    p: int
    mul_in: int
    mul_out: int
    start_in: int

    @property
    def dim(self) -> int:
        return 2 * self.l + 1


def e3j_blocks(irreps_in: e3nn.Irreps, irreps_out: e3nn.Irreps) -> tuple[LinearBlock, ...]:
    """The blocks of `e3j.linen.Linear(irreps_in, irreps_out)` (and of `LinearIndexwise`).

    With the same `(l, p)` list on both sides, blocks are zipped; otherwise every canonical
    `(l, p)` (`0e, 0o, 1o, 1e, 2e, ...`) up to the largest `l` is listed and kept when either
    side has it (the two agree for regrouped irreps). A block that only the output has gives
    zeros (weight `(mul_out, 0)`); one that only the input has is dropped (weight
    `(0, mul_in)`). Block `i` is Flax's `weight{i}_{l}_{p}`, zero-size blocks included.
    """
    ins = [(ir, mul) for mul, ir in irreps_in]
    outs = [(ir, mul) for mul, ir in irreps_out]
    starts = {}
    offset = 0
    for mul, ir in irreps_in:
        starts[ir] = offset
        offset += mul * ir.dim
    if [ir for ir, _ in ins] == [ir for ir, _ in outs]:
        return tuple(
            LinearBlock(ir.l, ir.p, m_in, m_out, starts[ir])
            for (ir, m_in), (_, m_out) in zip(ins, outs, strict=True)
        )
    d_in, d_out = dict(ins), dict(outs)
    l_max = max((ir.l for ir in (*d_in, *d_out)), default=0)
    blocks = []
    for degree in range(l_max + 1):
        for parity in ((-1) ** degree, -((-1) ** degree)):
            ir = e3nn.Irrep(degree, parity)
            m_in, m_out = d_in.get(ir, 0), d_out.get(ir, 0)
            if m_in or m_out:
                blocks.append(LinearBlock(degree, parity, m_in, m_out, starts.get(ir, 0)))
    return tuple(blocks)


def block_scale(mul_in: int) -> float:
    """`sqrt(1 / mul_in)`, e3j's run-time scale of a block weight (`rescale_gradients=True`),
    computed as e3j computes it."""
    return math.sqrt(1.0 / mul_in)


def _mix(chunk: Float[Array, "n mul_in dim"], w: Float[Array, "mul_out mul_in"]) -> Array:
    """`out[n, w, m] = sum_u w[w, u] chunk[n, u, m]`, as a matmul on the last axis."""
    if chunk.shape[-1] == 1:
        return (chunk[..., 0] @ w.T)[..., None]
    return jnp.swapaxes(jnp.swapaxes(chunk, -1, -2) @ w.T, -1, -2)


def _block_inputs(x: Float[Array, "n dim_in"], blocks: Sequence[LinearBlock]) -> list[Array]:
    """The input columns of every block with weights on both sides, in block order, taken by
    one split (so the cotangent of `x` is one concatenation)."""
    return split_columns(
        x,
        [(b.start_in, b.mul_in * b.dim) for b in blocks if b.mul_out > 0 and b.mul_in > 0],
    )


def _per_block(
    x: Float[Array, "n dim_in"],
    weights: Sequence[Array],
    blocks: Sequence[LinearBlock],
    mix: Callable[[Array, LinearBlock, Array], Array],
) -> Float[Array, "n dim_out"]:
    """`mix(chunk, block, weight)` block by block, concatenated in block order.

    `chunk` is `(n, mul_in, 2l+1)` and `mix` returns `(n, mul_out, 2l+1)`; a block that the
    input lacks gives zeros, one that the output lacks gives nothing (as e3j).
    """
    n = x.shape[0]
    chunks = iter(_block_inputs(x, blocks))
    outs = []
    for block, w in zip(blocks, weights, strict=True):
        if block.mul_out == 0:
            continue
        if block.mul_in == 0:
            outs.append(jnp.zeros((n, block.mul_out * block.dim), x.dtype))
            continue
        y = mix(next(chunks).reshape(n, block.mul_in, block.dim), block, w)
        outs.append(y.reshape(n, block.mul_out * block.dim))
    if not outs:
        return jnp.zeros((n, 0), x.dtype)
    return jnp.concatenate(outs, axis=-1)


def _e3j_mix(chunk: Float[Array, "n mul_in dim"], w: Float[Array, "mul_out mul_in"]) -> Array:
    """`out[n, w, m] = sum_u w[w, u] chunk[n, u, m]`, as e3j computes it (`w @ chunk`)."""
    return w @ chunk


def block_linear(
    x: Float[Array, "n dim_in"],
    weights: Sequence[Float[Array, "_ _"]],
    blocks: Sequence[LinearBlock],
    *,
    e3j_order: bool = False,
) -> Float[Array, "n dim_out"]:
    """e3j's linear on an array in the input layout of `blocks` (regrouped for
    [`eqmlip.nn.E3jLinear`][]): per block, `y[w] = sum_u W[w, u] x[u] / sqrt(mul_in)`,
    concatenated in block order; zeros where the input lacks the block. `weights[k]` is
    `(mul_out, mul_in)` for `blocks[k]`.

    With `e3j_order`, each block is contracted exactly as `e3j.linen.Linear` does
    (`(W s) @ x`), so the result equals e3j's bit for bit ([`eqmlip.nn.E3jLinear`][], whose
    outputs mlip's readout tests compare exactly). By default the multiplicity axis is
    contracted last (a plain matrix product for scalars), which saves transposes in NequIP's
    layers and agrees with e3j to rounding.
    """
    mix = _e3j_mix if e3j_order else _mix

    def scaled_mix(chunk: Array, block: LinearBlock, w: Array) -> Array:
        return mix(chunk, w.astype(x.dtype) * block_scale(block.mul_in))

    return _per_block(x, weights, blocks, scaled_mix)


def _contract_last(
    x: Float[Array, "*rows k"], w: Float[Array, "out k"]
) -> Float[Array, "*rows out"]:
    """`x @ w.T` as one `dot_general` on `w`'s last axis. Written without the transpose, the
    weight gradient comes out in `w`'s own layout: with `w.T`, a gradient summed from two
    products (energy and forces terms) kept the transposed layout, and every optimizer
    update of the weight read it through a strided copy."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))


def indexed_block_linear(
    x: Float[Array, "n dim_in"],
    index: Int[Array, " n"],
    weights: Sequence[Float[Array, "num _ _"]],
    blocks: Sequence[LinearBlock],
) -> Float[Array, "n dim_out"]:
    """e3j's `LinearIndexwise`: row `n` uses the weights `W[index[n]]` (`(num, mul_out, mul_in)`
    per block), scaled by `1/sqrt(mul_in)`.

    Computed as one matmul of the rows against every species' weights at once, the stored
    `(num * mul_out, mul_in)` matrix used as it lies (no transposed or scaled copy of the
    weights per call), then the row's own species picked by a one-hot sum that also carries
    the scale. No weight matrix is materialised per row.
    """
    num = weights[0].shape[0] if len(weights) else 0
    n = x.shape[0]
    onehot = (index[:, None] == jnp.arange(num, dtype=index.dtype)[None, :]).astype(x.dtype)

    def species_mix(chunk: Array, block: LinearBlock, w: Array) -> Array:
        select = onehot * block_scale(block.mul_in)  # (n, num)
        stacked = w.astype(x.dtype).reshape(num * block.mul_out, block.mul_in)
        if block.dim == 1:
            y = _contract_last(chunk[..., 0], stacked).reshape(n, num, block.mul_out)
            return jnp.sum(y * select[:, :, None], axis=1)[..., None]
        y = _contract_last(jnp.swapaxes(chunk, 1, 2), stacked)
        y = y.reshape(n, block.dim, num, block.mul_out)
        return jnp.swapaxes(jnp.sum(y * select[:, None, :, None], axis=2), 1, 2)

    return _per_block(x, weights, blocks, species_mix)


# --- e3x's Dense (`e3x.nn.Dense`, e3x feature layout) ------------------------------------------


def dense_parameter_names(num_parity: int, max_degree: int) -> tuple[str, ...]:
    """Flax names `"{l}+"`/`"{l}-"` of the kernels of `e3x.nn.Dense`, in `(channel, l)` order.

    With `P=2`, channel 0 is `+` and channel 1 is `-`; with `P=1` the sign is that of `(-1)^l`.
    """
    if num_parity == 2:
        return tuple(f"{deg}{sign}" for sign in "+-" for deg in range(max_degree + 1))
    return tuple(f"{deg}{'+-'[deg % 2]}" for deg in range(max_degree + 1))


# Largest multiply-adds of one block-diagonal product (rows x (C F_in) x (C F_out), C = P (L+1)**2)
# for which `e3x_dense` takes it. Below this the per-degree form is a few kernels whose fixed
# cost (slice, dot, concatenate: each a few µs on CPU) exceeds the zeros the single product
# multiplies; small molecules live here. Above it, the per-degree form does C times less work.
DENSE_BLOCK_DIAGONAL_MAX_MACS = 2**21


def e3x_dense(
    x: Float[Array, "*batch p dim fin"],
    kernels: Sequence[Float[Array, "fin fout"]],
    bias: Float[Array, " fout"] | None = None,
    *,
    precision: Precision = None,
) -> Float[Array, "*batch p dim fout"]:
    """The map of `e3x.nn.Dense`: one matrix per degree and parity, a bias on `0e` only.

    $$y[\\ldots, c, l, m, :] = x[\\ldots, c, l, m, :]\\, W_{c,l} + b\\,[c = 0, l = 0]$$

    Large inputs take one `lax.dot_general` per block over the feature axis, as Flax's
    `nn.Dense` in e3x. Small ones (at most `DENSE_BLOCK_DIAGONAL_MAX_MACS` multiply-adds in
    the product below) take a single product with the block-diagonal matrix that holds each
    component's `W_{c,l}`: one kernel instead of a slice, a product and a concatenation per
    block, with the same non-zero terms; results agree to rounding. There a non-finite input
    component makes its whole row non-finite (`inf * 0`), where e3x keeps it to its block.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F_in)`.
    - `kernels`: `P (L+1)` matrices `(F_in, F_out)` ordered by `(channel, l)`
        (names in [`eqmlip.ops.linear.dense_parameter_names`][]), in the dtype of `x`.
    - `bias`: optional `(F_out,)` for the `0e` block.
    - `precision`: passed to `lax.dot_general`.

    **Returns:** `(..., P, (L+1)**2, F_out)`.
    """
    num_parity, max_degree, in_features = feature_shape(x.shape, caller="e3x_dense")
    if len(kernels) != num_parity * (max_degree + 1):
        raise ValueError(
            f"e3x_dense: expected {num_parity * (max_degree + 1)} kernels for features of "
            f"shape {x.shape}, got {len(kernels)}."
        )
    features = kernels[0].shape[1]
    dim = (max_degree + 1) ** 2
    components = num_parity * dim
    rows = math.prod(x.shape[:-3])
    if rows * components**2 * in_features * features <= DENSE_BLOCK_DIAGONAL_MAX_MACS:
        return _e3x_dense_block_diagonal(x, kernels, bias, precision=precision)
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


def _e3x_dense_block_diagonal(
    x: Array, kernels: Sequence[Array], bias: Array | None, *, precision: Precision
) -> Array:
    """`e3x_dense` as one product: `(..., P D F_in) @ (P D F_in, P D F_out)`, the kernel of
    component `(c, l, m)` in diagonal block `(c, l, m)` and zeros elsewhere."""
    num_parity, max_degree, in_features = feature_shape(x.shape, caller="e3x_dense")
    features = kernels[0].shape[1]
    dim = (max_degree + 1) ** 2
    components = num_parity * dim
    rows = []
    for channel in range(num_parity):
        for deg in range(max_degree + 1):
            kernel = kernels[channel * (max_degree + 1) + deg]
            for order in range(2 * deg + 1):
                c = channel * dim + deg * deg + order
                rows.append(
                    jnp.pad(kernel, ((0, 0), (c * features, (components - 1 - c) * features)))
                )
    matrix = jnp.concatenate(rows, axis=0)
    flat = x.reshape(*x.shape[:-3], components * in_features)
    y = jax.lax.dot_general(flat, matrix, (((flat.ndim - 1,), (0,)), ((), ())), precision=precision)
    if bias is not None:  # the `0e` block leads the flattened output
        y = jnp.concatenate([y[..., :features] + bias, y[..., features:]], axis=-1)
    return y.reshape(*x.shape[:-3], num_parity, dim, features)
