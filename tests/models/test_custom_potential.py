"""A potential written outside eqmlip runs through the whole house: registered in one line, trained
by `eqmlip.training.run`, saved and reloaded as a model file, evaluated, used by the ASE
calculator and by `eqmlip evaluate`, with no change to eqmlip."""

import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import yaml
from jaxtyping import Array, Float

import eqmlip
import eqmlip.data
from eqmlip.calculator import EqmlipCalculator
from eqmlip.cli import main
from eqmlip.data import GraphLoader, emt_alloy_dataset, write_structures
from eqmlip.io import load_model, read_header, save_model
from eqmlip.models import AbstractPotential, potential_class, register_potential
from eqmlip.potential import predict
from eqmlip.training import RunConfig, evaluate, run, trainable

CUTOFF = 3.5


@register_potential(name="test-pair")
class PairPotential(AbstractPotential):
    """`E_i = E0[z_i] + 1/2 sum_j sum_k w[z_i, z_j, k] (r/c)^k (1 - r/c)^2` over neighbours."""

    pair_weights: Float[Array, "species species basis"]
    atomic_energies: Float[Array, " species"]
    species: tuple[int, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)

    def __init__(self, species, cutoff, num_basis=4, e0=None, *, dtype=None, key):
        self.species = tuple(int(z) for z in species)
        self.cutoff = float(cutoff)
        n = len(self.species)
        dtype = jnp.float32 if dtype is None else dtype
        w = 0.1 * jr.normal(key, (n, n, num_basis), dtype)
        self.pair_weights = 0.5 * (w + jnp.swapaxes(w, 0, 1))  # symmetric in the two species
        self.atomic_energies = jnp.asarray(
            [0.0 if e0 is None else e0.get(z, 0.0) for z in self.species], dtype
        )

    def hyperparameters(self):
        return {
            "species": list(self.species),
            "cutoff": self.cutoff,
            "num_basis": int(self.pair_weights.shape[-1]),
        }

    @classmethod
    def from_statistics(cls, config, statistics, *, cutoff, energy_scale, dtype, key):
        return cls(statistics.species, cutoff, e0=statistics.atomic_energies, dtype=dtype, key=key)

    def trainable_mask(self):
        return eqx.tree_at(lambda m: m.atomic_energies, super().trainable_mask(), False)

    def __call__(self, graph: eqmlip.Graph) -> Float[Array, " nodes"]:
        index = eqmlip.species_index(graph.atomic_numbers, self.species, graph.node_mask)
        vectors = graph.edge_vectors()
        squared = jnp.sum(vectors**2, axis=-1)
        r = jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
        x = jnp.clip(r / self.cutoff, 0.0, 1.0)
        powers = [x**k for k in range(self.pair_weights.shape[-1])]  # integer powers: finite grads
        basis = jnp.stack(powers, axis=-1) * ((1 - x) ** 2)[:, None]
        weights = self.pair_weights[index[graph.senders], index[graph.receivers]]
        pair = jnp.where(graph.edge_mask, jnp.sum(weights * basis, axis=-1), 0.0)
        energies = 0.5 * jax.ops.segment_sum(pair, graph.receivers, graph.num_nodes)
        energies = energies + jax.lax.stop_gradient(self.atomic_energies)[index]
        return jnp.where(graph.node_mask, energies, 0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    config = RunConfig.from_dict(
        {
            "output_dir": str(out),
            "data": {"num_generated": 12},
            "model": {"cutoff": CUTOFF},
            "train": {"epochs": 3, "quiet": True, "batch_size": 3, "warmup_steps": 2},
        }
    )
    data_file = out / "data.xyz"
    write_structures(data_file, emt_alloy_dataset(4, seed=1, repeat=(2, 1, 1)))
    initial = PairPotential((29, 79), CUTOFF, key=jr.key(0))
    return initial, run(config, model=initial), data_file


def test_registered_by_name():
    assert potential_class("test-pair") is PairPotential
    with pytest.raises(ValueError, match="taken"):

        @register_potential(name="test-pair")
        class Other(PairPotential):
            pass


def test_trains_saves_loads_and_evaluates(trained):
    initial, result, data_file = trained
    assert isinstance(result.model, PairPotential)
    assert result.summary["epochs"] == 3 and result.summary["steps"] > 0
    # Training moved the pair weights, not the fixed E0s.
    assert not np.allclose(result.model.pair_weights, initial.pair_weights)
    assert np.array_equal(result.model.atomic_energies, initial.atomic_energies)
    assert trainable(initial).atomic_energies is False

    # The written config does not claim the default NequIP section trained this model.
    written = (Path(result.model_path).parent / "config.yaml").read_text()
    assert written.startswith("# model: not built from a config; a 'test-pair' potential")
    assert "model" not in yaml.safe_load(written) and "train" in yaml.safe_load(written)

    header = read_header(result.model_path)
    assert header["model"] == "test-pair"
    assert header["hyperparameters"] == {"species": [29, 79], "cutoff": CUTOFF, "num_basis": 4}
    loaded = load_model(result.model_path)
    assert isinstance(loaded, PairPotential)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(result.model), strict=True):
        assert np.array_equal(a, b)

    structures = eqmlip.data.read_structures(data_file)
    loader = GraphLoader(structures, CUTOFF, batch_size=2, shuffle=False)
    metrics = evaluate(loaded, loader)
    assert metrics["num_structures"] == 4 and math.isfinite(metrics["forces_mae"])


def test_cli_evaluate_and_calculator_agree_with_predict(trained, capsys):
    _, result, data_file = trained
    structures = eqmlip.data.read_structures(data_file)
    capsys.readouterr()
    assert main(["evaluate", result.model_path, str(data_file), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    loader = GraphLoader(structures, CUTOFF, batch_size=2, shuffle=False)
    assert printed["forces_mae"] == pytest.approx(evaluate(result.model, loader)["forces_mae"])

    atoms = structures[0].to_atoms()
    atoms.calc = EqmlipCalculator(result.model_path)
    graph = eqmlip.Graph.from_atoms(atoms, CUTOFF)
    graph = jax.tree.map(lambda x: x.astype(np.float32) if x.dtype == np.float64 else x, graph)
    expected = eqx.filter_jit(predict)(result.model, graph)
    assert atoms.get_potential_energy() == pytest.approx(float(expected.energy[0]), rel=1e-5)
    assert np.allclose(atoms.get_forces(), np.asarray(expected.forces), atol=1e-5)
    assert expected.stress is not None
    stress = np.asarray(expected.stress[0])
    assert np.allclose(atoms.get_stress()[:3], np.diag(stress), atol=1e-6)


def test_unregistered_model_is_refused_before_training(tmp_path):
    unregistered = type("Unregistered", (PairPotential,), {})  # the same model, not registered
    model = unregistered((29, 79), CUTOFF, key=jr.key(0))
    with pytest.raises(ValueError, match="not a registered potential"):
        save_model(tmp_path / "m.eqx", model)
