"""Structures with their targets: reading and writing them with ASE, and their graphs."""

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import ase
import ase.data
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from jaxtyping import Bool, Float, Int

from .._errors import InputError
from ..graph import (
    MIN_DISTANCE,
    Graph,
    check_min_distance,
    check_periodic_cell,
    neighbour_list,
)

_MAX_Z = len(ase.data.chemical_symbols) - 1


class _DefaultKey(str):
    """A key name left at its default: when absent from a frame, the value is `None`.

    A key passed explicitly (a plain `str`) is required in every frame instead, so that a
    misspelt or missing key is an error and not silently missing data.
    """

    __slots__ = ()


_MISSING = object()

# What the constructor accepts and converts (numpy.typing.ArrayLike rejects Python ints under
# beartype, which has no numeric tower by default).
_ArrayLike = np.ndarray | Sequence[Any] | int | float | np.number | np.bool_


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array)  # a private copy, so that freezing it never freezes the caller's
    array.setflags(write=False)
    return array


def _as_float_array(name: str, value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Structure: {name} must be an array of numbers {what}, got {type(value).__name__}."
        ) from error
    if array.shape != shape:
        raise ValueError(f"Structure: {name} has shape {array.shape}, expected {shape} ({what}).")
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        row = f"atom {index[0]}" if name in ("positions", "forces") else f"row {index[0]}"
        hint = "; a missing target must be None, not NaN" if name in ("forces", "stress") else ""
        raise ValueError(
            f"Structure: {name} of {row} is {array[index]} ({len(bad)} non-finite value(s)); "
            f"expected finite numbers{hint}."
        )
    return _readonly(array)


