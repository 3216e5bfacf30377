"""The NequIP network over an [`eqmlip.Graph`][]: per-atom energies (and partial charges)."""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ... import _random
from ..._misc import resolve_dtype
from ...graph import Graph, check_species, species_index
from ...nn import MultiHeadReadoutBlock, select_head
from ...ops.nequip import SCALAR
from ...ops.segment import mask_rows, safe_norm, segment_sum
from .._potential import AbstractPotential, PotentialOutputs, register_potential
from .blocks import NequipEmbeddingBlock, NequipLayer
from .config import NequipConfig

# mlip's constants (mlip.models.charge_utils): epsilon_0 in e^2 / (eV Angstrom), and the range
# of PhysNet's short-distance switch.
EPSILON_0 = 5.5263494e-3
COULOMB_CONSTANT = 1.0 / (4.0 * math.pi * EPSILON_0)
PHYSNET_ENVELOPE_CUTOFF = 10.0


# What `Nequip.__call__` returns: the generic outputs of a potential (kept under this name for
# code written against earlier eqmlip releases).
NequipOutputs = PotentialOutputs


def _name(option: Any) -> str:
    """An option of a (normalised) config: always a string there."""
    assert isinstance(option, str), option
    return option


def _check_species(species: Sequence[int]) -> tuple[int, ...]:
    return check_species(species, caller="Nequip")


def _atomic_energy_table(
    atomic_energies: Mapping[int, float] | Sequence[Mapping[int, float]] | None,
    species: tuple[int, ...],
) -> np.ndarray:
    """`[datasets, species]` E0s; NaN where a dataset has no E0 for a species (as mlip)."""
    if atomic_energies is None:
        return np.zeros((1, len(species)))
    maps = [atomic_energies] if isinstance(atomic_energies, Mapping) else list(atomic_energies)
    if not maps:
        raise ValueError("Nequip: atomic_energies is an empty list; give one mapping per dataset.")
    table = np.full((len(maps), len(species)), np.nan)
    for d, energies in enumerate(maps):
        if not isinstance(energies, Mapping):
            raise TypeError(
                "Nequip: atomic_energies must map atomic numbers to energies (or be a list of "
                f"such mappings), got {type(energies).__name__}."
            )
        unknown = sorted(int(z) for z in energies if int(z) not in species)
        if unknown:
            raise ValueError(
                f"Nequip: atomic_energies[{d}] has atomic numbers {unknown} that are not among "
                f"the species {species}."
            )
        for z, e in energies.items():
            table[d, species.index(int(z))] = float(e)
    return table


def physnet_switch(r: Float[Array, " edges"]) -> Float[Array, " edges"]:
    """mlip's Coulomb kernel `s / sqrt(r^2 + 1) + (1 - s) / r` with PhysNet's switch
    `s = phi(2 r / 10)`, `phi(x) = 1 - 6 x^5 + 15 x^4 - 10 x^3` for `x < 1` (else 0); the
    `1/r` term is 0 where `r` is (close to) 0, with a finite gradient."""
    x = 2.0 * r / PHYSNET_ENVELOPE_CUTOFF
    s = jnp.where(x < 1.0, 1.0 - 6.0 * x**5 + 15.0 * x**4 - 10.0 * x**3, 0.0)
    tiny = jnp.isclose(r, 0.0)
    inverse = jnp.where(tiny, 0.0, 1.0 / jnp.where(tiny, 1.0, r))
    return s / jnp.sqrt(r**2 + 1.0) + (1.0 - s) * inverse


