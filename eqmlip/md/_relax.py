"""Geometry optimisation on the device: ASE's FIRE, step for step, on the positions or on
the coordinates of ASE's `UnitCellFilter` (positions and cell)."""

import dataclasses
import math
from typing import Any, NamedTuple

import ase
import ase.units
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError
from ..graph import MIN_DISTANCE, check_min_distance, neighbour_list
from ..models._potential import AbstractPotential, parameter_dtype
from . import _neighbours as nl
from ._engine import (
    Forces,
    _as_replicas,
    _check_positive,
    _check_species,
    _Constants,
    _evaluate,
    _initial,
    _pbc_of,
    _Static,
)


class _FireState(NamedTuple):
    """FIRE on generalised coordinates: the positions, or with a cell filter ASE's
    `UnitCellFilter` coordinates (positions without the deformation, then `cell_factor` times
    the deformation gradient)."""

    coordinates: Float[Array, "1 dofs 3"]
    gradient: Float[Array, "1 dofs 3"]  # minus the derivative of the enthalpy
    velocity: Float[Array, "1 dofs 3"]
    timestep: Float[Array, ""]
    alpha: Float[Array, ""]
    downhill: Int[Array, ""]
    started: Bool[Array, ""]
    positions: Float[Array, "1 nodes 3"]
    cell: Float[Array, "1 3 3"]
    forces: Forces
    neighbours: nl.NeighbourList
    steps: Int[Array, ""]


class _FireParameters(NamedTuple):
    fmax: Float[Array, ""]
    max_steps: Int[Array, ""]
    maxstep: Float[Array, ""]
    dtmax: Float[Array, ""]
    nmin: Int[Array, ""]
    finc: Float[Array, ""]
    fdec: Float[Array, ""]
    astart: Float[Array, ""]
    fa: Float[Array, ""]
    original_cell: Float[Array, "3 3"]
    cell_factor: Float[Array, ""]
    scalar_pressure: Float[Array, ""]  # eV/Å^3


def _fire_converged(state: _FireState, parameters: _FireParameters) -> Bool[Array, ""]:
    largest = jnp.max(jnp.sum(state.gradient**2, axis=-1))
    return largest < parameters.fmax**2


def _physical(
    coordinates: Float[Array, "1 dofs 3"],
    cell: Float[Array, "1 3 3"],
    parameters: _FireParameters,
    relax_cell: bool,
) -> tuple[Float[Array, "1 nodes 3"], Float[Array, "1 3 3"]]:
    """Positions and cell of generalised coordinates (`UnitCellFilter.set_positions`)."""
    if not relax_cell:
        return coordinates, cell
    undeformed, scaled_gradient = coordinates[:, :-3], coordinates[:, -3:]
    transposed = jnp.swapaxes(scaled_gradient / parameters.cell_factor, 1, 2)
    return undeformed @ transposed, parameters.original_cell @ transposed


def _generalised_forces(
    forces: Forces,
    cell: Float[Array, "1 3 3"],
    parameters: _FireParameters,
    relax_cell: bool,
) -> Float[Array, "1 dofs 3"]:
    """`UnitCellFilter.get_forces`: forces times the deformation gradient `F`, and the
    virial `-V (stress + p I)` times `F^-T` over `cell_factor`."""
    if not relax_cell:
        return forces.forces
    deformation = jnp.linalg.solve(parameters.original_cell, cell[0]).T
    volume = jnp.abs(jnp.linalg.det(cell[0]))
    eye = jnp.eye(3, dtype=cell.dtype)
    virial = -volume * (forces.stress[0] + parameters.scalar_pressure * eye)
    virial = jnp.linalg.solve(deformation, virial.T).T
    return jnp.concatenate(
        [forces.forces @ deformation, (virial / parameters.cell_factor)[None]], axis=1
    )


