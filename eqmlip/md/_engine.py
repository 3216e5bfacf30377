"""A jitted MD engine: many steps per host call, on-device neighbour lists, replicas.

Units are ASE's: energies in eV, lengths in Å, masses in amu, times in fs (converted with
`ase.units.fs`), temperatures in K, pressures in GPa (converted with `ase.units.GPa`).

Integrators (one step, `dt` the time step, `F` the forces, `m` the masses):

- **NVE**: velocity Verlet, as ASE's `VelocityVerlet`: `p += dt/2 F; x += dt p/m;
    F = F(x); p += dt/2 F`.
- **NVT**: Langevin dynamics split as BAOAB (Leimkuhler and Matthews): half kick, half
    drift, the exact Ornstein-Uhlenbeck step `p = c p + sqrt((1 - c^2) m kT) xi` with
    `c = exp(-friction dt)`, half drift, forces, half kick; the centre-of-mass momentum is
    removed after the random step (so `3N - 3` degrees of freedom carry the temperature).
- **NPT**: the NVT step with a Berendsen barostat for fully periodic cells: before the force
    evaluation, positions and cell are scaled by
    `mu = (1 - compressibility dt / barostat_time (P_target - P))^(1/3)`, `P` the pressure of
    the previous step (virial and kinetic parts).

The host driver runs the loop in chunks (`jax.lax.while_loop`): a chunk stops early when a
neighbour capacity overflows, and is then redone from its start with larger capacities.
"""

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import ase
import ase.data
import ase.io
import ase.units
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from ase.calculators.singlepoint import SinglePointCalculator
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._errors import InputError
from ..graph import MIN_DISTANCE, Graph, check_min_distance, neighbour_list
from ..models._potential import AbstractPotential, parameter_dtype
from ..potential import predict
from . import _neighbours as nl

ENSEMBLES = ("nve", "nvt", "npt")


class Forces(NamedTuple):
    energy: Float[Array, " replicas"]
    forces: Float[Array, "replicas nodes 3"]
    stress: Float[Array, "replicas 3 3"]
    overflow: Bool[Array, " replicas"]
    num_edges: Int[Array, " replicas"]


class MDState(eqx.Module):
    """The state of every replica (leading axis `replicas`)."""

    positions: Float[Array, "replicas nodes 3"]
    momenta: Float[Array, "replicas nodes 3"]
    cell: Float[Array, "replicas 3 3"]
    energy: Float[Array, " replicas"]
    forces: Float[Array, "replicas nodes 3"]
    stress: Float[Array, "replicas 3 3"]
    neighbours: nl.NeighbourList
    num_edges: Int[Array, " replicas"]
    edge_overflow: Bool[Array, " replicas"]
    key: PRNGKeyArray


@dataclasses.dataclass(frozen=True)
class _Static:
    """What a compiled loop depends on beyond array values."""

    spec: nl.NeighbourSpec
    ensemble: str
    steps: int


class _Constants(NamedTuple):
    """Per-run values (arrays, so changing them does not recompile)."""

    atomic_numbers: Int[Array, " nodes"]
    masses: Float[Array, " nodes"]
    timestep: Float[Array, ""]  # ASE time units
    kT: Float[Array, " replicas"]  # eV
    friction: Float[Array, ""]  # 1 / ASE time unit
    pressure: Float[Array, ""]  # eV / Å^3
    compressibility: Float[Array, ""]  # Å^3 / eV
    barostat_time: Float[Array, ""]  # ASE time units
    dataset_idx: Int[Array, ""]
    charge: Int[Array, ""]
    pbc: Bool[Array, " 3"]


