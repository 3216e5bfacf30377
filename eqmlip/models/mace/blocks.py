"""MACE's blocks as Equinox modules on explicit arrays."""

import math
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..._misc import resolve_dtype
from ...nn import E3jLinear
from ...ops.linear import fold_channels, unfold_channels
from ...ops.mace import contraction_plan, symmetric_contraction
from ...ops.nequip import SCALAR
from ..nequip.blocks import _normal_arrays


class SymmetricContraction(eqx.Module):
    """MACE's symmetric contraction (the ACE product basis up to `correlation`): Equinox
    counterpart of `mlip.models.mace.symmetric_contraction.SymmetricContraction` (mlip 0.2.5,
    e3j backend, `TRAILING_CHANNELS`).

    For each node (species `z`) and channel `c`, with `A_c` the input features:

    $$B_c = \\sum_{\\nu=1}^{N} W^{(\\nu)}_{z c} \\cdot \\Pi_T\\big(A_c^{\\otimes \\nu}\\big)$$

    (see [`eqmlip.ops.mace`][] for the powers, their pruning and the order of the copies).
    Each output irrep has one weight array `[species, channels, mul_in]`, initialised
    `N(0, 1/mul_in)` and used as is (e3j's `FAN_IN` without gradient rescaling).

    **Arguments:**

    - `source_irreps`: irreps of the features of one channel, every multiplicity 1 (mlip:
        `source_irreps`, e.g. `"0e + 1o + 2e + 3o"`).
    - `keep_irrep_out`: output irreps, sorted, every multiplicity 1 (mlip: `keep_irrep_out`).
    - `correlation`: the highest power `N` (>= 1).
    - `num_species`, `num_channels`: as in mlip.
    - `dtype`: parameter dtype; `None` is the default floating dtype.
    - `key`: a `jax.random.PRNGKey`.
    """

    weights: tuple[Float[Array, "species channels _"], ...]
    irreps_in: e3nn.Irreps = eqx.field(static=True)
    irreps_out: e3nn.Irreps = eqx.field(static=True)
    correlation: int = eqx.field(static=True)
    num_species: int = eqx.field(static=True)
    num_channels: int = eqx.field(static=True)

    def __init__(
        self,
        source_irreps: e3nn.Irreps | str,
        keep_irrep_out: e3nn.Irreps | str,
        *,
        correlation: int,
        num_species: int,
        num_channels: int,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        name = "SymmetricContraction"
        dtype = resolve_dtype(dtype)
        source = e3nn.Irreps(source_irreps)
        target = e3nn.Irreps(keep_irrep_out)
        if len(source) == 0 or any(mul != 1 for mul, _ in source):
            raise ValueError(
                f"{name}: source_irreps {source} must be non-empty with every multiplicity 1 "
                "(the irreps of one channel); the channels are a separate axis."
            )
        if any(mul != 1 for mul, _ in target) or target.regroup() != target:
            raise ValueError(
                f"{name}: keep_irrep_out {target} must be sorted, without repeats, every "
                f"multiplicity 1 (e.g. '0e + 1o + 2e'); did you mean "
                f"{e3nn.Irreps([(1, ir) for _, ir in target.regroup()])}?"
            )
        for what, value in (
            ("correlation", correlation),
            ("num_species", num_species),
            ("num_channels", num_channels),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {what} must be an int >= 1, got {value!r}.")
        plan = contraction_plan(source, int(correlation), target)
        shapes = [(int(num_species), int(num_channels), m) for m in plan.mul_in]
        stds = [1.0 / math.sqrt(m) if m else 1.0 for m in plan.mul_in]
        self.weights = _normal_arrays(key, shapes, stds, dtype) if shapes else ()
        self.irreps_in = source
        self.irreps_out = target
        self.correlation = int(correlation)
        self.num_species = int(num_species)
        self.num_channels = int(num_channels)

    def __check_init__(self):
        plan = contraction_plan(self.irreps_in, self.correlation, self.irreps_out)
        if len(self.weights) != len(plan.mul_in):
            raise ValueError(
                f"SymmetricContraction: {len(self.weights)} weight arrays, expected "
                f"{len(plan.mul_in)} (one per entry of {self.irreps_out})."
            )
        for (_, ir), w, m in zip(self.irreps_out, self.weights, plan.mul_in, strict=True):
            shape = (self.num_species, self.num_channels, m)
            if tuple(w.shape) != shape:
                raise ValueError(
                    f"SymmetricContraction: the weights of {ir} have shape {tuple(w.shape)}, "
                    f"expected {shape}."
                )

    def __call__(
        self,
        node_features: Float[Array, "nodes {self.num_channels} {self.irreps_in.dim}"],
        species: Int[Array, " nodes"],
    ) -> Float[Array, "nodes {self.num_channels} {self.irreps_out.dim}"]:
        """**Arguments:** `node_features` `[nodes, channels, irreps_in.dim]` (leading channels,
        as mlip's `mul_to_axis()` gives them) and `species` `[nodes]` indices.

        **Returns:** `[nodes, channels, irreps_out.dim]` in the features' dtype.
        """
        return symmetric_contraction(
            node_features,
            species,
            self.weights,
            irreps_in=self.irreps_in,
            irreps_out=self.irreps_out,
            correlation=self.correlation,
        )


class EquivariantProductBasisBlock(eqx.Module):
    """MACE's product basis (node update): Equinox counterpart of
    `mlip.models.mace.blocks.EquivariantProductBasisBlock` (mlip 0.2.5, e3j backend).

    With `h` the node features (`C x S`, `C` channels of the per-channel irreps `S`) and `z`
    the species:

    1. `B = SymmetricContraction(h)` per channel, onto one copy of each irrep of the target;
    2. with `gate_nodes`, every irrep copy `k` of `B` is scaled by
        `s W_z[:, k] + b_z[k]`, `s` the `C` scalars (`0e`) of `B` (mlip's species-wise gate);
    3. `h' = L B`, e3j's block linear (`FAN_IN`, run-time `1/sqrt(mul_in)`) onto the target.

    **Arguments:**

    - `source_irreps`: `C x S`, e.g. `"8x0e + 8x1o + 8x2e"` (mlip: `source_irreps`).
    - `target_irreps`: output irreps (mlip: `target_irreps`, `C x` the node irreps, or
        `C x 0e` in the last layer).
    - `correlation`, `num_species`, `num_channels`, `gate_nodes`: as in mlip.
    - `dtype`: parameter dtype; `None` is the default floating dtype.
    - `key`: a `jax.random.PRNGKey`.
    """

    symmetric_contraction: SymmetricContraction
    gate_weights: Float[Array, "species channels irreps"] | None
    gate_bias: Float[Array, "species irreps"] | None
    linear: E3jLinear
    irreps_in: e3nn.Irreps = eqx.field(static=True)
    irreps_out: e3nn.Irreps = eqx.field(static=True)
    num_channels: int = eqx.field(static=True)
    gate_nodes: bool = eqx.field(static=True)

    def __init__(
        self,
        source_irreps: e3nn.Irreps | str,
        target_irreps: e3nn.Irreps | str,
        *,
        correlation: int,
        num_species: int,
        num_channels: int,
        gate_nodes: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        name = "EquivariantProductBasisBlock"
        dtype = resolve_dtype(dtype)
        source = e3nn.Irreps(source_irreps)
        target = e3nn.Irreps(target_irreps)
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"{name}: num_channels must be an int >= 1, got {num_channels!r}.")
        if len(source) == 0 or any(mul != num_channels for mul, _ in source):
            raise ValueError(
                f"{name}: every multiplicity of source_irreps {source} must be num_channels="
                f"{num_channels} (the channels times one copy of each irrep)."
            )
        per_channel = e3nn.Irreps([(1, ir) for _, ir in source])
        kept = e3nn.Irreps([(1, ir) for _, ir in target])
        if kept.regroup() != kept:
            raise ValueError(
                f"{name}: target_irreps {target} must be sorted without repeated irreps; did you "
                f"mean {target.regroup()}?"
            )
        folded = num_channels * kept
        if gate_nodes and folded.count(SCALAR) == 0:
            raise ValueError(f"{name}: gate_nodes needs 0e in target_irreps, got {target}.")
        ckey, gkey, bkey, lkey = jr.split(key, 4)
        self.symmetric_contraction = SymmetricContraction(
            per_channel,
            kept,
            correlation=correlation,
            num_species=num_species,
            num_channels=num_channels,
            dtype=dtype,
            key=ckey,
        )
        if gate_nodes:
            n = folded.num_irreps
            self.gate_weights = jr.normal(gkey, (num_species, num_channels, n), dtype) / math.sqrt(
                num_channels
            )
            self.gate_bias = jr.normal(bkey, (num_species, n), dtype)
        else:
            self.gate_weights = self.gate_bias = None
        self.linear = E3jLinear(folded, target, dtype=dtype, key=lkey)
        self.irreps_in = source
        self.irreps_out = self.linear.irreps_out
        self.num_channels = int(num_channels)
        self.gate_nodes = bool(gate_nodes)

    def __call__(
        self,
        node_features: e3nn.IrrepsArray | Float[Array, "nodes {self.irreps_in.dim}"],
        species: Int[Array, " nodes"],
    ) -> e3nn.IrrepsArray:
        """**Arguments:** `node_features` `[nodes, irreps_in.dim]` (an `IrrepsArray` with irreps
        `irreps_in`, or a plain array in that layout) and `species` `[nodes]` indices.

        **Returns:** an `IrrepsArray` `[nodes, irreps_out.dim]` in the features' dtype.
        """
        if isinstance(node_features, e3nn.IrrepsArray):
            if node_features.irreps != self.irreps_in:
                raise ValueError(
                    f"EquivariantProductBasisBlock: node_features have irreps "
                    f"{node_features.irreps}, expected {self.irreps_in}."
                )
            x = node_features.array
        else:
            x = node_features
        sc = self.symmetric_contraction
        per_channel = unfold_channels(x, sc.irreps_in, self.num_channels)
        b = fold_channels(sc(per_channel, species), sc.irreps_out)
        folded = self.num_channels * sc.irreps_out
        if self.gate_weights is not None and self.gate_bias is not None:
            scalars = b[:, folded.slices()[0]]  # the C copies of 0e come first
            gates = jnp.einsum("nc,nck->nk", scalars, self.gate_weights.astype(b.dtype)[species])
            gates = gates + self.gate_bias.astype(b.dtype)[species]
            b = b * _per_component(gates, folded)
        return self.linear(e3nn.IrrepsArray(folded, b))


def _per_component(
    factors: Float[Array, "nodes irreps"], irreps: e3nn.Irreps
) -> Float[Array, "nodes dim"]:
    """One factor per irrep copy, repeated over the copy's `2l+1` components."""
    parts = []
    start = 0
    for mul, ir in irreps:
        parts.append(jnp.repeat(factors[:, start : start + mul], ir.dim, axis=1))
        start += mul
    return jnp.concatenate(parts, axis=1)