@eqx.filter_jit
def _fire_loop(
    model: AbstractPotential,
    state: _FireState,
    parameters: _FireParameters,
    constants: _Constants,
    static: _Static,
) -> tuple[_FireState, Bool[Array, ""]]:
    """ASE's FIRE, step for step, until converged, out of steps or a neighbour overflow (then
    the last state before the overflowing step is returned with the flag)."""
    relax_cell = static.ensemble == "relax-cell"

    def step(s: _FireState) -> _FireState:
        f = s.gradient
        v = s.velocity
        vf = jnp.vdot(f, v)
        f_norm = jnp.sqrt(jnp.vdot(f, f))
        v_norm = jnp.sqrt(jnp.vdot(v, v))
        uphill = s.started & ~(vf > 0.0)
        mixed = (1.0 - s.alpha) * v + s.alpha * f / jnp.where(f_norm > 0, f_norm, 1.0) * v_norm
        accelerate = s.started & (vf > 0.0) & (s.downhill > parameters.nmin)
        v = jnp.where(uphill, 0.0, jnp.where(s.started, mixed, v))
        dt = jnp.where(
            accelerate,
            jnp.minimum(s.timestep * parameters.finc, parameters.dtmax),
            jnp.where(uphill, s.timestep * parameters.fdec, s.timestep),
        )
        alpha = jnp.where(
            accelerate, s.alpha * parameters.fa, jnp.where(uphill, parameters.astart, s.alpha)
        )
        downhill = jnp.where(uphill, 0, jnp.where(s.started, s.downhill + 1, s.downhill))
        v = v + dt * f
        dr = dt * v
        norm = jnp.sqrt(jnp.vdot(dr, dr))
        dr = jnp.where(norm > parameters.maxstep, parameters.maxstep * dr / norm, dr)
        q = s.coordinates + dr
        x, cell = _physical(q, s.cell, parameters, relax_cell)
        forces, neighbours = _evaluate(model, x, cell, s.neighbours, constants, static)
        gradient = _generalised_forces(forces, cell, parameters, relax_cell)
        started = jnp.ones((), bool)
        return _FireState(
            q, gradient, v, dt, alpha, downhill, started, x, cell, forces, neighbours, s.steps + 1
        )

    def overflowed(s: _FireState) -> Bool[Array, ""]:
        return jnp.any(s.neighbours.overflow) | jnp.any(s.forces.overflow)

    def cond(carry):
        s, overflow = carry
        return ~overflow & ~_fire_converged(s, parameters) & (s.steps < parameters.max_steps)

    def body(carry):
        s, _ = carry
        new = step(s)
        bad = overflowed(new)
        return jax.tree.map(lambda a, b: jnp.where(bad, a, b), s, new), bad

    return jax.lax.while_loop(cond, body, (state, jnp.zeros((), bool)))


@dataclasses.dataclass
class RelaxResult:
    """What [`eqmlip.md.relax`][] returns: the relaxed `atoms` (energy, forces and, for
    periodic cells, stress attached), whether the largest force fell below `fmax`
    (`converged`), the optimiser `steps` taken, the final `energy` (eV), the largest force
    `fmax` (eV/Å; with `relax_cell`, the cell's generalised forces count too) and the
    neighbour `reallocations`."""

    atoms: ase.Atoms
    converged: bool
    steps: int
    energy: float
    fmax: float
    reallocations: int


