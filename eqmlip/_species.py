"""Species: the one check of a tuple of atomic numbers, and atomic numbers to species indices."""

from collections.abc import Collection

import ase.data
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from ._arrays import _Arr, _host_value

_MAX_Z = len(ase.data.chemical_symbols) - 1  # 118


def _element(z: int) -> str:
    if z == 0:
        return "atomic number 0 (no element; padding nodes carry Z=0, so pass mask=node_mask)"
    if 0 < z <= _MAX_Z:
        return f"element {ase.data.chemical_symbols[z]} (Z={z})"
    return f"atomic number {z} (no such element)"


def check_species(species: Collection[int], *, caller: str) -> tuple[int, ...]:
    """Check a tuple of species (a model's, or a dataset's), the one check shared by the
    library: atomic numbers in 1..118, sorted, without repeats.

    **Arguments:**

    - `species`: the atomic numbers, e.g. `(1, 6, 7, 8)`.
    - `caller`: the name that starts error messages, e.g. `"Nequip"`.

    **Returns:** the species as a tuple of Python ints.

    **Raises:** `TypeError` when `species` is not a collection of numbers; `ValueError` when
    it is empty, holds non-integers or numbers outside 1..118, or is not sorted without
    repeats. Each message says what was received and the fix.
    """
    return _check_species(species, caller)


def _check_species(species: Collection[int], caller: str) -> tuple:
    # A plain `tuple` hint: the runtime checker samples the items of `tuple[int, ...]` with
    # `random`, which Hypothesis forbids while drawing (species_index runs there).
    try:
        numbers = [float(z) for z in species]
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{caller}: species must be a sequence of atomic numbers, got {species!r}."
        ) from error
    if not numbers:
        raise ValueError(
            f"{caller}: species is empty; give the atomic numbers of the elements, e.g. (1, 6, 8)."
        )
    if any(z != round(z) for z in numbers):
        raise ValueError(f"{caller}: species must be integer atomic numbers, got {numbers}.")
    values = tuple(round(z) for z in numbers)
    outside = [z for z in values if not 1 <= z <= _MAX_Z]
    if outside:
        raise ValueError(
            f"{caller}: species must be atomic numbers in 1..{_MAX_Z}, got {values}; remove "
            f"{outside} (0 marks padding, not an element)."
        )
    if any(a >= b for a, b in zip(values[:-1], values[1:], strict=True)):
        raise ValueError(
            f"{caller}: species must be sorted and without repeats, got {values}; use "
            f"{tuple(sorted(set(values)))}."
        )
    return values


def species_index(
    atomic_numbers: Int[_Arr, " nodes"],
    species: Collection[int],
    mask: Bool[_Arr, " nodes"] | None = None,
) -> Int[Array, " nodes"]:
    """The index of each atomic number in the sorted tuple `species`: `species[index] == Z`.

    Never maps an unknown element silently to 0 (mlip's `SpeciesAssignmentBlock` does, which
    then turns the energy into NaN). When the values are known (outside `jax.jit`) it raises
    a `ValueError` naming the first unknown element; under `jax.jit` it checks with
    `equinox.error_if`, so an unknown element raises at run time (an `EquinoxRuntimeError`)
    naming it (the largest unknown atomic number).

    **Arguments:**

    - `atomic_numbers`: `[nodes]` integer atomic numbers.
    - `species`: the model's atomic numbers, sorted, without repeats (e.g. `(1, 6, 7, 8)`;
        see [`eqmlip.graph.check_species`][]).
    - `mask`: `[nodes]` booleans; entries where it is `False` (padding, `Z = 0`) are not checked
        and get index 0. Pass `graph.node_mask` for padded graphs.

    **Returns:** int32 indices `[nodes]`, a JAX array.
    """
    values = _check_species(species, "species_index")
    table = np.full(_MAX_Z + 1, -1, dtype=np.int32)
    table[list(values)] = np.arange(len(values), dtype=np.int32)
    known = ", ".join(ase.data.chemical_symbols[z] for z in values)
    z = jnp.asarray(atomic_numbers)
    in_range = (z >= 0) & (z <= _MAX_Z)
    index = jnp.where(in_range, jnp.asarray(table)[jnp.clip(z, 0, _MAX_Z)], -1)
    valid = jnp.ones(z.shape, dtype=bool) if mask is None else jnp.asarray(mask, dtype=bool)
    bad = (index < 0) & valid
    if z.shape[0] == 0:
        return index.astype(jnp.int32)
    z_host, bad_host = _host_value(z), _host_value(bad)
    if z_host is not None and bad_host is not None:
        if bad_host.any():
            first = int(z_host[np.argmax(bad_host)])
            raise ValueError(
                f"species_index: {_element(first)} is not among the model's species ({known})."
            )
    else:
        # Reductions only, and the error threaded through a scalar: with the nodes sharded
        # (graph parallelism), reading `z[argmax(bad)]` or checking on `index` itself pins it
        # to one device (XLA's "Involuntary full rematerialization" copy), and with an
        # unknown element the devices then waited on each other until XLA aborted.
        code = jnp.where(in_range, z, _MAX_Z + 1)
        # One message per atomic number (the last one for anything outside 0..118), so that
        # the error names the (largest) unknown element even under jit, where messages must
        # be static.
        branch = jnp.max(jnp.where(bad, code, -1))
        messages = tuple(
            f"species_index: {_element(k)} is not among the model's species ({known})."
            for k in range(_MAX_Z + 1)
        ) + (
            f"species_index: an atomic number outside 0..{_MAX_Z} is not among the model's "
            f"species ({known}).",
        )
        zero = jnp.zeros((), jnp.int32)
        index = index + eqx.branched_error_if(zero, branch >= 0, jnp.maximum(branch, 0), messages)
    return jnp.where(valid, index, 0).astype(jnp.int32)
