"""The maths of NequIP (mlip 0.2.5's `mlip.models.nequip`), as pure functions on arrays.

One NequIP layer maps node features `x` (irreps `S`) to new features through

$$h = L_{out}\\Big(\\sum_{e:\\, r_e = i} R_e \\odot \\big(L_{in} x_{s_e} \\otimes Y(\\hat r_e)\\big)
      \\Big) + W_{z_i} x_i, \\qquad x' = \\mathrm{gate}(h)$$

where the tensor product keeps each `uvu` path (sender copy `u`, spherical harmonic `Y^{l_2}`,
output `l_0`) in its own output slot with coefficients
`C^{l_0 l_1 l_2} sqrt(2 l_0 + 1) / avg_num_neighbors`, and `R_e` (one scalar per message copy)
comes from an MLP of the radial basis of `|r_e|`.

Layout: eqmlip keeps every array in e3nn's layout (`[..., mul * (2l+1)]` per chunk, copy-major)
and computes the convolution path by path on unfactored multiplicities. mlip factors the
multiplicities by `g = gcd(mul(S))` into a trailing channel axis; the two give the same numbers,
and [`eqmlip.ops.nequip.ConvPath`][] records where mlip keeps each of eqmlip's columns so that
weights convert one-for-one (see `eqmlip.interop.mlip`). The layer applies linear_out to
the paths from scalar inputs on the edges when that narrows them (`interaction`): the default
first layer then scatters 340 columns per edge instead of 1152.

The other pieces of a NequIP layer are not specific to it and live with their kind: e3j's block
linears in `eqmlip.ops.linear`, the Bessel radial embedding in `eqmlip.ops.radial`, the
spherical harmonics in `eqmlip.ops.so3`, the gate in `eqmlip.ops.gate`, segment sums in
`eqmlip.ops.segment`; mlip's column permutations in `eqmlip.interop.mlip`.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .columns import split_columns
from .linear import LinearBlock, _mix, block_scale
from .segment import segment_sum
from .so3 import sh_irreps


def tp_path_exists(source: e3nn.Irreps, l_max: int, ir: e3nn.Irrep) -> bool:
    """Whether some `source` irrep times some `Y^l` (`l <= l_max`) contains `ir`."""
    return any(ir in ir_in * ir_sh for _, ir_in in source for _, ir_sh in sh_irreps(l_max))


SCALAR = e3nn.Irrep(0, 1)
ODD_SCALAR = e3nn.Irrep(0, -1)


def irreps_from(entries: Sequence[tuple[int, Any]]) -> e3nn.Irreps:
    """`e3nn.Irreps` from `(mul, irrep)` pairs (e3nn-jax's annotations are narrower)."""
    return e3nn.Irreps(cast(Any, list(entries)))


def split_target_irreps(
    source: e3nn.Irreps, l_max: int, target: e3nn.Irreps
) -> tuple[e3nn.Irreps, e3nn.Irreps, e3nn.Irreps]:
    """`(scalars, gates, nonscalars)` of a NequIP layer (mlip's `split_target_node_irreps`).

    The entries of `target` that `source x Y` can reach, split into `l = 0` (`scalars`) and
    `l > 0` (`nonscalars`), and one gate `mul x 0e` per nonscalar entry (`0o` when no `0e` path
    exists).
    """
    scalars = [(mul, ir) for mul, ir in target if ir.l == 0 and tp_path_exists(source, l_max, ir)]
    nonscalars = [(mul, ir) for mul, ir in target if ir.l > 0 and tp_path_exists(source, l_max, ir)]
    gate_ir = SCALAR if tp_path_exists(source, l_max, SCALAR) else ODD_SCALAR
    gates = [(mul, gate_ir) for mul, _ in nonscalars]
    return irreps_from(scalars), irreps_from(gates), irreps_from(nonscalars)


class ConvPath(NamedTuple):
    """One `uvu` path of the convolution: input chunk `i_in` (`mul x l1 p1`) times `Y^{l2}`
    into `mul x l0 p0`, and where mlip keeps its columns.

    eqmlip's columns for this path: radial-MLP outputs `radial_start : radial_start + mul`
    and linear_out inputs `block_start : block_start + mul` of output block `block`, copy
    `u = c * mul_red + u'` (`c < channels`, `u' < mul_red`). In mlip (channels factored out)
    the same copy uses radial column `(mlip_k + u') * channels + c` and linear_out input column
    `c * block_mul_red + mlip_j + u'`.
    """

    i_in: int
    l1: int
    p1: int
    l2: int
    l0: int
    p0: int
    mul: int
    channels: int
    block: int
    radial_start: int
    block_start: int
    mlip_k: int
    mlip_j: int
    block_mul_red: int

    @property
    def mul_red(self) -> int:
        return self.mul // self.channels

    @property
    def ir_out(self) -> e3nn.Irrep:
        return e3nn.Irrep(self.l0, self.p0)


def convolution_paths(
    source: e3nn.Irreps, l_max: int, target: e3nn.Irreps
) -> tuple[tuple[ConvPath, ...], e3nn.Irreps]:
    """The convolution paths into the irreps of `target`, in eqmlip's message order, and the
    message irreps (one chunk per output irrep, `target`'s order).

    Paths are generated as e3j does (each source chunk, then `l2 = 0..l_max`, then
    `l0 = |l1 - l2| .. l1 + l2`, kept when `(l0, p0)` is in `target`), then stably sorted by
    output irrep. Only output irreps of `target` that some path reaches get a message block.
    """
    channels = source.mul_gcd if len(source) else 1
    wanted = {ir for _, ir in target}
    raw = []
    for i_in, (mul, ir_in) in enumerate(source):
        for l2 in range(l_max + 1):
            p2 = (-1) ** l2
            for l0 in range(abs(ir_in.l - l2), ir_in.l + l2 + 1):
                ir_out = e3nn.Irrep(l0, ir_in.p * p2)
                if ir_out in wanted:
                    raw.append((i_in, ir_in.l, ir_in.p, l2, l0, ir_in.p * p2, mul))
    raw.sort(key=lambda t: e3nn.Irrep(t[4], t[5]))  # stable: generation order within a block
    blocks = [ir for _, ir in target if any(e3nn.Irrep(t[4], t[5]) == ir for t in raw)]
    paths = []
    radial_start = 0
    mlip_k = 0
    for b, ir in enumerate(blocks):
        members = [t for t in raw if e3nn.Irrep(t[4], t[5]) == ir]
        block_mul_red = sum(t[6] // channels for t in members)
        block_start = 0
        mlip_j = 0
        for i_in, l1, p1, l2, l0, p0, mul in members:
            paths.append(
                ConvPath(
                    i_in=i_in,
                    l1=l1,
                    p1=p1,
                    l2=l2,
                    l0=l0,
                    p0=p0,
                    mul=mul,
                    channels=channels,
                    block=b,
                    radial_start=radial_start,
                    block_start=block_start,
                    mlip_k=mlip_k + mlip_j,
                    mlip_j=mlip_j,
                    block_mul_red=block_mul_red,
                )
            )
            radial_start += mul
            block_start += mul
            mlip_j += mul // channels
        mlip_k += block_mul_red
    message_irreps = irreps_from(
        [(sum(p.mul for p in paths if p.block == b), ir) for b, ir in enumerate(blocks)]
    )
    return tuple(paths), message_irreps


# --- radial MLP, convolution, aggregation -------------------------------------------------------


def radial_mlp(
    radial: Float[Array, "edges num_rbf"],
    kernels: Sequence[Float[Array, "_ _"]],
    act: Callable[[jax.Array], jax.Array],
) -> Float[Array, "edges out"]:
    """mlip's radial `MLP`: dense layers without bias, `act` (not normalised) between them."""
    x = radial
    last = len(kernels) - 1
    for i, kernel in enumerate(kernels):
        x = jax.lax.dot_general(x, kernel.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())))
        if i < last:
            x = act(x)
    return x


