"""Dataset statistics (E0s, neighbour counts, force scales), cutoff checks and splits."""

import dataclasses
import math
import warnings
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from ..graph import Graph, check_species, neighbour_list
from ._structure import Structure, _neighbours

# Radius (Å) searched for each atom's nearest neighbour when the cutoff is smaller, so that a
# too-small cutoff can be reported with the distance it should exceed.
_PROBE_RADIUS = 6.0
# At most this many structures (evenly spaced) are searched with the probe radius.
_PROBE_STRUCTURES = 1000


@dataclasses.dataclass(frozen=True)
class DatasetStatistics:
    """Statistics of a training set, as [`eqmlip.data.statistics`][] computes them.

    **Fields:**

    - `species`: sorted atomic numbers.
    - `atomic_energies`: `{Z: E0}` (eV), the isolated-atom energies fitted by least squares
        (or given); `None` when no structure has an energy.
    - `energy_per_atom_mean`, `energy_per_atom_std`: mean and standard deviation over
        structures of the residual energy per atom `(E - sum_i E0[Z_i]) / atoms` (eV/atom);
        `None` without energies.
    - `force_rms`: root mean square of all force components (eV/Å); `None` without forces.
    - `force_std`: standard deviation of all force components (eV/Å); `None` without forces.
    - `avg_num_nodes`: mean number of atoms per structure.
    - `avg_num_neighbors`: mean number of neighbours within `cutoff` per atom; `None` without
        a cutoff.
    - `min_distance`: smallest interatomic distance found (Å, periodic images included) within
        `max(cutoff, 6 Å)`; `inf` if no pair is that close.
    - `first_neighbour_distance`: median over atoms of the distance to the nearest neighbour
        within `max(cutoff, 6 Å)` (Å); `inf` if no atom has one.
    - `cutoff`: the cutoff used for `avg_num_neighbors` (Å), or `None`.
    - `num_structures`: number of structures.
    - `num_energies`, `num_forces`, `num_stresses`: how many structures have each target.
    - `avg_r_min`: mean over structures of the shortest edge length within `cutoff` (Å),
        structures without an edge left out, as mlip 0.2.5 computes `avg_r_min_angstrom`
        (`compute_avg_min_neighbor_distance`); MACE's radial pre-factor uses it. `None`
        without a cutoff or when no structure has an edge (mlip raises there).
    """

    species: tuple[int, ...]
    atomic_energies: dict[int, float] | None
    energy_per_atom_mean: float | None
    energy_per_atom_std: float | None
    force_rms: float | None
    force_std: float | None
    avg_num_nodes: float
    avg_num_neighbors: float | None
    min_distance: float
    first_neighbour_distance: float
    cutoff: float | None
    num_structures: int
    num_energies: int
    num_forces: int
    num_stresses: int
    avg_r_min: float | None = None

    def check_cutoff(self, cutoff: float | None = None) -> list[str]:
        """Warn (`UserWarning`) when a cutoff is too small for this data.

        A cutoff is too small when it is below the typical first-neighbour distance
        (`first_neighbour_distance`), or, for the cutoff the statistics were computed with,
        when it gives fewer than one neighbour per atom on average. A message-passing potential
        then sees (almost) no neighbours.

        **Arguments:**

        - `cutoff`: the cutoff to check (Å); `None` checks `self.cutoff`.

        **Returns:** the warning messages (empty when the cutoff looks fine).
        """
        cutoff = self.cutoff if cutoff is None else float(cutoff)
        if cutoff is None:
            raise ValueError(
                "DatasetStatistics.check_cutoff: no cutoff given and the statistics were "
                "computed without one; pass the cutoff to check."
            )
        messages = []
        if cutoff <= self.first_neighbour_distance:
            messages.append(
                f"cutoff {cutoff:.3g} Å is below the typical (median) first-neighbour distance "
                f"{self.first_neighbour_distance:.3g} Å of the data: most atoms have no "
                "neighbour. Use a larger cutoff."
            )
        if (
            self.cutoff is not None
            and cutoff == self.cutoff
            and self.avg_num_neighbors is not None
            and self.avg_num_neighbors < 1.0
        ):
            messages.append(
                f"cutoff {cutoff:.3g} Å gives {self.avg_num_neighbors:.3g} neighbours per atom "
                "on average (< 1). Use a larger cutoff."
            )
        for message in messages:
            warnings.warn(message, UserWarning, stacklevel=2)
        return messages


def _check_species(structures: Sequence[Structure], species: Collection[int] | None):
    present = sorted({int(z) for s in structures for z in s.atomic_numbers})
    if species is None:
        return tuple(present)
    given = check_species(species, caller="statistics")
    missing = sorted(set(present) - set(given))
    if missing:
        raise ValueError(
            f"statistics: the data has atomic numbers {missing} that are not in species "
            f"{given}; add them to species."
        )
    return given


