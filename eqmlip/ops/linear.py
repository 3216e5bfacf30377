"""Equivariant linear maps between irreps, as pure functions.

An equivariant linear map sends each input chunk `mul_in x ir` to every output chunk of the same
irrep through a `(mul_in, mul_out)` matrix acting on the multiplicity index (Schur's lemma):

$$y_o[\\ldots, w, m] = \\sum_{p \\to o} c_p \\sum_u W_p[u, w]\\, x_{i(p)}[\\ldots, u, m]
   + b_o[w]\\,[\\mathrm{ir}_o = 0e]$$

with the path weights $c_p$ of e3nn-jax's `FunctionalLinear`.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import e3nn_jax as e3nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._misc import irreps_entry

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
    if chunk.shape[-1] == 1:
        return (chunk[..., 0] @ w)[..., None]
    return jnp.swapaxes(jnp.swapaxes(chunk, -1, -2) @ w, -1, -2)


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
    out_chunks = []
    for i_out, (mul_out, ir_out) in enumerate(irreps_out):
        total = None
        for path, w in zip(paths, weights, strict=True):
            if path.i_out != i_out:
                continue
            entry_in = irreps_entry(irreps_in, path.i_in)
            if entry_in.mul == 0 or mul_out == 0:
                continue
            chunk = x[..., in_slices[path.i_in]].reshape(*batch, entry_in.mul, entry_in.ir.dim)
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
