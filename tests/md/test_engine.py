"""The jitted MD engine against ASE's integrators and statistical mechanics."""

import io
from typing import Any, cast

import ase
import ase.io
import jax
import numpy as np
import pytest
from ase import units
from ase.filters import UnitCellFilter
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE

from eqmlip import InputError
from eqmlip.calculator import EqmlipCalculator
from eqmlip.md import NeighbourSpec, allocate, relax, simulate
from eqmlip.md._engine import maxwell_boltzmann

from ._morse import Morse, copper


def _cluster() -> ase.Atoms:
    """A 13-atom copper cluster without a cell (a molecule)."""
    atoms = copper((2, 2, 2))[:13]
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


@pytest.mark.parametrize("kind", ["bulk", "cluster"])
def test_nve_equals_ase_velocity_verlet_step_for_step(kind):
    with jax.enable_x64(True):
        model = Morse()
        atoms = copper((2, 2, 2), a=3.5) if kind == "bulk" else _cluster()
        atoms.rattle(0.05, seed=1)
        atoms.set_momenta(maxwell_boltzmann(atoms.get_masses(), 800.0, seed=3))
        reference = atoms.copy()
        reference.calc = EqmlipCalculator(model)
        VelocityVerlet(reference, timestep=2.0 * units.fs).run(100)
        result = simulate(model, atoms, steps=100, timestep=2.0, chunk=40)
        final = result.atoms[0]
        np.testing.assert_allclose(final.positions, reference.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(final.get_momenta(), reference.get_momenta(), atol=1e-10)
        assert result.potential.shape == (100, 1)
        np.testing.assert_allclose(result.potential[-1, 0], reference.get_potential_energy())
        np.testing.assert_allclose(result.kinetic[-1, 0], reference.get_kinetic_energy())


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
def test_nve_conserves_energy(x64):
    """2 ps of NVE at 300 K on 108 atoms: the total energy stays within a bound per atom and
    has no drift beyond it (`drift` is the slope of a linear fit, eV/atom/ps)."""
    with jax.enable_x64(x64):
        atoms = copper((3, 3, 3), a=3.45)
        result = simulate(Morse(), atoms, steps=1000, timestep=2.0, temperature=300.0)
        total = result.total[:, 0] / len(atoms)
        drift = np.polyfit(result.time / 1000.0, total, 1)[0]
        spread = total.max() - total.min()
        swing = (result.kinetic.max() - result.kinetic.min()) / len(atoms)
        # The total energy fluctuates by O(dt^2) only, far less than the energy exchanged.
        assert spread < 0.1 * swing, (spread, swing)
        assert abs(drift) < (1e-4 if x64 else 5e-4), drift


def test_overflow_mid_run_reallocates_and_matches_a_large_enough_run():
    with jax.enable_x64(True):
        model = Morse()
        atoms = copper((2, 2, 2), a=3.5)
        atoms.set_momenta(maxwell_boltzmann(atoms.get_masses(), 2000.0, seed=0))
        roomy = simulate(model, atoms, steps=60, timestep=2.0, chunk=20)
        assert roomy.reallocations == 0
        # Capacities exactly at the initial counts: the first change in a count overflows.
        exact = NeighbourSpec(
            cutoff=model.cutoff,
            skin=0.3,
            pbc=(True, True, True),
            images=(2, 2, 2),
            candidate_capacity=roomy.spec.candidate_capacity // 2,
            edge_capacity=roomy.spec.edge_capacity // 2,
        )
        tight = simulate(
            model, atoms, steps=60, timestep=2.0, chunk=20, skin=0.3, initial_capacity=exact
        )
        assert tight.reallocations >= 1
        assert tight.spec.edge_capacity > exact.edge_capacity
        np.testing.assert_allclose(tight.atoms[0].positions, roomy.atoms[0].positions, atol=1e-10)
        np.testing.assert_allclose(tight.potential, roomy.potential, rtol=1e-10)


def test_cell_list_run_equals_the_all_pairs_run_and_regrows_its_bins():
    with jax.enable_x64(True):
        model = Morse()
        atoms = copper((3, 3, 3), a=3.6)  # 10.8 Å: two bins of cutoff + skin per vector
        atoms.set_momenta(maxwell_boltzmann(atoms.get_masses(), 2000.0, seed=1))
        skin = 0.3

        def spec(search: str) -> NeighbourSpec:
            x, c = atoms.positions, atoms.cell.array
            return allocate(x, c, (True, True, True), model.cutoff, skin, search=search)

        def run(initial: NeighbourSpec):
            return simulate(
                model, atoms, steps=20, timestep=2.0, chunk=20, skin=skin, initial_capacity=initial
            )

        reference = run(spec("all_pairs"))
        cells = spec("cell_list")
        assert cells.bins == (2, 2, 2) and reference.spec.bins is None
        # Bins far too small for the 13.5 atoms each holds: regrown before the run goes on.
        result = run(cells._replace(bin_capacity=4))
        assert result.reallocations >= 1
        assert result.spec.bins == (2, 2, 2) and result.spec.bin_capacity >= 14
        # The same candidates in the same order: the same forces, bit for bit in practice.
        np.testing.assert_allclose(
            result.atoms[0].positions, reference.atoms[0].positions, rtol=0, atol=1e-10
        )
        np.testing.assert_allclose(result.potential, reference.potential, rtol=1e-12)


def test_cell_list_bin_overflow_mid_run_reallocates_and_matches_a_roomy_run():
    """Atoms one per bin at the start converge on the centre bin during the run: its
    occupancy passes the bin capacity mid-run, the chunk is redone with larger bins, and the
    trajectory equals that of a run whose bins held every atom from the start."""
    with jax.enable_x64(True):
        model = Morse()
        skin = 0.3
        # A 15 Å cube: 3x3x3 bins of 5 Å (>= cutoff + skin = 4.8 Å), one atom at each centre.
        grid = (np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)) * 5.0
        atoms = ase.Atoms(f"Cu{len(grid)}", positions=grid + 2.5, cell=np.eye(3) * 15.0, pbc=True)
        atoms.rattle(0.02, seed=2)
        # The six atoms facing the centre move towards it (0.02 Å/fs); the others are at rest.
        inward = np.asarray(7.5 - atoms.positions)
        faces = np.isclose(np.linalg.norm(inward, axis=-1), 5.0, atol=0.1)
        velocities = np.where(faces[:, None], 0.02 * inward / 5.0, 0.0) / units.fs
        atoms.set_momenta(atoms.get_masses()[:, None] * velocities)
        x, c = atoms.positions, atoms.cell.array
        spec = allocate(x, c, (True, True, True), model.cutoff, skin, search="cell_list")
        assert spec.bins == (3, 3, 3) and spec.reach == (1, 1, 1)
        # Room for every pair, so that only the bins can overflow.
        spec = spec._replace(candidate_capacity=1000, edge_capacity=1000)

        def run(initial: NeighbourSpec, seen: list[int]):
            return simulate(
                model, atoms, steps=200, timestep=1.0, chunk=20, skin=skin,
                initial_capacity=initial,
                callback=lambda step, state: seen.append(int(state.neighbours.occupancy.max())),
            )  # fmt: skip

        roomy_seen: list[int] = []
        roomy = run(spec._replace(bin_capacity=len(atoms)), roomy_seen)
        assert roomy.reallocations == 0
        # The centre bin takes in the six moving atoms during the run.
        assert roomy_seen[0] == 1 and max(roomy_seen) == 7, roomy_seen  # centre + 6
        tight_seen: list[int] = []
        tight = run(spec._replace(bin_capacity=2), tight_seen)
        # The first chunks ran in the small bins; then one overflowed and the bins grew.
        assert tight_seen[0] == 1 and tight.reallocations >= 1
        assert tight.spec.bin_capacity >= max(roomy_seen) and tight.spec.bins == (3, 3, 3)
        assert tight.spec.candidate_capacity == 1000  # only the bins grew
        assert tight_seen == roomy_seen
        np.testing.assert_allclose(
            tight.atoms[0].positions, roomy.atoms[0].positions, rtol=0, atol=1e-10
        )
        np.testing.assert_allclose(tight.potential, roomy.potential, rtol=1e-12)


