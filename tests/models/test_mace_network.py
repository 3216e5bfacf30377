"""eqmlip's MACE network: the symmetries of physics (Hypothesis, via
`eqmlip.testing.assert_potential_symmetries`), padding and batching, forces and stress as
finite-difference derivatives (x64), model files, the training config's `model.name: mace`,
and errors. Parity with mlip is in tests/parity/test_mace_parity.py."""

from typing import Any

import ase
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import Graph, batch_graphs, pad_graph, testing
from eqmlip.data import Structure, statistics
from eqmlip.io import load_model, save_model
from eqmlip.models import potential_class, potential_name
from eqmlip.models.mace import Mace, MaceConfig, MaceLayer
from eqmlip.potential import Prediction, predict
from eqmlip.training._run import ModelConfig, build_model

from ..helpers import check_finite_differences

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
# One budget for two structures batched (or one with that much padding): one compilation.
BATCH_BUDGET = (2 * NODE_BUDGET, 2 * EDGE_BUDGETS[-1], 4)
STRUCTURES = st.one_of(
    testing.molecules(SPECIES, max_atoms=5),
    testing.crystals(SPECIES, max_atoms=3, min_length=2.0, max_length=4.0),
)
TOLERANCE = {"energy": 1e-5, "forces": 1e-4, "stress": 1e-4}

# Compiled without LLVM optimisations (about 2.5x less compile time; only rounding differs):
# compiling, not running, is what these tests spend.
# (`eqx.filter_jit` passes the options on to `jax.jit`; it does not type its extra keywords.)
_FAST_JIT: dict[str, Any] = {"compiler_options": {"xla_backend_optimization_level": 0}}
_predict = eqx.filter_jit(predict, **_FAST_JIT)
_models: dict[bool, Mace] = {}


def _model(x64: bool = False) -> Mace:
    """The float32 model, built once; under x64 the same weights in float64."""
    if not _models:
        _models[False] = Mace(
            CONFIG,
            SPECIES,
            cutoff=CUTOFF,
            avg_num_neighbors=3.0,
            avg_r_min=0.9,
            atomic_energies={1: -0.5, 6: -1.0, 8: -2.0},
            key=jr.key(0),
        )
    if x64 not in _models:
        assert jax.config.read("jax_enable_x64")
        _models[True] = jax.tree.map(
            lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, _models[False]
        )
    return _models[x64]


def _padded(graph: Graph) -> Graph:
    """`graph` padded to the smallest edge budget that fits."""
    return pad_graph(graph, NODE_BUDGET, [b for b in EDGE_BUDGETS if b > graph.num_edges][0], 2)


def _run(atoms: ase.Atoms, model: Mace | None = None) -> Prediction:
    return _predict(model or _model(), _padded(Graph.from_atoms(atoms, CUTOFF)))


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


def _np(x) -> np.ndarray:
    assert x is not None
    return np.asarray(x, dtype=np.float64)


@hypothesis.settings(max_examples=8)
@hypothesis.given(atoms=STRUCTURES, other=STRUCTURES)
def test_padding_and_batching_leave_real_outputs_unchanged(atoms, other):
    n, m = len(atoms), len(other)
    alone = _run(atoms)
    energy, forces, stress = float(alone.energy[0]), _np(alone.forces)[:n], _np(alone.stress)[0]
    scale = 1.0 + float(np.max(np.abs(forces)))
    # Far more padding: atoms, edges (zero-length self-loops on a padding atom) and graphs.
    graph = Graph.from_atoms(atoms, CUTOFF)
    more = _predict(_model(), pad_graph(graph, *BATCH_BUDGET))
    assert abs(float(more.energy[0]) - energy) <= 1e-6 * (1.0 + abs(energy))
    assert np.max(np.abs(_np(more.forces)[:n] - forces)) <= 1e-5 * scale
    assert np.max(np.abs(_np(more.stress)[0] - stress)) <= 1e-5 * scale
    # Batched with another structure read by the other head, then padding.
    graphs = [graph, Graph.from_atoms(other, CUTOFF, dataset_idx=1)]
    together = _predict(_model(), pad_graph(batch_graphs(graphs), *BATCH_BUDGET))
    assert abs(float(together.energy[0]) - energy) <= 1e-5 * (1.0 + abs(energy))
    assert np.max(np.abs(_np(together.forces)[:n] - forces)) <= 1e-4 * scale
    assert np.max(np.abs(_np(together.stress)[0] - stress)) <= 1e-4 * scale
    second = _predict(_model(), _padded(graphs[1]))
    expected = float(second.energy[0])
    assert abs(float(together.energy[1]) - expected) <= 1e-5 * (1.0 + abs(expected))
    other_scale = 1.0 + float(np.max(np.abs(_np(second.forces)[:m])))
    assert np.max(np.abs(_np(together.forces)[n : n + m] - _np(second.forces)[:m])) <= (
        1e-4 * other_scale
    )
    # Padding: zero energies, forces and stress; nothing anywhere is NaN or infinite.
    assert not np.any(_np(together.energy)[2:])
    assert not np.any(_np(together.forces)[n + m :])
    assert not np.any(_np(together.stress)[2:])
    for prediction in (alone, more, together):
        leaves = jax.tree.leaves(prediction)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


@hypothesis.settings(max_examples=5)
@hypothesis.given(atoms=STRUCTURES, data=st.data())
def test_forces_and_stress_are_finite_difference_derivatives(atoms, data):
    with jax.enable_x64(True):
        model = _model(x64=True)
        # One edge budget for every example: one compilation in float64.
        graph = pad_graph(Graph.from_atoms(atoms, CUTOFF), NODE_BUDGET, EDGE_BUDGETS[-1], 2)
        out = _predict(model, graph)
        assert out.energy.dtype == jnp.float64

        def energy(positions, cell) -> float:
            moved = eqx.tree_at(lambda g: (g.positions, g.cell), graph, (positions, cell))
            return float(_predict(model, moved).energy[0])

        check_finite_differences(energy, graph, out.forces, out.stress, len(atoms), data)


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
