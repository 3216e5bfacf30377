"""The MACE network over an [`eqmlip.Graph`][]: per-atom energies (and partial charges)."""

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ... import _random
from ..._misc import resolve_dtype
from ...graph import Graph, check_species, species_index
from ...nn import select_head
from ...ops.mace import radial_prefactor
from ...ops.segment import mask_rows, safe_norm, segment_sum
from .._potential import AbstractPotential, PotentialOutputs, register_potential
from ..nequip.blocks import NequipEmbeddingBlock
from ..nequip.network import (
    COULOMB_CONSTANT,
    _atomic_energy_table,
    _config_json,
    _energies_from_json,
    _energies_json,
    physnet_switch,
)
from .blocks import MaceLayer
from .config import MaceConfig


def _name(option: Any) -> str:
    """An option of a (normalised) config: always a string there."""
    assert isinstance(option, str), option
    return option


@register_potential(name="mace")
class Mace(AbstractPotential):
    """MACE (Batatia et al., 2022) as mlip 0.2.5 computes it: Equinox counterpart of
    `mlip.models.mace.network.Mace` (e3j symmetric contraction, Clebsch-Gordan messages), on
    [`eqmlip.Graph`][].

    For each atom `i` of species `z_i` in a graph of dataset (head) `d`:

    $$h^{(0)} = \\mathrm{Embed}(z_i), \\quad (h^{(t+1)}, o^{(t)}) = \\mathrm{MaceLayer}_t(h^{(t)}),
      \\quad E_i = \\sum_t o^{(t)}_{i, d, 0}\\,\\sigma + \\mu + E^0_{d, z_i}$$

    ([`eqmlip.models.mace.MaceLayer`][]; the last layer keeps only `C x 0e` and reads out
    through mlip's non-linear readout). The radial embedding is multiplied by mlip's
    pre-factor when `avg_r_min` is known. With `predict_partial_charges`, the readouts' second
    output gives charges, corrected per graph to the total charge; with `use_coulomb_term`,
    their Coulomb energy over the long-range edges is added. Padding atoms get 0.

    **Arguments:**

    - `config`: a [`eqmlip.models.mace.MaceConfig`][].
    - `species`: the model's atomic numbers, sorted (mlip: `allowed_atomic_numbers`).
    - `cutoff`: graph cutoff in Angstrom (mlip: `graph_cutoff_angstrom`).
    - `avg_num_neighbors`: the dataset's average neighbour count, used when
        `config.avg_num_neighbors` is `None` (mlip: `dataset_info.avg_num_neighbors`).
    - `avg_r_min`: the dataset's mean shortest neighbour distance, used when
        `config.avg_r_min` is `None`; `None` for no radial pre-factor (mlip:
        `dataset_info.avg_r_min_angstrom`).
    - `atomic_energies`, `total_charges`, `long_range_cutoff`, `energy_scale`,
        `energy_shift`, `dtype`, `key`: as for [`eqmlip.models.nequip.Nequip`][].

    **Differences from mlip:** `config.avg_num_neighbors` and `config.avg_r_min` override the
    dataset's values, as mlip documents; mlip 0.2.5's MACE network ignores both fields and
    always reads its dataset info (`from_mlip` therefore takes the dataset info's values).
    The hidden irreps of the last readout must be scalars (mlip gates non-scalars on
    mislabelled components); `readout_irreps[1]` must be `"0e"`. mlip's alternative
    symmetric-contraction backends and Gaunt messages are refused by
    [`eqmlip.models.mace.MaceConfig`][].
    """

    embedding: NequipEmbeddingBlock
    layers: tuple[MaceLayer, ...]
    atomic_energies: Float[Array, "datasets species"]
    config: MaceConfig = eqx.field(static=True)
    species: tuple[int, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    avg_num_neighbors: float = eqx.field(static=True)
    avg_r_min: float | None = eqx.field(static=True)
    radial_scale: float = eqx.field(static=True)
    total_charges: tuple[int, ...] | None = eqx.field(static=True)
    long_range_cutoff: float | None = eqx.field(static=True)
    energy_scale: float = eqx.field(static=True)
    energy_shift: float = eqx.field(static=True)

    config_class: ClassVar[type | None] = MaceConfig

    def __init__(
        self,
        config: MaceConfig,
        species: Sequence[int],
        *,
        cutoff: float,
        avg_num_neighbors: float | None = None,
        avg_r_min: float | None = None,
        atomic_energies: Mapping[int, float] | Sequence[Mapping[int, float]] | None = None,
        total_charges: Sequence[int] | None = None,
        long_range_cutoff: float | None = None,
        energy_scale: float = 1.0,
        energy_shift: float = 0.0,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        if not isinstance(config, MaceConfig):
            raise TypeError(f"Mace: config must be a MaceConfig, got {type(config).__name__}.")
        dtype = resolve_dtype(dtype)
        species = check_species(species, caller="Mace")
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"Mace: cutoff must be positive and finite, got {cutoff}.")
        avg = (
            config.avg_num_neighbors if config.avg_num_neighbors is not None else avg_num_neighbors
        )
        if avg is None or not (math.isfinite(avg) and avg > 0):
            raise ValueError(
                "Mace: avg_num_neighbors must be positive, from the config or the argument "
                f"(the dataset's value), got {avg!r}."
            )
        r_min = config.avg_r_min if config.avg_r_min is not None else avg_r_min
        if r_min is not None and not (math.isfinite(r_min) and 0 <= r_min < cutoff):
            raise ValueError(f"Mace: avg_r_min must lie in [0, cutoff={cutoff}), got {r_min!r}.")
        if config.use_total_charge_embedding:
            charges = tuple(sorted({int(q) for q in (total_charges or ())}))
            if any(abs(q) > 50 for q in charges):
                raise ValueError(
                    f"Mace: total charges must lie in -50..50 (as in mlip), got {charges}."
                )
        else:
            charges = None
        if config.use_coulomb_term and (long_range_cutoff is None or not long_range_cutoff > 0):
            raise ValueError(
                "Mace: use_coulomb_term needs long_range_cutoff (the cutoff of the long-range "
                f"graph), got {long_range_cutoff!r}."
            )
        self.atomic_energies = jnp.asarray(_atomic_energy_table(atomic_energies, species), dtype)

        channels = config.num_channels
        ekey, *lkeys = _random.split(key, config.num_layers + 1)
        self.embedding = NequipEmbeddingBlock(
            len(species),
            f"{channels}x0e",
            l_max=config.l_max,
            num_rbf=config.num_rbf,
            cutoff=cutoff,
            radial_envelope=_name(config.radial_envelope),
            num_charges=None if charges is None else len(charges) + 1,
            embed_activation=_name(config.embed_activation),
            dtype=dtype,
            key=ekey,
        )
        hidden, output = config.readout_irreps
        output_irreps = "2x0e" if config.predict_partial_charges else "0e"
        if str(output).replace(" ", "") not in ("0e", "1x0e"):
            raise ValueError(
                f"Mace: readout_irreps[1] must be '0e' (one energy per atom), got {output!r}."
            )
        layers = []
        for i, lkey in enumerate(lkeys):
            layers.append(
                MaceLayer(
                    "0e" if i == 0 else config.node_irreps,
                    config.interaction_irreps,
                    config.node_irreps,
                    output_irreps=output_irreps,
                    readout_mlp_irreps=hidden,
                    num_channels=channels,
                    num_species=len(species),
                    l_max=config.l_max,
                    num_rbf=config.num_rbf,
                    avg_num_neighbors=avg,
                    radial_mlp_hidden=config.radial_mlp_hidden,
                    radial_mlp_activation=_name(config.radial_mlp_activation),
                    correlation=config.correlation,
                    gate_nodes=config.gate_nodes,
                    soft_normalization=config.soft_normalization,
                    num_readout_heads=config.num_readout_heads,
                    activation=_name(config.activation),
                    use_residuals=i > 0 or config.residual_connection_first_layer,
                    last_layer=i == config.num_layers - 1,
                    deterministic_scatter_ops=config.deterministic_scatter_ops,
                    dtype=dtype,
                    key=lkey,
                )
            )
        self.layers = tuple(layers)
        self.config = config
        self.species = species
        self.cutoff = float(cutoff)
        self.avg_num_neighbors = float(avg)
        self.avg_r_min = None if r_min is None else float(r_min)
        self.radial_scale = (
            1.0
            if r_min is None
            else radial_prefactor(r_min, config.num_rbf, cutoff, _name(config.radial_envelope))
        )
        self.total_charges = charges
        self.long_range_cutoff = None if long_range_cutoff is None else float(long_range_cutoff)
        self.energy_scale = float(energy_scale)
        self.energy_shift = float(energy_shift)

    def __check_init__(self):
        if self.atomic_energies.shape[1:] != (len(self.species),):
            raise ValueError(
                f"Mace: atomic_energies has shape {self.atomic_energies.shape}, expected "
                f"(datasets, {len(self.species)})."
            )

    @property
    def num_heads(self) -> int:
        """The readout heads, or the rows of the E0 table if there are more."""
        return max(self.config.num_readout_heads, int(self.atomic_energies.shape[0]))

    @property
    def deterministic_scatter(self) -> bool:
        """`config.deterministic_scatter_ops`."""
        return self.config.deterministic_scatter_ops

    def trainable_mask(self) -> Any:
        """Every inexact array except `atomic_energies` (fixed E0s, as in mlip)."""
        mask = super().trainable_mask()
        return eqx.tree_at(lambda m: m.atomic_energies, mask, False)

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's arguments as JSON values (NaN E0s become `null`)."""
        return {
            "config": _config_json(self.config),
            "species": list(self.species),
            "cutoff": self.cutoff,
            "avg_num_neighbors": self.avg_num_neighbors,
            "avg_r_min": self.avg_r_min,
            "atomic_energies": _energies_json(self.species, self.atomic_energies),
            "total_charges": None if self.total_charges is None else list(self.total_charges),
            "long_range_cutoff": self.long_range_cutoff,
            "energy_scale": self.energy_scale,
            "energy_shift": self.energy_shift,
        }

    @classmethod
    def from_hyperparameters(
        cls, hyperparameters: Mapping[str, Any], *, dtype: Any, key: PRNGKeyArray
    ) -> "Mace":
        """The inverse of [`eqmlip.models.mace.Mace.hyperparameters`][]."""
        values = dict(hyperparameters)
        config = MaceConfig(**values.pop("config"))
        table = _energies_from_json(values.pop("atomic_energies"))
        return cls(config, atomic_energies=table, dtype=dtype, key=key, **values)

    @classmethod
    def from_statistics(
        cls,
        config: Any,
        statistics: Any,
        *,
        cutoff: float,
        energy_scale: float,
        dtype: Any,
        key: PRNGKeyArray,
    ) -> "Mace":
        """A new MACE for a dataset: its species, E0s, average neighbour count and mean
        shortest edge `avg_r_min` (`statistics`, a [`eqmlip.data.DatasetStatistics`][]); other
        arguments as in the constructor.

        As in mlip 0.2.5, whose MACE always reads `dataset_info.avg_r_min_angstrom` (computed
        from the training graphs by its dataset builder), the dataset's `avg_r_min` sets the
        radial pre-factor; `config.avg_r_min` overrides it. Statistics without the field (or
        with `None`, e.g. no edge in the data) give no pre-factor."""
        return cls(
            config,
            statistics.species,
            cutoff=cutoff,
            avg_num_neighbors=statistics.avg_num_neighbors,
            avg_r_min=getattr(statistics, "avg_r_min", None),
            atomic_energies=statistics.atomic_energies,
            energy_scale=energy_scale,
            dtype=dtype,
            key=key,
        )

    def __call__(self, graph: Graph) -> PotentialOutputs:
        """Per-atom energies (and charges) of every structure in `graph`.

        **Arguments:**

        - `graph`: an [`eqmlip.Graph`][] (padded or not) whose edges were built with
            `self.cutoff`; with `use_coulomb_term`, carrying long-range edges too
            (`graph.with_long_range(...)`).

        **Returns:** a [`eqmlip.models.PotentialOutputs`][], in the dtype of the positions.
        """
        config = self.config
        deterministic = config.deterministic_scatter_ops
        node_mask = graph.node_mask
        node_graph = graph.node_graph_index()
        species = species_index(graph.atomic_numbers, self.species, node_mask)
        vectors = graph.edge_vectors()
        dtype = vectors.dtype

        charge_index = None
        if self.total_charges is not None:
            node_charge = graph.charge[node_graph]
            table = jnp.asarray(self.total_charges, node_charge.dtype)
            hits = node_charge[:, None] == table[None, :]
            classes = jnp.arange(1, len(self.total_charges) + 1, dtype=jnp.int32)
            charge_index = jnp.sum(jnp.where(hits, classes[None, :], 0), axis=1).astype(jnp.int32)

        h0, radial, sh = self.embedding(
            species, vectors, charge_index=charge_index, edge_mask=graph.edge_mask
        )
        if self.radial_scale != 1.0:
            radial = radial * self.radial_scale
        senders, receivers = graph.senders, graph.receivers
        x = h0.array
        total = None
        for layer in self.layers:
            x, outputs = layer(x, species, radial, sh, senders, receivers)
            total = outputs if total is None else total + outputs
        assert total is not None
        dataset_idx = graph.dataset_idx
        out = select_head(total, dataset_idx, node_graph_index=node_graph)
        assert not isinstance(out, tuple)
        out = jnp.asarray(out)

        energies = out[:, 0]
        if (self.energy_scale, self.energy_shift) != (1.0, 0.0):
            energies = energies * self.energy_scale + self.energy_shift
        if config.add_atomic_energies:
            table = jax.lax.stop_gradient(self.atomic_energies.astype(dtype))
            if table.shape[0] == 1:
                energies = energies + table[0][species]
            else:
                rows = eqx.error_if(
                    dataset_idx,
                    (dataset_idx < 0) | (dataset_idx >= table.shape[0]),
                    f"Mace: a dataset_idx is outside 0..{table.shape[0] - 1}, the rows of the "
                    "atomic energies.",
                )
                energies = energies + table[rows[node_graph], species]

        charges = uncorrected = None
        if config.predict_partial_charges:
            charges = jnp.where(node_mask, out[:, 1], 0.0)
            uncorrected = segment_sum(
                charges, node_graph, graph.num_graphs, deterministic=deterministic
            )
            n_node = graph.n_node
            total_charge = graph.charge.astype(dtype)
            safe_n = jnp.where(n_node == 0, 1, n_node).astype(dtype)
            correction = jnp.where(n_node == 0, 0.0, (uncorrected - total_charge) / safe_n)
            charges = jnp.where(node_mask, charges - correction[node_graph], 0.0)
            if config.use_coulomb_term:
                energies = energies + self._coulomb(charges, graph)

        energies = jnp.where(node_mask, energies, 0.0)
        return PotentialOutputs(energies, charges, uncorrected)

    def _coulomb(self, charges: Float[Array, " nodes"], graph: Graph) -> Float[Array, " nodes"]:
        """Each atom's half of the Coulomb pair energies `k_e q_i q_j phi(r_ij)` over the
        graph's long-range edges."""
        long_range = graph.long_range
        if long_range is None:
            raise ValueError(
                "Mace: use_coulomb_term needs long-range edges in the graph (the same atoms "
                f"with edges within long_range_cutoff={self.long_range_cutoff}); attach them "
                "with graph.with_long_range(long_range_graph)."
            )
        r = safe_norm(graph.edge_vectors(long_range=True))
        senders, receivers = long_range.senders, long_range.receivers
        pair = COULOMB_CONSTANT * charges[senders] * charges[receivers] * physnet_switch(r)
        pair = mask_rows(pair, long_range.edge_mask)
        return 0.5 * segment_sum(
            pair, receivers, graph.num_nodes, deterministic=self.config.deterministic_scatter_ops
        )
