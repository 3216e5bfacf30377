"""MACE's blocks as Equinox modules on explicit arrays."""

import math
from collections.abc import Sequence
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ... import _random
from ..._misc import default_floating_dtype, resolve_dtype
from ...nn import E3jLinear, MultiHeadReadoutBlock
from ...ops.activation import activation as activation_fn, activation_scale
from ...ops.gate import ScaledActivation
from ...ops.linear import (
    LinearBlock,
    block_linear,
    e3j_blocks,
    fold_channels,
    indexed_block_linear,
    unfold_channels,
)
from ...ops.mace import (
    contraction_plan,
    interaction,
    scaled_radial_mlp,
    soft_normalize,
    symmetric_contraction,
)
from ...ops.nequip import SCALAR, ConvPath, convolution_paths, irreps_from
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
        ckey, gkey, bkey, lkey = _random.split(key, 4)
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
            self.gate_weights = _random.normal(
                gkey, (num_species, num_channels, n), dtype, divisor=math.sqrt(num_channels)
            )
            self.gate_bias = _random.normal(bkey, (num_species, n), dtype)
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


def _full_layout(
    y: Float[Array, "nodes dim_built"], built: e3nn.Irreps, full: e3nn.Irreps
) -> Float[Array, "nodes dim_full"]:
    """`y` (irreps `built`, a sub-list of the entries of `full`) in the layout of `full`, zeros
    for the entries that `built` lacks (messages no path reaches)."""
    if built == full:
        return y
    n = y.shape[0]
    have = {ir: s for (_, ir), s in zip(built, built.slices(), strict=True)}
    parts = [
        y[:, have[ir]] if ir in have else jnp.zeros((n, mul * ir.dim), y.dtype) for mul, ir in full
    ]
    return jnp.concatenate(parts, axis=-1)