def radial_mlp_columns(
    radial: Float[Array, "edges num_rbf"],
    kernels: Sequence[Float[Array, "_ _"]],
    act: Callable[[jax.Array], jax.Array],
    ranges: Sequence[tuple[int, int]],
) -> list[Float[Array, "edges _"]]:
    """`[radial_mlp(...)[:, start : start + width] for start, width in ranges]`, the last layer
    one matmul per range on those columns of its kernel.

    The outputs are read range by range (one convolution path each); taking the columns of the
    small kernel rather than of the `(edges, out)` output spares the edge-sized concatenation
    that the output's cotangent would need, for the same multiply-adds.
    """
    x = radial
    for kernel in kernels[:-1]:
        x = act(jax.lax.dot_general(x, kernel.astype(x.dtype), (((1,), (0,)), ((), ()))))
    columns = split_columns(kernels[-1].astype(x.dtype), ranges)
    return [jax.lax.dot_general(x, k, (((1,), (0,)), ((), ()))) for k in columns]


@functools.lru_cache(maxsize=256)
def path_coefficients(l0: int, l1: int, l2: int, avg_num_neighbors: float) -> np.ndarray:
    """The coefficients of one convolution path `l1 (x) l2 -> l0`, with the path's
    normalisation and the division by the average neighbour count folded in (shared by
    [`eqmlip.ops.nequip.interaction`][] and [`eqmlip.ops.mace.interaction`][]):

    $$C'_{abc} = C^{l_0 l_1 l_2}_{abc} \\sqrt{2 l_0 + 1} / \\bar n$$

    **Returns:** float64 NumPy array `(2l0+1, 2l1+1, 2l2+1)` (cached; do not modify it).
    """
    cg = np.asarray(e3nn.clebsch_gordan(l0, l1, l2), dtype=np.float64)
    return cg * math.sqrt(2 * l0 + 1) / avg_num_neighbors


