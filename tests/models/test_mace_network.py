"""eqmlip's MACE network: the symmetries of physics (Hypothesis, via
`eqmlip.testing.assert_potential_symmetries`), padding, model files, the training config's
`model.name: mace`, and errors. Parity with mlip is in tests/parity/test_mace_parity.py."""

import ase
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import Graph, pad_graph, testing
from eqmlip.data import Structure, statistics
from eqmlip.io import load_model, save_model
from eqmlip.models import potential_class, potential_name
from eqmlip.models.mace import Mace, MaceConfig, MaceLayer
from eqmlip.potential import predict
from eqmlip.training._run import ModelConfig, build_model

SPECIES = (1, 6, 8)
CUTOFF = 2.5
# Tiny, but with every kind of part: correlation 2, pseudotensors, gate, soft normalisation,
# a residual first layer and two heads.
CONFIG = MaceConfig(
    num_channels=2,
    l_max=2,
    node_symmetry=1,
    correlation=2,
    radial_mlp_hidden=(4,),
    include_pseudotensors=True,
    gate_nodes=True,
    soft_normalization=2.0,
    residual_connection_first_layer=True,
    num_readout_heads=2,
    readout_irreps=("4x0e", "0e"),
)
NODE_BUDGET, EDGE_BUDGETS = 8, (32, 128, 512)
STRUCTURES = st.one_of(
    testing.molecules(SPECIES, max_atoms=5),
    testing.crystals(SPECIES, max_atoms=3, min_length=2.0, max_length=4.0),
)
TOLERANCE = {"energy": 1e-5, "forces": 1e-4, "stress": 1e-4}

_predict = eqx.filter_jit(predict)
_models: list[Mace] = []


def _model() -> Mace:
    if not _models:
        _models.append(
            Mace(
                CONFIG,
                SPECIES,
                cutoff=CUTOFF,
                avg_num_neighbors=3.0,
                avg_r_min=0.9,
                atomic_energies={1: -0.5, 6: -1.0, 8: -2.0},
                key=jr.key(0),
            )
        )
    return _models[0]


def _run(atoms: ase.Atoms, model: Mace | None = None):
    graph = Graph.from_atoms(atoms, CUTOFF)
    budget = [b for b in EDGE_BUDGETS if b > graph.num_edges][0]
    return _predict(model or _model(), pad_graph(graph, NODE_BUDGET, budget, 2))


def _potential(atoms_positions, numbers, cell, pbc):
    atoms = ase.Atoms(numbers=numbers, positions=atoms_positions, cell=cell, pbc=pbc)
    out = _run(atoms)
    assert out.forces is not None and out.stress is not None
    return out.energy[0], out.forces[: len(atoms)], out.stress[0]


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(atoms=STRUCTURES, matrix=testing.o3_matrices(), data=st.data())
def test_mace_symmetries(atoms, matrix, data):
    order = data.draw(st.permutations(range(len(atoms))))
    shift = np.asarray(data.draw(st.tuples(*[st.floats(-5.0, 5.0)] * 3)))
    testing.assert_potential_symmetries(
        _potential,
        atoms,
        matrix=matrix,  # rotations and inversions
        translation=shift,
        permutation=order,
        atol=TOLERANCE,
        rtol=TOLERANCE,
    )
    out = _run(atoms)
    assert out.forces is not None
    forces = np.asarray(out.forces)
    assert np.all(np.isfinite(forces))
    assert not np.any(forces[len(atoms) :])  # padding atoms
    if not atoms.pbc.any() and Graph.from_atoms(atoms, CUTOFF).num_edges > 0:
        assert np.max(np.abs(forces)) > 0.0  # the atoms interact


def test_heads_differ_and_select_by_dataset_idx():
    atoms = ase.Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0.3]])
    energies = []
    for idx in (0, 1):
        graph = pad_graph(Graph.from_atoms(atoms, CUTOFF, dataset_idx=idx), 8, 32, 2)
        energies.append(float(_predict(_model(), graph).energy[0]))
    assert abs(energies[0] - energies[1]) > 1e-6


