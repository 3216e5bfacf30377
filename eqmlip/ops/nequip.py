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
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, cast

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._misc import irreps_entry

ActivationName = Literal["tanh", "silu", "relu", "elu", "swish", "sigmoid", "none"]
EnvelopeName = Literal["polynomial_envelope", "soft_envelope", "cosine_cutoff"]


def _identity(x: jax.Array) -> jax.Array:
    return x


# mlip's `parse_activation` table (mlip.models.options.Activation).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jax.nn.tanh,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "swish": jax.nn.swish,
    "sigmoid": jax.nn.sigmoid,
    "none": _identity,
}

ENVELOPES: tuple[str, ...] = ("polynomial_envelope", "soft_envelope", "cosine_cutoff")


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name` in mlip (`"swish"`, `"tanh"`, ...)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


@functools.lru_cache(maxsize=32)
def activation_parity(name: str) -> int:
    """`1` for an even activation, `-1` for an odd one, `0` for neither (e3nn's test)."""
    x = np.linspace(0.0, 10.0, 256)
    with jax.ensure_compile_time_eval():
        a1 = np.asarray(activation(name)(jnp.asarray(x)))
        a2 = np.asarray(activation(name)(jnp.asarray(-x)))
    if np.max(np.abs(a1 - a2)) < 1e-5:
        return 1
    if np.max(np.abs(a1 + a2)) < 1e-5:
        return -1
    return 0


# --- edges: lengths, radial basis, spherical harmonics ------------------------------------------


def safe_norm(vectors: Float[Array, "*batch 3"]) -> Float[Array, "*batch"]:
    """`|v|`, with value and gradient 0 at `v = 0` (mlip's `safe_norm`)."""
    squared = jnp.sum(vectors**2, axis=-1)
    zero = squared == 0.0
    return jnp.where(zero, 0.0, jnp.where(zero, 1.0, squared) ** 0.5)


def bessel_basis(r: Float[Array, " edges"], num: int, cutoff: float) -> Float[Array, "edges {num}"]:
    """`B_n(r) = sqrt(2/c) sin(n pi r / c) / r`, `n = 1..num` (e3nn's `bessel`), finite at 0."""
    r = r[:, None]
    n = jnp.arange(1, num + 1, dtype=r.dtype)
    nonzero = jnp.where(r == 0.0, 1.0, r)
    return math.sqrt(2.0 / cutoff) * jnp.where(
        r == 0.0, n * math.pi / cutoff, jnp.sin(n * math.pi / cutoff * nonzero) / nonzero
    )


def polynomial_envelope(
    r: Float[Array, " edges"], cutoff: float, p: int = 5
) -> Float[Array, " edges"]:
    """DimeNet's envelope `1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`,
    `x = r/c`, times `[r < c]`."""
    x = r / cutoff
    u = (
        1.0
        - ((p + 1.0) * (p + 2.0) / 2.0) * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - (p * (p + 1.0) / 2.0) * x ** (p + 2)
    )
    return jnp.where(r < cutoff, u, 0.0)


def soft_envelope(r: Float[Array, " edges"], cutoff: float) -> Float[Array, " edges"]:
    """e3nn's `soft_envelope(r, cutoff, arg_multiplicator=2, value_at_origin=1.2)`:
    `1.2 sus(2 (1 - r/c)) / sus(2)` with `sus(x) = exp(-1/x) [x > 0]`."""
    x = 2.0 * (1.0 - r / cutoff)
    positive = x > 0.0
    sus = jnp.where(positive, jnp.exp(-1.0 / jnp.where(positive, x, 1.0)), 0.0)
    return (1.2 / math.exp(-1.0 / 2.0)) * sus


def cosine_cutoff(r: Float[Array, " edges"], cutoff: float) -> Float[Array, " edges"]:
    """`(cos(pi r / c) + 1) / 2`, times `[r < c]`."""
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(r * math.pi / cutoff) + 1.0), 0.0)


def radial_embedding(
    r: Float[Array, " edges"], num: int, cutoff: float, envelope: str = "polynomial_envelope"
) -> Float[Array, "edges {num}"]:
    """mlip's non-learnable Bessel `RadialEmbeddingBlock`: `B(r) u(r)`, set to 0 where `r = 0`
    (so zero-length padding edges carry nothing), gradient-safe everywhere."""
    if envelope == "polynomial_envelope":
        env = polynomial_envelope(r, cutoff)
    elif envelope == "soft_envelope":
        env = soft_envelope(r, cutoff)
    elif envelope == "cosine_cutoff":
        env = cosine_cutoff(r, cutoff)
    else:
        raise ValueError(f"unknown radial envelope {envelope!r}; expected one of {ENVELOPES}.")
    basis = bessel_basis(r, num, cutoff) * env[:, None]
    return jnp.where((r == 0.0)[:, None], 0.0, basis)


def spherical_harmonics(
    vectors: Float[Array, "*batch 3"], l_max: int
) -> Float[Array, "*batch sh_dim"]:
    """`Y^0 .. Y^{l_max}` of the unit vectors (e3nn, `"component"` normalisation: `Y^0 = 1`,
    `|Y^l|^2 = 2l+1`; `Y^1 = sqrt(3) (x, y, z)`). A zero vector gives `Y^0 = 1`, `Y^l = 0`."""
    irreps = e3nn.Irreps.spherical_harmonics(l_max)
    return e3nn.spherical_harmonics(
        irreps,
        vectors,
        normalize=True,
        normalization="component",
        algorithm=("recursive", "dense", "custom_jvp"),
    ).array


# --- irreps bookkeeping -------------------------------------------------------------------------


def sh_irreps(l_max: int) -> e3nn.Irreps:
    """`1x0e + 1x1o + ... + 1x{l_max}`, the irreps of the spherical harmonics."""
    return e3nn.Irreps.spherical_harmonics(l_max)


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


def mlip_radial_columns(paths: Sequence[ConvPath]) -> np.ndarray:
    """For each eqmlip radial-MLP output column, the mlip (trailing-channels) column."""
    cols = []
    for p in paths:
        for c in range(p.channels):
            for u in range(p.mul_red):
                cols.append((p.mlip_k + u) * p.channels + c)
    return np.asarray(cols, dtype=np.int64)


def mlip_linear_out_columns(paths: Sequence[ConvPath], block: int) -> np.ndarray:
    """For each eqmlip linear_out input copy of message block `block`, the mlip column."""
    cols = []
    for p in paths:
        if p.block != block:
            continue
        for c in range(p.channels):
            for u in range(p.mul_red):
                cols.append(c * p.block_mul_red + p.mlip_j + u)
    return np.asarray(cols, dtype=np.int64)


# --- e3j-style block linears --------------------------------------------------------------------


class LinearBlock(NamedTuple):
    """One `(l, p)` block of an e3j linear: a `(mul_out, mul_in)` weight (scaled by
    `1/sqrt(mul_in)` at run time) from input columns `start_in : start_in + mul_in (2l+1)`."""

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
    side has it. Block `i` is Flax's `weight{i}_{l}_{p}`; some have zero size.
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


def _mix(chunk: Float[Array, "n mul_in dim"], w: Float[Array, "mul_out mul_in"]) -> Array:
    """`out[n, w, m] = sum_u w[w, u] chunk[n, u, m]`, as a matmul on the last axis."""
    if chunk.shape[-1] == 1:
        return (chunk[..., 0] @ w.T)[..., None]
    return jnp.swapaxes(jnp.swapaxes(chunk, -1, -2) @ w.T, -1, -2)


def block_linear(
    x: Float[Array, "n dim_in"],
    weights: Sequence[Float[Array, "_ _"]],
    blocks: Sequence[LinearBlock],
) -> Float[Array, "n dim_out"]:
    """e3j's linear: per block, `y[w] = sum_u W[w, u] x[u] / sqrt(mul_in)`; zeros where the
    input lacks the block. `weights[k]` is `(mul_out, mul_in)` for `blocks[k]`."""
    n = x.shape[0]
    outs = []
    for block, w in zip(blocks, weights, strict=True):
        if block.mul_out == 0:
            continue
        if block.mul_in == 0:
            outs.append(jnp.zeros((n, block.mul_out * block.dim), x.dtype))
            continue
        scaled = w.astype(x.dtype) * (1.0 / math.sqrt(block.mul_in))
        chunk = x[:, block.start_in : block.start_in + block.mul_in * block.dim]
        y = _mix(chunk.reshape(n, block.mul_in, block.dim), scaled)
        outs.append(y.reshape(n, block.mul_out * block.dim))
    if not outs:
        return jnp.zeros((n, 0), x.dtype)
    return jnp.concatenate(outs, axis=-1)


def indexed_block_linear(
    x: Float[Array, "n dim_in"],
    index: Int[Array, " n"],
    weights: Sequence[Float[Array, "num _ _"]],
    blocks: Sequence[LinearBlock],
) -> Float[Array, "n dim_out"]:
    """e3j's `LinearIndexwise`: row `n` uses the weights `W[index[n]]` (`(num, mul_out, mul_in)`
    per block), scaled by `1/sqrt(mul_in)`.

    Computed as one matmul on the one-hot expansion `onehot(index) (x) x` against the stacked
    weights `(num * mul_in, mul_out)`, which never materialises a weight matrix per row.
    """
    n = x.shape[0]
    outs = []
    onehot = None
    for block, w in zip(blocks, weights, strict=True):
        if block.mul_out == 0:
            continue
        if block.mul_in == 0:
            outs.append(jnp.zeros((n, block.mul_out * block.dim), x.dtype))
            continue
        num = w.shape[0]
        if onehot is None:
            onehot = (index[:, None] == jnp.arange(num, dtype=index.dtype)[None, :]).astype(x.dtype)
        scaled = w.astype(x.dtype) * (1.0 / math.sqrt(block.mul_in))
        stacked = jnp.swapaxes(scaled, 1, 2).reshape(num * block.mul_in, block.mul_out)
        chunk = x[:, block.start_in : block.start_in + block.mul_in * block.dim]
        chunk = chunk.reshape(n, 1, block.mul_in, block.dim) * onehot[:, :, None, None]
        y = _mix(chunk.reshape(n, num * block.mul_in, block.dim), stacked.T)
        outs.append(y.reshape(n, block.mul_out * block.dim))
    if not outs:
        return jnp.zeros((n, 0), x.dtype)
    return jnp.concatenate(outs, axis=-1)


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


def segment_sum(
    data: Float[Array, " items *rest"],
    segment_ids: Int[Array, " items"],
    num_segments: int,
    *,
    deterministic: bool = False,
) -> Float[Array, " {num_segments} *rest"]:
    """`out[s] = sum_{i: ids[i] = s} data[i]`; ids outside `0..num_segments-1` are dropped.

    `deterministic=False` is `jax.ops.segment_sum` (a scatter-add, whose summation order on GPU
    depends on thread timing). `deterministic=True` sorts the items by segment (stable), takes a
    segmented inclusive scan (`jax.lax.associative_scan`, a fixed reduction tree) and reads the
    last item of each segment: bit-for-bit reproducible on every backend, and so is its
    gradient (a gather and scans; the only scatters write distinct indices).
    """
    if not deterministic:
        return jax.ops.segment_sum(data, segment_ids, num_segments=num_segments)
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


@functools.lru_cache(maxsize=256)
def _path_coefficients(l0: int, l1: int, l2: int, avg_num_neighbors: float) -> np.ndarray:
    """`C^{l0 l1 l2} sqrt(2 l0 + 1) / avg_num_neighbors`, float64, shape `(2l0+1, 2l1+1, 2l2+1)`."""
    cg = np.asarray(e3nn.clebsch_gordan(l0, l1, l2), dtype=np.float64)
    return cg * math.sqrt(2 * l0 + 1) / avg_num_neighbors


def _diagonal_constant(matrix: np.ndarray) -> float:
    """The constant `c` of a matrix `c I` (checked)."""
    c = float(matrix[0, 0])
    assert np.allclose(matrix, c * np.eye(len(matrix)), rtol=0, atol=1e-12), matrix
    return c


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
    edges = x_edges.shape[0]
    dtype = x_edges.dtype
    slices = irreps_in.slices()
    outs = []
    for p in paths:
        d0, d1 = 2 * p.l0 + 1, 2 * p.l1 + 1
        x = x_edges[:, slices[p.i_in]].reshape(edges, p.mul, d1)
        y = sh[:, p.l2**2 : (p.l2 + 1) ** 2]
        coef = _path_coefficients(p.l0, p.l1, p.l2, float(avg_num_neighbors))
        if p.l2 == 0:  # C'[a, b, 0] = c delta_ab; Y^0 = 1 is not read (its gradient is waste)
            m = x * _diagonal_constant(coef[:, :, 0])
        elif p.l1 == 0:  # C'[a, 0, c] = c delta_ac
            m = x * (_diagonal_constant(coef[:, 0, :]) * y)[:, None, :]
        elif p.l0 == 0:  # C'[0, b, c] = c delta_bc: a scaled dot product over m
            m = jnp.sum(x * y[:, None, :], axis=-1, keepdims=True) * _diagonal_constant(coef[0])
        else:
            a = jnp.einsum("abc,ec->eab", jnp.asarray(coef, dtype), y)
            m = jnp.einsum("eub,eab->eua", x, a)
        w = weights[:, p.radial_start : p.radial_start + p.mul]
        outs.append((m * w[:, :, None]).reshape(edges, p.mul * d0))
    if not outs:
        return jnp.zeros((edges, 0), dtype)
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
    x_edges = x[senders]
    slices = irreps_in.slices()
    expected = [
        sum(p.mul for p in paths if p.block == k) for k in range(len({p.block for p in paths}))
    ]
    if [b.mul_in for b in linear_out_blocks] != expected:
        raise ValueError(
            "interaction: linear_out_blocks take input multiplicities "
            f"{[b.mul_in for b in linear_out_blocks]}, but the paths' message blocks have "
            f"{expected}."
        )

    plain = [p for p in paths if not premixes(p, linear_out_blocks[p.block])]
    plain_messages = tensor_product_messages(
        x_edges, sh, weights, irreps_in=irreps_in, paths=plain,
        avg_num_neighbors=avg_num_neighbors,
    )  # fmt: skip
    columns = [plain_messages]
    premixed_slots: dict[int, tuple[int, int]] = {}  # block -> (start, width) in `columns`
    offset = plain_messages.shape[1]
    for k, block in enumerate(linear_out_blocks):
        members = [p for p in paths if p.block == k and premixes(p, block)]
        if not members:
            continue
        scale = 1.0 / math.sqrt(block.mul_in)
        mixed = None
        for p in members:
            coef = _path_coefficients(p.l0, p.l1, p.l2, float(avg_num_neighbors))
            c = _diagonal_constant(coef[:, 0, :]) * scale
            s = x_edges[:, slices[p.i_in]] * weights[:, p.radial_start : p.radial_start + p.mul]
            w = linear_out_weights[k][:, p.block_start : p.block_start + p.mul]
            z = s @ (w.astype(dtype) * c).T
            mixed = z if mixed is None else mixed + z
        assert mixed is not None
        y = sh[:, block.l**2 : (block.l + 1) ** 2]
        m = (mixed[:, :, None] * y[:, None, :]).reshape(edges, block.mul_out * block.dim)
        columns.append(m)
        premixed_slots[k] = (offset, m.shape[1])
        offset += m.shape[1]
    summed = segment_sum(
        jnp.concatenate(columns, axis=-1) if len(columns) > 1 else plain_messages,
        receivers,
        nodes,
        deterministic=deterministic,
    )

    # Node-level linear_out on the plain paths, block by block, in eqmlip's message order.
    plain_start = 0
    outs = []
    for k, block in enumerate(linear_out_blocks):
        members = [p for p in plain if p.block == k]
        y = None
        if members:
            width = sum(p.mul for p in members) * block.dim
            chunk = summed[:, plain_start : plain_start + width]
            plain_start += width
            cols = np.concatenate(
                [np.arange(p.block_start, p.block_start + p.mul) for p in members]
            )
            w = linear_out_weights[k].astype(dtype)
            w = w if len(cols) == block.mul_in else w[:, cols]
            w = w * (1.0 / math.sqrt(block.mul_in))
            y = _mix(chunk.reshape(nodes, len(cols), block.dim), w)
            y = y.reshape(nodes, block.mul_out * block.dim)
        if k in premixed_slots:
            start, width = premixed_slots[k]
            pre = summed[:, start : start + width]
            y = pre if y is None else y + pre
        assert y is not None
        outs.append(y)
    if not outs:
        return jnp.zeros((nodes, 0), dtype)
    return jnp.concatenate(outs, axis=-1)


# --- gate --------------------------------------------------------------------------------------


class GateSpec(NamedTuple):
    """The static description of NequIP's gate on the regrouped conv output.

    `entries[k] = (start, mul, l, p, role)` locates entry `k` of `scalars + gates + nonscalars`
    in the regrouped layout; `role` is `"scalar"`, `"gate"` or `"nonscalar"`.
    """

    entries: tuple[tuple[int, int, int, int, str], ...]
    even: str
    odd: str
    even_scale: float | None
    odd_scale: float | None


def gate_spec(
    scalars: e3nn.Irreps,
    gates: e3nn.Irreps,
    nonscalars: e3nn.Irreps,
    even: str,
    odd: str,
    even_scale: float | None,
    odd_scale: float | None,
) -> GateSpec:
    """Locate the gate's entries in `(scalars + gates + nonscalars).regroup()`."""
    gate_irreps = scalars + gates + nonscalars
    roles = ["scalar"] * len(scalars) + ["gate"] * len(gates) + ["nonscalar"] * len(nonscalars)
    order = sorted(range(len(gate_irreps)), key=lambda i: irreps_entry(gate_irreps, i).ir)
    starts = {}
    offset = 0
    for i in order:
        starts[i] = offset
        offset += irreps_entry(gate_irreps, i).dim
    entries = tuple(
        (starts[i], mul, ir.l, ir.p, roles[i]) for i, (mul, ir) in enumerate(gate_irreps)
    )
    return GateSpec(entries, even, odd, even_scale, odd_scale)


def _act(name: str, scale: float | None, x: Array) -> Array:
    y = activation(name)(x)
    return y if scale is None else y / scale


def gate(x: Float[Array, "nodes dim"], spec: GateSpec) -> Float[Array, "nodes dim_out"]:
    """NequIP's gate (`e3nn.gate` with normalised activations) on the regrouped layout.

    Scalars are activated by parity (`0e` with `even`, `0o` with `odd`); each nonscalar copy
    `i` is multiplied by its activated gate `i` (gates in nonscalar order). Output: scalars,
    then gated nonscalars, in the order of the un-regrouped gate irreps.
    """
    n = x.shape[0]
    gate_values = []
    for start, mul, _, p, role in spec.entries:
        if role == "gate":
            g = x[:, start : start + mul]
            gate_values.append(
                _act(spec.even, spec.even_scale, g) if p == 1 else _act(spec.odd, spec.odd_scale, g)
            )
    gates = jnp.concatenate(gate_values, axis=-1) if gate_values else None
    outs = []
    used = 0
    for start, mul, degree, p, role in spec.entries:
        if role == "scalar":
            s = x[:, start : start + mul]
            outs.append(
                _act(spec.even, spec.even_scale, s) if p == 1 else _act(spec.odd, spec.odd_scale, s)
            )
        elif role == "nonscalar":
            assert gates is not None
            d = 2 * degree + 1
            v = x[:, start : start + mul * d].reshape(n, mul, d)
            outs.append((v * gates[:, used : used + mul, None]).reshape(n, mul * d))
            used += mul
    if not outs:
        return jnp.zeros((n, 0), x.dtype)
    return jnp.concatenate(outs, axis=-1)


def mask_rows(
    x: Float[Array, " rows *rest"], mask: Bool[Array, " rows"] | None
) -> Float[Array, " rows *rest"]:
    """`where(mask, x, 0)` along the first axis (no-op without a mask)."""
    if mask is None:
        return x
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, 0.0)
