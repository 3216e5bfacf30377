"""eqmlip's NequIP (from_mlip + potential.predict) side by side with mlip 0.2.5's production
path (TRAILING_CHANNELS, `ForceField` predictor) on g2 molecules and periodic crystals."""

import dataclasses
import io
import json
import warnings
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.collections import g2
from mlip.data.chemical_system import ChemicalSystem
from mlip.data.dataset_info import DatasetInfo
from mlip.graph import Graph as MlipGraph
from mlip.graph.batching_helpers import batch_graphs as mlip_batch_graphs, pad_with_graphs
from mlip.models import ForceField, Nequip as MlipNequip
from mlip.models.force_field import get_dummy_graph_for_model_init
from mlip.models.model_io import save_model_to_zip
from mlip.models.nequip.config import NequipConfig as MlipNequipConfig
from mlip.typing.properties import Properties

from eqmlip import Graph, batch_graphs, pad_graph
from eqmlip.interop.mlip import from_mlip
from eqmlip.models.nequip import Nequip, NequipConfig
from eqmlip.potential import predict

from ..helpers import relative_error

pytestmark = pytest.mark.parity

CUTOFF = 4.0
LONG_RANGE_CUTOFF = 8.0
E0 = {1: -13.6, 6: -1029.8, 7: -1484.9, 8: -2041.3, 14: -7.9, 29: -3.7}
E0_OTHER = {z: 0.5 * e + 1.0 for z, e in E0.items()}
MOLECULES = ("CH3CH2OH", "C6H6", "CH3NO2", "H2O", "NH3")
SMALL = dict(target_irreps="8x0e+8x0o+4x1o+4x1e+2x2e+2x2o", l_max=2, radial_mlp_hidden=[16, 16])
DEFAULT_TARGET = "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o"


def _arr(x) -> np.ndarray:
    """A computed property as a NumPy array (it must have been computed)."""
    assert x is not None
    return np.asarray(x)


def _tolerances(x64: bool) -> tuple[float, float]:
    """(relative energy, absolute forces/stress) tolerances."""
    return (1e-10, 1e-10) if x64 else (1e-6, 1e-5)


def _molecules():
    return [g2[name] for name in MOLECULES]


def _crystals():
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=1)
    si.set_cell(si.cell.array @ np.array([[1.0, 0.02, 0.0], [0.02, 0.99, 0.01], [0.0, 0.01, 1.01]]), scale_atoms=True)  # fmt: skip
    cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    cu.rattle(0.05, seed=2)
    return [si, cu]


def random_force_field(
    network, properties: Properties, seed: int, fan_in_scaled: Callable[[str, str], bool]
) -> ForceField:
    """mlip's `ForceField.from_mlip_network`, with random float64 parameters of the right shapes.

    Flax's own `init` traces and runs the whole network eagerly (about a minute for a small
    NequIP here); `eval_shape` of the network's init gives the parameter tree for a fraction
    of that (the predictor's init gives the same tree, but differentiates the network for
    forces: a longer trace). Weights are drawn afresh (no special initial values survive):
    e3j's weights, normalised at run time, as `N(0, 1)`; the leaves for which
    `fan_in_scaled(path, name)` holds (plain Flax kernels) with `1/sqrt(fan_in)`. NumPy draws
    them: `jax.random.normal` compiles once per leaf shape (tens of seconds for the 3-layer
    network).
    """
    ForceField.validate_properties(properties, network.available_properties)
    predictor = ForceField.get_predictor_class(properties, network.config)(
        mlip_network=network,
        required_properties=properties,
        energy_head=ForceField.get_energy_head(network.config, properties, network),
    )
    with jax.debug_nans(False):  # see _check
        shapes = jax.eval_shape(network.init, jax.random.key(0), get_dummy_graph_for_model_init())
    shapes = {"params": {"mlip_network": shapes["params"]}}
    params = random_draws(shapes, seed, fan_in_scaled)
    return ForceField(predictor=predictor, params=params)