def test_model_file_and_hyperparameters_round_trip(tmp_path):
    model = _model()
    assert potential_name(model) == "mace" and potential_class("mace") is Mace
    path = tmp_path / "mace.eqm"
    save_model(path, model)
    loaded = load_model(path)
    assert isinstance(loaded, Mace)
    assert loaded.config == model.config and loaded.radial_scale == model.radial_scale
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True)
    )
    atoms = ase.Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0.3]])
    assert float(_run(atoms, loaded).energy[0]) == float(_run(atoms).energy[0])


def test_training_config_selects_mace():
    section = dict(name="mace", cutoff=3.0, num_channels=8, correlation=2, l_max=1)
    config = ModelConfig.from_dict(section)
    assert isinstance(config.options, MaceConfig)
    assert config.options.num_channels == 8 and config.options.node_symmetry == 1
    assert ModelConfig.from_dict(config.to_dict()) == config
    # The training run builds it through the registry, from the data's statistics.
    atoms = [
        ase.Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0.3]]),
        ase.Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]]),
    ]
    for a, e in zip(atoms, (-3.0, -2.5), strict=True):
        a.info["energy"] = e
    e0 = {1: -0.5, 6: -1.0, 8: -1.5}
    stats = statistics([Structure.from_atoms(a) for a in atoms], cutoff=3.0, atomic_energies=e0)
    built = ModelConfig.from_dict({**section, "energy_scale": 1.0})
    model = eqx.filter_eval_shape(build_model, built, stats)
    assert isinstance(model, Mace) and model.species == (1, 6, 8) and model.cutoff == 3.0
    assert model.avg_num_neighbors == stats.avg_num_neighbors


def test_errors_name_what_was_given():
    with pytest.raises(TypeError, match="config"):  # jaxtyping's check in the test suite
        Mace(object(), SPECIES, cutoff=CUTOFF, avg_num_neighbors=1.0, key=jr.key(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="avg_num_neighbors must be positive"):
        Mace(MaceConfig(num_channels=2), SPECIES, cutoff=CUTOFF, key=jr.key(0))
    with pytest.raises(ValueError, match=r"avg_r_min must lie in \[0, cutoff=2.5\)"):
        Mace(
            MaceConfig(num_channels=2),
            SPECIES,
            cutoff=CUTOFF,
            avg_num_neighbors=1.0,
            avg_r_min=3.0,
            key=jr.key(0),
        )
    with pytest.raises(ValueError, match="readout_mlp_irreps 4x0e\\+1x1o has non-scalars"):
        eqx.filter_eval_shape(
            Mace,
            MaceConfig(num_channels=2, l_max=1, readout_irreps=("4x0e + 1x1o", "0e")),
            SPECIES,
            cutoff=CUTOFF,
            avg_num_neighbors=1.0,
            key=jr.key(0),
        )
    with pytest.raises(ValueError, match="source_irreps 2x0e must be per-channel"):
        MaceLayer(
            "2x0e", "0e + 1o", "0e", num_channels=2, num_species=1, l_max=1, num_rbf=4,
            avg_num_neighbors=1.0, key=jr.key(0),
        )  # fmt: skip
    assert jnp.result_type(float) == jnp.float32


def test_calculator_and_md_engine_run_mace_unchanged():
    """The calculator and the jitted MD engine take a MACE as any potential: the same energy
    and forces as `predict`, and an NVE run from rest that keeps that energy as its total."""
    from eqmlip.calculator import EqmlipCalculator
    from eqmlip.md import simulate

    atoms = ase.Atoms("CHO", positions=[[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [-0.6, 1.1, 0.2]])
    out = _run(atoms)
    calculated = atoms.copy()
    calculated.calc = EqmlipCalculator(_model())
    np.testing.assert_allclose(calculated.get_potential_energy(), out.energy[0], rtol=1e-6)
    assert out.forces is not None
    np.testing.assert_allclose(calculated.get_forces(), out.forces[:3], atol=1e-5)

    result = simulate(_model(), atoms, steps=4, timestep=0.1, temperature=0.0, chunk=4)
    assert result.potential.shape[1] == 1
    # Started at rest, so NVE keeps the total energy at the starting potential energy.
    np.testing.assert_allclose(result.total[:, 0], out.energy[0], rtol=1e-5)
    assert np.all(result.kinetic[:, 0] > 0.0)
    assert not np.allclose(result.atoms[0].positions, atoms.positions)
