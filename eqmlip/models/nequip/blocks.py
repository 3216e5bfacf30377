"""NequIP's embedding block and interaction layer as Equinox modules on explicit arrays."""

import math
from collections.abc import Sequence
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ... import _random
from ..._misc import default_floating_dtype, resolve_dtype
from ...ops.activation import activation, activation_parity, activation_scale
from ...ops.cutoffs import ENVELOPES
from ...ops.gate import GateSpec, ScaledActivation, gate, gate_spec
from ...ops.linear import LinearBlock, block_linear, e3j_blocks, indexed_block_linear
from ...ops.nequip import (
    ODD_SCALAR,
    SCALAR,
    ConvPath,
    convolution_paths,
    interaction,
    radial_mlp_columns,
    split_target_irreps,
)
from ...ops.radial import radial_embedding
from ...ops.segment import mask_rows, safe_norm
from ...ops.so3 import e3nn_spherical_harmonics


def _check_activation(cls: str, what: str, name: str) -> str:
    try:
        activation(name)
    except ValueError as error:
        raise ValueError(f"{cls}: {what}: {error}") from error
    return name


def _truncated_lecun(key: PRNGKeyArray, shape: tuple[int, int], dtype: Any) -> Array:
    """Flax's default `Dense` kernel init: `variance_scaling(1, fan_in, truncated_normal)`."""
    std = math.sqrt(1.0 / shape[0]) / 0.87962566103423978
    return jr.truncated_normal(key, -2.0, 2.0, shape, dtype) * jnp.asarray(std, dtype)


_normal_arrays = _random.normal_pieces