def _scalar(name: str, value: Any) -> float:
    array = np.asarray(value)
    if array.shape != () or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"Structure: {name} must be a real number, got {value!r}.")
    return float(array)


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Structure:
    """One atomic structure with its (optional) reference targets, as NumPy arrays on the host.

    Arrays are copied and made read-only at construction, and every shape is checked. A
    missing target is `None`, never zero or NaN.

    **Fields:**

    - `positions`: `[atoms, 3]` Cartesian positions (Å), float64.
    - `atomic_numbers`: `[atoms]` atomic numbers in 1..118, int64.
    - `cell`: `[3, 3]` lattice vectors as rows (Å); zeros for a molecule without a cell.
    - `pbc`: `[3]` periodicity along each lattice vector.
    - `energy`: total energy (eV) or `None`.
    - `forces`: `[atoms, 3]` forces (eV/Å) or `None`.
    - `stress`: `[3, 3]` stress (eV/Å³) in ASE's sign convention (`atoms.get_stress(voigt=False)`:
        positive under tension), or `None`.
    - `charge`: integer total charge.
    - `weight`: non-negative weight of the structure in a loss (`config_weight` in extxyz).
    - `dataset_idx`: dataset (readout head) the structure belongs to.

    **Checks** (each a `ValueError` naming the field, atom or direction): finite positions and
    cell; a non-zero lattice vector along every periodic direction, the periodic ones linearly
    independent; no two atoms (periodic images included) closer than the keyword-only
    `min_distance` (Å, default `eqmlip.graph.MIN_DISTANCE` = 0.1; `None` skips it, and
    `replace` checks again with the default); a stress target only for a periodic cell of
    non-zero volume.
    """

    positions: Float[np.ndarray, "atoms 3"]
    atomic_numbers: Int[np.ndarray, " atoms"]
    cell: Float[np.ndarray, "3 3"]
    pbc: Bool[np.ndarray, "3"]
    energy: float | None = None
    forces: Float[np.ndarray, "atoms 3"] | None = None
    stress: Float[np.ndarray, "3 3"] | None = None
    charge: int = 0
    weight: float = 1.0
    dataset_idx: int = 0

    def __init__(
        self,
        positions: _ArrayLike,
        atomic_numbers: _ArrayLike,
        cell: _ArrayLike,
        pbc: _ArrayLike,
        energy: _ArrayLike | None = None,
        forces: _ArrayLike | None = None,
        stress: _ArrayLike | None = None,
        charge: _ArrayLike = 0,
        weight: _ArrayLike = 1.0,
        dataset_idx: _ArrayLike = 0,
        *,
        min_distance: float | None = MIN_DISTANCE,
    ):
        # Inputs are any array-likes; they are checked and converted here, and the fields hold
        # the read-only NumPy arrays and Python scalars annotated above.
        positions = np.asarray(positions)
        if positions.ndim != 2 or positions.shape[-1] != 3:
            raise ValueError(
                f"Structure: positions has shape {positions.shape}, expected [atoms, 3]."
            )
        n = positions.shape[0]
        fields: dict[str, Any] = {
            "positions": _as_float_array("positions", positions, (n, 3), "[atoms, 3] in Å"),
            "energy": None,
            "forces": None,
            "stress": None,
        }
        numbers = np.asarray(atomic_numbers)
        if numbers.shape != (n,):
            raise ValueError(
                f"Structure: atomic_numbers has shape {numbers.shape}, expected ({n},) (one per "
                f"position)."
            )
        if numbers.size and (
            not np.issubdtype(numbers.dtype, np.number)
            or np.any(numbers != np.round(numbers))
            or numbers.min() < 1
            or numbers.max() > _MAX_Z
        ):
            raise ValueError(
                f"Structure: atomic_numbers must be integers in 1..{_MAX_Z}, got "
                f"{numbers.tolist()}."
            )
        fields["atomic_numbers"] = _readonly(numbers.astype(np.int64))
        fields["cell"] = _as_float_array("cell", cell, (3, 3), "lattice vectors as rows")
        pbc = np.asarray(pbc)
        # As ASE: integers 0/1 (and NumPy bools or ints) mean False/True; nothing else does.
        if pbc.shape == (3,) and pbc.dtype.kind in "iu" and np.isin(pbc, (0, 1)).all():
            pbc = pbc.astype(bool)
        if pbc.shape != (3,) or pbc.dtype != bool:
            raise ValueError(
                f"Structure: pbc must be 3 booleans, got {pbc.tolist()} (dtype {pbc.dtype})."
            )
        fields["pbc"] = _readonly(pbc)
        check_periodic_cell(fields["cell"], pbc, "Structure")
        if min_distance is not None and n > 0:
            # The pairs closer than min_distance are all within a neighbour list of that radius.
            edges = neighbour_list(
                fields["positions"], fields["cell"], pbc, min_distance, min_distance=None
            )
            check_min_distance(
                fields["positions"], fields["cell"], edges, min_distance, "Structure"
            )
        if energy is not None:
            energy = _scalar("energy", energy)
            if not math.isfinite(energy):
                raise ValueError(
                    f"Structure: energy is {energy}; a missing energy must be None, not NaN."
                )
            fields["energy"] = energy
        if forces is not None:
            fields["forces"] = _as_float_array("forces", forces, (n, 3), "[atoms, 3] in eV/Å")
        if stress is not None:
            fields["stress"] = _as_float_array(
                "stress", stress, (3, 3), "a full 3x3 tensor in eV/Å^3"
            )
            if not (pbc.any() and abs(np.linalg.det(fields["cell"])) > 0):
                # predict reports no stress there (has_stress False): the target could never
                # be compared, so it would be dropped silently.
                raise ValueError(
                    f"Structure: a stress target needs a periodic cell of non-zero volume, but "
                    f"pbc is {pbc.tolist()} and the cell {fields['cell'].tolist()} has volume "
                    f"{abs(np.linalg.det(fields['cell'])):.3g}; drop the stress (stress=None, or "
                    "stress_key=None when reading) or give the structure its cell."
                )
        charge = _scalar("charge", charge)
        if charge != round(charge):
            raise ValueError(f"Structure: charge must be an integer, got {charge}.")
        fields["charge"] = round(charge)
        weight = _scalar("weight", weight)
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"Structure: weight must be finite and >= 0, got {weight}.")
        fields["weight"] = weight
        dataset_idx = _scalar("dataset_idx", dataset_idx)
        if dataset_idx != round(dataset_idx) or dataset_idx < 0:
            raise ValueError(
                f"Structure: dataset_idx must be a non-negative integer, got {dataset_idx}."
            )
        fields["dataset_idx"] = round(dataset_idx)
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def num_atoms(self) -> int:
        """The number of atoms."""
        return int(self.positions.shape[0])

    @property
    def volume(self) -> float:
        """The cell volume `|det(cell)|` (Å³); 0 for a molecule without a cell."""
        return abs(float(np.linalg.det(self.cell)))

    def replace(self, **changes: Any) -> "Structure":
        """A copy with some fields replaced (`dataclasses.replace`), checked again."""
        return dataclasses.replace(self, **changes)

    def to_atoms(self) -> ase.Atoms:
        """An `ase.Atoms` with the targets in a `SinglePointCalculator` (energy, forces, stress
        as Voigt) and `charge`, `config_weight`, `dataset_idx` in `atoms.info`."""
        atoms = ase.Atoms(
            numbers=np.array(self.atomic_numbers),
            positions=np.array(self.positions),
            cell=np.array(self.cell),
            pbc=np.array(self.pbc),
        )
        results: dict[str, Any] = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = np.array(self.forces)
        if self.stress is not None:
            s = self.stress
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["charge"] = self.charge
        atoms.info["config_weight"] = self.weight
        atoms.info["dataset_idx"] = self.dataset_idx
        return atoms

    @classmethod
    def from_atoms(
        cls,
        atoms: ase.Atoms,
        *,
        energy_key: str | None = _DefaultKey("energy"),
        forces_key: str | None = _DefaultKey("forces"),
        stress_key: str | None = _DefaultKey("stress"),
        virial_key: str | None = _DefaultKey("virial"),
        charge_key: str | None = _DefaultKey("charge"),
        weight_key: str | None = _DefaultKey("config_weight"),
        dataset_idx: int = 0,
        frame: int | None = None,
        min_distance: float | None = MIN_DISTANCE,
    ) -> "Structure":
        """Read a structure and its targets from an `ase.Atoms`.

        Each key is looked up in `atoms.info`, then `atoms.arrays`, then the results of an
        attached calculator (e.g. the `SinglePointCalculator` that `ase.io.read` attaches to
        extxyz frames), without triggering any calculation. A key left at its default may be
        absent: the target is then `None` (charge 0, weight 1). A key passed explicitly must be
        present, else a `ValueError` names the key and frame. Pass `None` to ignore a target.

        Stress may be a 3x3 tensor, 9 numbers or 6 Voigt numbers (xx, yy, zz, yz, xz, xy). When
        there is no stress but a virial `W` (eV), the stress is `-W / volume`, which needs a
        cell of non-zero volume. When both are present, the stress is used.

        **Arguments:**

        - `atoms`: the `ase.Atoms`.
        - `energy_key`, `forces_key`, `stress_key`, `virial_key`, `charge_key`, `weight_key`:
            names of the targets in the frame, or `None` to skip one.
        - `dataset_idx`: dataset (readout head) of the structure.
        - `frame`: index of the frame in its file, used in error messages.
        - `min_distance`: closest allowed distance between atoms (Å; `None` skips the check).

        **Returns:** a `Structure`.
        """
        if not isinstance(atoms, ase.Atoms):
            raise TypeError(
                f"Structure.from_atoms: expected an ase.Atoms, got {type(atoms).__name__}."
            )
        where = "" if frame is None else f" in frame {frame}"

        def get(key: str | None, what: str) -> Any:
            if key is None:
                return _MISSING
            if key in atoms.info:
                return atoms.info[key]
            if key in atoms.arrays and key not in ("positions", "numbers"):
                return atoms.arrays[key]
            results = getattr(atoms.calc, "results", None) or {}
            if key in results:
                return results[key]
            if not isinstance(key, _DefaultKey):
                found = sorted(
                    set(atoms.info) | set(atoms.arrays) - {"positions", "numbers"} | set(results)
                )
                raise ValueError(
                    f"Structure.from_atoms: the {what} key {key!r} was given but is not "
                    f"present{where}; the frame has {found}. Check the key name, or leave "
                    f"{what}_key at its default (None when absent)."
                )
            return _MISSING

        energy = get(energy_key, "energy")
        forces = get(forces_key, "forces")
        stress = get(stress_key, "stress")
        virial = get(virial_key, "virial")
        charge = get(charge_key, "charge")
        weight = get(weight_key, "weight")
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        if stress is not _MISSING:
            stress = _full_tensor(stress, "stress", where)
        elif virial is not _MISSING:
            volume = abs(float(np.linalg.det(cell)))
            if not volume > 0:
                raise ValueError(
                    f"Structure.from_atoms: a virial was found{where} but the cell has zero "
                    "volume, so it cannot be converted to a stress (-virial / volume); give the "
                    "structure a cell or pass virial_key=None."
                )
            stress = -_full_tensor(virial, "virial", where) / volume
        try:
            return cls(
                positions=np.asarray(atoms.positions),
                atomic_numbers=np.asarray(atoms.numbers),
                cell=cell,
                pbc=np.asarray(atoms.pbc, dtype=bool),
                energy=None if energy is _MISSING else energy,
                forces=None if forces is _MISSING else np.asarray(forces),
                stress=None if stress is _MISSING else stress,
                charge=0 if charge is _MISSING else charge,
                weight=1.0 if weight is _MISSING else weight,
                dataset_idx=dataset_idx,
                min_distance=min_distance,
            )
        except (TypeError, ValueError) as error:
            if frame is None:
                raise
            raise type(error)(f"frame {frame}: {error}") from None


