"""The maths of MACE (mlip 0.2.5's `mlip.models.mace`), as pure functions on arrays.

The symmetric contraction (MACE's equivariant product basis, Batatia et al. 2022, eq. 10)
maps the per-channel node features `A` (irreps `S`, every multiplicity 1, `C` independent
channels) of a node of species `z` to

$$B_c = \\sum_{\\nu=1}^{N} W^{(\\nu)}_{z c} \\cdot \\Pi_T\\big(A_c^{\\otimes \\nu}\\big)$$

where `A^{(x)nu}` is the `nu`-th equivariant power of `A_c`, built left to right as
`A^{(x)nu} = A^{(x)(nu-1)} (x) A` with plain Clebsch-Gordan coefficients (no normalisation),
every path kept as its own copy; `Pi_T` keeps the irreps of the target `T` (every
multiplicity 1), and `W` mixes, per species and channel, all the copies of each output irrep
(mlip's e3j `PowerExpansion`, `Permutation.sort` and `LinearIndexwise`, `TRAILING_CHANNELS`).
Intermediate powers keep only irreps that can still reach `T` in the remaining products (e3j's
pruning), which is exact.

Copies are ordered as mlip orders them, so weights convert one for one: within an output irrep,
the copies of `A` first, then those of `A^{(x)2}`, then `A^{(x)3}`, ...; within a power, the
products in generation order (each left chunk, each right chunk, output degree ascending), and
within a product the left copy `u` major, the right copy `v` minor.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import nequip
from .columns import split_columns, split_sizes
from .cutoffs import ENVELOPE_FUNCTIONS
from .linear import LinearBlock, block_scale
from .nequip import ConvPath, diagonal_constant, irreps_from, path_coefficients
from .segment import segment_sum


class ProductPath(NamedTuple):
    """One Clebsch-Gordan path of a power step: chunk `i_lhs` of the previous power (`mul_lhs`
    copies of `l1`) times chunk `i_rhs` of the source (`mul_rhs` copies of `l2`) into
    `mul_lhs * mul_rhs` copies of `(l0, p0)`, at copies `start:` of that output block;
    `rhs_start` is where the right chunk starts in the source's features."""

    i_lhs: int
    i_rhs: int
    l1: int
    l2: int
    l0: int
    p0: int
    mul_lhs: int
    mul_rhs: int
    block: int
    start: int
    rhs_start: int


class PowerStep(NamedTuple):
    """`A^{(x)(nu+1)} = A^{(x)nu} (x) A`: the (regrouped) irreps on both sides and the paths,
    grouped by output block in mlip's copy order."""

    irreps_lhs: e3nn.Irreps
    irreps_out: e3nn.Irreps
    paths: tuple[ProductPath, ...]


class ContractionPlan(NamedTuple):
    """Everything static about a symmetric contraction.

    - `steps`: the `correlation - 1` power steps.
    - `powers`: the irreps of `A, A^{(x)2}, ...` (each regrouped and pruned).
    - `kept`: for each target irrep, the `(power, chunk)` pairs feeding it, in copy order.
    - `mul_in`: for each target irrep, the number of copies `W` mixes (0: output is zero).
    """

    steps: tuple[PowerStep, ...]
    powers: tuple[e3nn.Irreps, ...]
    kept: tuple[tuple[tuple[int, int], ...], ...]
    mul_in: tuple[int, ...]


def _irrep_order(ir: e3nn.Irrep) -> tuple[int, int]:
    """e3nn's order `0e, 0o, 1o, 1e, 2e, ...` (parity `(-1)**l` first)."""
    return (ir.l, 0 if ir.p == (-1) ** ir.l else 1)


def reachable_irreps(
    source: e3nn.Irreps, target: e3nn.Irreps, remaining: int
) -> frozenset[tuple[int, int]]:
    """The `(l, p)` a power may hold and still feed `target` after up to `remaining` more
    products by `source` (e3j's `PowerExpansion._reachable_filter`, no `l_max`)."""
    src = {(ir.l, ir.p) for _, ir in source}
    reach = {(ir.l, ir.p) for _, ir in target}
    frontier = set(reach)
    for _ in range(remaining):
        frontier = {
            (l, p * ps)
            for lt, p in frontier
            for s, ps in src
            for l in range(abs(lt - s), lt + s + 1)  # noqa: E741
        }
        reach |= frontier
    return frozenset(reach)