@register_potential(name="nequip")
class Nequip(AbstractPotential):
    """NequIP (Batzner et al., 2022) as mlip 0.2.5 computes it: Equinox counterpart of
    `mlip.models.nequip.network.Nequip`, on [`eqmlip.Graph`][].

    For each atom `i` of species `z_i`:

    $$h^{(0)} = \\mathrm{Embed}(z_i), \\quad h^{(t+1)} = \\mathrm{NequipLayer}_t(h^{(t)}), \\quad
      E_i = \\mathrm{readout}_{d(i)}(h^{(T)}_{0e})\\,\\sigma + \\mu + E^0_{d(i), z_i}$$

    with `d(i)` the dataset (head) of the atom's graph. The last layer is built with
    `scalars_only=True`: the readout is linear in the even scalars, so the rest of that layer
    never reaches the energy. With `predict_partial_charges`, a second readout output gives
    charges `q_i`, corrected per graph to the total charge: `q_i -= (sum_j q_j - Q)/n`. With
    `use_coulomb_term`, `E_i += 1/2 sum_{j} k_e q_i q_j phi(r_ij)` over the long-range edges
    into `i`. Padding atoms get 0.

    **Arguments:**

    - `config`: a [`eqmlip.models.nequip.NequipConfig`][].
    - `species`: the model's atomic numbers, sorted (mlip: `dataset_info`'s
        `allowed_atomic_numbers`). An atom of another element is an error (raised under
        `jax.jit` too), not mlip's silent species 0.
    - `cutoff`: graph cutoff in Angstrom (mlip: `graph_cutoff_angstrom`).
    - `avg_num_neighbors`: the dataset's average neighbour count, used when
        `config.avg_num_neighbors` is `None` (mlip: `dataset_info.avg_num_neighbors`).
    - `atomic_energies`: `{Z: E0}`, or one such mapping per dataset (then `dataset_idx` picks
        the row); `None` means zeros. A species missing from a mapping gives NaN energies for
        that dataset, as in mlip.
    - `total_charges`: the total charges seen in training (mlip: `total_charge_set`), used by
        `use_total_charge_embedding`: charge `total_charges[k]` embeds as class `k + 1`, any
        other as the placeholder class 0.
    - `long_range_cutoff`: cutoff of the long-range graph that the Coulomb term needs
        (mlip: `long_range_cutoff_angstrom`; required by `use_coulomb_term`).
    - `energy_scale`, `energy_shift`: `sigma`, `mu` above (mlip: `scaling_stdev`,
        `scaling_mean`).
    - `dtype`: parameter dtype; `None` is the default floating dtype.
    - `key`: a `jax.random.PRNGKey`.
    """

    embedding: NequipEmbeddingBlock
    layers: tuple[NequipLayer, ...]
    readout: MultiHeadReadoutBlock
    atomic_energies: Float[Array, "datasets species"]
    config: NequipConfig = eqx.field(static=True)
    species: tuple[int, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    avg_num_neighbors: float = eqx.field(static=True)
    total_charges: tuple[int, ...] | None = eqx.field(static=True)
    long_range_cutoff: float | None = eqx.field(static=True)
    energy_scale: float = eqx.field(static=True)
    energy_shift: float = eqx.field(static=True)

    config_class: ClassVar[type | None] = NequipConfig

    def __init__(
        self,
        config: NequipConfig,
        species: Sequence[int],
        *,
        cutoff: float,
        avg_num_neighbors: float | None = None,
        atomic_energies: Mapping[int, float] | Sequence[Mapping[int, float]] | None = None,
        total_charges: Sequence[int] | None = None,
        long_range_cutoff: float | None = None,
        energy_scale: float = 1.0,
        energy_shift: float = 0.0,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        if not isinstance(config, NequipConfig):
            raise TypeError(f"Nequip: config must be a NequipConfig, got {type(config).__name__}.")
        dtype = resolve_dtype(dtype)
        species = _check_species(species)
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"Nequip: cutoff must be positive and finite, got {cutoff}.")
        avg = (
            config.avg_num_neighbors if config.avg_num_neighbors is not None else avg_num_neighbors
        )
        if avg is None or not (math.isfinite(avg) and avg > 0):
            raise ValueError(
                "Nequip: avg_num_neighbors must be positive, from the config or the argument "
                f"(the dataset's value), got {avg!r}."
            )
        if config.use_total_charge_embedding:
            charges = tuple(sorted({int(q) for q in (total_charges or ())}))
            if any(abs(q) > 50 for q in charges):
                raise ValueError(
                    f"Nequip: total charges must lie in -50..50 (as in mlip), got {charges}."
                )
        else:
            charges = None
        if config.use_coulomb_term:
            if long_range_cutoff is None or not long_range_cutoff > 0:
                raise ValueError(
                    "Nequip: use_coulomb_term needs long_range_cutoff (the cutoff of the "
                    f"long-range graph), got {long_range_cutoff!r}."
                )
        self.atomic_energies = jnp.asarray(_atomic_energy_table(atomic_energies, species), dtype)

        target = config.irreps
        ekey, rkey, *lkeys = _random.split(key, config.num_layers + 2)
        self.embedding = NequipEmbeddingBlock(
            len(species),
            target,
            l_max=config.l_max,
            num_rbf=config.num_rbf,
            cutoff=cutoff,
            radial_envelope=_name(config.radial_envelope),
            num_charges=None if charges is None else len(charges) + 1,
            embed_activation=_name(config.embed_activation),
            dtype=dtype,
            key=ekey,
        )
        layers = []
        source = self.embedding.irreps_out
        for i, lkey in enumerate(lkeys):
            layer = NequipLayer(
                source,
                target,
                l_max=config.l_max,
                num_species=len(species),
                num_rbf=config.num_rbf,
                avg_num_neighbors=avg,
                radial_mlp_hidden=config.radial_mlp_hidden,
                radial_mlp_activation=_name(config.radial_mlp_activation),
                radial_mlp_variance_scale=config.radial_mlp_variance_scale,
                use_residual_connection=config.use_residual_connection,
                gate_even=_name(config.gate_nonlinearities["e"]),
                gate_odd=_name(config.gate_nonlinearities["o"]),
                deterministic_scatter_ops=config.deterministic_scatter_ops,
                scalars_only=i == config.num_layers - 1,
                dtype=dtype,
                key=lkey,
            )
            layers.append(layer)
            source = layer.irreps_out
        self.layers = tuple(layers)
        n_scalars = source.count(SCALAR)
        outputs = 2 if config.predict_partial_charges else 1
        self.readout = MultiHeadReadoutBlock(
            config.num_readout_heads,
            source,
            (f"{n_scalars // 2}x0e", f"{outputs}x0e"),
            activation=None,
            use_equiv=True,
            dtype=dtype,
            key=rkey,
        )
        self.config = config
        self.species = species
        self.cutoff = float(cutoff)
        self.avg_num_neighbors = float(avg)
        self.total_charges = charges
        self.long_range_cutoff = None if long_range_cutoff is None else float(long_range_cutoff)
        self.energy_scale = float(energy_scale)
        self.energy_shift = float(energy_shift)

    def __check_init__(self):
        if self.atomic_energies.shape[1:] != (len(self.species),):
            raise ValueError(
                f"Nequip: atomic_energies has shape {self.atomic_energies.shape}, expected "
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
        """Every inexact array except `atomic_energies` (E0s fixed from the data statistics, as
        the forward pass already `stop_gradient`s them)."""
        mask = super().trainable_mask()
        return eqx.tree_at(lambda m: m.atomic_energies, mask, False)

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's arguments as JSON values (NaN E0s, for species a dataset lacks,
        become `null`)."""
        return {
            "config": _config_json(self.config),
            "species": list(self.species),
            "cutoff": self.cutoff,
            "avg_num_neighbors": self.avg_num_neighbors,
            "atomic_energies": _energies_json(self.species, self.atomic_energies),
            "total_charges": None if self.total_charges is None else list(self.total_charges),
            "long_range_cutoff": self.long_range_cutoff,
            "energy_scale": self.energy_scale,
            "energy_shift": self.energy_shift,
        }

    @classmethod
    def from_hyperparameters(
        cls, hyperparameters: Mapping[str, Any], *, dtype: Any, key: PRNGKeyArray
    ) -> "Nequip":
        """The inverse of [`eqmlip.models.nequip.Nequip.hyperparameters`][]."""
        values = dict(hyperparameters)
        config = NequipConfig(**values.pop("config"))
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
    ) -> "Nequip":
        """A new NequIP for a dataset: its species, E0s and average neighbour count.

        **Arguments:**

        - `config`: a [`eqmlip.models.nequip.NequipConfig`][].
        - `statistics`: the training set's [`eqmlip.data.DatasetStatistics`][].
        - `cutoff`, `energy_scale`, `dtype`, `key`: as in the constructor.
        """
        return cls(
            config,
            statistics.species,
            cutoff=cutoff,
            avg_num_neighbors=statistics.avg_num_neighbors,
            atomic_energies=statistics.atomic_energies,
            energy_scale=energy_scale,
            dtype=dtype,
            key=key,
        )

    @property
    def irreps_latent(self) -> e3nn.Irreps:
        """The irreps the readout reads (the even scalars of the last layer)."""
        return self.layers[-1].irreps_out

    def __call__(self, graph: Graph) -> PotentialOutputs:
        """Per-atom energies (and charges) of every structure in `graph`.

        **Arguments:**

        - `graph`: an [`eqmlip.Graph`][] (padded or not) whose edges were built with
            `self.cutoff`. With `use_coulomb_term`, it must also carry long-range edges within
            `long_range_cutoff` (`graph.with_long_range(...)`, see [`eqmlip.Graph`][]).

        **Returns:** a [`eqmlip.models.PotentialOutputs`][], in the dtype of the positions.
        """
        config = self.config
        deterministic = config.deterministic_scatter_ops
        node_mask = graph.node_mask
        node_graph = graph.node_graph_index()
        num_graphs = graph.num_graphs
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

        senders, receivers = graph.senders, graph.receivers
        radial, sh = self.embedding.embed_edges(vectors, graph.edge_mask)
        if self.embedding.num_charges is None:
            # The embedding depends on the species only: the first layer's node-wise linears
            # run on one row per species (`NequipLayer.call_on_species`).
            table = self.embedding.species_features(dtype=dtype)
            x = self.layers[0].call_on_species(table, species, radial, sh, senders, receivers)
        else:
            h = self.embedding.embed_nodes(species, charge_index, dtype=dtype)
            x = self.layers[0](h, species, radial, sh, senders, receivers)
        for layer in self.layers[1:]:
            x = layer(x, species, radial, sh, senders, receivers)
        outputs = self.readout(x)
        assert isinstance(outputs, e3nn.IrrepsArray)
        dataset_idx = graph.dataset_idx
        selected = select_head(outputs, dataset_idx, node_graph_index=node_graph)
        assert isinstance(selected, e3nn.IrrepsArray)
        out = selected.array

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
                    f"Nequip: a dataset_idx is outside 0..{table.shape[0] - 1}, the rows of the "
                    "atomic energies.",
                )
                energies = energies + table[rows[node_graph], species]

        charges = uncorrected = None
        if config.predict_partial_charges:
            charges = jnp.where(node_mask, out[:, 1], 0.0)
            uncorrected = segment_sum(charges, node_graph, num_graphs, deterministic=deterministic)
            n_node = graph.n_node
            total = graph.charge.astype(dtype)
            safe_n = jnp.where(n_node == 0, 1, n_node).astype(dtype)
            correction = jnp.where(n_node == 0, 0.0, (uncorrected - total) / safe_n)
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
                "Nequip: use_coulomb_term needs long-range edges in the graph (the same atoms "
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


def _energies_json(species: Sequence[int], table: Any) -> list[dict[str, float | None]]:
    """The E0 table (`datasets x species`) as JSON rows; NaN (species a dataset lacks) is
    `null`."""
    return [
        {str(z): (None if math.isnan(e) else float(e)) for z, e in zip(species, row, strict=True)}
        for row in np.asarray(table, dtype=np.float64)
    ]


def _energies_from_json(rows: Sequence[Mapping[str, Any]]) -> list[dict[int, float]]:
    """The inverse of `_energies_json`."""
    return [{int(z): (math.nan if e is None else float(e)) for z, e in row.items()} for row in rows]


def _config_json(config: Any) -> dict[str, Any]:
    """A config's fields as JSON values."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out
