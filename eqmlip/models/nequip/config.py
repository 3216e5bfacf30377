"""`NequipConfig`: the hyperparameters of NequIP, as mlip 0.2.5's `NequipConfig` has them."""

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

import e3nn_jax as e3nn

from ...ops.activation import ACTIVATIONS
from ...ops.cutoffs import ENVELOPES
from ...ops.nequip import SCALAR

DEFAULT_TARGET_IRREPS = "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o"


class FrozenMapping(Mapping[str, str]):
    """A small immutable, hashable mapping (for `gate_nonlinearities`), equal to any mapping
    with the same items."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None, **kwargs: str):
        data = dict(items or {}, **kwargs)
        self._items = tuple(sorted(data.items()))

    def __getitem__(self, key: str) -> str:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMapping({dict(self._items)!r})"


def _option(value: Any) -> Any:
    """mlip's enums (`Activation.SWISH`, `RadialEnvelope.POLYNOMIAL`) to their string value."""
    return getattr(value, "value", value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class NequipConfig:
    """Hyperparameters of [`eqmlip.models.nequip.Nequip`][]: Equinox-side counterpart of
    `mlip.models.nequip.config.NequipConfig` (mlip 0.2.5), with the same fields and defaults
    except `target_irreps`, whose default here is the documented
    `"128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o"` (mlip 0.2.5's code default is
    `"... + 32x2e + 32x2o"`; pass it explicitly to compare with mlip).

    Frozen and hashable (fields are normalised at construction: strings for options (enums are
    read by their `.value`), a tuple for `radial_mlp_hidden`, a hashable mapping for
    `gate_nonlinearities`, `target_irreps` in e3nn's canonical spelling), so it can be a
    static field. Invalid values raise a `ValueError` (`TypeError` for wrong kinds) naming the
    field.

    **Fields:**

    - `num_layers`: number of NequIP layers (> 0).
    - `target_irreps`: irreps each layer aims at, sorted in e3nn's order (`0e, 0o, 1o, 1e,
        2e, ...`) without repeats, every multiplicity > 0, with a `0e` entry (its multiplicity
        is the width of the species embedding). Each layer keeps the reachable entries.
    - `l_max`: maximal degree of the edge spherical harmonics (>= 0).
    - `num_rbf`: number of Bessel functions (> 0).
    - `radial_envelope`: `"polynomial_envelope"` (p = 5), `"soft_envelope"` or `"cosine_cutoff"`.
    - `radial_mlp_hidden`: hidden sizes of the radial MLPs.
    - `radial_mlp_activation`: activation of the radial MLPs (not normalised).
    - `radial_mlp_variance_scale`: variance scale of the hidden radial-MLP kernels at init.
    - `num_readout_heads`: number of readout heads (> 0).
    - `add_atomic_energies`: add the per-element energies E0.
    - `avg_num_neighbors`: message normalisation; `None` takes the dataset's value.
    - `num_species`: deprecated and ignored, as in mlip (a `DeprecationWarning` if set).
    - `predict_partial_charges`: a second readout output gives partial charges.
    - `use_coulomb_term`: add the Coulomb energy of the partial charges (forces
        `predict_partial_charges=True`, as in mlip).
    - `use_total_charge_embedding`: embed the total charge of each graph with the species.
    - `embed_activation`: activation of the joint species/charge embedding.
    - `use_residual_connection`: the species-indexed linear skip connection of each layer.
    - `gate_nonlinearities`: `{"e": even activation, "o": odd activation}` of the gates.
    - `deterministic_scatter_ops`: make the forward pass's sums reproducible bit for bit: the
        message aggregation at the receivers of every layer, the Coulomb pair energies per
        atom, and the per-structure sums (energies, charges, dipoles in
        [`eqmlip.potential.predict`][]) use the sorted segmented scan of
        [`eqmlip.ops.segment.segment_sum`][] instead of a scatter-add. (mlip 0.2.5 honours the
        flag only in its energy sum.) The backward pass's own scatter-adds (the transposes of
        the gathers `x[senders]`) are XLA's; on GPU set
        `XLA_FLAGS=--xla_gpu_deterministic_ops=true` for bitwise-reproducible forces too.

    Activations are mlip's names: `"tanh"`, `"silu"`, `"relu"`, `"elu"`, `"swish"`,
    `"sigmoid"`, `"none"` (mlip's `Activation` enums are accepted too).
    """

    num_layers: int = 2
    target_irreps: str = DEFAULT_TARGET_IRREPS
    l_max: int = 3
    num_rbf: int = 8
    radial_envelope: str | Enum = "polynomial_envelope"
    radial_mlp_hidden: Sequence[int] = (64, 64)
    radial_mlp_activation: str | Enum = "swish"
    radial_mlp_variance_scale: float = 4.0
    num_readout_heads: int = 1
    add_atomic_energies: bool = True
    avg_num_neighbors: float | None = None
    num_species: int | None = None
    predict_partial_charges: bool = False
    use_coulomb_term: bool = False
    use_total_charge_embedding: bool = False
    embed_activation: str | Enum = "silu"
    use_residual_connection: bool = True
    gate_nonlinearities: Mapping[str, str | Enum] = FrozenMapping(e="swish", o="tanh")
    deterministic_scatter_ops: bool = False

    def __post_init__(self):
        set_ = object.__setattr__
        for name in ("num_layers", "l_max", "num_rbf", "num_readout_heads"):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"NequipConfig: {name} must be an int, got {value!r}.")
        if self.num_layers < 1:
            raise ValueError(f"NequipConfig: num_layers must be > 0, got {self.num_layers}.")
        if self.l_max < 0:
            raise ValueError(f"NequipConfig: l_max must be >= 0, got {self.l_max}.")
        if self.num_rbf < 1:
            raise ValueError(f"NequipConfig: num_rbf must be > 0, got {self.num_rbf}.")
        if self.num_readout_heads < 1:
            raise ValueError(
                f"NequipConfig: num_readout_heads must be > 0, got {self.num_readout_heads}."
            )
        set_(self, "target_irreps", _check_target_irreps(self.target_irreps))

        envelope = _option(self.radial_envelope)
        if envelope not in ENVELOPES:
            raise ValueError(
                f"NequipConfig: radial_envelope must be one of {ENVELOPES}, got {envelope!r}."
            )
        set_(self, "radial_envelope", envelope)

        try:
            hidden = tuple(self.radial_mlp_hidden)
        except TypeError as error:
            raise TypeError(
                "NequipConfig: radial_mlp_hidden must be a sequence of ints, got "
                f"{self.radial_mlp_hidden!r}."
            ) from error
        if not all(_is_int(h) and h > 0 for h in hidden):
            raise ValueError(
                f"NequipConfig: radial_mlp_hidden must hold ints > 0, got {list(hidden)}."
            )
        set_(self, "radial_mlp_hidden", hidden)

        for name in ("radial_mlp_activation", "embed_activation"):
            set_(self, name, _check_activation(name, getattr(self, name)))

        scale = self.radial_mlp_variance_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise TypeError(
                f"NequipConfig: radial_mlp_variance_scale must be a float, got {scale!r}."
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"NequipConfig: radial_mlp_variance_scale must be > 0, got {scale}.")
        set_(self, "radial_mlp_variance_scale", float(scale))

        avg = self.avg_num_neighbors
        if avg is not None:
            if isinstance(avg, bool) or not isinstance(avg, int | float):
                raise TypeError(
                    f"NequipConfig: avg_num_neighbors must be a float or None, got {avg!r}."
                )
            if not (math.isfinite(avg) and avg > 0):
                raise ValueError(
                    f"NequipConfig: avg_num_neighbors must be positive and finite, got {avg}."
                )
            set_(self, "avg_num_neighbors", float(avg))

        if self.num_species is not None:
            if not _is_int(self.num_species) or self.num_species < 1:
                raise ValueError(
                    f"NequipConfig: num_species must be an int > 0 or None, got "
                    f"{self.num_species!r}."
                )
            warnings.warn(
                "NequipConfig: num_species is deprecated (as in mlip 0.2.3+) and has no effect; "
                "the species come from the model's species tuple.",
                DeprecationWarning,
                stacklevel=3,
            )

        for name in (
            "add_atomic_energies",
            "predict_partial_charges",
            "use_coulomb_term",
            "use_total_charge_embedding",
            "use_residual_connection",
            "deterministic_scatter_ops",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"NequipConfig: {name} must be a bool, got {getattr(self, name)!r}."
                )
        if self.use_coulomb_term:
            set_(self, "predict_partial_charges", True)

        gates = self.gate_nonlinearities
        if not isinstance(gates, Mapping):
            raise TypeError(
                "NequipConfig: gate_nonlinearities must be a mapping {'e': ..., 'o': ...}, got "
                f"{gates!r}."
            )
        if set(gates) != {"e", "o"}:
            raise ValueError(
                "NequipConfig: gate_nonlinearities needs exactly the keys 'e' and 'o', got "
                f"{sorted(gates)}."
            )
        set_(
            self,
            "gate_nonlinearities",
            FrozenMapping(
                {k: _check_activation(f"gate_nonlinearities[{k!r}]", v) for k, v in gates.items()}
            ),
        )

    @property
    def irreps(self) -> e3nn.Irreps:
        """`target_irreps` as `e3nn.Irreps`."""
        return e3nn.Irreps(self.target_irreps)