class MaceLayer(eqx.Module):
    """One MACE layer: Equinox counterpart of `mlip.models.mace.layer.MaceLayer` (mlip 0.2.5,
    e3j backend, Clebsch-Gordan messages, `TRAILING_CHANNELS`).

    With `x` the node features (`C x source`), `z` the species, `R` the radial embedding and `Y`
    the spherical harmonics of the edges:

    1. `res = W_z^{res} x` (e3j `LinearIndexwise` onto the layer's output irreps), with
        `use_residuals`;
    2. `m = L_out sum_{e -> i} MLP(R_e) * (L_in x_{s_e} (x) Y_e)` (mlip's
        `O3MessagePassingBlock`: the convolution of [`eqmlip.ops.mace.interaction`][], a
        radial MLP with `1/sqrt(fan_in)` scales and the normalised `radial_mlp_activation`),
        onto `C x interaction_irreps` (zeros where no path reaches);
    3. without `use_residuals`: `m <- W_z m` (mlip's `linear_by_species_block`);
    4. `h = EquivariantProductBasisBlock(m)` onto `C x node_irreps` (`C x 0e` in the last
        layer); soft normalisation of the norms if `soft_normalization`; `h += res`;
    5. outputs `[nodes, heads, n_out]`: a linear readout per head, or in the last layer
        mlip's non-linear one (hidden irreps, gate with `activation`, output).

    **Arguments:**

    - `source_irreps`: per-channel irreps of the input (`0e` in the first layer).
    - `interaction_irreps`, `node_irreps`: per-channel irreps of the messages and of the
        node features (see [`eqmlip.models.mace.MaceConfig`][]).
    - `output_irreps`, `readout_mlp_irreps`: readout irreps (`"0e"`, or `"2x0e"` with partial
        charges; the hidden irreps of the last readout).
    - `num_channels`, `num_species`, `l_max`, `num_rbf`, `avg_num_neighbors`,
        `radial_mlp_hidden`, `radial_mlp_activation`, `correlation`, `gate_nodes`,
        `soft_normalization`, `num_readout_heads`, `activation`: as in mlip.
    - `use_residuals`, `last_layer`: as in mlip (`i > 0 or residual_connection_first_layer`,
        `i == num_layers - 1`).
    - `deterministic_scatter_ops`: reproducible message sums.
    - `dtype`, `key`: parameter dtype (`None`: default) and `jax.random.PRNGKey`.
    """

    radial_kernels: tuple[Float[Array, "_ _"], ...]
    linear_in_weights: tuple[Float[Array, "_ _"], ...]
    linear_out_weights: tuple[Float[Array, "_ _"], ...]
    skip_weights: tuple[Float[Array, "species _ _"], ...]
    product: EquivariantProductBasisBlock
    readout: MultiHeadReadoutBlock
    irreps_in: e3nn.Irreps = eqx.field(static=True)
    interaction_irreps: e3nn.Irreps = eqx.field(static=True)
    reached_irreps: e3nn.Irreps = eqx.field(static=True)
    message_irreps: e3nn.Irreps = eqx.field(static=True)
    irreps_out: e3nn.Irreps = eqx.field(static=True)
    paths: tuple[ConvPath, ...] = eqx.field(static=True)
    linear_in_blocks: tuple[LinearBlock, ...] = eqx.field(static=True)
    linear_out_blocks: tuple[LinearBlock, ...] = eqx.field(static=True)
    skip_blocks: tuple[LinearBlock, ...] = eqx.field(static=True)
    radial_mlp_sizes: tuple[int, ...] = eqx.field(static=True)
    radial_activation: ScaledActivation = eqx.field(static=True)
    l_max: int = eqx.field(static=True)
    num_species: int = eqx.field(static=True)
    avg_num_neighbors: float = eqx.field(static=True)
    use_residuals: bool = eqx.field(static=True)
    last_layer: bool = eqx.field(static=True)
    soft_normalization: float | None = eqx.field(static=True)
    deterministic_scatter_ops: bool = eqx.field(static=True)

    def __init__(
        self,
        source_irreps: e3nn.Irreps | str,
        interaction_irreps: e3nn.Irreps | str,
        node_irreps: e3nn.Irreps | str,
        *,
        output_irreps: e3nn.Irreps | str = "0e",
        readout_mlp_irreps: e3nn.Irreps | str = "16x0e",
        num_channels: int,
        num_species: int,
        l_max: int,
        num_rbf: int,
        avg_num_neighbors: float,
        radial_mlp_hidden: Sequence[int] = (64, 64, 64),
        radial_mlp_activation: str = "silu",
        correlation: int = 3,
        gate_nodes: bool = False,
        soft_normalization: float | None = None,
        num_readout_heads: int = 1,
        activation: str = "silu",
        use_residuals: bool = True,
        last_layer: bool = False,
        deterministic_scatter_ops: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        name = "MaceLayer"
        dtype = resolve_dtype(dtype)
        if num_species < 1 or num_rbf < 1 or l_max < 0 or num_channels < 1:
            raise ValueError(
                f"{name}: need num_species, num_rbf, num_channels >= 1 and l_max >= 0; got "
                f"{num_species}, {num_rbf}, {num_channels}, {l_max}."
            )
        if not (math.isfinite(avg_num_neighbors) and avg_num_neighbors > 0):
            raise ValueError(
                f"{name}: avg_num_neighbors must be positive and finite, got {avg_num_neighbors}."
            )
        if soft_normalization is not None and not soft_normalization > 0:
            raise ValueError(
                f"{name}: soft_normalization must be positive or None, got {soft_normalization}."
            )
        hidden = tuple(int(h) for h in radial_mlp_hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"{name}: radial_mlp_hidden sizes must be >= 1, got {hidden}.")
        for what, act_name in (
            ("radial_mlp_activation", radial_mlp_activation),
            ("activation", activation),
        ):
            try:
                activation_fn(act_name)
            except ValueError as error:
                raise ValueError(f"{name}: {what}: {error}") from error
        for what, irreps in (
            ("source_irreps", source_irreps),
            ("interaction_irreps", interaction_irreps),
            ("node_irreps", node_irreps),
        ):
            ir = e3nn.Irreps(irreps)
            if len(ir) == 0 or any(m != 1 for m, _ in ir) or ir.regroup() != ir:
                raise ValueError(
                    f"{name}: {what} {ir} must be per-channel irreps: sorted, each once."
                )
        source = num_channels * e3nn.Irreps(source_irreps)
        interaction = num_channels * e3nn.Irreps(interaction_irreps)
        target = num_channels * (e3nn.Irreps("0e") if last_layer else e3nn.Irreps(node_irreps))

        paths, message_irreps = convolution_paths(source, l_max, interaction)
        reached = irreps_from(
            [(mul, ir) for mul, ir in interaction if any(ir == i for _, i in message_irreps)]
        )
        self.linear_in_blocks = e3j_blocks(source, source)
        self.linear_out_blocks = e3j_blocks(message_irreps, reached)
        self.skip_blocks = (
            e3j_blocks(source, target) if use_residuals else e3j_blocks(interaction, interaction)
        )
        sizes = (int(num_rbf), *hidden, sum(p.mul for p in paths))
        kernel_shapes = list(zip(sizes[:-1], sizes[1:], strict=True))
        shapes = [
            *kernel_shapes,
            *[(b.mul_out, b.mul_in) for b in self.linear_in_blocks],
            *[(b.mul_out, b.mul_in) for b in self.linear_out_blocks],
            *[(int(num_species), b.mul_out, b.mul_in) for b in self.skip_blocks],
        ]
        wkey, pkey, rkey = _random.split(key, 3)
        arrays = _normal_arrays(wkey, shapes, [1.0] * len(shapes), dtype)
        n_k, n_in, n_out = (
            len(kernel_shapes),
            len(self.linear_in_blocks),
            len(self.linear_out_blocks),
        )
        self.radial_kernels = arrays[:n_k]
        self.linear_in_weights = arrays[n_k : n_k + n_in]
        self.linear_out_weights = arrays[n_k + n_in : n_k + n_in + n_out]
        self.skip_weights = arrays[n_k + n_in + n_out :]

        self.product = EquivariantProductBasisBlock(
            interaction,
            target,
            correlation=correlation,
            num_species=num_species,
            num_channels=num_channels,
            gate_nodes=gate_nodes,
            dtype=dtype,
            key=pkey,
        )
        output = e3nn.Irreps(output_irreps)
        if last_layer:
            mlp = e3nn.Irreps(readout_mlp_irreps)
            if any(ir != SCALAR for _, ir in mlp):
                # mlip adds one 0e gate per non-scalar after them, then labels e3j's regrouped
                # output with that unsorted order: its gate reads scalars as vector components.
                raise ValueError(
                    f"{name}: readout_mlp_irreps {mlp} has non-scalars; mlip 0.2.5 gates them "
                    "on mislabelled components, which eqmlip does not reproduce. Use scalars "
                    "only (e.g. '16x0e', the default)."
                )
            features: tuple[Any, ...] = (mlp, output)
            readout_act = activation_fn(activation)
        else:
            features, readout_act = (output,), None
        self.readout = MultiHeadReadoutBlock(
            num_readout_heads,
            self.product.irreps_out,
            features,
            activation=readout_act,
            use_equiv=True,
            dtype=dtype,
            key=rkey,
        )
        radial_act = activation_fn(radial_mlp_activation)
        self.radial_activation = ScaledActivation(
            radial_act, activation_scale(radial_act, default_floating_dtype())
        )
        self.irreps_in = source
        self.interaction_irreps = interaction
        self.reached_irreps = reached
        self.message_irreps = message_irreps
        self.irreps_out = self.product.irreps_out
        self.paths = paths
        self.radial_mlp_sizes = sizes
        self.l_max = int(l_max)
        self.num_species = int(num_species)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.use_residuals = bool(use_residuals)
        self.last_layer = bool(last_layer)
        self.soft_normalization = None if soft_normalization is None else float(soft_normalization)
        self.deterministic_scatter_ops = bool(deterministic_scatter_ops)

    def __check_init__(self):
        def check(what: str, arrays: Sequence[Array], shapes: Sequence[tuple[int, ...]]):
            if len(arrays) != len(shapes):
                raise ValueError(
                    f"MaceLayer: {what} has {len(arrays)} arrays, expected {len(shapes)}."
                )
            for i, (a, s) in enumerate(zip(arrays, shapes, strict=True)):
                if tuple(a.shape) != tuple(s):
                    raise ValueError(f"MaceLayer: {what}[{i}] has shape {a.shape}, expected {s}.")

        sizes = self.radial_mlp_sizes
        check("radial_kernels", self.radial_kernels, list(zip(sizes[:-1], sizes[1:], strict=True)))
        for what, arrays, blocks in (
            ("linear_in_weights", self.linear_in_weights, self.linear_in_blocks),
            ("linear_out_weights", self.linear_out_weights, self.linear_out_blocks),
        ):
            check(what, arrays, [(b.mul_out, b.mul_in) for b in blocks])
        check(
            "skip_weights",
            self.skip_weights,
            [(self.num_species, b.mul_out, b.mul_in) for b in self.skip_blocks],
        )

    @property
    def num_rbf(self) -> int:
        return self.radial_mlp_sizes[0]

    def __call__(
        self,
        node_features: Float[Array, "nodes {self.irreps_in.dim}"],
        species: Int[Array, " nodes"],
        radial_embedding: Float[Array, "edges {self.num_rbf}"],
        spherical_harmonics: Float[Array, "edges _"],
        senders: Int[Array, " edges"],
        receivers: Int[Array, " edges"],
    ) -> tuple[Float[Array, "nodes {self.irreps_out.dim}"], Float[Array, "nodes heads n_out"]]:
        """Update the node features.

        **Arguments:** `node_features` `[nodes, irreps_in.dim]` (e3nn layout), `species`
        `[nodes]`, the edges' `radial_embedding` `[edges, num_rbf]` (zero on padding edges)
        and `spherical_harmonics` `[edges, (l_max+1)**2]` (`"component"`), `senders`,
        `receivers` `[edges]`.

        **Returns:** `(h, outputs)`: the new node features `[nodes, irreps_out.dim]` and the
        readouts `[nodes, heads, n_out]`, in the features' dtype.
        """
        x = node_features
        dtype = x.dtype
        residual = (
            indexed_block_linear(x, species, self.skip_weights, self.skip_blocks)
            if self.use_residuals
            else None
        )
        weights = scaled_radial_mlp(
            radial_embedding.astype(dtype), self.radial_kernels, self.radial_activation
        )
        h = block_linear(x, self.linear_in_weights, self.linear_in_blocks)
        m = interaction(
            h,
            spherical_harmonics.astype(dtype),
            weights,
            senders,
            receivers,
            self.linear_out_weights,
            irreps_in=self.irreps_in,
            paths=self.paths,
            linear_out_blocks=self.linear_out_blocks,
            avg_num_neighbors=self.avg_num_neighbors,
            deterministic=self.deterministic_scatter_ops,
        )
        m = _full_layout(m, self.reached_irreps, self.interaction_irreps)
        if not self.use_residuals:
            m = indexed_block_linear(m, species, self.skip_weights, self.skip_blocks)
        h = self.product(m, species).array
        if self.soft_normalization is not None:
            h = soft_normalize(h, self.irreps_out, self.soft_normalization)
        if residual is not None:
            h = h + residual
        outputs = self.readout(e3nn.IrrepsArray(self.irreps_out, h))
        assert isinstance(outputs, e3nn.IrrepsArray)
        return h, outputs.array