def relax(
    model: AbstractPotential,
    atoms: ase.Atoms,
    *,
    fmax: float = 0.05,
    steps: int = 1000,
    maxstep: float = 0.2,
    timestep: float = 0.1,
    dtmax: float = 1.0,
    skin: float = 1.0,
    relax_cell: bool = False,
    pressure: float = 0.0,
    cell_factor: float | None = None,
    dataset_idx: int = 0,
    min_distance: float | None = MIN_DISTANCE,
) -> RelaxResult:
    """Relax atomic positions, and optionally the cell, with FIRE, entirely on the device.

    The algorithm and its defaults are ASE's `ase.optimize.FIRE` (`dt=0.1`, `maxstep=0.2`,
    `dtmax=1.0`, `Nmin=5`, `finc=1.1`, `fdec=0.5`, `astart=0.1`, `fa=0.99`), step for step, and
    the stopping rule is `Optimizer.run(fmax, steps)`'s: the largest per-atom force below
    `fmax`, or `steps` optimiser steps. With `relax_cell`, FIRE runs on the coordinates of
    ASE's `UnitCellFilter(atoms, cell_factor, scalar_pressure=pressure)`: the positions
    without the cell's deformation, and the deformation gradient times `cell_factor`, whose
    forces are the virial `-V (stress + p I)`; the largest of those "forces" must fall below
    `fmax` too.

    **Arguments:** `model`, `atoms` (any periodicity; fully periodic for `relax_cell`),
    `fmax` (eV/Å), `steps`, `maxstep` (Å), `timestep` and `dtmax` (FIRE's internal units, as
    ASE's), `skin` (Å), `relax_cell`, `pressure` (GPa, the target of the cell relaxation),
    `cell_factor` (default: the number of atoms, ASE's), `dataset_idx`, `min_distance` (see
    [`eqmlip.md.simulate`][]).

    **Returns:** an [`eqmlip.md.RelaxResult`][].
    """
    fmax = _check_positive("fmax", fmax, "eV/Å")
    maxstep = _check_positive("maxstep", maxstep, "Å")
    if int(steps) != steps or steps < 0:
        raise InputError(f"relax: steps must be a non-negative integer, got {steps}.")
    (atoms,) = _as_replicas(atoms)
    if relax_cell and not all(atoms.pbc):
        raise InputError(
            f"relax: relax_cell needs a fully periodic cell, got pbc {atoms.pbc.tolist()}."
        )
    if not math.isfinite(pressure):
        raise InputError(f"relax: pressure must be finite (GPa), got {pressure}.")
    _check_species(model, atoms, "relax")
    positions = np.asarray(atoms.positions, np.float64)
    cell = np.asarray(atoms.cell.array, np.float64)
    pbc = _pbc_of(atoms)
    if min_distance is not None:
        close = neighbour_list(positions, cell, atoms.pbc, min_distance, min_distance=None)
        check_min_distance(positions, cell, close, min_distance, "relax")
    dtype = parameter_dtype(model)
    constants = _Constants(
        atomic_numbers=jnp.asarray(atoms.numbers, jnp.int32),
        masses=jnp.asarray(atoms.get_masses(), dtype),
        timestep=jnp.zeros((), dtype),
        kT=jnp.zeros(1, dtype),
        friction=jnp.zeros((), dtype),
        pressure=jnp.zeros((), dtype),
        compressibility=jnp.zeros((), dtype),
        barostat_time=jnp.ones((), dtype),
        dataset_idx=jnp.asarray(dataset_idx, jnp.int32),
        charge=jnp.asarray(int(atoms.info.get("charge", 0)), jnp.int32),
        pbc=jnp.asarray(pbc),
    )
    parameters = _FireParameters(
        fmax=jnp.asarray(fmax, dtype),
        max_steps=jnp.asarray(steps, jnp.int32),
        maxstep=jnp.asarray(maxstep, dtype),
        dtmax=jnp.asarray(dtmax, dtype),
        nmin=jnp.asarray(5, jnp.int32),
        finc=jnp.asarray(1.1, dtype),
        fdec=jnp.asarray(0.5, dtype),
        astart=jnp.asarray(0.1, dtype),
        fa=jnp.asarray(0.99, dtype),
        original_cell=jnp.asarray(cell, dtype),
        cell_factor=jnp.asarray(len(atoms) if cell_factor is None else cell_factor, dtype),
        scalar_pressure=jnp.asarray(pressure * ase.units.GPa, dtype),
    )
    spec = nl.allocate(positions, cell, pbc, model.cutoff, skin)
    x = jnp.asarray(positions[None], dtype)
    c = jnp.asarray(cell[None], dtype)
    mode = "relax-cell" if relax_cell else "relax"
    static = _Static(spec, mode, 0)
    forces, neighbours = _initial(model, x, c, constants, static)
    coordinates = x
    if relax_cell:  # no deformation yet: F = I
        identity = jnp.eye(3, dtype=dtype)[None] * parameters.cell_factor
        coordinates = jnp.concatenate([x, identity], axis=1)
    state = _FireState(
        coordinates=coordinates,
        gradient=_generalised_forces(forces, c, parameters, relax_cell),
        velocity=jnp.zeros_like(coordinates),
        timestep=jnp.asarray(timestep, dtype),
        alpha=jnp.asarray(0.1, dtype),
        downhill=jnp.zeros((), jnp.int32),
        started=jnp.zeros((), bool),
        positions=x,
        cell=c,
        forces=forces,
        neighbours=neighbours,
        steps=jnp.zeros((), jnp.int32),
    )
    reallocations = 0
    while True:
        if bool(jnp.any(state.neighbours.overflow) | jnp.any(state.forces.overflow)):
            overflow = jnp.ones((), bool)
        else:
            state, overflow = _fire_loop(model, state, parameters, constants, static)
        if not bool(overflow):
            break
        # Grow, rebuild the lists at the last good positions, and go on from that state.
        reallocations += 1
        here = np.asarray(state.positions[0], np.float64)
        here_cell = np.asarray(state.cell[0], np.float64)
        grown = nl.grow(
            nl.allocate(here, here_cell, pbc, model.cutoff, skin, previous=spec),
            int(jnp.max(state.neighbours.count)),
            int(jnp.max(state.forces.num_edges)),
            occupancy=int(jnp.max(state.neighbours.occupancy)),
        )
        spec = nl.widen(grown) if grown == spec else grown
        static = _Static(spec, mode, 0)
        forces, neighbours = _initial(model, state.positions, state.cell, constants, static)
        state = state._replace(forces=forces, neighbours=neighbours)

    final = ase.Atoms(
        numbers=atoms.numbers,
        positions=np.asarray(state.positions[0], np.float64),
        cell=np.asarray(state.cell[0], np.float64),
        pbc=pbc,
    )
    energy = float(state.forces.energy[0])
    final_forces = np.asarray(state.forces.forces[0], np.float64)
    results: dict[str, Any] = {"energy": energy, "forces": final_forces}
    if all(pbc):
        st = np.asarray(state.forces.stress[0], np.float64)
        results["stress"] = np.array([st[0, 0], st[1, 1], st[2, 2], st[1, 2], st[0, 2], st[0, 1]])
    final.calc = SinglePointCalculator(final, **results)
    gradient = np.asarray(state.gradient[0], np.float64)
    largest = float(np.sqrt((gradient**2).sum(-1).max())) if len(gradient) else 0.0
    return RelaxResult(
        atoms=final,
        converged=largest < fmax,
        steps=int(state.steps),
        energy=energy,
        fmax=largest,
        reallocations=reallocations,
    )