def _check_activation(name: str, value: Any) -> str:
    value = _option(value)
    if value not in ACTIVATIONS:
        raise ValueError(
            f"NequipConfig: {name} must be one of {sorted(ACTIVATIONS)}, got {value!r}."
        )
    return value


def _check_target_irreps(value: Any) -> str:
    try:
        irreps = e3nn.Irreps(value)
    except (ValueError, TypeError, AssertionError) as error:
        raise ValueError(
            f"NequipConfig: target_irreps {value!r} is not a valid irreps string: {error}"
        ) from error
    sorted_irreps = irreps.sort().irreps
    if irreps != sorted_irreps:
        raise ValueError(
            f"NequipConfig: target_irreps {irreps} must be sorted by degree l, with parity "
            f"(-1)**l first; did you mean {sorted_irreps}?"
        )
    if any(mul == 0 for mul, _ in irreps):
        raise ValueError(
            f"NequipConfig: every multiplicity in target_irreps must be > 0, got {irreps}; "
            f"did you mean {e3nn.Irreps([(m, ir) for m, ir in irreps if m > 0])}?"
        )
    if len(irreps.regroup()) != len(irreps):
        raise ValueError(
            f"NequipConfig: target_irreps {irreps} repeats an irrep (mlip's layers fail on "
            f"that); did you mean {irreps.regroup()}?"
        )
    if irreps.count(SCALAR) == 0:
        raise ValueError(
            f"NequipConfig: target_irreps {irreps} has no 0e entry; its multiplicity is the "
            "width of the species embedding and of the readout input, e.g. '16x0e + ...'."
        )
    return str(irreps)