def _full_tensor(value: Any, name: str, where: str) -> np.ndarray:
    """A 3x3 tensor from 3x3, 9 (row-major) or 6 Voigt numbers (xx, yy, zz, yz, xz, xy)."""
    array = np.asarray(value, dtype=np.float64)
    if array.shape == (3, 3):
        return array
    if array.shape == (9,):
        return array.reshape(3, 3)
    if array.shape == (6,):
        xx, yy, zz, yz, xz, xy = array
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(
        f"Structure.from_atoms: the {name}{where} has shape {array.shape}; expected a 3x3 "
        "tensor, 9 numbers or 6 Voigt numbers."
    )


def read_structures(
    path_or_atoms_list: "str | os.PathLike[str] | ase.Atoms | Sequence[ase.Atoms]",
    *,
    index: str | int | slice = ":",
    energy_key: str | None = _DefaultKey("energy"),
    forces_key: str | None = _DefaultKey("forces"),
    stress_key: str | None = _DefaultKey("stress"),
    virial_key: str | None = _DefaultKey("virial"),
    charge_key: str | None = _DefaultKey("charge"),
    weight_key: str | None = _DefaultKey("config_weight"),
    format: str | None = None,
    dataset_idx: int = 0,
    min_distance: float | None = MIN_DISTANCE,
) -> list[Structure]:
    """Read structures and their targets from a file (extxyz or anything `ase.io.read` reads)
    or from `ase.Atoms`.

    Targets are looked up as in [`eqmlip.data.Structure.from_atoms`][]: a key left at its
    default may be missing (the target is then `None`); a key passed explicitly must be in
    every frame, else a `ValueError` names the frame index and the key.

    **Arguments:**

    - `path_or_atoms_list`: a path, an `ase.Atoms`, or a sequence of them.
    - `index`: which frames of a file to read (`ase.io.read`'s `index`; all by default).
    - `energy_key`, `forces_key`, `stress_key`, `virial_key`, `charge_key`, `weight_key`:
        names of the targets, or `None` to skip one.
    - `format`: file format for `ase.io.read` (guessed from the name when `None`).
    - `dataset_idx`: dataset (readout head) given to every structure.
    - `min_distance`: closest allowed distance between atoms (Å; see
        [`eqmlip.data.Structure`][]; `None` skips the check).

    **Returns:** a list of `Structure`s, in file order.

    **Raises:** for a path, an [`eqmlip.InputError`][] (a `ValueError`) that names the file,
    and the frame when one frame is wrong: missing, a directory, empty, unreadable, or a frame
    that fails the checks of [`eqmlip.data.Structure`][].
    """
    path = None
    if isinstance(path_or_atoms_list, str | os.PathLike):
        path = os.fspath(path_or_atoms_list)
        frames = _read_file(path, index, format)
    else:
        frames = path_or_atoms_list
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    if not isinstance(frames, Sequence) or not all(isinstance(a, ase.Atoms) for a in frames):
        raise TypeError(
            "read_structures: expected a path, an ase.Atoms or a sequence of ase.Atoms, got "
            f"{type(path_or_atoms_list).__name__}."
        )
    keys = dict(
        energy_key=energy_key,
        forces_key=forces_key,
        stress_key=stress_key,
        virial_key=virial_key,
        charge_key=charge_key,
        weight_key=weight_key,
    )
    kwargs: dict[str, Any] = dict(dataset_idx=dataset_idx, min_distance=min_distance, **keys)
    if path is None:
        return [Structure.from_atoms(a, frame=i, **kwargs) for i, a in enumerate(frames)]
    try:
        return [Structure.from_atoms(a, frame=i, **kwargs) for i, a in enumerate(frames)]
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}, {error}") from None


