import equinox as eqx
import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet

from eqmlip import Graph
from eqmlip.calculator import EqmlipCalculator
from eqmlip.io import save_model
from eqmlip.potential import predict


def test_matches_direct_predict(alloy_structures, model, tmp_path):
    atoms = alloy_structures[0].to_atoms()
    path = tmp_path / "m.eqx"
    save_model(path, model)
    calc = EqmlipCalculator(path)  # from a model file
    atoms.calc = calc
    graph = Graph.from_atoms(atoms, model.cutoff)
    graph = eqx.tree_at(
        lambda g: (g.positions, g.shifts, g.cell),
        graph,
        (
            graph.positions.astype(np.float32),
            graph.shifts.astype(np.float32),
            graph.cell.astype(np.float32),
        ),
    )
    direct = eqx.filter_jit(predict)(model, graph)
    assert direct.forces is not None and direct.stress is not None
    np.testing.assert_allclose(atoms.get_potential_energy(), direct.energy[0], rtol=1e-5)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), direct.forces, rtol=1e-4, atol=1e-5)
    s = np.asarray(direct.stress[0])
    voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
    np.testing.assert_allclose(atoms.get_stress(), voigt, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), direct.energy[0], rtol=1e-5)


def test_md_compiles_a_bounded_number_of_times(alloy_structures, model):
    atoms = alloy_structures[3].to_atoms()
    calc = EqmlipCalculator(model)
    atoms.calc = calc
    rng = np.random.default_rng(0)
    atoms.set_momenta(
        rng.standard_normal((len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * units.kB * 600)
    )
    VelocityVerlet(atoms, 2 * units.fs).run(15)
    assert calc.num_compilations == 1
    # A bigger structure overflows the capacity: it grows once, and then serves both sizes.
    capacity = calc.node_capacity
    assert capacity is not None
    big = atoms.repeat((2, 1, 1))
    big.calc = calc
    big.get_forces()
    assert calc.num_compilations == 2 and (calc.node_capacity or 0) > capacity
    atoms.get_forces()
    atoms.positions += 0.01
    atoms.get_forces()
    assert calc.num_compilations == 2


def test_molecules_have_no_stress(model):
    atoms = molecule("H2O")
    atoms.set_chemical_symbols(["Cu", "Au", "Au"])
    atoms.positions *= 2.5
    atoms.calc = EqmlipCalculator(model)
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (3, 3)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_bad_arguments(model):
    with pytest.raises(TypeError, match="model"):
        EqmlipCalculator(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="growth"):
        EqmlipCalculator(model, growth=1.0)