def random_draws(shapes, seed: int, fan_in_scaled: Callable[[str, str], bool]):
    """A tree of float64 NumPy draws with the shapes of `shapes` (leaves with `.shape`):
    `N(0, 1)`, or `N(0, 1/fan_in)` for the leaves where `fan_in_scaled(path, name)` holds."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    leaves = []
    for path, leaf in flat:
        name = str(getattr(path[-1], "key", path[-1]))
        scale = 1.0 / np.sqrt(leaf.shape[0]) if fan_in_scaled(str(path), name) else 1.0
        leaves.append(scale * rng.standard_normal(leaf.shape))
    return jax.tree.unflatten(treedef, leaves)


def _force_field(config, dataset_info: DatasetInfo, properties: Properties, seed: int):
    """A NequIP `ForceField` from `random_force_field` (every Flax kernel fan-in scaled)."""
    network = MlipNequip(config, dataset_info)
    return random_force_field(network, properties, seed, lambda _, name: name == "kernel")


def _mlip_batch(structures, dataset_info, dataset_idx, charges):
    graphs = []
    for atoms, idx, charge in zip(structures, dataset_idx, charges, strict=True):
        periodic = bool(atoms.pbc.any())
        system = ChemicalSystem(
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=np.asarray(atoms.cell.array) if periodic else None,
            pbc=(bool(atoms.pbc[0]), bool(atoms.pbc[1]), bool(atoms.pbc[2])) if periodic else None,
            charge=charge,
        )
        graph = MlipGraph.from_chemical_system(
            system, CUTOFF, dataset_info.long_range_cutoff_angstrom
        )
        if not periodic:  # zero shifts, so that molecules batch with crystals
            edges = dataclasses.replace(
                graph.edges, shifts=np.zeros((np.shape(graph.senders)[0], 3))
            )
            graph = dataclasses.replace(graph, edges=edges)
            if graph.edges_long_range is not None:
                lr = np.zeros((np.asarray(graph.senders_long_range).shape[0], 3))
                lr_edges = dataclasses.replace(graph.edges_long_range, shifts=lr)
                graph = dataclasses.replace(graph, edges_long_range=lr_edges)
        globals_ = dataclasses.replace(graph.globals, dataset_idx=np.array([idx], np.int32))
        graph = dataclasses.replace(graph, globals=globals_)
        graphs.append(graph)
    batch = mlip_batch_graphs(graphs)
    lr = None if batch.n_edge_long_range is None else int(np.sum(batch.n_edge_long_range)) + 3
    padded = pad_with_graphs(
        batch,
        n_node=int(np.sum(batch.n_node)) + 1,
        n_edge=int(np.sum(batch.n_edge)) + 3,
        n_graph=len(graphs) + 1,
        n_edge_long_range=lr,
    )
    return padded


def _eqmlip_batch(structures, cutoff, dataset_idx, charges):
    graphs = [
        Graph.from_atoms(atoms, cutoff, dataset_idx=idx, charge=charge)
        for atoms, idx, charge in zip(structures, dataset_idx, charges, strict=True)
    ]
    batch = batch_graphs(graphs)
    # Padding with room to spare: two padding graphs, several padding edges.
    return pad_graph(batch, batch.num_nodes + 2, batch.num_edges + 5, batch.num_graphs + 2)


# (id, mlip config arguments, multi-dataset E0s, total charges, long-range graph, precisions).
# Each case costs a trace of mlip's network for its parameters, then per precision a
# compilation of both networks, so the features are combined: the last case has three layers
# (odd scalars reach the third), two heads picked by dataset_idx, partial charges, the
# total-charge embedding, the Coulomb term and deterministic scatters. One mlip model serves
# both precisions.
CASES = {
    "default-config": (dict(target_irreps=DEFAULT_TARGET), False, None, False, ("f32",)),
    "partial-charges-charge-embedding": (dict(SMALL, predict_partial_charges=True, use_total_charge_embedding=True), False, {-1, 0, 1}, False, ("f32",)),
    "3-layers-odd-scalars-2-heads-coulomb": (dict(SMALL, num_layers=3, num_readout_heads=2, use_coulomb_term=True, use_total_charge_embedding=True, deterministic_scatter_ops=True), True, {-1, 0, 1}, True, ("f32", "x64")),
}  # fmt: skip
PARAMS = [
    pytest.param(name, precision == "x64", id=f"{precision}-{name}")
    for name, case in CASES.items()
    for precision in case[-1]
]

# Both networks are compiled without LLVM's optimisations (several times less compile time for
# these run-once programs); XLA's own passes still run, so the numbers differ from an optimised
# build by rounding only.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# Passed on to `jax.jit` by `eqx.filter_jit` (which does not type its extra keywords).
FAST_JIT: dict[str, Any] = {"compiler_options": FAST_COMPILE}


class BuiltCase(NamedTuple):
    config: Any  # mlip's config of the model
    dataset_info: DatasetInfo
    force_field: ForceField
    apply: Callable  # the predictor's apply, jitted (traced once per precision)


def case_dataset_info(
    two_datasets: bool, total_charges: set[int] | None, long_range: bool, **extra: Any
) -> DatasetInfo:
    """The `DatasetInfo` of a whole-model parity case (one or two heads' E0s, charges, the
    long-range cutoff)."""
    return DatasetInfo(
        atomic_energies_map=[E0, E0_OTHER] if two_datasets else E0,
        dataset_name=["a", "b"] if two_datasets else None,
        graph_cutoff_angstrom=CUTOFF,
        avg_num_neighbors=9.3,
        total_charge_set=total_charges,
        long_range_cutoff_angstrom=LONG_RANGE_CUTOFF if long_range else None,
        **extra,
    )


def build_case(
    config, dataset_info: DatasetInfo, make_force_field: Callable[..., ForceField]
) -> BuiltCase:
    """A case's mlip force field (seed 1, stress and the charges the config predicts) and its
    jitted apply."""
    properties = Properties(stress=True, partial_charges=config.predict_partial_charges)
    force_field = make_force_field(config, dataset_info, properties, seed=1)
    apply = jax.jit(force_field.predictor.apply, compiler_options=FAST_COMPILE)
    return BuiltCase(config, dataset_info, force_field, apply)


_built: dict[str, BuiltCase] = {}


def _build(name: str) -> BuiltCase:
    """A case's mlip model, built once and shared by its precisions."""
    if name not in _built:
        config_kwargs, two_datasets, total_charges, long_range, _ = CASES[name]
        dataset_info = case_dataset_info(two_datasets, total_charges, long_range)
        _built[name] = build_case(MlipNequipConfig(**config_kwargs), dataset_info, _force_field)
    return _built[name]


