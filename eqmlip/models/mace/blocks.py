"""MACE's blocks as Equinox modules on explicit arrays."""

import math
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..._misc import resolve_dtype
from ...ops.mace import contraction_plan, symmetric_contraction
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
