"""`MaceConfig`: the hyperparameters of MACE, as mlip 0.2.5's `MaceConfig` has them."""

import dataclasses
import math
import warnings
from collections.abc import Sequence
from enum import Enum
from typing import Any

import e3nn_jax as e3nn

from ...ops.activation import ACTIVATIONS
from ...ops.cutoffs import ENVELOPES

# mlip 0.2.5's options; eqmlip implements the production one of each (see `MaceConfig`).
SYMMETRIC_CONTRACTION_BACKENDS = ("e3j", "e3nn", "e3nn_symmetric", "gaunt_tp")
# mlip refuses `correlation >= 5`.
MAX_CORRELATION = 4


def _option(value: Any) -> Any:
    """mlip's enums (`Activation.SILU`, `RadialEnvelope.POLYNOMIAL`) to their string value."""
    return getattr(value, "value", value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class MaceConfig:
    """Hyperparameters of MACE: Equinox-side counterpart of
    `mlip.models.mace.config.MaceConfig` (mlip 0.2.5), with the same fields and defaults.

    Frozen and hashable: fields are normalised at construction (options to their string value,
    mlip's enums accepted; `radial_mlp_hidden` to a tuple; `readout_irreps` to a pair of
    irreps strings, spelled as given; `node_symmetry=None` to `l_max`, as mlip does), so the
    config can be a static field. Invalid values raise a `ValueError` (`TypeError` for wrong
    kinds) naming the field.

    **Fields:**

    - `num_layers`: number of MACE layers (> 0).
    - `num_channels`: channels of the node features (> 0).
    - `l_max`: maximal degree of the edge spherical harmonics and of the messages (>= 0).
    - `node_symmetry`: maximal degree kept in the node features after the symmetric
        contraction; `None` means `l_max`; at most `l_max`.
    - `correlation`: body order of the symmetric contraction, 1 to 4 (mlip refuses 5+).
    - `readout_irreps`: `(hidden, output)` irreps of the last layer's readout MLP (exactly
        two, as mlip requires); default `("16x0e", "0e")`.
    - `num_readout_heads`: number of readout heads (> 0).
    - `include_pseudotensors`: messages keep both parities of every degree (otherwise only
        `p = (-1)**l`).
    - `num_rbf`: number of Bessel functions (> 0).
    - `activation`: activation of the nonlinear readout.
    - `radial_envelope`: `"polynomial_envelope"`, `"soft_envelope"` or `"cosine_cutoff"`.
    - `radial_mlp_hidden`: hidden sizes of the radial MLPs; default `(64, 64, 64)`.
    - `radial_mlp_activation`: activation of the radial MLPs.
    - `add_atomic_energies`: add the per-element energies E0.
    - `avg_num_neighbors`: message normalisation; `None` takes the dataset's value.
    - `avg_r_min`: mean shortest neighbour distance (Å) for the radial embedding; `None`
        takes the dataset's value.
    - `num_species`: deprecated and ignored, as in mlip (a `DeprecationWarning` if set).
    - `gate_nodes`: species-wise gating of the node features after the symmetric contraction.
    - `residual_connection_first_layer`: a species-indexed skip connection in the first layer
        too (later layers always have one).
    - `soft_normalization`: soft saturation of the node-feature norms at this value (> 0), or
        `None` for none.
    - `predict_partial_charges`: a second readout output gives partial charges.
    - `use_coulomb_term`: add the Coulomb energy of the partial charges (forces
        `predict_partial_charges=True`, as in mlip).
    - `use_total_charge_embedding`: embed the total charge of each graph with the species.
    - `embed_activation`: activation of the joint species/charge embedding.
    - `deterministic_scatter_ops`: reproducible sums in the forward pass.
    - `symmetric_contraction_backend`: mlip's options are `"e3j"` (production, the default),
        `"e3nn"`, `"e3nn_symmetric"` and `"gaunt_tp"`; eqmlip implements `"e3j"` and refuses
        the others here rather than compute something else.
    - `use_gaunt_tp_message_passing`: mlip's Gaunt tensor-product messages; eqmlip implements
        the Clebsch-Gordan messages only (`False`, the default).

    Activations are mlip's names: `"tanh"`, `"silu"`, `"relu"`, `"elu"`, `"swish"`,
    `"sigmoid"`, `"none"`.
    """

    num_layers: int = 2
    num_channels: int = 128
    l_max: int = 3
    node_symmetry: int | None = None
    correlation: int = 3
    readout_irreps: Sequence[str | e3nn.Irreps] = ("16x0e", "0e")
    num_readout_heads: int = 1
    include_pseudotensors: bool = False
    num_rbf: int = 8
    activation: str | Enum = "silu"
    radial_envelope: str | Enum = "polynomial_envelope"
    radial_mlp_hidden: Sequence[int] = (64, 64, 64)
    radial_mlp_activation: str | Enum = "silu"
    add_atomic_energies: bool = True
    avg_num_neighbors: float | None = None
    avg_r_min: float | None = None
    num_species: int | None = None
    gate_nodes: bool = False
    residual_connection_first_layer: bool = False
    soft_normalization: float | None = None
    predict_partial_charges: bool = False
    use_coulomb_term: bool = False
    use_total_charge_embedding: bool = False
    embed_activation: str | Enum = "silu"
    deterministic_scatter_ops: bool = False
    symmetric_contraction_backend: str = "e3j"
    use_gaunt_tp_message_passing: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        for name in ("num_layers", "num_channels", "num_rbf", "num_readout_heads"):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"MaceConfig: {name} must be an int, got {value!r}.")
            if value < 1:
                raise ValueError(f"MaceConfig: {name} must be > 0, got {value}.")
        if not _is_int(self.l_max):
            raise TypeError(f"MaceConfig: l_max must be an int, got {self.l_max!r}.")
        if self.l_max < 0:
            raise ValueError(f"MaceConfig: l_max must be >= 0, got {self.l_max}.")

        if self.node_symmetry is None:
            set_(self, "node_symmetry", self.l_max)
        elif not _is_int(self.node_symmetry):
            raise TypeError(
                f"MaceConfig: node_symmetry must be an int or None, got {self.node_symmetry!r}."
            )
        elif not 0 <= self.node_symmetry <= self.l_max:
            raise ValueError(
                f"MaceConfig: node_symmetry must be between 0 and l_max={self.l_max}, got "
                f"{self.node_symmetry}."
            )

        if not _is_int(self.correlation):
            raise TypeError(f"MaceConfig: correlation must be an int, got {self.correlation!r}.")
        if not 1 <= self.correlation <= MAX_CORRELATION:
            raise ValueError(
                f"MaceConfig: correlation must be between 1 and {MAX_CORRELATION} (as in mlip), "
                f"got {self.correlation}."
            )

        set_(self, "readout_irreps", _check_readout_irreps(self.readout_irreps))

        for name in ("activation", "radial_mlp_activation", "embed_activation"):
            set_(self, name, _check_activation(name, getattr(self, name)))
        envelope = _option(self.radial_envelope)
        if envelope not in ENVELOPES:
            raise ValueError(
                f"MaceConfig: radial_envelope must be one of {ENVELOPES}, got {envelope!r}."
            )
        set_(self, "radial_envelope", envelope)

        if isinstance(self.radial_mlp_hidden, str):
            raise TypeError(
                "MaceConfig: radial_mlp_hidden must be a sequence of ints, got "
                f"{self.radial_mlp_hidden!r}."
            )
        try:
            hidden = tuple(self.radial_mlp_hidden)
        except TypeError as error:
            raise TypeError(
                "MaceConfig: radial_mlp_hidden must be a sequence of ints, got "
                f"{self.radial_mlp_hidden!r}."
            ) from error
        if not all(_is_int(h) and h > 0 for h in hidden):
            raise ValueError(
                f"MaceConfig: radial_mlp_hidden must hold ints > 0, got {list(hidden)}."
            )
        set_(self, "radial_mlp_hidden", hidden)

        for name in ("avg_num_neighbors", "avg_r_min", "soft_normalization"):
            set_(self, name, _check_positive_or_none(name, getattr(self, name)))

        if self.num_species is not None:
            if not _is_int(self.num_species) or self.num_species < 1:
                raise ValueError(
                    f"MaceConfig: num_species must be an int > 0 or None, got {self.num_species!r}."
                )
            warnings.warn(
                "MaceConfig: num_species is deprecated (as in mlip 0.2.3+) and has no effect; "
                "the species come from the model's species tuple.",
                DeprecationWarning,
                stacklevel=3,
            )

        for name in (
            "include_pseudotensors",
            "add_atomic_energies",
            "gate_nodes",
            "residual_connection_first_layer",
            "predict_partial_charges",
            "use_coulomb_term",
            "use_total_charge_embedding",
            "deterministic_scatter_ops",
            "use_gaunt_tp_message_passing",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"MaceConfig: {name} must be a bool, got {getattr(self, name)!r}.")
        if self.use_coulomb_term:
            set_(self, "predict_partial_charges", True)

        backend = _option(self.symmetric_contraction_backend)
        if backend not in SYMMETRIC_CONTRACTION_BACKENDS:
            raise ValueError(
                "MaceConfig: symmetric_contraction_backend must be one of "
                f"{SYMMETRIC_CONTRACTION_BACKENDS}, got {backend!r}."
            )
        if backend != "e3j":
            raise ValueError(
                f"MaceConfig: symmetric_contraction_backend={backend!r} is one of mlip's "
                "alternatives, which eqmlip does not implement; eqmlip's MACE is mlip's "
                "production backend 'e3j' (the default)."
            )
        set_(self, "symmetric_contraction_backend", backend)
        if self.use_gaunt_tp_message_passing:
            raise ValueError(
                "MaceConfig: use_gaunt_tp_message_passing=True (mlip's Gaunt tensor-product "
                "messages) is not implemented in eqmlip; use the default False (Clebsch-Gordan "
                "messages)."
            )

    @property
    def interaction_irreps(self) -> e3nn.Irreps:
        """Irreps (per channel) of the messages and of the symmetric contraction's input:
        `0e + 1o + ... ` up to `l_max`, with both parities if `include_pseudotensors`."""
        if self.include_pseudotensors:
            return e3nn.Irreps(list(e3nn.Irrep.iterator(self.l_max)))
        return e3nn.Irreps.spherical_harmonics(self.l_max)

    @property
    def node_irreps(self) -> e3nn.Irreps:
        """Irreps (per channel) of the node features between layers: `0e + 1o + ...` up to
        `node_symmetry`."""
        assert self.node_symmetry is not None  # set in __post_init__
        return e3nn.Irreps.spherical_harmonics(self.node_symmetry)