class NequipEmbeddingBlock(eqx.Module):
    """NequIP's input embeddings: Equinox counterpart of
    `mlip.models.nequip.blocks.NequipEmbeddingBlock` (mlip 0.2.5).

    - Nodes: `h0 = E[species] / sqrt(S)` (`n0 x 0e`, `n0` the `0e` multiplicity of the target
        irreps, `S` species). With a total-charge embedding (mlip's `JointNodeEmbeddingBlock`,
        `num_charges` set): `h0 = act([E[species]/sqrt(S), Q[charge_index]/sqrt(n_Q)] K)`.
    - Edges: `r = |v|` (a safe norm), the radial basis `B_n(r) u(r)` (Bessel functions times
        the envelope; 0 at `r = 0` and beyond the cutoff), and the spherical harmonics
        `Y^0..Y^{l_max}` of `v/r` (`"component"`, `Y^0 = 1`; 0 for `l > 0` at `v = 0`).

    Zero-length edges (padding) get a zero radial basis, so they carry no message and no
    gradient, and nothing is NaN.

    **Arguments:**

    - `num_species`: number of species `S` (mlip: `num_species`).
    - `target_irreps`: the model's target irreps; only its `0e` multiplicity is used.
    - `l_max`, `num_rbf`, `cutoff` (mlip: `r_max`), `radial_envelope`: edge embedding.
    - `num_charges`: number of total-charge classes including the placeholder 0, or `None`
        for no charge embedding (mlip: `num_charges`).
    - `embed_activation`: activation of the joint embedding (mlip: `activation_fn`).
    - `dtype`: parameter dtype; `None` is the default floating dtype.
    - `key`: a `jax.random.PRNGKey`.
    """

    species_embedding: Float[Array, "species n0"]
    charge_embedding: Float[Array, "charges n0"] | None
    joint_projection: Float[Array, "twice_n0 n0"] | None
    num_species: int = eqx.field(static=True)
    num_charges: int | None = eqx.field(static=True)
    irreps_out: e3nn.Irreps = eqx.field(static=True)
    l_max: int = eqx.field(static=True)
    num_rbf: int = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    radial_envelope: str = eqx.field(static=True)
    embed_activation: str = eqx.field(static=True)

    def __init__(
        self,
        num_species: int,
        target_irreps: e3nn.Irreps | str,
        *,
        l_max: int,
        num_rbf: int,
        cutoff: float,
        radial_envelope: str = "polynomial_envelope",
        num_charges: int | None = None,
        embed_activation: str = "silu",
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        dtype = resolve_dtype(dtype)
        name = "NequipEmbeddingBlock"
        if num_species < 1:
            raise ValueError(f"{name}: num_species must be >= 1, got {num_species}.")
        if num_charges is not None and num_charges < 1:
            raise ValueError(f"{name}: num_charges must be >= 1 or None, got {num_charges}.")
        if l_max < 0 or num_rbf < 1:
            raise ValueError(f"{name}: need l_max >= 0 and num_rbf >= 1, got {l_max}, {num_rbf}.")
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"{name}: cutoff must be positive and finite, got {cutoff}.")
        if radial_envelope not in ENVELOPES:
            raise ValueError(
                f"{name}: radial_envelope must be one of {ENVELOPES}, got {radial_envelope!r}."
            )
        n0 = e3nn.Irreps(target_irreps).count(SCALAR)
        if n0 == 0:
            raise ValueError(f"{name}: target_irreps {target_irreps} has no 0e scalars to embed.")
        skey, ckey, pkey = _random.split(key, 3)
        self.species_embedding = _random.normal(skey, (num_species, n0), dtype)
        if num_charges is None:
            self.charge_embedding = None
            self.joint_projection = None
        else:
            self.charge_embedding = _random.normal(ckey, (num_charges, n0), dtype)
            self.joint_projection = _truncated_lecun(pkey, (2 * n0, n0), dtype)
        self.num_species = int(num_species)
        self.num_charges = None if num_charges is None else int(num_charges)
        self.irreps_out = e3nn.Irreps(f"{n0}x0e")
        self.l_max = int(l_max)
        self.num_rbf = int(num_rbf)
        self.cutoff = float(cutoff)
        self.radial_envelope = radial_envelope
        self.embed_activation = _check_activation(name, "embed_activation", embed_activation)

    def __check_init__(self):
        n0 = self.irreps_out.dim
        expected: list[tuple[str, Any, tuple[int, ...] | None]] = [
            ("species_embedding", self.species_embedding, (self.num_species, n0)),
            (
                "charge_embedding",
                self.charge_embedding,
                None if self.num_charges is None else (self.num_charges, n0),
            ),
            (
                "joint_projection",
                self.joint_projection,
                None if self.num_charges is None else (2 * n0, n0),
            ),
        ]
        for field, value, shape in expected:
            actual = None if value is None else tuple(value.shape)
            if actual != shape:
                raise ValueError(
                    f"NequipEmbeddingBlock: {field} has shape {actual}, expected {shape}."
                )

    @property
    def sh_dim(self) -> int:
        """Number of spherical-harmonic components, `(l_max + 1)**2`."""
        return (self.l_max + 1) ** 2

    def embed_nodes(
        self,
        species: Int[Array, " nodes"],
        charge_index: Int[Array, " nodes"] | None = None,
        *,
        dtype: Any = None,
    ) -> e3nn.IrrepsArray:
        """The node embedding `h0` (`n0 x 0e`), in `dtype` (default: the parameters')."""
        dtype = self.species_embedding.dtype if dtype is None else dtype
        h = self.species_embedding.astype(dtype)[species] * (1.0 / math.sqrt(self.num_species))
        if self.num_charges is not None:
            if charge_index is None:
                raise ValueError(
                    "NequipEmbeddingBlock: this block embeds the total charge; pass charge_index."
                )
            assert self.charge_embedding is not None and self.joint_projection is not None
            q = self.charge_embedding.astype(dtype)[charge_index] * (
                1.0 / math.sqrt(self.num_charges)
            )
            joint = jnp.concatenate([h, q], axis=-1) @ self.joint_projection.astype(dtype)
            h = activation(self.embed_activation)(joint)
        elif charge_index is not None:
            raise ValueError(
                "NequipEmbeddingBlock: got charge_index, but the block was built without "
                "num_charges (no total-charge embedding)."
            )
        return e3nn.IrrepsArray(self.irreps_out, h)

    def species_features(self, *, dtype: Any = None) -> Float[Array, "species n0"]:
        """Row `s`: the node embedding of species `s`, `E[s] / sqrt(S)`, so that
        `embed_nodes(species) == species_features()[species]` (without a charge embedding,
        which makes the embedding depend on the charge too)."""
        if self.num_charges is not None:
            raise ValueError(
                "NequipEmbeddingBlock: with a total-charge embedding the node embedding is not "
                "a function of the species alone; use embed_nodes."
            )
        dtype = self.species_embedding.dtype if dtype is None else dtype
        return self.species_embedding.astype(dtype) * (1.0 / math.sqrt(self.num_species))

    def embed_edges(
        self,
        edge_vectors: Float[Array, "edges 3"],
        edge_mask: Bool[Array, " edges"] | None = None,
    ) -> tuple[Float[Array, "edges {self.num_rbf}"], Float[Array, "edges {self.sh_dim}"]]:
        """`(radial_embedding, spherical_harmonics)` of the edges; masked edges get a zero
        radial embedding."""
        r = safe_norm(edge_vectors)
        radial = radial_embedding(r, self.num_rbf, self.cutoff, self.radial_envelope)
        return mask_rows(radial, edge_mask), e3nn_spherical_harmonics(edge_vectors, self.l_max)

    def __call__(
        self,
        species: Int[Array, " nodes"],
        edge_vectors: Float[Array, "edges 3"],
        *,
        charge_index: Int[Array, " nodes"] | None = None,
        edge_mask: Bool[Array, " edges"] | None = None,
    ) -> tuple[
        e3nn.IrrepsArray, Float[Array, "edges {self.num_rbf}"], Float[Array, "edges {self.sh_dim}"]
    ]:
        """Embed nodes and edges.

        **Arguments:**

        - `species`: `[nodes]` species indices in `0..num_species-1`.
        - `edge_vectors`: `[edges, 3]` vectors from sender to receiver.
        - `charge_index`: `[nodes]` total-charge class of each node's graph (with
            `num_charges`).
        - `edge_mask`: `[edges]` booleans; `False` edges get a zero radial embedding.

        **Returns:** `(h0, radial, sh)`: node features (`IrrepsArray` `n0 x 0e`, `[nodes, n0]`)
        in the dtype of `edge_vectors`, the radial embedding `[edges, num_rbf]` and the
        spherical harmonics `[edges, (l_max+1)**2]`.
        """
        h0 = self.embed_nodes(species, charge_index, dtype=edge_vectors.dtype)
        radial, sh = self.embed_edges(edge_vectors, edge_mask)
        return h0, radial, sh