@functools.lru_cache(maxsize=64)
def contraction_plan(source: e3nn.Irreps, correlation: int, target: e3nn.Irreps) -> ContractionPlan:
    """The [`eqmlip.ops.mace.ContractionPlan`][] of a symmetric contraction of `source` up to
    `correlation` onto `target` (every multiplicity of `target` 1, no repeats)."""
    if correlation < 1:
        raise ValueError(f"contraction_plan: correlation must be >= 1, got {correlation}.")
    lhs = source
    steps = []
    powers = [source]
    for nu in range(2, correlation + 1):
        keep = reachable_irreps(source, target, correlation - nu)
        raw = []  # (ir_out, generation index, path without block/start)
        rhs_starts = [s.start for s in source.slices()]
        for i_lhs, (m1, ir1) in enumerate(lhs):
            for i_rhs, (m2, ir2) in enumerate(source):
                for ir0 in ir1 * ir2:
                    if (ir0.l, ir0.p) in keep:
                        raw.append((ir0, i_lhs, i_rhs, ir1.l, ir2.l, m1, m2, rhs_starts[i_rhs]))
        # Stable sort by output irrep: generation order within a block (e3j's Permutation.sort).
        raw.sort(key=lambda t: _irrep_order(t[0]))
        blocks: list[e3nn.Irrep] = []
        for t in raw:
            if not blocks or blocks[-1] != t[0]:
                blocks.append(t[0])
        paths = []
        muls = [0] * len(blocks)
        for ir0, i_lhs, i_rhs, l1, l2, m1, m2, rhs_start in raw:
            b = blocks.index(ir0)
            paths.append(
                ProductPath(i_lhs, i_rhs, l1, l2, ir0.l, ir0.p, m1, m2, b, muls[b], rhs_start)
            )
            muls[b] += m1 * m2
        out = irreps_from(list(zip(muls, blocks, strict=True)))
        steps.append(PowerStep(lhs, out, tuple(paths)))
        powers.append(out)
        lhs = out
    kept = []
    mul_in = []
    for _, ir in target:
        feeds = []
        count = 0
        for nu, irreps in enumerate(powers):
            for i, (mul, ir_i) in enumerate(irreps):
                if ir_i == ir:
                    feeds.append((nu, i))
                    count += mul
        kept.append(tuple(feeds))
        mul_in.append(count)
    return ContractionPlan(tuple(steps), tuple(powers), tuple(kept), tuple(mul_in))


@functools.lru_cache(maxsize=256)
def _cg(l0: int, l1: int, l2: int) -> np.ndarray:
    """e3nn's Clebsch-Gordan coefficients `(2l0+1, 2l1+1, 2l2+1)` in float64, as e3j uses them
    (no normalisation)."""
    return np.asarray(e3nn.clebsch_gordan(l0, l1, l2), dtype=np.float64)


# The contraction is written batch-first (`[nodes * channels, ...]`, every node and channel a
# batch row) with dense products only: matrix products with the Clebsch-Gordan coefficients
# and dot products batched over the rows (the per-row outer products and weight sums). Their
# gradients, and the second derivatives a training step on forces takes, are dot products
# again. Gathers, scatters, and broadcasts over small axes (with their reductions in the
# gradient) are what XLA:CPU runs element by element; and a few large operations compile
# fast where one operation per coefficient does not.


def _outer(x: Float[Array, "batch m"], y: Float[Array, "batch n"]) -> Float[Array, "batch m n"]:
    """`x[r, i] y[r, j]` per row `r`, as a batched dot product (not a broadcast)."""
    return jax.lax.dot_general(x[:, :, None], y[:, None, :], (((2,), (1,)), ((0,), (0,))))


def _contract(w: Float[Array, "batch u"], x: Float[Array, "batch u d"]) -> Float[Array, "batch d"]:
    """`sum_u w[r, u] x[r, u, :]` per row `r` (a batched matrix-vector product)."""
    return jax.lax.dot_general(w, x, (((1,), (1,)), ((0,), (0,))))


def _cg_matrix(paths: Sequence[ProductPath]) -> np.ndarray:
    """The paths' coefficients `[(b c), (path a)]` (one left and one right chunk)."""
    return np.concatenate(
        [_cg(p.l0, p.l1, p.l2).reshape(2 * p.l0 + 1, -1) for p in paths], axis=0
    ).T