def _graph(
    positions: Float[Array, "nodes 3"],
    cell: Float[Array, "3 3"],
    edges: nl.Edges,
    constants: _Constants,
) -> Graph:
    """One structure plus one padding node and graph (the padding edges' self-loops)."""
    nodes = positions.shape[0]
    capacity = edges.senders.shape[0]
    dtype = positions.dtype
    return Graph(
        positions=jnp.concatenate([positions, jnp.zeros((1, 3), dtype)]),
        atomic_numbers=jnp.concatenate([constants.atomic_numbers, jnp.zeros(1, jnp.int32)]),
        senders=edges.senders,
        receivers=edges.receivers,
        shifts=edges.shifts.astype(dtype),
        cell=jnp.stack([cell, jnp.zeros((3, 3), dtype)]),
        pbc=jnp.stack([constants.pbc, jnp.zeros(3, bool)]),
        n_node=jnp.array([nodes, 1], jnp.int32),
        n_edge=jnp.stack([edges.count, capacity - edges.count]).astype(jnp.int32),
        node_mask=jnp.arange(nodes + 1, dtype=jnp.int32) < nodes,
        edge_mask=jnp.arange(capacity, dtype=jnp.int32) < edges.count,
        graph_mask=jnp.array([True, False]),
        dataset_idx=jnp.stack([constants.dataset_idx, jnp.zeros((), jnp.int32)]),
        charge=jnp.stack([constants.charge, jnp.zeros((), jnp.int32)]),
    )


def _over_replicas(fn: Callable[..., Any], *args: Any) -> Any:
    """`jax.vmap(fn)(*args)`, except that one replica is run without `vmap`: on CPU, a vmapped
    NequIP (its scatters batched over a size-1 axis) takes ~1.6x as long per step."""
    if jax.tree.leaves(args)[0].shape[0] == 1:
        out = fn(*jax.tree.map(lambda a: a[0], args))
        return jax.tree.map(lambda a: a[None], out)
    return jax.vmap(fn)(*args)


