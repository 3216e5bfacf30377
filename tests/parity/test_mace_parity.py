"""eqmlip's MACE (from_mlip + potential.predict) side by side with mlip 0.2.5's production
path (e3j symmetric contraction, `TRAILING_CHANNELS`, `ForceField` predictor) on g2 molecules
and periodic crystals (one of them triclinic), padded batches."""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlip.data.dataset_info import DatasetInfo
from mlip.models import Mace as MlipMace
from mlip.models.mace.config import MaceConfig as MlipMaceConfig
from mlip.typing.properties import Properties

from eqmlip.interop.mlip import from_mlip
from eqmlip.models.mace import Mace, MaceConfig
from eqmlip.potential import predict

from ..helpers import relative_error
from .test_nequip_parity import (
    CUTOFF,
    E0,
    E0_OTHER,
    FAST_JIT,
    LONG_RANGE_CUTOFF,
    BuiltCase,
    _arr,
    _crystals,
    _eqmlip_batch,
    _mlip_batch,
    _molecules,
    _tolerances,
    build_case,
    case_dataset_info,
    random_force_field,
)

pytestmark = pytest.mark.parity

# Small versions of the default (channels, radial MLP): the compile time of both networks is
# what this file spends.
SMALL = dict(num_channels=4, radial_mlp_hidden=[8, 8])


def _force_field(config, dataset_info: DatasetInfo, properties: Properties, seed: int):
    """A MACE `ForceField` from `random_force_field`: mlip's own initialisers draw `N(0, 1)`
    (its radial MLPs scale by `1/sqrt(fan_in)` at run time); only the joint embedding's plain
    Dense kernel gets `1/sqrt(fan_in)`."""
    return random_force_field(
        MlipMace(config, dataset_info),
        properties,
        seed,
        lambda path, name: name == "kernel" and "joint_embedding_projection" in path,
    )


# (id, mlip config arguments, two datasets, total charges, long-range graph, avg_r_min,
# precisions). Each case costs a trace of mlip's network for its parameters (the most of a
# case), then per precision a compilation of both networks: the options are combined, and
# one mlip model serves both precisions.
CASES = {
    "default-like": (dict(SMALL), False, None, False, None, ("f32", "x64")),
    "corr1-sym1-pseudo-gate-soft-residual-first-r-min-no-e0": (dict(SMALL, correlation=1, node_symmetry=1, include_pseudotensors=True, gate_nodes=True, soft_normalization=1.5, residual_connection_first_layer=True, add_atomic_energies=False), False, None, False, 1.1, ("f32",)),
    "corr2-lmax2-3-layers-2-heads-charges-coulomb": (dict(SMALL, correlation=2, l_max=2, num_layers=3, num_readout_heads=2, use_coulomb_term=True, use_total_charge_embedding=True, readout_irreps=("8x0e", "0e"), deterministic_scatter_ops=True), True, {-1, 0, 1}, True, None, ("f32", "x64")),
}  # fmt: skip
PARAMS = [
    pytest.param(name, precision == "x64", id=f"{precision}-{name}")
    for name, case in CASES.items()
    for precision in case[-1]
]


_built: dict[str, BuiltCase] = {}


def _build(name: str) -> BuiltCase:
    """A case's mlip model, built once and shared by its precisions (and by the `from_mlip`
    test)."""
    if name not in _built:
        config_kwargs, two_datasets, total_charges, long_range, avg_r_min, _ = CASES[name]
        dataset_info = case_dataset_info(
            two_datasets, total_charges, long_range, avg_r_min_angstrom=avg_r_min
        )
        _built[name] = build_case(MlipMaceConfig(**config_kwargs), dataset_info, _force_field)
    return _built[name]


_predict = eqx.filter_jit(predict, **FAST_JIT)


@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")
@pytest.mark.parametrize("name, x64", PARAMS)
def test_mace_matches_mlip(name, x64):
    with jax.enable_x64(x64):
        _check(name, x64)