def _read_file(path: str, index: str | int | slice, format: str | None) -> Any:
    """`ase.io.read` with one clear error naming the file for every way a file can be bad."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory; expected a structure file (e.g. extxyz).")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path} is empty; expected at least one structure.")
    try:
        frames = ase.io.read(path, index=index, format=format)
    except (IndexError, StopIteration):
        raise InputError(f"{path}: no frame at index {index!r}.") from None
    except Exception as error:  # ASE raises many kinds (OSError, XYZError, ValueError, ...)
        kind = type(error).__name__
        raise InputError(
            f"{path} could not be read as {format or 'a structure file'} ({kind}: "
            f"{str(error).strip() or 'no detail'})."
        ) from None
    if isinstance(frames, list) and not frames:
        raise InputError(f"{path}: index {index!r} selects no frame.")
    return frames


def write_structures(path: "str | os.PathLike[str]", structures: Sequence[Structure]) -> None:
    """Write structures to an extxyz file that [`eqmlip.data.read_structures`][] reads back.

    Energy, forces and stress go in the standard extxyz fields (absent when `None`); charge,
    `config_weight` and `dataset_idx` in the comment line (the reader takes `dataset_idx` from
    its argument, not from the file). Positions are written with 8 decimals, as ASE does.

    **Arguments:**

    - `path`: the output file (overwritten).
    - `structures`: the `Structure`s to write.
    """
    for s in structures:
        if not isinstance(s, Structure):
            raise TypeError(f"write_structures: expected Structures, got {type(s).__name__}.")
    ase.io.write(os.fspath(path), [s.to_atoms() for s in structures], format="extxyz")


def check_known_species(
    structures: Sequence[Structure],
    species: Sequence[int],
    *,
    what: str,
    known: str,
    item: str = "frame",
) -> None:
    """Refuse, on the host and before anything compiles, a structure with an element outside
    `species`: raise an [`eqmlip.InputError`][] naming the element, the first structure (frame)
    that has it, and the species allowed.

    **Arguments:**

    - `structures`: the structures to check.
    - `species`: the atomic numbers allowed (e.g. a model's `species`).
    - `what`: how to name the structures in the message, e.g. `"test.xyz"`.
    - `known`: where `species` come from, e.g. `"the model"`.
    - `item`: what a structure's index is called (`"frame"` for a file's structures).
    """
    allowed = np.asarray(sorted(int(z) for z in species))
    for k, structure in enumerate(structures):
        unknown = ~np.isin(structure.atomic_numbers, allowed)
        if unknown.any():
            atom = int(np.argmax(unknown))
            z = int(structure.atomic_numbers[atom])
            names = [ase.data.chemical_symbols[int(a)] for a in allowed]
            raise InputError(
                f"{what}, {item} {k}: element {ase.data.chemical_symbols[z]} (Z={z}, atom "
                f"{atom}) is not among the species of {known} {names}."
            )


# `(senders, receivers, shifts)` of one structure, as `eqmlip.graph.neighbour_list` gives them.
_Neighbours = tuple[np.ndarray, np.ndarray, np.ndarray]


def _neighbours(structure: Structure, cutoff: float) -> _Neighbours:
    """The structure's neighbour list on the host: `(senders, receivers, shifts)`."""
    # The Structure checked its own min_distance (possibly a user's) at construction.
    return neighbour_list(
        structure.positions, structure.cell, structure.pbc, cutoff, min_distance=None
    )