def power_step(
    lhs: Sequence[Float[Array, "batch _ _"]],
    rhs: Sequence[Float[Array, "batch _ _"]],
    step: PowerStep,
) -> list[Float[Array, "batch _ _"]]:
    """One product `A^{(x)nu} (x) A` on chunks `[batch, mul, 2l+1]` (one per entry of
    `step.irreps_lhs`, and of the source): for each pair of chunks, the outer product of
    every left and right copy, then one matrix product with the Clebsch-Gordan coefficients
    of all the paths of that pair; copy `u mul_rhs + v` of a path is copy
    `start + u mul_rhs + v` of its output block.

    **Returns:** one `[batch, mul, 2l+1]` chunk per entry of `step.irreps_out`."""
    groups: dict[tuple[int, int], list[ProductPath]] = {}
    for p in step.paths:
        groups.setdefault((p.i_lhs, p.i_rhs), []).append(p)
    pieces: list[list[tuple[int, Array]]] = [[] for _ in step.irreps_out]
    for (i, j), paths in groups.items():
        x, y = lhs[i], rhs[j]
        batch, m1, d1 = x.shape
        _, m2, d2 = y.shape
        t = _outer(x.reshape(batch, m1 * d1), y.reshape(batch, m2 * d2))
        if m1 * m2 > 1:
            t = t.reshape(batch, m1, d1, m2, d2).transpose(0, 1, 3, 2, 4)
        z = t.reshape(batch * m1 * m2, d1 * d2) @ jnp.asarray(_cg_matrix(paths), t.dtype)
        z = z.reshape(batch, m1 * m2, -1)
        for p, zp in zip(paths, split_sizes(z, [2 * p.l0 + 1 for p in paths]), strict=True):
            pieces[p.block].append((p.start, zp))
    out = []
    for ps in pieces:
        ps.sort(key=lambda t: t[0])
        out.append(jnp.concatenate([a for _, a in ps], axis=1) if len(ps) > 1 else ps[0][1])
    return out


def _folded_last_step(
    lhs: Sequence[Float[Array, "batch _ _"]],
    rhs: Sequence[Float[Array, "batch _ _"]],
    step: PowerStep,
    block: int,
    w: Float[Array, "batch copies"],
) -> Float[Array, "batch ir_dim"]:
    """`sum_k w[k] z_k` over the copies `k` of block `block` of `step`'s output, without
    building them (Horner): per path, the weights go into the left factor first,
    `x~_v = sum_u w[start + u mul_rhs + v] x_u`; then, per right copy, one matrix product
    with the paths' Clebsch-Gordan coefficients stacked along the contraction,
    `s[(a c)] = sum_{(p b)} C_p[a, b, c] x~_p[b]`, and `sum_c s[a, c] y[c]`."""
    paths = sorted((p for p in step.paths if p.block == block), key=lambda p: p.start)
    d0 = [ir.dim for _, ir in step.irreps_out][block]
    batch = w.shape[0]
    ws = split_sizes(w, [p.mul_lhs * p.mul_rhs for p in paths])
    groups: dict[tuple[int, int], tuple[list[np.ndarray], list[Array]]] = {}
    for p, wp in zip(paths, ws, strict=True):
        wp = wp.reshape(batch, p.mul_lhs, p.mul_rhs)
        cg = np.transpose(_cg(p.l0, p.l1, p.l2), (1, 0, 2)).reshape(2 * p.l1 + 1, -1)
        for v in range(p.mul_rhs):
            cgs, xs = groups.setdefault((p.i_rhs, v), ([], []))
            cgs.append(cg)  # [b, (a c)]
            xs.append(_contract(wp[:, :, v], lhs[p.i_lhs]))  # [batch, b]
    total = None
    for (j, v), (cgs, xs) in groups.items():
        xt = jnp.concatenate(xs, axis=1) if len(xs) > 1 else xs[0]
        s = xt @ jnp.asarray(np.concatenate(cgs, axis=0), xt.dtype)  # [batch, (a c)]
        part = _contract(rhs[j][:, v], s.reshape(batch, d0, -1).transpose(0, 2, 1))
        total = part if total is None else total + part
    assert total is not None
    return total