def _refresh(
    neighbours: nl.NeighbourList,
    positions: Float[Array, "replicas nodes 3"],
    cell: Float[Array, "replicas 3 3"],
    spec: nl.NeighbourSpec,
) -> nl.NeighbourList:
    """Rebuild the lists of the replicas that need it; the search runs only when one does."""
    need = _over_replicas(
        lambda n, x, c: nl.needs_rebuild(n, x, c, spec), neighbours, positions, cell
    )

    def rebuild() -> nl.NeighbourList:
        fresh = _over_replicas(lambda x, c: nl.build(x, c, spec), positions, cell)
        return jax.tree.map(
            lambda new, old: jnp.where(need.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            fresh,
            neighbours,
        )

    rebuilt = jax.lax.cond(jnp.any(need), rebuild, lambda: neighbours)
    return eqx.tree_at(lambda n: n.overflow, rebuilt, rebuilt.overflow | neighbours.overflow)


def _evaluate(
    model: AbstractPotential,
    positions: Float[Array, "replicas nodes 3"],
    cell: Float[Array, "replicas 3 3"],
    neighbours: nl.NeighbourList,
    constants: _Constants,
    static: _Static,
) -> tuple[Forces, nl.NeighbourList]:
    neighbours = _refresh(neighbours, positions, cell, static.spec)
    periodic = bool(any(static.spec.pbc))

    def one(x, c, n):
        edges = nl.edges(n, x, c, static.spec)
        result = predict(model, _graph(x, c, edges, constants), stress=periodic)
        assert result.forces is not None
        stress = result.stress[0] if result.stress is not None else jnp.zeros((3, 3), x.dtype)
        return Forces(result.energy[0], result.forces[:-1], stress, edges.overflow, edges.count)

    return _over_replicas(one, positions, cell, neighbours), neighbours


def kinetic_energy(
    momenta: Float[Array, "... nodes 3"], masses: Float[Array, " nodes"]
) -> Float[Array, "..."]:
    """`sum p^2 / 2m` (eV)."""
    return 0.5 * jnp.sum(jnp.sum(momenta**2, axis=-1) / masses, axis=-1)


def _pressure(
    state_stress: Float[Array, "3 3"],
    kinetic: Float[Array, ""],
    cell: Float[Array, "3 3"],
) -> Float[Array, ""]:
    volume = jnp.abs(jnp.linalg.det(cell))
    return -jnp.trace(state_stress) / 3.0 + 2.0 * kinetic / (3.0 * volume)


def _remove_drift(
    momenta: Float[Array, "nodes 3"], masses: Float[Array, " nodes"]
) -> Float[Array, "nodes 3"]:
    total = jnp.sum(momenta, axis=0)
    return momenta - masses[:, None] * total / jnp.sum(masses)


class Observables(NamedTuple):
    potential: Float[Array, "steps replicas"]
    kinetic: Float[Array, "steps replicas"]
    pressure: Float[Array, "steps replicas"]


def _chunk(
    model: AbstractPotential,
    state: MDState,
    constants: _Constants,
    static: _Static,
) -> tuple[MDState, Observables, Int[Array, ""]]:
    """Up to `static.steps` steps; stops early on a neighbour-list overflow. Returns the
    state, the observables of each step and the number of steps done."""
    _TRACES[0] += 1  # runs only while tracing: counts compilations
    dt = constants.timestep
    masses = constants.masses
    inverse_mass = (1.0 / masses)[:, None]
    dtype = state.positions.dtype
    periodic = bool(all(static.spec.pbc))

    def overflowed(s: MDState) -> Bool[Array, ""]:
        return jnp.any(s.neighbours.overflow) | jnp.any(s.edge_overflow)

    def step(s: MDState) -> MDState:
        p = s.momenta + 0.5 * dt * s.forces
        x, cell, key = s.positions, s.cell, s.key
        if static.ensemble == "nve":
            x = x + dt * p * inverse_mass
        else:
            x = x + 0.5 * dt * p * inverse_mass
            key, noise_key = jax.random.split(key)
            noise = jax.random.normal(noise_key, p.shape, dtype)
            c = jnp.exp(-constants.friction * dt)
            sigma = jnp.sqrt((1.0 - c**2) * masses[None, :, None] * constants.kT[:, None, None])
            p = jax.vmap(_remove_drift, in_axes=(0, None))(c * p + sigma * noise, masses)
            x = x + 0.5 * dt * p * inverse_mass
            if static.ensemble == "npt":
                pressure = jax.vmap(_pressure)(s.stress, kinetic_energy(p, masses), cell)
                ratio = constants.compressibility * dt / constants.barostat_time
                mu = jnp.cbrt(1.0 - ratio * (constants.pressure - pressure))
                x = x * mu[:, None, None]
                cell = cell * mu[:, None, None]
        result, neighbours = _evaluate(model, x, cell, s.neighbours, constants, static)
        p = p + 0.5 * dt * result.forces
        return MDState(
            positions=x,
            momenta=p,
            cell=cell,
            energy=result.energy,
            forces=result.forces,
            stress=result.stress,
            neighbours=neighbours,
            num_edges=result.num_edges,
            edge_overflow=result.overflow | s.edge_overflow,
            key=key,
        )

    replicas = state.positions.shape[0]
    empty = jnp.zeros((static.steps, replicas), dtype)
    observables = Observables(empty, empty, empty)

    def body(carry):
        i, s, obs = carry
        s = step(s)
        kinetic = kinetic_energy(s.momenta, masses)
        if periodic:
            pressure = jax.vmap(_pressure)(s.stress, kinetic, s.cell)
        else:
            pressure = jnp.zeros_like(kinetic)  # NaN on the host: none without a cell
        obs = Observables(
            obs.potential.at[i].set(s.energy),
            obs.kinetic.at[i].set(kinetic),
            obs.pressure.at[i].set(pressure),
        )
        return i + 1, s, obs

    def cond(carry):
        i, s, _ = carry
        return (i < static.steps) & ~overflowed(s)

    done, state, observables = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), state, observables)
    )
    return state, observables, done


_TRACES = [0]
_COMPILED: set[Any] = set()
_chunk_jit = eqx.filter_jit(_chunk)


@eqx.filter_jit
def _initial(
    model: AbstractPotential,
    positions: Float[Array, "replicas nodes 3"],
    cell: Float[Array, "replicas 3 3"],
    constants: _Constants,
    static: _Static,
) -> tuple[Forces, nl.NeighbourList]:
    neighbours = jax.vmap(lambda x, c: nl.build(x, c, static.spec))(positions, cell)
    return _evaluate(model, positions, cell, neighbours, constants, static)