_predict = eqx.filter_jit(predict, **FAST_JIT)


@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")
@pytest.mark.parametrize("name, x64", PARAMS)
def test_nequip_matches_mlip(name, x64):
    with jax.enable_x64(x64):
        _check(name, x64)


def _check(name, x64):
    rtol_e, atol = _tolerances(x64)
    config_kwargs, two_datasets, total_charges, long_range, _ = CASES[name]
    config, dataset_info, force_field, apply = _build(name)
    # Both sides get the same weights, rounded to the precision under test.
    dtype = jnp.result_type(float)
    params = jax.tree.map(lambda p: np.asarray(p, dtype), force_field.params)
    charges_out = config.predict_partial_charges
    model = from_mlip(params, config, dataset_info)
    assert isinstance(model, Nequip)
    assert (
        model.config.target_irreps == NequipConfig(target_irreps=config.target_irreps).target_irreps
    )
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    assert leaves and all(leaf.dtype == dtype for leaf in leaves)

    # One batch (molecules, then crystals) per side: one compilation each.
    # The full-size default network is the slowest to compile and run: fewer molecules.
    molecules = (
        _molecules()[:2] if config_kwargs.get("target_irreps") == DEFAULT_TARGET else _molecules()
    )
    structures = molecules + _crystals()
    n = len(structures)
    periodic = np.array([bool(a.pbc.any()) for a in structures])
    dataset_idx = [i % 2 if two_datasets else 0 for i in range(n)]
    charges = [(i % 3) - 1 if total_charges else 0 for i in range(n)]
    # mlip's Coulomb kernel takes 1/r of zero-length (padding, dummy-init) edges and discards it
    # with `where`, whose gradient then holds 0 * inf = NaN internally (its outputs are finite);
    # the suite's jax_debug_nans flags that, so it is off for the mlip side only.
    with jax.debug_nans(False):
        expected = apply(params, _mlip_batch(structures, dataset_info, dataset_idx, charges))
    graph = _eqmlip_batch(structures, CUTOFF, dataset_idx, charges)
    if long_range:
        graph = graph.with_long_range(
            _eqmlip_batch(structures, LONG_RANGE_CUTOFF, dataset_idx, charges)
        )
    actual = _predict(model, graph)

    nodes = int(np.sum(graph.n_node[:n]))
    forces, stress, virial = _arr(actual.forces), _arr(actual.stress), _arr(actual.virial)
    assert actual.energy.dtype == forces.dtype == expected.globals.energy.dtype == dtype
    assert relative_error(actual.energy[:n], expected.globals.energy[:n]) <= rtol_e
    assert np.max(np.abs(forces[:nodes] - np.asarray(expected.nodes.forces[:nodes]))) <= atol
    assert np.max(np.abs(np.asarray(expected.nodes.forces[:nodes]))) > 1e-2
    assert np.array_equal(np.asarray(actual.has_stress[:n]), periodic)
    assert not np.any(np.asarray(actual.has_stress[n:]))
    expected_stress = np.asarray(expected.globals.stress[:n])
    # Crystals: the stress. Molecules: mlip divides by det(cell) replaced by 1, so its
    # "stress" is dE/d(strain), minus eqmlip's virial; eqmlip reports no stress.
    assert np.max(np.abs(stress[:n][periodic] - expected_stress[periodic])) <= atol
    assert np.max(np.abs(expected_stress[periodic])) > 1e-4
    assert np.max(np.abs(virial[:n][~periodic] + expected_stress[~periodic])) <= atol
    assert not np.any(stress[:n][~periodic])
    # Padding contributes nothing.
    assert not np.any(np.asarray(actual.energy[n:]))
    assert not np.any(forces[nodes:])
    if charges_out:
        q, q_ref = _arr(actual.partial_charges), np.asarray(expected.nodes.partial_charges)
        assert np.max(np.abs(q[:nodes] - q_ref[:nodes])) <= atol
        totals = jax.ops.segment_sum(q, graph.node_graph_index(), graph.num_graphs)
        assert np.allclose(totals[:n], charges, atol=10 * atol)
        dipole = _arr(actual.dipole)[:n]
        assert np.max(np.abs(dipole - np.asarray(expected.globals.dipole_moment[:n]))) <= 10 * atol