def symmetric_contraction(
    x: Float[Array, "nodes channels dim_in"],
    species: Int[Array, " nodes"],
    weights: Sequence[Float[Array, "species channels _"]],
    *,
    irreps_in: e3nn.Irreps,
    irreps_out: e3nn.Irreps,
    correlation: int,
) -> Float[Array, "nodes channels dim_out"]:
    """MACE's symmetric contraction (see the module's docstring): mlip 0.2.5's
    `SymmetricContraction` (e3j backend).

    Every node and channel is a batch row. The powers below the last are built with
    [`eqmlip.ops.mace.power_step`][]; the last is never built: its weights are first
    contracted into the power below (Horner), so its copies (956 per channel for MACE's
    default first layer) cost neither time nor memory.

    **Arguments:**

    - `x`: `[nodes, channels, irreps_in.dim]` node features, leading channels.
    - `species`: `[nodes]` species indices.
    - `weights`: one `[species, channels, mul_in]` array per entry of `irreps_out`, `mul_in`
        from [`eqmlip.ops.mace.contraction_plan`][] (mlip's `LinearIndexwise` weights
        `weight{i}_{l}_{p}` without their `m_out = 1` axis).
    - `irreps_in`, `irreps_out`, `correlation`: static.

    **Returns:** `[nodes, channels, irreps_out.dim]`, in `x`'s dtype.
    """
    plan = contraction_plan(irreps_in, correlation, irreps_out)
    if len(weights) != len(irreps_out):
        raise ValueError(
            f"symmetric_contraction: got {len(weights)} weight arrays, expected one per entry "
            f"of irreps_out {irreps_out} ({len(irreps_out)})."
        )
    nodes, channels, dim = x.shape
    batch = nodes * channels
    flat = x.reshape(batch, dim)
    sizes = [mul * ir.dim for mul, ir in irreps_in]
    source = [
        c.reshape(batch, mul, ir.dim)
        for c, (mul, ir) in zip(split_sizes(flat, sizes), irreps_in, strict=True)
    ]
    powers = [source]
    for step in plan.steps[:-1]:
        powers.append(power_step(powers[-1], source, step))
    last = len(plan.powers) - 1
    outs = []
    for (_, ir), feeds, mul_in, w in zip(irreps_out, plan.kept, plan.mul_in, weights, strict=True):
        if mul_in == 0:
            outs.append(jnp.zeros((batch, ir.dim), x.dtype))
            continue
        w_nodes = w.astype(x.dtype)[species].reshape(batch, mul_in)
        w_feeds = split_sizes(w_nodes, [[m for m, _ in plan.powers[nu]][i] for nu, i in feeds])
        acc = None
        for (nu, i), wk in zip(feeds, w_feeds, strict=True):
            if nu == last and last > 0:
                part = _folded_last_step(powers[-1], source, plan.steps[-1], i, wk)
            else:
                part = _contract(wk, powers[nu][i])
            acc = part if acc is None else acc + part
        outs.append(acc)
    if not outs:
        return jnp.zeros((nodes, channels, 0), x.dtype)
    out = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    return out.reshape(nodes, channels, irreps_out.dim)


# --- the interaction (messages, sum at the receivers, linear_out), channels last ---------------


def _channels_last_applies(paths: Sequence[ConvPath], blocks: Sequence[LinearBlock]) -> bool:
    """MACE's convolution is channel-wise (one copy per channel and path) and its linear_out
    keeps the channels (nothing to mix on the edges first): the case `interaction` handles."""
    return all(p.mul == p.channels and not nequip.premixes(p, blocks[p.block]) for p in paths)