def _check(name, x64):
    rtol_e, atol = _tolerances(x64)
    start = time.perf_counter()
    _, two_datasets, total_charges, long_range, avg_r_min, _ = CASES[name]
    config, dataset_info, force_field, apply = _build(name)
    # Both sides get the same weights, rounded to the precision under test.
    dtype = jnp.result_type(float)
    params = jax.tree.map(lambda p: np.asarray(p, dtype), force_field.params)
    model = from_mlip(params, config, dataset_info)
    assert isinstance(model, Mace) and isinstance(model.config, MaceConfig)
    assert (model.avg_r_min is None) == (avg_r_min is None)
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    assert leaves and all(leaf.dtype == dtype for leaf in leaves)
    charges_out = config.predict_partial_charges

    structures = _molecules()[:3] + _crystals()
    n = len(structures)
    periodic = np.array([bool(a.pbc.any()) for a in structures])
    dataset_idx = [i % 2 if two_datasets else 0 for i in range(n)]
    charges = [(i % 3) - 1 if total_charges else 0 for i in range(n)]
    with jax.debug_nans(False):  # mlip's Coulomb kernel: see the NequIP parity test
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
    ref_forces = np.asarray(expected.nodes.forces[:nodes])
    ref_stress = np.asarray(expected.globals.stress[:n])
    # The E0s (about 1e3 eV) would swamp the network's part in a relative error, so the network's
    # part is compared too: under x64, or without E0s (float32 totals of 1e3 eV round at 1e-4).
    e0 = np.zeros(n)
    for g, (atoms, d) in enumerate(zip(structures, dataset_idx, strict=True)):
        if config.add_atomic_energies:
            e0[g] = sum((E0_OTHER if d else E0)[int(z)] for z in atoms.numbers)
    ref_energy = np.asarray(expected.globals.energy[:n], np.float64)
    e_err = relative_error(actual.energy[:n], ref_energy)
    net_err = relative_error(np.asarray(actual.energy[:n], np.float64) - e0, ref_energy - e0)
    f_err = np.max(np.abs(forces[:nodes] - ref_forces))
    s_err = np.max(np.abs(stress[:n][periodic] - ref_stress[periodic]))
    print(
        f"\nMACE parity: energy rel {e_err:.2e}, E - E0 rel {net_err:.2e} (max |E - E0| "
        f"{np.max(np.abs(ref_energy - e0)):.2f} eV), forces {f_err:.2e} eV/A (max |F| "
        f"{np.max(np.abs(ref_forces)):.2f}), stress {s_err:.2e}, "
        f"{time.perf_counter() - start:.1f} s"
    )
    assert e_err <= rtol_e
    if x64 or not config.add_atomic_energies:
        assert net_err <= rtol_e
    assert f_err <= atol
    assert np.max(np.abs(ref_forces)) > 1e-2
    assert np.array_equal(np.asarray(actual.has_stress[:n]), periodic)
    assert s_err <= atol
    assert np.max(np.abs(ref_stress[periodic])) > 1e-4
    # Molecules: mlip's "stress" is dE/d(strain) (volume 1), minus eqmlip's virial.
    assert np.max(np.abs(virial[:n][~periodic] + ref_stress[~periodic])) <= atol
    assert not np.any(np.asarray(actual.energy[n:]))
    assert not np.any(forces[nodes:])
    if charges_out:
        q, q_ref = _arr(actual.partial_charges), np.asarray(expected.nodes.partial_charges)
        assert np.max(np.abs(q[:nodes] - q_ref[:nodes])) <= atol


def test_from_mlip_mace_checks_every_leaf_and_reads_zip_contents():
    # The default-like case's mlip model (built once for the parity cases), as float32 NumPy
    # arrays: what mlip's model zip holds.
    config, dataset_info, force_field, _ = _build("default-like")
    params = jax.tree.map(lambda p: np.asarray(p, np.float32), force_field.params)
    model = from_mlip(params, config, dataset_info)
    assert isinstance(model, Mace)
    # The plain contents of mlip's model zip: flat '#'-joined keys, the config as JSON fields.
    flat = {
        "#".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    from_zip = from_mlip(flat, config.model_dump(mode="json"), dataset_info)
    assert isinstance(from_zip, Mace) and from_zip.config == model.config
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(from_zip), strict=True)
    )

    net = params["params"]["mlip_network"]
    layer = {k: v for k, v in net["layers_1"].items() if k != "residual_block"}
    with pytest.raises(ValueError, match="missing: layers_1/residual_block/weight0_0_1"):
        from_mlip({**net, "layers_1": layer}, config, dataset_info)
    with pytest.raises(ValueError, match="unexpected: Extra_0/kernel"):
        from_mlip({**net, "Extra_0": {"kernel": np.zeros((2, 2))}}, config, dataset_info)
    embed = {"node_embedding_block": {"embed": {"embedding": np.zeros((5, 4))}}}
    with pytest.raises(
        ValueError,
        match=r"embedding_block/node_embedding_block/embed/embedding has shape \(5, 4\), "
        r"expected \(6, 4\)",
    ):
        from_mlip({**net, "embedding_block": embed}, config, dataset_info)
    with pytest.raises(ValueError, match="expected"):  # another width does not fit
        from_mlip(params, MlipMaceConfig(**{**SMALL, "num_channels": 3}), dataset_info)