def _host_fields(structure: Structure, neighbours: _Neighbours) -> dict[str, np.ndarray]:
    """The `Graph` fields of one structure as NumPy arrays: the host side of
    `structure_graph` and of the loader, which batches them on the host and converts once."""
    senders, receivers, shifts = neighbours
    n, e = structure.num_atoms, len(senders)
    return {
        "positions": structure.positions,  # read-only, never copied
        "atomic_numbers": structure.atomic_numbers.astype(np.int32),
        "senders": np.asarray(senders, dtype=np.int32),
        "receivers": np.asarray(receivers, dtype=np.int32),
        "shifts": np.asarray(shifts, dtype=np.float64).reshape(e, 3),
        "cell": structure.cell[None],
        "pbc": structure.pbc[None],
        "n_node": np.array([n], dtype=np.int32),
        "n_edge": np.array([e], dtype=np.int32),
        "node_mask": np.ones(n, dtype=bool),
        "edge_mask": np.ones(e, dtype=bool),
        "graph_mask": np.ones(1, dtype=bool),
        "dataset_idx": np.array([structure.dataset_idx], dtype=np.int32),
        "charge": np.array([structure.charge], dtype=np.int32),
    }


def structure_graph(structure: Structure, cutoff: float) -> Graph:
    """The graph of one structure, as [`eqmlip.Graph.from_atoms`][] builds it: every directed
    pair within `cutoff`, periodic images included, found on the host with
    [`eqmlip.graph.neighbour_list`][]. The structure's `charge` and `dataset_idx` are carried.

    **Arguments:**

    - `structure`: a [`eqmlip.data.Structure`][].
    - `cutoff`: the neighbour cutoff radius (Å), positive.

    **Returns:** a `Graph` (JAX arrays) with one graph and no padding.
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure_graph: expected a Structure, got {type(structure).__name__}.")
    fields: dict[str, Any] = _host_fields(structure, _neighbours(structure, cutoff))
    return Graph(**fields)