def _edge_messages(
    x_edges: dict[int, Float[Array, "edges _ channels"]],
    sh_blocks: dict[int, Float[Array, "edges _"]],
    w_pieces: Sequence[Float[Array, "edges channels"]],
    paths: Sequence[ConvPath],
    avg_num_neighbors: float,
) -> list[Float[Array, "edges _ channels"]]:
    """Every path's messages `[edges, 2l0+1, channels]`, channels last. The paths of one
    input chunk and one `l2` share one batched matrix product per edge,
    `m[e, (p a), u] = sum_b A[e, (p a), b] x[e, b, u]` with `A[e] = C'_p Y^{l2}[e]`: the
    channels are the wide axis of each product (XLA:CPU runs these about 1.5x faster than
    the same products with the channels leading, measured with forward and backward)."""
    outs: list[Array | None] = [None] * len(paths)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, p in enumerate(paths):
        x = x_edges[p.i_in]
        coef = path_coefficients(p.l0, p.l1, p.l2, float(avg_num_neighbors))
        if p.l2 == 0:  # C'[a, b, 0] = c delta_ab; Y^0 = 1 is not read
            outs[k] = x * diagonal_constant(coef[:, :, 0])
        elif p.l1 == 0:  # C'[a, 0, c] = c delta_ac
            y = sh_blocks[p.l2] * diagonal_constant(coef[:, 0, :])
            outs[k] = y[:, :, None] * x
        else:
            groups.setdefault((p.i_in, p.l2), []).append(k)
    for (i_in, l2), members in groups.items():
        x = x_edges[i_in]
        edges, d1, _ = x.shape
        coef = np.concatenate(
            [
                path_coefficients(paths[k].l0, paths[k].l1, l2, float(avg_num_neighbors))
                for k in members
            ],
            axis=0,
        )  # [(p a), b, c]
        a = sh_blocks[l2] @ jnp.asarray(coef.transpose(2, 0, 1).reshape(2 * l2 + 1, -1), x.dtype)
        m = jax.lax.dot_general(
            a.reshape(edges, -1, d1), x, (((2,), (1,)), ((0,), (0,)))
        )  # [edges, (p a), channels]
        sizes = [2 * paths[k].l0 + 1 for k in members]
        for k, mk in zip(members, jax.lax.split(m, sizes, axis=1), strict=True):
            outs[k] = mk
    done = [m for m in outs if m is not None]
    assert len(done) == len(paths)
    return [m * w[:, None, :] for m, w in zip(done, w_pieces, strict=True)]


def interaction(
    x: Float[Array, "nodes dim_in"],
    sh: Float[Array, "edges sh_dim"],
    weights: Float[Array, "edges num_weights"],
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
    """MACE's interaction: [`eqmlip.ops.nequip.interaction`][] (the messages of `paths`,
    summed at the receivers, then linear_out), computed with the channels as the last axis.

    The input chunks are transposed to `[nodes, 2l+1, channels]` on the nodes, then gathered;
    messages, their sums and linear_out (a matrix product over the channels) keep that layout,
    and only the nodes' outputs go back to e3nn's layout. Cases other than MACE's (several
    copies per channel, paths mixed on the edges, deterministic sums) are passed to
    `eqmlip.ops.nequip.interaction`. Equal to it up to rounding.
    """
    if deterministic or not paths or not _channels_last_applies(paths, linear_out_blocks):
        return nequip.interaction(
            x,
            sh,
            weights,
            senders,
            receivers,
            linear_out_weights,
            irreps_in=irreps_in,
            paths=paths,
            linear_out_blocks=linear_out_blocks,
            avg_num_neighbors=avg_num_neighbors,
            deterministic=deterministic,
        )
    nodes = x.shape[0]
    dtype = x.dtype
    channels = paths[0].channels
    slices = irreps_in.slices()
    entries = sorted({p.i_in for p in paths})
    chunks = split_columns(
        x, [(slices[i].start, slices[i].stop - slices[i].start) for i in entries]
    )
    x_edges = {
        i: c.reshape(nodes, channels, -1).transpose(0, 2, 1)[senders]
        for i, c in zip(entries, chunks, strict=True)
    }
    degrees = sorted({p.l2 for p in paths})
    sh_blocks = dict(
        zip(degrees, split_columns(sh, [(d * d, 2 * d + 1) for d in degrees]), strict=True)
    )
    w_pieces = split_columns(weights, [(p.radial_start, p.mul) for p in paths])
    # Rematerialised: the gradient recomputes the messages from the gathered features, the
    # spherical harmonics and the radial weights (kept anyway) rather than keeping every
    # path's `[edges, 2l0+1, channels]` messages from the forward pass: 12 % less peak memory
    # at 216 Si atoms, and under glibc's default malloc every byte of it is page-faulted
    # again on each call.
    messages = jax.checkpoint(
        functools.partial(_edge_messages, paths=paths, avg_num_neighbors=avg_num_neighbors)
    )(x_edges, sh_blocks, w_pieces)
    outs = []
    for k, block in enumerate(linear_out_blocks):
        members = [(p, m) for p, m in zip(paths, messages, strict=True) if p.block == k]
        # A scatter-add per path, joined on the nodes (no edge-sized concatenation).
        sums = [segment_sum(m, receivers, nodes) for _, m in members]
        summed = jnp.concatenate(sums, axis=-1) if len(sums) > 1 else sums[0]
        cols = np.concatenate([np.arange(p.block_start, p.block_start + p.mul) for p, _ in members])
        w = linear_out_weights[k].astype(dtype)
        w = w if len(cols) == block.mul_in else w[:, cols]
        y = summed @ (w * block_scale(block.mul_in)).T  # [nodes, 2l+1, mul_out]
        outs.append(y.transpose(0, 2, 1).reshape(nodes, block.mul_out * block.dim))
    return jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]