def _fit_atomic_energies(
    counts: np.ndarray, energies: np.ndarray, species: tuple[int, ...]
) -> np.ndarray:
    """Least-squares E0s; the ones nearest to the energy per atom when the compositions do not
    determine them."""
    num_atoms = counts.sum(axis=1)
    # The energy per atom `m` of the best fit E ~ m * atoms: the E0s of a single composition.
    mean = float(num_atoms @ energies / (num_atoms @ num_atoms))
    rank = np.linalg.matrix_rank(counts)
    if rank < len(species):
        warnings.warn(
            f"statistics: the compositions of the {len(energies)} structures with energies have "
            f"rank {rank} < {len(species)} species {list(species)} (e.g. a single composition, "
            "or a species never seen with an energy), so the E0s are not determined by the "
            f"data. Using the least-squares E0s closest to the energy per atom {mean:.6g} eV "
            "(minimum-norm deviation from it); pass atomic_energies to set them yourself.",
            UserWarning,
            stacklevel=3,
        )
    # E0 = mean + d with d the minimum-norm least-squares fit of the remaining energy: the
    # ordinary least-squares solution when it is unique, else the one nearest to `mean` in
    # every species (the limit of a vanishing ridge penalty towards `mean`).
    residual = energies - num_atoms * mean
    d, *_ = np.linalg.lstsq(counts, residual, rcond=None)
    return mean + d