def test_config_fields_match_mlip():
    ours: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(NequipConfig)}
    theirs = MlipNequipConfig()
    assert set(ours) == set(type(theirs).model_fields)
    for name, default in ours.items():
        if name == "target_irreps":
            continue  # mlip 0.2.5's code default differs from its documented one
        value = getattr(theirs, name)
        value = getattr(value, "value", value)
        if isinstance(value, dict):
            value = {k: getattr(v, "value", v) for k, v in value.items()}
            assert value == dict(default), name
        elif isinstance(value, list):
            assert tuple(value) == default, name
        else:
            assert value == default, name
    assert ours["target_irreps"] == "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o"


def test_from_mlip_refuses_mismatched_parameters():
    dataset_info = DatasetInfo(
        atomic_energies_map=E0, graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=5.0
    )
    config = MlipNequipConfig(target_irreps="4x0e+2x1o", l_max=1, radial_mlp_hidden=[8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        params = _force_field(config, dataset_info, Properties(), seed=0).params
    params = jax.tree.map(np.asarray, params)
    from_mlip(params, config, dataset_info)  # loads
    net = params["params"]["mlip_network"]

    missing = {
        **net,
        "NequipLayer_1": {k: v for k, v in net["NequipLayer_1"].items() if k != "residual_block"},
    }
    with pytest.raises(ValueError, match="missing: NequipLayer_1/residual_block/weight0_0_1"):
        from_mlip(missing, config, dataset_info)
    extra = {**net, "Extra_0": {"kernel": np.zeros((2, 2))}}
    with pytest.raises(ValueError, match="unexpected: Extra_0/kernel"):
        from_mlip({"params": {"mlip_network": extra}}, config, dataset_info)
    embed = {"NodeEmbeddingBlock_0": {"embed": {"embedding": np.zeros((5, 4))}}}
    wrong = {**net, "NequipEmbeddingBlock_0": embed}
    with pytest.raises(
        ValueError,
        match=r"NodeEmbeddingBlock_0/embed/embedding has shape \(5, 4\), expected \(6, 4\)",
    ):
        from_mlip(wrong, config, dataset_info)
    # A model built for other species does not fit either.
    other = DatasetInfo(atomic_energies_map={1: 0.0, 8: 0.0}, graph_cutoff_angstrom=CUTOFF)
    with pytest.raises(ValueError, match="expected"):
        from_mlip(params, config, other)


def test_from_mlip_reads_mlip_model_zip(tmp_path):
    """The same model from mlip objects and from the plain contents of mlip's model zip."""
    dataset_info = DatasetInfo(
        atomic_energies_map=E0,
        graph_cutoff_angstrom=CUTOFF,
        avg_num_neighbors=5.0,
        total_charge_set={0, 2},
    )
    config = MlipNequipConfig(
        target_irreps="4x0e+2x1o", l_max=1, radial_mlp_hidden=[8], use_total_charge_embedding=True
    )
    force_field = _force_field(config, dataset_info, Properties(), seed=3)
    path = tmp_path / "model.zip"
    save_model_to_zip(path, force_field)
    with zipfile.ZipFile(path) as archive:
        hyperparams = json.loads(archive.read("hyperparams.json"))
        with archive.open("params.npz") as f:
            npz = dict(np.load(io.BytesIO(f.read())))
    from_objects = from_mlip(force_field, config, dataset_info)
    from_files = from_mlip(npz, hyperparams["config"], hyperparams["dataset_info"])
    assert from_files.config == from_objects.config
    assert from_files.total_charges == (0, 2) and from_files.species == (1, 6, 7, 8, 14, 29)
    leaves = jax.tree.leaves(from_objects), jax.tree.leaves(from_files)
    assert len(leaves[0]) == len(leaves[1]) > 10
    assert all(np.array_equal(a, b) for a, b in zip(*leaves, strict=True))