def _block_mean(series: np.ndarray, blocks: int = 20) -> tuple[float, float]:
    """Mean and its standard error from block averages (blocks longer than correlations)."""
    means = np.array([b.mean() for b in np.array_split(series, blocks)])
    return float(means.mean()), float(means.std(ddof=1) / np.sqrt(blocks))


def test_langevin_replicas_reach_their_temperatures():
    targets = [300.0, 900.0]
    atoms = copper((2, 2, 2), a=3.45)
    result = simulate(
        Morse(), [atoms, atoms], steps=6000, ensemble="nvt", timestep=2.0,
        temperature=targets, friction=0.05, seed=4, chunk=2000,
    )  # fmt: skip
    assert result.degrees_of_freedom == 3 * 32 - 3
    for k, target in enumerate(targets):
        mean, error = _block_mean(result.temperature[1000:, k])
        assert abs(mean - target) < 3 * error + 1e-3 * target, (k, mean, error)
        assert error < 0.05 * target  # the run is long enough for the check to mean something
    # The replicas are independent draws: different trajectories.
    assert not np.allclose(result.atoms[0].positions, result.atoms[1].positions)


def test_npt_mean_pressure_matches_target():
    atoms = copper((3, 3, 3), a=3.45)
    target = 2.0
    result = simulate(
        Morse(), atoms, steps=4000, ensemble="npt", timestep=2.0, temperature=300.0,
        friction=0.02, pressure=target, barostat_time=100.0, seed=1, chunk=2000,
    )  # fmt: skip
    mean, error = _block_mean(result.pressure[1000:, 0])
    assert abs(mean - target) < 3 * error + 0.02, (mean, error)
    assert result.atoms[0].get_volume() != pytest.approx(atoms.get_volume(), rel=1e-3)