def statistics(
    structures: Sequence[Structure],
    species: Collection[int] | None = None,
    cutoff: float | None = None,
    *,
    atomic_energies: Mapping[int, float] | None = None,
    graphs: Sequence[Graph] | None = None,
) -> DatasetStatistics:
    """Statistics of a dataset for normalising and configuring a potential.

    **E0s.** With `N[s, Z]` the number of atoms of element `Z` in structure `s`, the E0s
    minimise `sum_s (E_s - sum_Z N[s, Z] E0[Z])^2` over the structures that have an energy
    (unweighted). When the compositions do not determine them (rank of `N` below the number of
    species: a single composition, compositions all proportional to one another, or a species
    only in structures without energy), the least-squares solution closest to the energy per
    atom `m` is taken (the limit of a vanishing ridge penalty towards `m`): `E0 = m + d` with `d`
    the minimum-norm least-squares solution for `E - N m`, where `m = sum_s n_s E_s / sum_s n_s^2`
    is the best fit of `E_s ~ m n_s` (`n_s` atoms). Single-composition data thus get `E0 = m`
    for every species, and a species never seen with an energy gets `m` too. A `UserWarning`
    says when this happens.

    **Arguments:**

    - `structures`: the (training) structures.
    - `species`: atomic numbers to report, sorted without repeats (a superset of those
        present); `None` takes those present.
    - `cutoff`: cutoff (Å) for `avg_num_neighbors`, `avg_r_min` and the cutoff check (a
        `UserWarning` when it is too small, see
        [`eqmlip.data.DatasetStatistics.check_cutoff`][]); `None` skips them.
    - `atomic_energies`: `{Z: E0}` to use instead of fitting them (one per species).
    - `graphs`: the structures' graphs at `cutoff` if already built (e.g. `GraphLoader.graphs`).

    **Returns:** a [`eqmlip.data.DatasetStatistics`][].
    """
    structures = list(structures)
    if not structures:
        raise ValueError("statistics: got no structures.")
    for s in structures:
        if not isinstance(s, Structure):
            raise TypeError(f"statistics: expected Structures, got {type(s).__name__}.")
    species_tuple = _check_species(structures, species)
    column = {z: k for k, z in enumerate(species_tuple)}
    counts = np.zeros((len(structures), len(species_tuple)))
    for row, s in enumerate(structures):
        np.add.at(counts[row], [column[int(z)] for z in s.atomic_numbers], 1.0)
    num_atoms = counts.sum(axis=1)
    if np.any(num_atoms == 0):
        raise ValueError(
            f"statistics: structure {int(np.argmin(num_atoms))} has no atoms; remove it."
        )

    with_energy = np.array([s.energy is not None for s in structures])
    e0_dict: dict[int, float] | None = None
    e_mean = e_std = None
    if atomic_energies is not None:
        missing = [z for z in species_tuple if z not in atomic_energies]
        if missing:
            raise ValueError(
                f"statistics: atomic_energies {dict(atomic_energies)} lack atomic numbers "
                f"{missing}; give one E0 per species {list(species_tuple)}."
            )
        e0 = np.array([float(atomic_energies[z]) for z in species_tuple])
    elif with_energy.any():
        energies = np.array(
            [s.energy for s, has in zip(structures, with_energy, strict=True) if has]
        )
        e0 = _fit_atomic_energies(counts[with_energy], energies, species_tuple)
    else:
        e0 = None
        warnings.warn(
            "statistics: no structure has an energy, so there are no E0s (atomic_energies is "
            "None).",
            UserWarning,
            stacklevel=2,
        )
    if e0 is not None:
        e0_dict = {z: float(e) for z, e in zip(species_tuple, e0, strict=True)}
        if with_energy.any():
            energies = np.array(
                [s.energy for s, has in zip(structures, with_energy, strict=True) if has]
            )
            residual = (energies - counts[with_energy] @ e0) / num_atoms[with_energy]
            e_mean, e_std = float(residual.mean()), float(residual.std())

    forces = [s.forces for s in structures if s.forces is not None]
    force_rms = force_std = None
    if forces:
        components = np.concatenate([f.ravel() for f in forces])
        force_rms = float(np.sqrt(np.mean(components**2)))
        force_std = float(np.std(components))

    avg_num_neighbors = avg_r_min = None
    min_distance = math.inf
    if cutoff is not None:
        cutoff = float(cutoff)
        if graphs is not None and len(graphs) != len(structures):
            raise ValueError(
                f"statistics: got {len(graphs)} graphs for {len(structures)} structures."
            )
        # Edges on the host; lengths in float64 from the structures, whatever the graphs'
        # precision.
        neighbours = (
            [_neighbours(s, cutoff) for s in structures]
            if graphs is None
            else [(np.asarray(g.senders), np.asarray(g.receivers), g.shifts) for g in graphs]
        )
        num_edges = sum(len(senders) for senders, _, _ in neighbours)
        avg_num_neighbors = num_edges / float(num_atoms.sum())
        shortest = []
        for s, (senders, receivers, shifts) in zip(structures, neighbours, strict=True):
            if len(senders):
                lengths = np.linalg.norm(
                    s.positions[receivers]
                    - s.positions[senders]
                    + np.asarray(shifts, dtype=np.float64) @ s.cell,
                    axis=1,
                )
                shortest.append(lengths.min())
        if shortest:
            min_distance = float(min(shortest))
            avg_r_min = float(np.mean(shortest))

    # Nearest-neighbour distances on (a subsample of) the data, searched beyond the cutoff.
    radius = max(_PROBE_RADIUS, cutoff or 0.0)
    step = max(1, math.ceil(len(structures) / _PROBE_STRUCTURES))
    nearest = []
    for s in structures[::step]:
        senders, receivers, shifts = neighbour_list(
            s.positions, s.cell, s.pbc, radius, min_distance=None
        )
        d = np.full(s.num_atoms, math.inf)
        if len(senders):
            lengths = np.linalg.norm(
                s.positions[receivers] - s.positions[senders] + shifts @ s.cell, axis=1
            )
            np.minimum.at(d, senders, lengths)
        nearest.append(d)
    nearest_all = np.concatenate(nearest)
    min_distance = min(min_distance, float(nearest_all.min()))
    first_neighbour = float(np.median(nearest_all))

    stats = DatasetStatistics(
        species=species_tuple,
        atomic_energies=e0_dict,
        energy_per_atom_mean=e_mean,
        energy_per_atom_std=e_std,
        force_rms=force_rms,
        force_std=force_std,
        avg_num_nodes=float(num_atoms.mean()),
        avg_num_neighbors=avg_num_neighbors,
        min_distance=min_distance,
        first_neighbour_distance=first_neighbour,
        cutoff=cutoff,
        num_structures=len(structures),
        num_energies=int(with_energy.sum()),
        num_forces=len(forces),
        num_stresses=sum(s.stress is not None for s in structures),
        avg_r_min=avg_r_min,
    )
    if cutoff is not None:
        stats.check_cutoff()
    return stats


def split(
    structures: Sequence[Structure],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[list[Structure], list[Structure], list[Structure]]:
    """Split structures at random into training, validation and test sets.

    The same `seed` and input give the same split. Set sizes are `round(f * n)` for the
    training and validation fractions; the test set takes the rest, so no structure is
    dropped. Each set keeps the input order.

    **Arguments:**

    - `structures`: the structures.
    - `fractions`: three non-negative fractions (train, validation, test) summing to 1.
    - `seed`: the seed of the random permutation.

    **Returns:** `(train, validation, test)` lists.
    """
    structures = list(structures)
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(not (0 <= f <= 1) for f in fractions):
        raise ValueError(
            f"split: fractions must be three numbers in [0, 1] (train, validation, test), got "
            f"{fractions}."
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split: fractions must sum to 1, got {fractions} (sum {sum(fractions)}).")
    n = len(structures)
    n_train = round(fractions[0] * n)
    n_valid = min(round(fractions[1] * n), n - n_train)
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n_train, n_train + n_valid])
    train, valid, test = ([structures[i] for i in np.sort(part)] for part in parts)
    return train, valid, test