@dataclasses.dataclass
class MDResult:
    """What [`eqmlip.md.simulate`][] returns.

    - `atoms`: the final structure of each replica (positions, momenta, cell; energy, forces
        and, for periodic cells, stress attached as a single-point calculator).
    - `time`: `[steps]` simulation time of each recorded step (fs).
    - `potential`, `kinetic`, `total`: `[steps, replicas]` energies (eV).
    - `temperature`: `[steps, replicas]` kinetic temperature (K) over `degrees_of_freedom`.
    - `pressure`: `[steps, replicas]` pressure (GPa), virial plus kinetic; NaN unless the
        cell is fully periodic.
    - `degrees_of_freedom`: `3N - 3` (the centre-of-mass momentum is removed).
    - `steps_per_second`: MD steps per second of the loop (all replicas), compilation
        excluded; `compile_seconds`: time spent compiling (and in the first call).
    - `reallocations`: how many times a neighbour capacity overflowed and the chunk was redone.
    - `spec`: the final neighbour-list sizes.
    """

    atoms: list[ase.Atoms]
    time: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    total: np.ndarray
    temperature: np.ndarray
    pressure: np.ndarray
    degrees_of_freedom: int
    steps_per_second: float
    compile_seconds: float
    reallocations: int
    spec: nl.NeighbourSpec


def maxwell_boltzmann(
    masses: Float[np.ndarray, " nodes"], temperature: float, seed: int
) -> Float[np.ndarray, "nodes 3"]:
    """Momenta (amu Å / ASE time) drawn from the Maxwell-Boltzmann distribution at
    `temperature` (K) with NumPy's generator seeded by `seed`, centre-of-mass momentum
    removed."""
    rng = np.random.default_rng(seed)
    masses = np.asarray(masses, np.float64)
    momenta = (
        rng.standard_normal((len(masses), 3))
        * np.sqrt(masses * ase.units.kB * temperature)[:, None]
    )
    return momenta - masses[:, None] * momenta.sum(0) / masses.sum()


def _check_species(model: AbstractPotential, atoms: ase.Atoms, caller: str) -> None:
    unknown = ~np.isin(atoms.numbers, model.species)
    if unknown.any():
        atom = int(np.argmax(unknown))
        raise InputError(
            f"{caller}: element {atoms.get_chemical_symbols()[atom]} (Z={atoms.numbers[atom]}, "
            f"atom {atom}) is not among the model's species "
            f"{[ase.data.chemical_symbols[z] for z in model.species]}."
        )


def _pbc_of(atoms: ase.Atoms) -> tuple[bool, bool, bool]:
    return (bool(atoms.pbc[0]), bool(atoms.pbc[1]), bool(atoms.pbc[2]))


def _check_positive(name: str, value: float, unit: str, *, zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        expected = ">= 0" if zero else "> 0"
        raise InputError(f"simulate: {name} must be finite and {expected} {unit}, got {value}.")
    return value


def _as_replicas(structures: "ase.Atoms | Sequence[ase.Atoms]") -> list[ase.Atoms]:
    replicas = [structures] if isinstance(structures, ase.Atoms) else list(structures)
    if not replicas or not all(isinstance(a, ase.Atoms) for a in replicas):
        raise InputError(
            "simulate: expected an ase.Atoms or a non-empty sequence of them (replicas), got "
            f"{type(structures).__name__}."
        )
    first = replicas[0]
    for k, atoms in enumerate(replicas[1:], 1):
        if not np.array_equal(atoms.numbers, first.numbers) or not np.array_equal(
            atoms.pbc, first.pbc
        ):
            raise InputError(
                f"simulate: replica {k} has elements {atoms.get_chemical_formula()} and pbc "
                f"{atoms.pbc.tolist()}, replica 0 {first.get_chemical_formula()} and "
                f"{first.pbc.tolist()}; replicas must share atoms (in order) and periodicity."
            )
    return replicas


def _per_replica(name: str, value: "float | Sequence[float]", replicas: int) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, np.float64))
    if values.shape == (1,):
        values = np.repeat(values, replicas)
    if values.shape != (replicas,):
        raise InputError(
            f"simulate: {name} must be one value or one per replica ({replicas}), got "
            f"{values.shape[0]} values."
        )
    return values


