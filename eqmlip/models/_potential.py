"""The one interface every eqmlip potential implements, and the registry of potentials by name.

Everything above `eqmlip/models` (forces and stress, training, model files, the ASE calculator,
the command line, scale-out) relies only on [`eqmlip.models.AbstractPotential`][]: a model maps
an [`eqmlip.Graph`][] to per-atom energies, declares its species and cutoff, and can describe
itself as JSON hyperparameters so that a model file can rebuild it.
"""

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar, cast, overload

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ..graph import Graph


class PotentialOutputs(NamedTuple):
    """What a potential computes for a graph, beyond per-atom energies where it has them.

    - `node_energies`: `[nodes]` per-atom energies; 0 on padding.
    - `partial_charges`: `[nodes]` per-atom charges (0 on padding), or `None`.
    - `uncorrected_charge`: `[graphs]` the sum of the predicted charges before they were
        corrected to each graph's total charge, or `None`.
    """

    node_energies: Float[Array, " nodes"]
    partial_charges: Float[Array, " nodes"] | None = None
    uncorrected_charge: Float[Array, " graphs"] | None = None


class AbstractPotential(eqx.Module):
    """An interatomic potential: per-atom energies of every structure in an [`eqmlip.Graph`][].

    [`eqmlip.potential.predict`][] (forces, virials, stresses by differentiating through a
    strain of the graph), the training loop, model files, the ASE calculator, the command line
    and graph-parallel evaluation use a model only through this interface, so a potential
    written outside eqmlip runs through all of them once it subclasses this and is registered
    with [`eqmlip.models.register_potential`][].

    **To implement:**

    - `species`: the model's atomic numbers, sorted (a static field or property); an atom of
        another element is an error.
    - `cutoff`: the cutoff (Å) of the graph edges the model expects.
    - `__call__(graph)`: per-atom energies `[nodes]` (0 on padding), or a
        [`eqmlip.models.PotentialOutputs`][]. It must read positions and cell only from the
        graph (`graph.edge_vectors()`), so that the strain `predict` applies reaches it.
    - `hyperparameters()`: the keyword arguments (JSON values) that rebuild the model's
        skeleton with `cls(**hyperparameters, dtype=..., key=...)`; override
        `from_hyperparameters` if the constructor differs.

    **Optional** (defaults in brackets): `num_heads` [1], the readout heads `dataset_idx` may
    select; `deterministic_scatter` [False], whether sums over atoms must be reproducible;
    `trainable_mask()` [every inexact array], the leaves an optimiser updates;
    `from_statistics(config, statistics, ...)`, to build the model from a dataset (used by
    [`eqmlip.training.run`][]); `config_class`, the dataclass of that `config`.
    """

    species: eqx.AbstractVar[tuple[int, ...]]
    cutoff: eqx.AbstractVar[float]

    # The dataclass of the `model` section of a run configuration (minus the generic keys
    # name, cutoff, seed, dtype, energy_scale), or None when the model takes no options.
    config_class: ClassVar[type | None] = None

    @abc.abstractmethod
    def __call__(self, graph: Graph) -> Float[Array, " nodes"] | PotentialOutputs:
        """Per-atom energies (or [`eqmlip.models.PotentialOutputs`][]) of `graph`."""

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """JSON-serialisable keyword arguments that rebuild this model's skeleton (every
        argument of the constructor except `dtype` and `key`)."""

    @classmethod
    def from_hyperparameters(
        cls, hyperparameters: Mapping[str, Any], *, dtype: Any, key: PRNGKeyArray
    ) -> "AbstractPotential":
        """A model with the architecture `hyperparameters` describes (the inverse of
        `hyperparameters()`), with placeholder parameters from `key`."""
        # Subclasses define the constructor; the base class cannot spell its signature.
        return cast(Any, cls)(**hyperparameters, dtype=dtype, key=key)

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
    ) -> "AbstractPotential":
        """Build a new model for a dataset.

        **Arguments:**

        - `config`: an instance of `cls.config_class` (the model's options).
        - `statistics`: the training set's [`eqmlip.data.DatasetStatistics`][] (species, E0s,
            average neighbour count).
        - `cutoff`: the graph cutoff (Å).
        - `energy_scale`: the scale of the model's per-atom energies.
        - `dtype`, `key`: parameter dtype and initial key.
        """
        raise NotImplementedError(
            f"{cls.__name__}: this potential does not implement from_statistics, so it cannot be "
            "built from a dataset by name; build it yourself and pass it as `model=`."
        )

    @property
    def num_heads(self) -> int:
        """The number of readout heads (values of `graph.dataset_idx` the model accepts)."""
        return 1

    @property
    def deterministic_scatter(self) -> bool:
        """Whether sums over atoms and edges must use the reproducible segment sum."""
        return False

    def trainable_mask(self) -> PyTree[bool]:
        """A pytree of booleans like the model: `True` on the leaves an optimiser updates."""
        return jax.tree.map(eqx.is_inexact_array, self)