class NequipLayer(eqx.Module):
    """One NequIP interaction layer: Equinox counterpart of `mlip.models.nequip.layer.
    NequipLayer` (mlip 0.2.5, production `TRAILING_CHANNELS` path).

    With `x` the node features (irreps `irreps_in`), `z` the species, `T` the regrouped gate
    irreps (reachable scalars, one `0e` gate per nonscalar entry, reachable nonscalars):

    1. `res = W_{z}^{res} x` (e3j `LinearIndexwise`, `(S, mul_out, mul_in)` per block, scaled
        by `1/sqrt(mul_in)`), when `use_residual_connection`;
    2. `R = MLP(radial)`: dense layers without bias, plain `radial_mlp_activation` between them;
    3. `x' = L_in x` (e3j `Linear`, `irreps_in -> irreps_in`);
    4. `m_i = sum_{e: r_e = i} R_e * (x'_{s_e} (x)_{uvu} Y_e)`, every `uvu` path in its own slot,
        coefficients `C sqrt(2 l0 + 1) / avg_num_neighbors`;
    5. `h = L_out m + res` (in `T`), then NequIP's gate (normalised `gate_nonlinearities`).

    eqmlip computes on unfactored multiplicities, path by path (mlip factors them by
    `g = gcd`); the radial-MLP output columns and the linear_out input columns are therefore
    permuted relative to mlip, and `eqmlip.interop.mlip` maps them (see
    [`eqmlip.ops.nequip.ConvPath`][]). Steps 4 and 5 run as
    [`eqmlip.ops.nequip.interaction`][]: paths from scalar inputs into a narrower block get
    linear_out on the edges, before the scatter (same numbers up to rounding).

    `scalars_only=True` builds only what produces the even scalars of the output (the paths
    into `0e`, their radial-MLP columns and the scalar rows of linear_out and of the
    residual): the output is then `n x 0e`, equal to the `0e` part of the full layer's
    output. NequIP's readout reads nothing else, so the network builds its last layer this way
    (mlip computes the dead part and discards it).

    **Arguments:**

    - `irreps_in`: node irreps (mlip: `source_node_irreps`).
    - `target_irreps`: the model's target irreps (sorted; only reachable entries are built).
    - `l_max`, `num_species`, `num_rbf`: as in mlip.
    - `avg_num_neighbors`: message normalisation (> 0).
    - `radial_mlp_hidden`, `radial_mlp_activation`, `radial_mlp_variance_scale`: radial MLP
        (init: `N(0, scale/fan_in)` hidden kernels, `N(0, 1/fan_in)` output kernel).
    - `use_residual_connection`: the species-indexed skip connection.
    - `gate_even`, `gate_odd`: activations of even and odd scalars and gates (mlip:
        `nonlinearities["e"]`, `["o"]`), normalised to unit second moment.
    - `deterministic_scatter_ops`: sum messages with the reproducible segment sum of
        [`eqmlip.ops.segment.segment_sum`][] (mlip 0.2.5 ignores this flag in the layer).
    - `scalars_only`: see above.
    - `dtype`, `key`: parameter dtype (`None`: default) and `jax.random.PRNGKey`.
    """

    residual_weights: tuple[Float[Array, "species _ _"], ...]
    radial_kernels: tuple[Float[Array, "_ _"], ...]
    linear_in_weights: tuple[Float[Array, "_ _"], ...]
    linear_out_weights: tuple[Float[Array, "_ _"], ...]
    irreps_in: e3nn.Irreps = eqx.field(static=True)
    target_irreps: e3nn.Irreps = eqx.field(static=True)
    irreps_out: e3nn.Irreps = eqx.field(static=True)
    gate_irreps: tuple[e3nn.Irreps, e3nn.Irreps, e3nn.Irreps] = eqx.field(static=True)
    conv_irreps: e3nn.Irreps = eqx.field(static=True)
    message_irreps: e3nn.Irreps = eqx.field(static=True)
    paths: tuple[ConvPath, ...] = eqx.field(static=True)
    linear_in_blocks: tuple[LinearBlock, ...] = eqx.field(static=True)
    linear_out_blocks: tuple[LinearBlock, ...] = eqx.field(static=True)
    residual_blocks: tuple[LinearBlock, ...] = eqx.field(static=True)
    gate: GateSpec = eqx.field(static=True)
    l_max: int = eqx.field(static=True)
    num_species: int = eqx.field(static=True)
    num_rbf: int = eqx.field(static=True)
    avg_num_neighbors: float = eqx.field(static=True)
    radial_mlp_sizes: tuple[int, ...] = eqx.field(static=True)
    radial_mlp_activation: str = eqx.field(static=True)
    use_residual_connection: bool = eqx.field(static=True)
    deterministic_scatter_ops: bool = eqx.field(static=True)
    scalars_only: bool = eqx.field(static=True)

    def __init__(
        self,
        irreps_in: e3nn.Irreps | str,
        target_irreps: e3nn.Irreps | str,
        *,
        l_max: int,
        num_species: int,
        num_rbf: int,
        avg_num_neighbors: float,
        radial_mlp_hidden: Sequence[int] = (64, 64),
        radial_mlp_activation: str = "swish",
        radial_mlp_variance_scale: float = 4.0,
        use_residual_connection: bool = True,
        gate_even: str = "swish",
        gate_odd: str = "tanh",
        deterministic_scatter_ops: bool = False,
        scalars_only: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        name = "NequipLayer"
        dtype = resolve_dtype(dtype)
        irreps_in = e3nn.Irreps(irreps_in)
        target = e3nn.Irreps(target_irreps)
        if (
            len(irreps_in) == 0
            or any(m == 0 for m, _ in irreps_in)
            or (irreps_in.regroup() != irreps_in)
        ):
            raise ValueError(
                f"{name}: irreps_in {irreps_in} must be non-empty, sorted, without repeats or "
                f"zero multiplicities (as NequIP's layers produce them); did you mean "
                f"{irreps_in.regroup()}?"
            )
        if target.sort().irreps != target or target.regroup() != target:
            raise ValueError(
                f"{name}: target_irreps {target} must be sorted without repeats; did you mean "
                f"{target.regroup()}?"
            )
        if num_species < 1 or num_rbf < 1 or l_max < 0:
            raise ValueError(
                f"{name}: need num_species >= 1, num_rbf >= 1, l_max >= 0; got {num_species}, "
                f"{num_rbf}, {l_max}."
            )
        if not (math.isfinite(avg_num_neighbors) and avg_num_neighbors > 0):
            raise ValueError(
                f"{name}: avg_num_neighbors must be positive and finite, got {avg_num_neighbors}."
            )
        hidden = tuple(int(h) for h in radial_mlp_hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"{name}: radial_mlp_hidden sizes must be >= 1, got {hidden}.")
        _check_activation(name, "radial_mlp_activation", radial_mlp_activation)
        _check_activation(name, "gate_even", gate_even)
        _check_activation(name, "gate_odd", gate_odd)

        scalars, gates, nonscalars = split_target_irreps(irreps_in, l_max, target)
        if scalars.count(SCALAR) == 0:
            raise ValueError(
                f"{name}: no 0e output is reachable from {irreps_in} with l_max={l_max} within "
                f"{target}."
            )
        assert all(ir == SCALAR for _, ir in gates)  # 0e is reachable: gates are 0e
        if scalars.count(ODD_SCALAR) and activation_parity(gate_odd) != -1:
            raise ValueError(
                f"{name}: the layer outputs odd scalars ({scalars}), which need an odd "
                f"gate_odd activation (e.g. 'tanh'), got {gate_odd!r}."
            )
        gate_irreps = scalars + gates + nonscalars
        conv_irreps = gate_irreps.regroup()
        scale_dtype = default_floating_dtype()
        # NequIP activates scalars and gates alike, by parity, with normalised activations.
        even = ScaledActivation(
            activation(gate_even), activation_scale(activation(gate_even), scale_dtype)
        )
        odd = ScaledActivation(
            activation(gate_odd), activation_scale(activation(gate_odd), scale_dtype)
        )
        acts = dict(even=even, odd=odd, even_gate=even, odd_gate=odd)
        n_scalars = scalars.count(SCALAR)
        if scalars_only:
            # Only the even scalars, which come first in the regrouped 0e block.
            built = e3nn.Irreps(f"{n_scalars}x0e")
            spec = gate_spec(built, e3nn.Irreps(""), e3nn.Irreps(""), **acts)
            irreps_out = built
        else:
            built = conv_irreps
            spec = gate_spec(scalars, gates, nonscalars, **acts)
            irreps_out = scalars + nonscalars
        paths, message_irreps = convolution_paths(irreps_in, l_max, built)
        if message_irreps.regroup() != message_irreps or [ir for _, ir in message_irreps] != [
            ir for _, ir in built
        ]:
            raise AssertionError((message_irreps, built))  # every output irrep is reachable

        self.linear_in_blocks = e3j_blocks(irreps_in, irreps_in)
        self.linear_out_blocks = e3j_blocks(message_irreps, built)
        residual_blocks = e3j_blocks(irreps_in, built) if use_residual_connection else ()
        # Blocks with a zero-size weight contribute nothing (zeros or dropped).
        self.residual_blocks = tuple(b for b in residual_blocks if b.mul_out > 0)

        sizes = (int(num_rbf), *hidden, sum(p.mul for p in paths))
        kernel_shapes = list(zip(sizes[:-1], sizes[1:], strict=True))
        kernel_stds = [
            math.sqrt((1.0 if i == len(kernel_shapes) - 1 else radial_mlp_variance_scale) / n)
            for i, (n, _) in enumerate(kernel_shapes)
        ]
        shapes = [
            *kernel_shapes,
            *[(b.mul_out, b.mul_in) for b in self.linear_in_blocks],
            *[(b.mul_out, b.mul_in) for b in self.linear_out_blocks],
            *[(int(num_species), b.mul_out, b.mul_in) for b in self.residual_blocks],
        ]
        stds = kernel_stds + [1.0] * (len(shapes) - len(kernel_shapes))
        arrays = _normal_arrays(key, shapes, stds, dtype)
        n_k, n_in, n_out = (
            len(kernel_shapes),
            len(self.linear_in_blocks),
            len(self.linear_out_blocks),
        )
        self.radial_kernels = arrays[:n_k]
        self.linear_in_weights = arrays[n_k : n_k + n_in]
        self.linear_out_weights = arrays[n_k + n_in : n_k + n_in + n_out]
        self.residual_weights = arrays[n_k + n_in + n_out :]

        self.irreps_in = irreps_in
        self.target_irreps = target
        self.irreps_out = irreps_out
        self.gate_irreps = (scalars, gates, nonscalars)
        self.conv_irreps = built
        self.message_irreps = message_irreps
        self.paths = paths
        self.gate = spec
        self.l_max = int(l_max)
        self.num_species = int(num_species)
        self.num_rbf = int(num_rbf)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.radial_mlp_sizes = sizes
        self.radial_mlp_activation = radial_mlp_activation
        self.use_residual_connection = bool(use_residual_connection)
        self.deterministic_scatter_ops = bool(deterministic_scatter_ops)
        self.scalars_only = bool(scalars_only)

    def __check_init__(self):
        def check(what: str, arrays: Sequence[Array], shapes: Sequence[tuple[int, ...]]):
            if len(arrays) != len(shapes):
                raise ValueError(
                    f"NequipLayer: {what} has {len(arrays)} arrays, expected {len(shapes)}."
                )
            for i, (a, s) in enumerate(zip(arrays, shapes, strict=True)):
                if tuple(a.shape) != tuple(s):
                    raise ValueError(f"NequipLayer: {what}[{i}] has shape {a.shape}, expected {s}.")

        sizes = self.radial_mlp_sizes
        check("radial_kernels", self.radial_kernels, list(zip(sizes[:-1], sizes[1:], strict=True)))
        check(
            "linear_in_weights",
            self.linear_in_weights,
            [(b.mul_out, b.mul_in) for b in self.linear_in_blocks],
        )
        check(
            "linear_out_weights",
            self.linear_out_weights,
            [(b.mul_out, b.mul_in) for b in self.linear_out_blocks],
        )
        check(
            "residual_weights",
            self.residual_weights,
            [(self.num_species, b.mul_out, b.mul_in) for b in self.residual_blocks],
        )

    @property
    def sh_dim(self) -> int:
        """Number of spherical-harmonic components, `(l_max + 1)**2`."""
        return (self.l_max + 1) ** 2

    def __call__(
        self,
        node_features: e3nn.IrrepsArray | Float[Array, "nodes {self.irreps_in.dim}"],
        species: Int[Array, " nodes"],
        radial_embedding: Float[Array, "edges {self.num_rbf}"],
        spherical_harmonics: Float[Array, "edges {self.sh_dim}"],
        senders: Int[Array, " edges"],
        receivers: Int[Array, " edges"],
    ) -> e3nn.IrrepsArray:
        """Update the node features.

        **Arguments:**

        - `node_features`: `[nodes, irreps_in.dim]`, an `IrrepsArray` with irreps `irreps_in`
            or a plain array in that layout.
        - `species`: `[nodes]` species indices in `0..num_species-1`.
        - `radial_embedding`: `[edges, num_rbf]`, zero on padding edges (which then
            contribute exactly nothing).
        - `spherical_harmonics`: `[edges, (l_max+1)**2]`, e3nn `"component"` normalisation.
        - `senders`, `receivers`: `[edges]` node indices (messages flow sender -> receiver).

        **Returns:** an `IrrepsArray` `[nodes, irreps_out.dim]` in the input's dtype.
        """
        if isinstance(node_features, e3nn.IrrepsArray):
            if node_features.irreps != self.irreps_in:
                raise ValueError(
                    f"NequipLayer: node_features have irreps {node_features.irreps}, expected "
                    f"{self.irreps_in}."
                )
            x = node_features.array
        else:
            x = node_features
        h = block_linear(x, self.linear_in_weights, self.linear_in_blocks)
        res = None
        if self.use_residual_connection:
            res = indexed_block_linear(x, species, self.residual_weights, self.residual_blocks)
        return self._update(h, res, radial_embedding, spherical_harmonics, senders, receivers)

    def call_on_species(
        self,
        species_features: Float[Array, "{self.num_species} {self.irreps_in.dim}"],
        species: Int[Array, " nodes"],
        radial_embedding: Float[Array, "edges {self.num_rbf}"],
        spherical_harmonics: Float[Array, "edges {self.sh_dim}"],
        senders: Int[Array, " edges"],
        receivers: Int[Array, " edges"],
    ) -> e3nn.IrrepsArray:
        """`self(species_features[species], species, ...)` for node features that depend on
        the species only (NequIP's first layer reads the species embedding).

        Linear_in and the residual are node-wise, so they are applied to the `num_species`
        rows of `species_features` and their results gathered on the nodes: the same
        arithmetic per row (equal up to rounding), on `num_species` rows instead of `nodes`,
        and the residual's weights of every species meet one row each instead of every node.
        In a training step their gradients are also taken on those rows.

        **Arguments:** as `__call__`, with `species_features` `[num_species, irreps_in.dim]`
        (row `s`: the features of a node of species `s`) and `species` in `0..num_species-1`.

        **Returns:** an `IrrepsArray` `[nodes, irreps_out.dim]` in the features' dtype.
        """
        x = species_features
        h = block_linear(x, self.linear_in_weights, self.linear_in_blocks)[species]
        res = None
        if self.use_residual_connection:
            rows = jnp.arange(self.num_species, dtype=species.dtype)
            res = indexed_block_linear(x, rows, self.residual_weights, self.residual_blocks)
            res = res[species]
        return self._update(h, res, radial_embedding, spherical_harmonics, senders, receivers)

    def _update(
        self,
        h: Float[Array, "nodes _"],
        res: Float[Array, "nodes _"] | None,
        radial_embedding: Float[Array, "edges _"],
        spherical_harmonics: Float[Array, "edges _"],
        senders: Int[Array, " edges"],
        receivers: Int[Array, " edges"],
    ) -> e3nn.IrrepsArray:
        """Steps 2, 4 and 5 from `h = L_in x` and the residual `res`."""
        dtype = h.dtype
        sh = spherical_harmonics.astype(dtype)
        weights = radial_mlp_columns(
            radial_embedding.astype(dtype),
            self.radial_kernels,
            activation(self.radial_mlp_activation),
            [(p.radial_start, p.mul) for p in self.paths],
        )
        out = interaction(
            h,
            sh,
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
        if res is not None:
            out = out + res
        return e3nn.IrrepsArray(self.irreps_out, gate(out, self.gate).astype(dtype))