def simulate(
    model: AbstractPotential,
    structures: "ase.Atoms | Sequence[ase.Atoms]",
    *,
    steps: int,
    ensemble: str = "nve",
    timestep: float = 1.0,
    temperature: "float | Sequence[float]" = 300.0,
    friction: float = 0.01,
    pressure: float = 0.0,
    compressibility: float = 0.01,
    barostat_time: float = 500.0,
    seed: int = 0,
    skin: float = 1.0,
    chunk: int = 100,
    trajectory: "str | os.PathLike[str] | None" = None,
    every: int = 10,
    dataset_idx: int = 0,
    min_distance: float | None = MIN_DISTANCE,
    progress: bool = False,
    initial_capacity: nl.NeighbourSpec | None = None,
    callback: Callable[[int, MDState], None] | None = None,
) -> MDResult:
    """Run MD with `model` entirely on the device, `chunk` steps per host call.

    **Arguments:**

    - `model`: any [`eqmlip.models.AbstractPotential`][].
    - `structures`: an `ase.Atoms`, or a sequence of them run side by side as replicas in one
        compiled loop (same elements in the same order and same pbc; positions, cells and
        momenta may differ). Momenta already set on a structure are used; otherwise they are
        drawn from the Maxwell-Boltzmann distribution at `temperature` (seed `seed + replica`).
    - `steps`: number of MD steps.
    - `ensemble`: `"nve"`, `"nvt"` (Langevin) or `"npt"` (Langevin and Berendsen barostat,
        fully periodic cells only).
    - `timestep`: fs. `temperature`: K, one value or one per replica (bath and initial
        velocities). `friction`: Langevin friction, 1/fs.
    - `pressure`: target pressure (GPa). `compressibility`: 1/GPa (default 0.01, a bulk
        modulus of 100 GPa). `barostat_time`: Berendsen time constant (fs).
    - `seed`: seeds the initial velocities and the Langevin noise.
    - `skin`: Verlet buffer (Å) of the neighbour list.
    - `chunk`: steps per compiled call (the trajectory interval `every` when writing one).
    - `trajectory`: extxyz file to write every `every` steps (replica `k > 0` to
        `name.k.extxyz`-style files: `stem_k.suffix`). The initial frame is written too.
    - `dataset_idx`: readout head. `min_distance`: refuse atoms closer than this at the start.
    - `progress`: print a progress bar to stderr. `initial_capacity`: a neighbour spec to
        start from (e.g. a small one, to test re-allocation). `callback(step, state)` runs on
        the host after each chunk.

    **Returns:** an [`eqmlip.md.MDResult`][].
    """
    if not isinstance(model, AbstractPotential):
        raise TypeError(
            "simulate: model must be an eqmlip.models.AbstractPotential, got "
            f"{type(model).__name__}."
        )
    if ensemble not in ENSEMBLES:
        raise InputError(f"simulate: ensemble must be one of {ENSEMBLES}, got {ensemble!r}.")
    if int(steps) != steps or steps < 0:
        raise InputError(f"simulate: steps must be a non-negative integer, got {steps}.")
    if int(every) != every or every < 1 or int(chunk) != chunk or chunk < 1:
        raise InputError(
            f"simulate: every and chunk must be positive integers, got {every}, {chunk}."
        )
    timestep = _check_positive("timestep", timestep, "fs")
    friction = _check_positive("friction", friction, "1/fs", zero=ensemble == "nve")
    skin = _check_positive("skin", skin, "Å", zero=True)
    if not math.isfinite(pressure):
        raise InputError(f"simulate: pressure must be finite (GPa), got {pressure}.")
    compressibility = _check_positive("compressibility", compressibility, "1/GPa")
    barostat_time = _check_positive("barostat_time", barostat_time, "fs")
    replicas = _as_replicas(structures)
    count = len(replicas)
    temperatures = _per_replica("temperature", temperature, count)
    if np.any(~np.isfinite(temperatures)) or np.any(temperatures < 0):
        raise InputError(f"simulate: temperatures must be >= 0 K, got {temperatures.tolist()}.")
    first = replicas[0]
    pbc = _pbc_of(first)
    if ensemble == "npt" and not all(pbc):
        raise InputError(
            f"simulate: the npt ensemble needs a fully periodic cell, got pbc {list(pbc)}."
        )
    _check_species(model, first, "simulate")
    if not 0 <= dataset_idx < model.num_heads:
        raise InputError(
            f"simulate: dataset_idx {dataset_idx} is outside 0..{model.num_heads - 1}, the "
            "model's heads."
        )
    for k, atoms in enumerate(replicas):
        positions = np.asarray(atoms.positions, np.float64)
        if not np.all(np.isfinite(positions)):
            raise InputError(f"simulate: replica {k} has non-finite positions.")
        if min_distance is not None:
            close = neighbour_list(
                positions, atoms.cell.array, atoms.pbc, min_distance, min_distance=None
            )
            check_min_distance(
                positions, atoms.cell.array, close, min_distance, f"simulate (replica {k})"
            )

    dtype = parameter_dtype(model)
    masses = np.asarray(first.get_masses(), np.float64)
    momenta = []
    for k, atoms in enumerate(replicas):
        given = atoms.get_momenta()
        momenta.append(
            given if np.any(given) else maxwell_boltzmann(masses, temperatures[k], seed + k)
        )
    positions = np.stack([a.positions for a in replicas])
    cells = np.stack([a.cell.array for a in replicas])
    spec = initial_capacity
    if spec is None:
        for x, c in zip(positions, cells, strict=True):  # one spec that serves every replica
            spec = nl.allocate(x, c, pbc, model.cutoff, skin, previous=spec)
    assert spec is not None
    charge = int(first.info.get("charge", 0))
    constants = _Constants(
        atomic_numbers=jnp.asarray(first.numbers, jnp.int32),
        masses=jnp.asarray(masses, dtype),
        timestep=jnp.asarray(timestep * ase.units.fs, dtype),
        kT=jnp.asarray(temperatures * ase.units.kB, dtype),
        friction=jnp.asarray(friction / ase.units.fs, dtype),
        pressure=jnp.asarray(pressure * ase.units.GPa, dtype),
        compressibility=jnp.asarray(compressibility / ase.units.GPa, dtype),
        barostat_time=jnp.asarray(barostat_time * ase.units.fs, dtype),
        dataset_idx=jnp.asarray(dataset_idx, jnp.int32),
        charge=jnp.asarray(charge, jnp.int32),
        pbc=jnp.asarray(pbc),
    )
    if trajectory is not None:
        chunk = every

    compile_seconds = 0.0
    reallocations = 0

    def start_state(
        x: np.ndarray, c: np.ndarray, p: np.ndarray, key: Array, spec: nl.NeighbourSpec
    ):
        nonlocal compile_seconds
        begin = time.perf_counter()
        static = _Static(spec, ensemble, chunk)
        forces, neighbours = _initial(
            model, jnp.asarray(x, dtype), jnp.asarray(c, dtype), constants, static
        )
        jax.block_until_ready(forces)
        compile_seconds += time.perf_counter() - begin
        return MDState(
            positions=jnp.asarray(x, dtype),
            momenta=jnp.asarray(p, dtype),
            cell=jnp.asarray(c, dtype),
            energy=forces.energy,
            forces=forces.forces,
            stress=forces.stress,
            neighbours=neighbours,
            num_edges=forces.num_edges,
            edge_overflow=forces.overflow,
            key=key,
        )

    def overflow_of(state: MDState) -> bool:
        return bool(jnp.any(state.neighbours.overflow) | jnp.any(state.edge_overflow))

    def regrow(state: MDState, spec: nl.NeighbourSpec) -> nl.NeighbourSpec:
        nonlocal reallocations
        reallocations += 1
        x, c = np.asarray(state.positions, np.float64), np.asarray(state.cell, np.float64)
        grown = spec
        for k in range(count):
            grown = nl.allocate(x[k], c[k], pbc, model.cutoff, skin, previous=grown)
        grown = nl.grow(
            grown,
            int(jnp.max(state.neighbours.count)),
            int(jnp.max(state.num_edges)),
            occupancy=int(jnp.max(state.neighbours.occupancy)),
        )
        if grown == spec:  # only the images or reach can be short (host and device disagreeing)
            grown = nl.widen(grown)
        return grown

    state = start_state(positions, cells, np.stack(momenta), jax.random.key(seed), spec)
    while overflow_of(state):
        spec = regrow(state, spec)
        state = start_state(positions, cells, np.stack(momenta), jax.random.key(seed), spec)

    writers = _trajectory_paths(trajectory, count)
    if writers:
        _write_frames(writers, state, first, masses, pbc, append=False)
    records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    done_steps = 0
    loop_seconds = 0.0
    bar = tqdm.tqdm(total=steps, unit="step", file=sys.stderr) if progress else None
    while done_steps < steps:
        size = min(chunk, steps - done_steps)
        static = _Static(spec, ensemble, size)
        key = (static, state.positions.shape, state.positions.dtype, jax.tree.structure(model))
        if key not in _COMPILED:
            # Compiled ahead of the call, so that the steps are timed without compilation.
            begin = time.perf_counter()
            _chunk_jit.lower(model, state, constants, static).compile()
            compile_seconds += time.perf_counter() - begin
            _COMPILED.add(key)
        begin = time.perf_counter()
        new_state, observables, done = _chunk_jit(model, state, constants, static)
        jax.block_until_ready(new_state)
        loop_seconds += time.perf_counter() - begin
        if overflow_of(new_state):
            spec = regrow(new_state, spec)
            # Redo the chunk from its start, with lists built for the larger capacities.
            x, c = np.asarray(state.positions), np.asarray(state.cell)
            redo = start_state(x, c, np.asarray(state.momenta), state.key, spec)
            state = redo
            continue
        done = int(done)
        records.append(
            (
                np.asarray(observables.potential[:done]),
                np.asarray(observables.kinetic[:done]),
                np.asarray(observables.pressure[:done]),
            )
        )
        state = new_state
        done_steps += done
        if writers:
            _write_frames(writers, state, first, masses, pbc, append=True)
        if callback is not None:
            callback(done_steps, state)
        if bar is not None:
            bar.update(done)
    if bar is not None:
        bar.close()

    dof = 3 * len(first) - 3 if len(first) > 1 else 3
    if records:
        potential, kinetic, pressures = (
            np.concatenate(parts) for parts in zip(*records, strict=True)
        )
        pressures = pressures / ase.units.GPa
        if not all(pbc):
            pressures = np.full_like(pressures, np.nan)
    else:
        potential = kinetic = pressures = np.zeros((0, count))
    return MDResult(
        atoms=_final_atoms(state, first, masses, pbc),
        time=np.arange(1, len(potential) + 1) * timestep,
        potential=potential,
        kinetic=kinetic,
        total=potential + kinetic,
        temperature=2.0 * kinetic / (dof * ase.units.kB),
        pressure=pressures,
        degrees_of_freedom=dof,
        steps_per_second=done_steps / loop_seconds if loop_seconds > 0 else float("nan"),
        compile_seconds=compile_seconds,
        reallocations=reallocations,
        spec=spec,
    )