def diagonal_constant(matrix: np.ndarray) -> float:
    """The constant `c` of a square matrix equal to `c I` (a path with `l1 = 0` or `l2 = 0`,
    whose product is then a scaling); asserts that the matrix is diagonal and constant."""
    c = float(matrix[0, 0])
    assert np.allclose(matrix, c * np.eye(len(matrix)), rtol=0, atol=1e-12), matrix
    return c


def _path_inputs(
    x: Float[Array, "rows dim_in"],
    sh: Float[Array, "edges sh_dim"],
    weights: Float[Array, "edges num_weights"] | Sequence[Float[Array, "edges _"]],
    irreps_in: e3nn.Irreps,
    paths: Sequence[ConvPath],
    senders: Int[Array, " edges"] | None = None,
) -> tuple[dict[int, Array], dict[int, Array], list[Array]]:
    """`(x chunks by input entry, Y^l by l, radial weights by path)`: the columns the paths
    read, each array cut by one split (see [`eqmlip.ops.columns.split_columns`][]).

    With `senders`, `x` holds the nodes and each chunk is gathered on the edges after the
    split: the cotangent is then a scatter-add per chunk into node-sized arrays rather than
    an edge-sized concatenation. `weights` may already be the per-path pieces.
    """
    slices = irreps_in.slices()
    entries = sorted({p.i_in for p in paths})
    x_chunks = split_columns(
        x, [(slices[i].start, slices[i].stop - slices[i].start) for i in entries]
    )
    if senders is not None:
        x_chunks = [c[senders] for c in x_chunks]
    degrees = sorted({p.l2 for p in paths} | {p.l0 for p in paths})
    sh_blocks = split_columns(sh, [(d * d, 2 * d + 1) for d in degrees])
    if isinstance(weights, jax.Array):
        w_pieces = split_columns(weights, [(p.radial_start, p.mul) for p in paths])
    else:
        w_pieces = list(weights)
    return (
        dict(zip(entries, x_chunks, strict=True)),
        dict(zip(degrees, sh_blocks, strict=True)),
        w_pieces,
    )


def _outer(a: Float[Array, "edges mul"], y: Float[Array, "edges d"]) -> Float[Array, "edges mul d"]:
    """`a[:, :, None] * y[:, None, :]`, written as one product per column of `y` stacked on
    the last axis: its transpose is then a sum of strided slices (and one reduction per column
    of `y`) instead of XLA:CPU's much slower reduction over a last axis of 2l+1 components."""
    columns = jax.lax.split(y, [1] * y.shape[1], axis=1)
    return jnp.stack([a * c for c in columns], axis=-1)


def _messages(
    x_chunks: dict[int, Array],
    sh_blocks: dict[int, Array],
    w_pieces: Sequence[Array],
    paths: Sequence[ConvPath],
    avg_num_neighbors: float,
) -> list[Array]:
    """The messages of `paths` (`(edges, mul * (2 l0 + 1))` each) from pre-split inputs."""
    outs = []
    for p, w in zip(paths, w_pieces, strict=True):
        d0, d1 = 2 * p.l0 + 1, 2 * p.l1 + 1
        x = x_chunks[p.i_in]
        edges = x.shape[0]
        x = x.reshape(edges, p.mul, d1)
        y = sh_blocks[p.l2]
        coef = path_coefficients(p.l0, p.l1, p.l2, float(avg_num_neighbors))
        if p.l2 == 0:  # C'[a, b, 0] = c delta_ab; Y^0 = 1 is not read (its gradient is waste)
            m = x * diagonal_constant(coef[:, :, 0])
        elif p.l1 == 0:  # C'[a, 0, c] = c delta_ac
            m = _outer(x[:, :, 0], diagonal_constant(coef[:, 0, :]) * y)
        elif p.l0 == 0:  # C'[0, b, c] = c delta_bc: a scaled dot product over m
            # A batched matrix-vector product: XLA:CPU runs a multiply-and-reduce over the
            # 2l+1 components (and its transpose) several times slower.
            m = jnp.einsum("eub,eb->eu", x, y * diagonal_constant(coef[0]))[:, :, None]
        else:
            a = jnp.einsum("abc,ec->eab", jnp.asarray(coef, x.dtype), y)
            m = jnp.einsum("eub,eab->eua", x, a)
        outs.append((m * w[:, :, None]).reshape(edges, p.mul * d0))
    return outs


