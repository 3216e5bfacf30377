"""Load Flax variables into eqmlip modules. Reads plain nested mappings; never imports Flax."""

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

FlaxPath = tuple[str, ...]


class ParamSlot(NamedTuple):
    """Where one Flax leaf goes: a trainable array of the module."""

    path: FlaxPath
    get: Callable[[Any], Array]


class StateSlot(NamedTuple):
    """Where one Flax `batch_stats` leaf goes: entry `position` of the state at `index`."""

    path: FlaxPath
    index: eqx.nn.StateIndex
    position: int


@functools.singledispatch
def flax_slots(module: Any) -> tuple[list[ParamSlot], list[StateSlot]]:
    """The Flax variable paths of `module` (collection first) and where each one lands.

    Each module family registers its own layout with `flax_slots.register`.
    """
    raise TypeError(f"from_flax: no Flax layout is known for {type(module).__name__}.")


def _flatten(
    tree: Mapping[str, Any], prefix: FlaxPath = (), *, separator: str | None = None
) -> dict[FlaxPath, Any]:
    """Flatten nested mappings to `{path: leaf}`; with `separator`, keys holding it (mlip's
    `params.npz` joins scopes with `#`) are split into their path."""
    flat: dict[FlaxPath, Any] = {}
    for name, value in tree.items():
        parts = str(name).split(separator) if separator else [str(name)]
        path = (*prefix, *parts)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path, separator=separator))
        else:
            flat[path] = value
    return flat


def _show(path: FlaxPath) -> str:
    return "/".join(path)


def from_flax(module: Any, variables: Mapping[str, Any]) -> Any:
    """Load a Flax variables dict into an eqmlip module built with the same arguments.

    `variables` is what `flax_module.init(...)` returns, as plain nested dicts of arrays
    (`{"params": ..., "batch_stats": ...}`); `flax.core.FrozenDict` works too. Every leaf must
    map onto the module: a missing, extra or mis-shaped leaf raises a `ValueError` naming its path
    (and both shapes). Values are cast to the dtype of the module's parameters.

    **Returns:** the loaded module, or `(module, state)` for stateful modules (`BatchNorm`),
    where `state` is an `equinox.nn.State` holding the Flax `batch_stats`.
    """
    if not isinstance(variables, Mapping):
        raise TypeError(
            "from_flax: variables must be a mapping such as {'params': {...}}, "
            f"got {type(variables).__name__}."
        )
    params, states = flax_slots(module)
    given = _flatten(variables)
    expected = {slot.path for slot in params} | {slot.path for slot in states}
    missing = sorted(expected - given.keys())
    extra = sorted(given.keys() - expected)
    if missing or extra:
        lines = [f"from_flax: the variables do not match {type(module).__name__}."]
        lines += [f"  missing: {_show(p)}" for p in missing]
        lines += [f"  unexpected: {_show(p)}" for p in extra]
        lines.append("Build the eqmlip module with the same arguments as the Flax module.")
        raise ValueError("\n".join(lines))

    new_params = []
    for slot in params:
        current = slot.get(module)
        value = np.asarray(given[slot.path])
        if value.shape != current.shape:
            raise ValueError(
                f"from_flax: {_show(slot.path)} has shape {value.shape}, expected "
                f"{current.shape} for {type(module).__name__}."
            )
        new_params.append(jnp.asarray(value, dtype=current.dtype))
    if params:
        module = eqx.tree_at(
            lambda m: [slot.get(m) for slot in params], module, new_params, is_leaf=None
        )
    if not states:
        return module

    try:
        state = eqx.nn.State(module)
    except Exception as error:
        raise ValueError(
            f"from_flax: {type(module).__name__} has no initial state to fill (it was made with "
            "eqx.nn.make_with_state). Pass the module as constructed, e.g. "
            f"from_flax({type(module).__name__}(...), variables); from_flax returns "
            "(module, state) itself."
        ) from error
    grouped: dict[int, tuple[eqx.nn.StateIndex, dict[int, Array]]] = {}
    for slot in states:
        current = state.get(slot.index)[slot.position]
        value = np.asarray(given[slot.path])
        if value.shape != current.shape:
            raise ValueError(
                f"from_flax: {_show(slot.path)} has shape {value.shape}, expected "
                f"{current.shape} for {type(module).__name__}."
            )
        entries = grouped.setdefault(id(slot.index), (slot.index, {}))[1]
        entries[slot.position] = jnp.asarray(value, dtype=current.dtype)
    for index, entries in grouped.values():
        values = list(state.get(index))
        for position, value in entries.items():
            values[position] = value
        state = state.set(index, tuple(values))
    # As eqx.nn.make_with_state does: the state lives in `state`, not in the module.
    return eqx.nn.delete_init_state(module), state
