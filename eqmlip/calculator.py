"""An ASE calculator for eqmlip potentials, with padding capacity grown only on overflow."""

import math
import os
from typing import Any, ClassVar

import ase
import ase.data
import equinox as eqx
import jax
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ._errors import InputError
from .graph import MIN_DISTANCE, Graph, pad_graph
from .io import load_model
from .models._potential import AbstractPotential, parameter_dtype
from .potential import Prediction, predict


class EqmlipCalculator(Calculator):
    """ASE calculator of any [`eqmlip.models.AbstractPotential`][]: `energy`,
    `free_energy` (the same), per-atom `energies`, `forces` and, for structures with a
    periodic direction, `stress` (Voigt order xx, yy, zz, yz, xz, xy, eV/Å³, ASE's sign:
    positive under tension). The stress is `-virial / volume` with the volume of the whole
    cell: for a slab (pbc True, True, False) that includes the vacuum vector along the
    non-periodic direction, as ASE's calculators report it. Asking for the stress of a
    molecule (no periodic direction) or of a cell of zero volume (e.g. a zero vector along a
    non-periodic direction) raises ASE's `PropertyNotImplementedError` rather than reporting
    zeros.

    Each structure's graph is padded to a node and edge capacity, so a compiled function serves
    every step of an MD run or an optimisation. The capacity grows (by `growth`, at least to
    what is needed) only when a structure overflows it, and never shrinks: the number of
    compilations stays small (see `num_compilations`).

    **Arguments:**

    - `model`: a potential (e.g. [`eqmlip.models.nequip.Nequip`][]) or the path of a model
        file ([`eqmlip.io.load_model`][]).
    - `dataset_idx`: the readout head to use.
    - `growth`: factor (> 1) by which an overflowing capacity grows.
    - `node_capacity`, `edge_capacity`: initial capacities (default: what the first structure
        needs, times `growth`).
    - `min_distance`: two atoms closer than this (Å, default 0.1) raise a `ValueError` naming
        them (see [`eqmlip.Graph.from_atoms`][]); `None` skips the check.
    - `**kwargs`: passed to `ase.calculators.calculator.Calculator`.
    """

    implemented_properties: ClassVar[list[str]] = [  # type: ignore[misc]
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
    ]

    def __init__(
        self,
        model: "AbstractPotential | str | os.PathLike[str]",
        *,
        dataset_idx: int = 0,
        growth: float = 1.25,
        node_capacity: int | None = None,
        edge_capacity: int | None = None,
        min_distance: float | None = MIN_DISTANCE,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(model, str | os.PathLike):
            model = load_model(model)
        if not isinstance(model, AbstractPotential):
            raise TypeError(
                "EqmlipCalculator: model must be an eqmlip.models.AbstractPotential or a model "
                f"file path, got {type(model).__name__}."
            )
        if not (math.isfinite(growth) and growth > 1):
            raise ValueError(f"EqmlipCalculator: growth must be > 1, got {growth}.")
        heads = model.num_heads
        if not 0 <= dataset_idx < heads:
            raise ValueError(
                f"EqmlipCalculator: dataset_idx {dataset_idx} is outside 0..{heads - 1}, the "
                "model's heads."
            )
        self.model = model
        self.dataset_idx = int(dataset_idx)
        self.growth = float(growth)
        self.node_capacity = node_capacity
        self.edge_capacity = edge_capacity
        self.min_distance = min_distance
        self.num_compilations = 0
        self._dtype = parameter_dtype(model)
        # One jitted function per calculator; tracing it (once per padded shape) is counted.
        self._predict_jit = eqx.filter_jit(self._traced_predict)

    def _traced_predict(self, model: AbstractPotential, graph: Graph, stress: bool) -> Prediction:
        self.num_compilations += 1  # runs only while tracing
        return predict(model, graph, forces=True, stress=stress)

    def _capacity(self, needed: int, current: int | None) -> int:
        if current is not None and needed <= current:
            return current
        grown = needed if current is None else max(needed, current)
        return int(math.ceil(grown * self.growth))

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Any = ("energy",),
        system_changes: Any = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        assert atoms is not None
        volume = abs(float(np.linalg.det(atoms.cell.array)))
        periodic = bool(np.any(atoms.pbc)) and volume > 0
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "EqmlipCalculator: stress needs a periodic structure (some pbc True) whose cell "
                f"has a non-zero volume; this one has pbc={atoms.pbc.tolist()} and volume "
                f"{volume:.3g} Å^3 (cell {atoms.cell.array.tolist()})."
            )
        unknown = ~np.isin(atoms.numbers, self.model.species)
        if unknown.any():  # on the host: the compiled check would only fire after compiling
            atom = int(np.argmax(unknown))
            raise InputError(
                f"EqmlipCalculator: element {atoms.get_chemical_symbols()[atom]} (Z="
                f"{atoms.numbers[atom]}, atom {atom}) is not among the model's species "
                f"{[ase.data.chemical_symbols[z] for z in self.model.species]}."
            )
        graph = Graph.from_atoms(
            atoms, self.model.cutoff, dataset_idx=self.dataset_idx, min_distance=self.min_distance
        )
        # One padding node (and graph) always exists, so padding edges have somewhere to go.
        self.node_capacity = self._capacity(graph.num_nodes + 1, self.node_capacity)
        self.edge_capacity = self._capacity(max(graph.num_edges, 1), self.edge_capacity)
        # Padded on the host (NumPy): an eager jnp pad compiles once per new edge count.
        host = jax.tree.map(np.asarray, graph)
        padded = pad_graph(host, self.node_capacity, self.edge_capacity, 2)
        padded = jax.tree.map(
            lambda x: x.astype(self._dtype) if np.issubdtype(x.dtype, np.floating) else x, padded
        )
        # Stress is always computed for periodic cells (one shape of function per kind).
        result = self._predict_jit(self.model, padded, periodic)
        n = len(atoms)
        energy = float(result.energy[0])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = np.asarray(result.node_energies[:n], dtype=np.float64)
        assert result.forces is not None
        self.results["forces"] = np.asarray(result.forces[:n], dtype=np.float64)
        if periodic:
            assert result.stress is not None
            s = np.asarray(result.stress[0], dtype=np.float64)
            self.results["stress"] = np.array(
                [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
            )