def tensor_product_messages(
    x_edges: Float[Array, "edges dim_in"],
    sh: Float[Array, "edges sh_dim"],
    weights: Float[Array, "edges num_weights"],
    *,
    irreps_in: e3nn.Irreps,
    paths: Sequence[ConvPath],
    avg_num_neighbors: float,
) -> Float[Array, "edges dim_msg"]:
    """The messages of every edge, path by path, in eqmlip's message order:

    $$m_p[e, u, m_0] = w[e, k_p + u] \\sum_{m_1 m_2} C'_p[m_0, m_1, m_2]\\, x[e, u, m_1]\\,
      Y^{l_2}[e, m_2]$$

    with `C' = C sqrt(2 l0 + 1) / avg_num_neighbors`. Paths with `l0`, `l1` or `l2` equal to 0
    have a diagonal `C'` and are computed as a product by one constant. `Y^0` is 1 in this
    normalisation and is not read.
    """
    if not paths:
        return jnp.zeros((x_edges.shape[0], 0), x_edges.dtype)
    x_chunks, sh_blocks, w_pieces = _path_inputs(x_edges, sh, weights, irreps_in, paths)
    outs = _messages(x_chunks, sh_blocks, w_pieces, paths, avg_num_neighbors)
    return jnp.concatenate(outs, axis=-1)


def convolution(
    x: Float[Array, "nodes dim_in"],
    sh: Float[Array, "edges sh_dim"],
    weights: Float[Array, "edges num_weights"],
    senders: Int[Array, " edges"],
    receivers: Int[Array, " edges"],
    *,
    irreps_in: e3nn.Irreps,
    paths: Sequence[ConvPath],
    avg_num_neighbors: float,
    deterministic: bool = False,
) -> Float[Array, "nodes dim_msg"]:
    """Gather the senders, form the messages (`tensor_product_messages`) and sum them at the
    receivers (`segment_sum`, deterministic if asked). e3j's `Convolution`, unfused."""
    messages = tensor_product_messages(
        x[senders],
        sh,
        weights,
        irreps_in=irreps_in,
        paths=paths,
        avg_num_neighbors=avg_num_neighbors,
    )
    return segment_sum(messages, receivers, x.shape[0], deterministic=deterministic)


def premixes(path: ConvPath, block: LinearBlock) -> bool:
    """Whether [`eqmlip.ops.nequip.interaction`][] applies linear_out to `path` on the edges.

    A path from a scalar input (`l1 = 0`) has messages `s[e, u] Y^{l0}[e]`: mixing the copies
    `u` commutes with the product by `Y`, so linear_out can act on `s` before the scatter.
    That pays when the block's output multiplicity is below the path's (fewer columns to
    multiply, scatter and differentiate), e.g. the default first layer's `128 -> 4x2e`.
    """
    return path.l1 == 0 and block.mul_out < path.mul