def _check_activation(name: str, value: Any) -> str:
    value = _option(value)
    if value not in ACTIVATIONS:
        raise ValueError(f"MaceConfig: {name} must be one of {sorted(ACTIVATIONS)}, got {value!r}.")
    return value


def _check_positive_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"MaceConfig: {name} must be a float or None, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"MaceConfig: {name} must be positive and finite, got {value}.")
    return float(value)


def _check_readout_irreps(value: Any) -> tuple[str, str]:
    if isinstance(value, str):
        raise TypeError(
            f"MaceConfig: readout_irreps must be a pair of irreps strings (hidden, output), got "
            f"the single string {value!r}; e.g. ('16x0e', '0e')."
        )
    try:
        entries = tuple(value)
    except TypeError as error:
        raise TypeError(
            f"MaceConfig: readout_irreps must be a pair of irreps strings, got {value!r}."
        ) from error
    if len(entries) != 2:
        raise ValueError(
            "MaceConfig: readout_irreps must have exactly two entries (hidden, output), as "
            f"mlip's MACE requires, got {len(entries)}: {entries!r}."
        )
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str | e3nn.Irreps):
            raise TypeError(
                f"MaceConfig: readout_irreps[{i}] must be an irreps string, got {entry!r}."
            )
        try:
            irreps = e3nn.Irreps(entry)
        except (ValueError, TypeError, AssertionError) as error:
            raise ValueError(
                f"MaceConfig: readout_irreps[{i}] {entry!r} is not a valid irreps string: {error}"
            ) from error
        if irreps.dim == 0:
            raise ValueError(f"MaceConfig: readout_irreps[{i}] {entry!r} is empty.")
        out.append(entry if isinstance(entry, str) else str(irreps))
    return out[0], out[1]