def _trajectory_paths(trajectory: "str | os.PathLike[str] | None", count: int) -> list[str]:
    if trajectory is None:
        return []
    path = os.fspath(trajectory)
    if count == 1:
        return [path]
    stem, suffix = os.path.splitext(path)
    return [f"{stem}_{k}{suffix or '.extxyz'}" for k in range(count)]


def _final_atoms(
    state: MDState, first: ase.Atoms, masses: np.ndarray, pbc: tuple[bool, ...]
) -> list[ase.Atoms]:
    frames = []
    for k in range(state.positions.shape[0]):
        atoms = ase.Atoms(
            numbers=first.numbers,
            positions=np.asarray(state.positions[k], np.float64),
            cell=np.asarray(state.cell[k], np.float64),
            pbc=pbc,
            masses=masses,
        )
        atoms.set_momenta(np.asarray(state.momenta[k], np.float64))
        results: dict[str, Any] = {
            "energy": float(state.energy[k]),
            "forces": np.asarray(state.forces[k], np.float64),
        }
        if all(pbc):
            s = np.asarray(state.stress[k], np.float64)
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def _write_frames(
    paths: list[str],
    state: MDState,
    first: ase.Atoms,
    masses: np.ndarray,
    pbc: tuple[bool, ...],
    *,
    append: bool,
) -> None:
    for path, atoms in zip(paths, _final_atoms(state, first, masses, pbc), strict=True):
        ase.io.write(path, atoms, format="extxyz", append=append)