def test_fire_equals_ase_fire():
    with jax.enable_x64(True):
        model = Morse()
        atoms = copper((2, 2, 2), a=3.5)
        atoms.rattle(0.15, seed=5)
        reference = atoms.copy()
        reference.calc = EqmlipCalculator(model)
        optimiser = FIRE(reference, logfile=io.StringIO())
        optimiser.run(fmax=0.005, steps=400)
        result = relax(model, atoms, fmax=0.005, steps=400)
        assert result.converged and result.steps == optimiser.nsteps
        np.testing.assert_allclose(result.atoms.positions, reference.positions, atol=1e-9)
        np.testing.assert_allclose(result.energy, reference.get_potential_energy(), rtol=1e-12)
        assert result.fmax < 0.005


def test_fire_with_the_cell_equals_ase_fire_on_a_unit_cell_filter():
    with jax.enable_x64(True):
        model = Morse()
        atoms = copper((2, 2, 2), a=3.9)
        atoms.set_cell(atoms.cell.array @ np.diag([1.0, 1.03, 0.97]), scale_atoms=True)
        atoms.rattle(0.05, seed=6)
        reference = atoms.copy()
        reference.calc = EqmlipCalculator(model)
        optimiser = FIRE(
            cast(Any, UnitCellFilter(reference, scalar_pressure=0.5 * units.GPa)),
            logfile=io.StringIO(),
        )
        optimiser.run(fmax=0.01, steps=300)
        result = relax(model, atoms, fmax=0.01, steps=300, relax_cell=True, pressure=0.5)
        assert result.converged and result.steps == optimiser.nsteps > 20
        np.testing.assert_allclose(result.atoms.cell.array, reference.cell.array, atol=1e-9)
        np.testing.assert_allclose(result.atoms.positions, reference.positions, atol=1e-9)
        # At the minimum the pressure is the target: stress = -p (ASE's sign), to within fmax.
        stress = result.atoms.get_stress(voigt=False)
        assert np.abs(stress + 0.5 * units.GPa * np.eye(3)).max() * atoms.get_volume() < 0.01 * len(
            atoms
        )
        assert result.atoms.get_volume() != pytest.approx(atoms.get_volume(), rel=1e-3)


def test_trajectory_frames_and_observables(tmp_path):
    atoms = _cluster()
    path = tmp_path / "run.extxyz"
    result = simulate(
        Morse(), [atoms, atoms], steps=30, timestep=1.0, temperature=[100.0, 200.0],
        trajectory=path, every=10,
    )  # fmt: skip
    for k in range(2):
        frames = cast(list[ase.Atoms], ase.io.read(tmp_path / f"run_{k}.extxyz", index=":"))
        assert len(frames) == 4  # the start and every 10 steps
        np.testing.assert_allclose(frames[-1].positions, result.atoms[k].positions, atol=1e-5)
        np.testing.assert_allclose(
            frames[-1].get_potential_energy(), result.potential[-1, k], rtol=1e-6
        )
    np.testing.assert_allclose(result.total, result.potential + result.kinetic)
    np.testing.assert_allclose(result.time, np.arange(1, 31) * 1.0)
    assert np.all(np.isnan(result.pressure))  # no cell
    assert result.steps_per_second > 0 and result.compile_seconds > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ensemble": "nph"}, "ensemble must be one of"),
        ({"timestep": 0.0}, "timestep must be finite and > 0 fs"),
        ({"temperature": [300.0, 400.0, 500.0]}, "one per replica"),
        ({"friction": -1.0}, "friction must be"),
        ({"steps": -3}, "steps must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        simulate(Morse(), copper((1, 1, 1)), **{"steps": 1, **kwargs})


def test_bad_structures_are_refused():
    with pytest.raises(InputError, match="npt ensemble needs a fully periodic cell"):
        simulate(Morse(), _cluster(), steps=1, ensemble="npt")
    with pytest.raises(InputError, match=r"element Au \(Z=79, atom 0\) is not among"):
        simulate(Morse(), ase.Atoms("AuCu", positions=[[0, 0, 0], [0, 0, 2.5]]), steps=1)
    with pytest.raises(InputError, match="replica 1 has elements"):
        simulate(Morse(), [_cluster(), _cluster()[:5]], steps=1)
    with pytest.raises(InputError, match="atoms 0 and 1"):
        simulate(Morse(), ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 0.01]]), steps=1)