# --- the rest of a MACE layer: radial MLP, soft normalisation, radial pre-factor -----------------


def scaled_radial_mlp(
    radial: Float[Array, "edges num_rbf"],
    kernels: Sequence[Float[Array, "_ _"]],
    act: Callable[[jax.Array], jax.Array],
) -> Float[Array, "edges out"]:
    """MACE's radial MLP (mlip's `MLP` with `FAN_IN_NORMAL` kernels): dense layers without
    bias, each output scaled by `1/sqrt(fan_in)` at run time, `act` between them (mlip passes
    the activation normalised by `e3nn.normalize_function`)."""
    x = radial
    last = len(kernels) - 1
    for i, kernel in enumerate(kernels):
        x = jax.lax.dot_general(x, kernel.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())))
        x = x * math.sqrt(1.0 / kernel.shape[0])
        if i < last:
            x = act(x)
    return x


def _sus(x: Array) -> Array:
    """e3nn's smooth unit step `exp(-1/x)` for `x > 0`, else 0 (gradient-safe)."""
    return jnp.where(x > 0.0, jnp.exp(-1.0 / jnp.where(x > 0.0, x, 1.0)), 0.0)


def soft_normalize(
    x: Float[Array, "nodes dim"], irreps: e3nn.Irreps, scale: float
) -> Float[Array, "nodes dim"]:
    """mlip's MACE `soft_normalization`: every irrep copy `v` (`2l+1` components) becomes
    `v phi(|v|)`, `|v|` the component-normalised norm `sqrt(mean(v^2))` and
    `phi(n) = 1 / (1 + (n/s) sus(n/s))` (`e3nn.norm_activation`; a zero copy stays zero)."""
    n = x.shape[0]
    parts = []
    for (mul, ir), s in zip(irreps, irreps.slices(), strict=True):
        chunk = x[:, s].reshape(n, mul, ir.dim)
        n2 = jnp.sum(chunk**2, axis=-1, keepdims=True) / ir.dim
        norm = jnp.where(n2 > 0.0, jnp.sqrt(jnp.where(n2 > 0.0, n2, 1.0)), 1.0)
        u = norm / scale
        parts.append((chunk / (1.0 + u * _sus(u))).reshape(n, mul * ir.dim))
    if not parts:
        return x
    return jnp.concatenate(parts, axis=-1)


# mlip's sample count for the radial pre-factor (`NUM_POINTS_LINSPACE_RADIAL_PREFACTOR`).
_RADIAL_PREFACTOR_POINTS = 1000


def radial_prefactor(avg_r_min: float, num_rbf: int, cutoff: float, envelope: str) -> float:
    """mlip's `RadialEmbeddingBlock` pre-factor when `avg_r_min` is set: the radial embedding
    is multiplied by `mean(B(r)^2)^(-1/2)` over 1000 points `r` from `avg_r_min` to the cutoff,
    computed in float32 as mlip computes it (whatever the precision of the model)."""
    with jax.ensure_compile_time_eval():
        r = jnp.linspace(avg_r_min, cutoff, _RADIAL_PREFACTOR_POINTS, dtype=jnp.float32)
        # e3nn's Bessel functions, as mlip evaluates them: the factor then agrees to the bit.
        basis = e3nn.bessel(r, num_rbf, cutoff) * ENVELOPE_FUNCTIONS[envelope](r, cutoff)[:, None]
        return float(jnp.mean(basis**2)) ** -0.5  # the power in Python, as mlip