def node_energies_of(
    outputs: Any, caller: str
) -> tuple[Float[Array, " nodes"], Float[Array, " nodes"] | None]:
    """The per-atom energies and charges of what a potential's `__call__` returned."""
    if isinstance(outputs, PotentialOutputs):
        return outputs.node_energies, outputs.partial_charges
    if isinstance(outputs, jax.Array) and outputs.ndim == 1:
        return outputs, None
    got = getattr(outputs, "shape", type(outputs).__name__)
    raise TypeError(
        f"{caller}: a potential must return per-atom energies of shape [nodes] or a "
        f"PotentialOutputs, got {got}."
    )


def parameter_dtype(model: PyTree) -> np.dtype:
    """The dtype of a model's floating-point parameters (the first inexact leaf)."""
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    if not leaves:
        raise TypeError(f"{type(model).__name__}: the model has no floating-point parameters.")
    return np.dtype(leaves[0].dtype)


_REGISTRY: dict[str, type[AbstractPotential]] = {}
_P = TypeVar("_P", bound=type[AbstractPotential])


@overload
def register_potential(cls: _P, *, name: str | None = None) -> _P: ...


@overload
def register_potential(cls: None = None, *, name: str | None = None) -> Callable[[_P], _P]: ...


def register_potential(cls: Any = None, *, name: str | None = None) -> Any:
    """Register a potential class under a name, so that model files and run configurations can
    name it. Use as a decorator (`@register_potential` or `@register_potential(name="pair")`)
    or call it (`register_potential(MyModel)`).

    **Arguments:**

    - `cls`: a subclass of [`eqmlip.models.AbstractPotential`][].
    - `name`: the registry name (default: the class name in lower case). Registering another
        class under a taken name is an error; registering the same class again is a no-op.

    **Returns:** the class.
    """

    def register(klass: _P) -> _P:
        if not (isinstance(klass, type) and issubclass(klass, AbstractPotential)):
            raise TypeError(
                "register_potential: expected a subclass of eqmlip.models.AbstractPotential, got "
                f"{klass!r}."
            )
        key = klass.__name__.lower() if name is None else name
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"register_potential: the name must be a non-empty string, got {key!r}."
            )
        known = _REGISTRY.get(key)
        if known is not None and known is not klass:
            same = (known.__module__, known.__qualname__) == (klass.__module__, klass.__qualname__)
            if not same:  # a module reloaded (e.g. a notebook cell run again) may re-register
                raise ValueError(
                    f"register_potential: the name {key!r} is taken by "
                    f"{known.__module__}.{known.__qualname__}; choose another name."
                )
        _REGISTRY[key] = klass
        return klass

    return register if cls is None else register(cls)


def potential_class(name: str) -> type[AbstractPotential]:
    """The potential class registered under `name` (see
    [`eqmlip.models.register_potential`][])."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown potential {name!r}; registered potentials are {sorted(_REGISTRY)} (register "
            "your own with eqmlip.models.register_potential)."
        ) from None


def potential_name(model_or_class: Any) -> str:
    """The registry name of a potential or its class; an unregistered one is an error."""
    klass = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    for key, value in _REGISTRY.items():
        if value is klass:
            return key
    raise ValueError(
        f"{klass.__name__} is not a registered potential; register it with "
        "eqmlip.models.register_potential so that model files can name it."
    )


def registered_potentials() -> dict[str, type[AbstractPotential]]:
    """A copy of the registry: name -> potential class."""
    return dict(_REGISTRY)