def interaction(
    x: Float[Array, "nodes dim_in"],
    sh: Float[Array, "edges sh_dim"],
    weights: Float[Array, "edges num_weights"] | Sequence[Float[Array, "edges _"]],
    senders: Int[Array, " edges"],
    receivers: Int[Array, " edges"],
    linear_out_weights: Sequence[Float[Array, "_ _"]],
    *,
    irreps_in: e3nn.Irreps,
    paths: Sequence[ConvPath],
    linear_out_blocks: Sequence[LinearBlock],
    avg_num_neighbors: float,
    deterministic: bool = False,
) -> Float[Array, "nodes dim_out"]:
    """`block_linear(convolution(x, ...), linear_out_weights, linear_out_blocks)`, computed
    with fewer and narrower edge arrays.

    Linear_out is linear, so it splits over the paths of a block:
    `L_b sum_e m_e = sum_{p in b} W_{b,p} sum_e m_{p,e}`. Paths for which
    [`eqmlip.ops.nequip.premixes`][] holds get `W_{b,p}` on the edges (a matmul on the scalar
    factor, then the product by `Y^{l0}`); the others are summed at the receivers first and
    mixed on the nodes. Every edge column is scattered by one segment sum. Equal to the unfused
    form up to rounding.
    """
    nodes, edges = x.shape[0], senders.shape[0]
    dtype = x.dtype
    expected = [
        sum(p.mul for p in paths if p.block == k) for k in range(len({p.block for p in paths}))
    ]
    if [b.mul_in for b in linear_out_blocks] != expected:
        raise ValueError(
            "interaction: linear_out_blocks take input multiplicities "
            f"{[b.mul_in for b in linear_out_blocks]}, but the paths' message blocks have "
            f"{expected}."
        )
    # Every input is cut once for all paths (see `_path_inputs`).
    x_chunks, sh_blocks, w_pieces = _path_inputs(x, sh, weights, irreps_in, paths, senders)
    w_of = dict(zip(paths, w_pieces, strict=True))

    plain = [p for p in paths if not premixes(p, linear_out_blocks[p.block])]
    columns = _messages(x_chunks, sh_blocks, [w_of[p] for p in plain], plain, avg_num_neighbors)
    premixed: list[int] = []  # blocks whose messages were mixed on the edges, in column order
    for k, block in enumerate(linear_out_blocks):
        members = [p for p in paths if p.block == k and premixes(p, block)]
        if not members:
            continue
        scale = block_scale(block.mul_in)
        w_out = split_columns(
            linear_out_weights[k].astype(dtype), [(p.block_start, p.mul) for p in members]
        )
        mixed = None
        for p, w in zip(members, w_out, strict=True):
            coef = path_coefficients(p.l0, p.l1, p.l2, float(avg_num_neighbors))
            c = diagonal_constant(coef[:, 0, :]) * scale
            z = (x_chunks[p.i_in] * w_of[p]) @ (w * c).T
            mixed = z if mixed is None else mixed + z
        assert mixed is not None
        y = sh_blocks[block.l]
        m = _outer(mixed, y).reshape(edges, block.mul_out * block.dim)
        columns.append(m)
        premixed.append(k)
    if not columns:
        return jnp.zeros((nodes, 0), dtype)

    # The column groups summed at the receivers: the plain paths of each block (contiguous,
    # paths are sorted by block), then the premixed blocks.
    groups: list[tuple[str, int]] = []  # ("plain" | "premixed", block)
    group_columns = []
    first = 0
    for k in range(len(linear_out_blocks)):
        count = sum(1 for p in plain if p.block == k)
        if count:
            groups.append(("plain", k))
            group_columns.append(columns[first : first + count])
            first += count
    for k, m in zip(premixed, columns[len(plain) :], strict=True):
        groups.append(("premixed", k))
        group_columns.append([m])
    if deterministic:
        # One sorted scan for all columns, then one split.
        summed = segment_sum(
            jnp.concatenate(columns, axis=-1) if len(columns) > 1 else columns[0],
            receivers,
            nodes,
            deterministic=True,
        )
        ranges, offset = [], 0
        for group in group_columns:
            width = sum(c.shape[1] for c in group)
            ranges.append((offset, width))
            offset += width
        pieces = dict(zip(groups, split_columns(summed, ranges), strict=True))
    else:
        # A scatter-add per path (or premixed block), joined on the nodes: no edge-sized
        # concatenation, nor one in the cotangent.
        pieces = {}
        for g, group in zip(groups, group_columns, strict=True):
            sums = [segment_sum(c, receivers, nodes) for c in group]
            pieces[g] = jnp.concatenate(sums, axis=-1) if len(sums) > 1 else sums[0]
    outs = []
    for k, block in enumerate(linear_out_blocks):
        members = [p for p in plain if p.block == k]
        y = None
        if members:
            chunk = pieces[("plain", k)]
            cols = np.concatenate(
                [np.arange(p.block_start, p.block_start + p.mul) for p in members]
            )
            w = linear_out_weights[k].astype(dtype)
            w = w if len(cols) == block.mul_in else w[:, cols]
            w = w * block_scale(block.mul_in)
            y = _mix(chunk.reshape(nodes, len(cols), block.dim), w)
            y = y.reshape(nodes, block.mul_out * block.dim)
        if ("premixed", k) in pieces:
            pre = pieces[("premixed", k)]
            y = pre if y is None else y + pre
        assert y is not None
        outs.append(y)
    if not outs:
        return jnp.zeros((nodes, 0), dtype)
    return jnp.concatenate(outs, axis=-1)
