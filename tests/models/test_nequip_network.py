"""The NequIP network on eqmlip.Graph and the potential: batching, padding, derivatives, heads,
E0s, charges."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from eqmlip import Graph, batch_graphs, pad_graph
from eqmlip.models.nequip import Nequip, NequipConfig
from eqmlip.models.nequip.network import physnet_switch
from eqmlip.potential import predict, strain

K = jr.PRNGKey
CUTOFF = 3.0
SPECIES = (1, 6, 8, 14)
E0 = {1: -1.0, 6: -2.0, 8: -3.0, 14: -4.0}
SMALL: dict[str, Any] = dict(
    target_irreps="4x0e+4x0o+2x1o+2x1e+2x2e", l_max=2, radial_mlp_hidden=(8,)
)

_predict = eqx.filter_jit(predict)


def _arr(x) -> np.ndarray:
    """A computed property as a NumPy array (it must have been computed)."""
    assert x is not None
    return np.asarray(x)


def _model(key=None, **config):
    key = K(0) if key is None else key
    kwargs = dict(SMALL, **config)
    return Nequip(
        NequipConfig(**kwargs),
        SPECIES,
        cutoff=CUTOFF,
        avg_num_neighbors=4.0,
        atomic_energies=E0,
        total_charges=(-1, 0, 1),
        long_range_cutoff=6.0,
        key=key,
    )


def _silicon():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=0)
    return atoms


def test_structure_and_last_layer_pruning():
    model = _model(num_layers=3)
    assert [str(layer.irreps_out) for layer in model.layers] == [
        "4x0e+2x1o+2x2e",
        "4x0e+2x1o+2x1e+2x2e",
        "4x0e",  # the readout reads only the even scalars
    ]
    assert model.layers[-1].scalars_only and not model.layers[0].scalars_only
    assert model.readout.out_features == model.readout.heads[0].out_features


def test_batching_and_padding_do_not_change_results():
    model = _model()
    mol = Graph.from_atoms(molecule("CH3CH2OH"), CUTOFF)
    si = Graph.from_atoms(_silicon(), CUTOFF)
    alone = [_predict(model, g) for g in (mol, si)]
    batch = batch_graphs([mol, si])
    padded = pad_graph(batch, batch.num_nodes + 3, batch.num_edges + 7, 4)
    together = _predict(model, padded)
    n_mol = mol.num_nodes
    assert np.allclose(together.energy[:2], [a.energy[0] for a in alone], rtol=1e-6)
    assert not np.any(np.asarray(together.energy[2:]))
    assert np.allclose(_arr(together.forces)[:n_mol], _arr(alone[0].forces), atol=1e-5)
    assert np.allclose(
        _arr(together.forces)[n_mol : batch.num_nodes], _arr(alone[1].forces), atol=1e-5
    )
    assert not np.any(np.asarray(_arr(together.forces)[batch.num_nodes :]))
    assert np.allclose(_arr(together.stress)[1], _arr(alone[1].stress)[0], atol=1e-6)
    assert list(np.asarray(together.has_stress)) == [False, True, False, False]
    assert not np.any(np.asarray(_arr(together.stress)[0]))
    assert np.allclose(jnp.sum(together.node_energies), jnp.sum(together.energy), rtol=1e-6)
    for p in (together, *alone):
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(p))


def test_forces_and_stress_are_derivatives_of_the_energy():
    with jax.enable_x64(True):
        model = _model()
        atoms = _silicon()
        graph = Graph.from_atoms(atoms, CUTOFF)
        out = _predict(model, graph)

        def energy(m, p, c):
            moved = eqx.tree_at(lambda g: (g.positions, g.cell), graph, (p, c))
            return jnp.sum(m(moved).node_energies)

        total = eqx.filter_jit(energy)
        pos0, cell0 = jnp.asarray(graph.positions), jnp.asarray(graph.cell)

        h = 1e-5
        for atom, axis in ((0, 0), (1, 2)):
            step = jnp.zeros_like(pos0).at[atom, axis].set(h)
            fd = -(total(model, pos0 + step, cell0) - total(model, pos0 - step, cell0)) / (2 * h)
            assert abs(float(fd) - float(_arr(out.forces)[atom, axis])) < 1e-7

        def strained(eps):
            return total(model, *strain(graph, pos0, cell0, eps))

        volume = abs(np.linalg.det(atoms.cell.array))
        for i, j in ((0, 0), (0, 1), (2, 1)):
            eps = jnp.zeros((1, 3, 3)).at[0, i, j].set(h)
            d = (strained(eps) - strained(-eps)) / (2 * h)
            assert abs(float(d) / volume - float(_arr(out.stress)[0, i, j])) < 1e-8
        assert float(jnp.max(jnp.abs(_arr(out.stress)[0]))) > 1e-5
        assert np.allclose(_arr(out.stress)[0], _arr(out.stress)[0].T, atol=1e-12)
        assert np.allclose(_arr(out.virial)[0], -_arr(out.stress)[0] * volume, atol=1e-10)


def test_unknown_elements_raise():
    model = _model()
    graph = Graph.from_atoms(Atoms("HN", positions=[[0, 0, 0], [0, 0, 1.0]]), CUTOFF)
    with pytest.raises(Exception, match="element N"):
        _predict(model, graph)


def test_heads_and_atomic_energies_per_dataset():
    e0_other = {z: 2 * e + 0.5 for z, e in E0.items()}
    model = Nequip(
        NequipConfig(**SMALL, num_readout_heads=2),
        SPECIES,
        cutoff=CUTOFF,
        avg_num_neighbors=4.0,
        atomic_energies=[E0, e0_other],
        key=K(1),
    )
    atoms = molecule("H2O")
    g0, g1 = (Graph.from_atoms(atoms, CUTOFF, dataset_idx=i) for i in (0, 1))
    e = [float(_predict(model, g).energy[0]) for g in (g0, g1)]
    # With head 1 made equal to head 0, only the E0s differ.
    same = eqx.tree_at(lambda m: m.readout.heads[1], model, model.readout.heads[0])
    e_same = [float(_predict(same, g).energy[0]) for g in (g0, g1)]
    shift = sum(e0_other[z] - E0[z] for z in atoms.numbers)
    assert abs(e_same[0] - e[0]) < 1e-6
    assert abs((e_same[1] - e_same[0]) - shift) < 1e-4
    assert abs((e[1] - e[0]) - shift) > 1e-3  # the heads differ
    with pytest.raises(Exception, match="dataset_idx"):
        _predict(model, Graph.from_atoms(atoms, CUTOFF, dataset_idx=2))


def test_partial_charges_coulomb_and_charge_embedding():
    model = _model(use_coulomb_term=True, use_total_charge_embedding=True, num_layers=2)
    assert model.config.predict_partial_charges
    atoms = molecule("CH3CH2OH")
    graphs = [Graph.from_atoms(atoms, CUTOFF, charge=q) for q in (-1, 1, 5)]
    long_range = [Graph.from_atoms(atoms, 6.0, charge=q) for q in (-1, 1, 5)]
    batch = pad_graph(batch_graphs(graphs), 3 * len(atoms) + 1, 3 * graphs[0].num_edges + 2, 4)
    lr_batch = pad_graph(
        batch_graphs(long_range), 3 * len(atoms) + 1, 3 * long_range[0].num_edges + 2, 4
    )
    out = _predict(model, batch.with_long_range(lr_batch))
    totals = jax.ops.segment_sum(_arr(out.partial_charges), batch.node_graph_index(), 4)
    assert np.allclose(totals, [-1, 1, 5, 0], atol=1e-5)
    assert not np.any(np.asarray(_arr(out.partial_charges)[3 * len(atoms) :]))
    assert _arr(out.dipole) is not None and np.all(np.isfinite(np.asarray(_arr(out.dipole))))
    assert abs(float(out.energy[0] - out.energy[1])) > 1e-4  # the total charge is embedded
    with pytest.raises(ValueError, match="long-range edges"):
        _predict(model, batch)
    with pytest.raises(ValueError, match="same atoms"):
        batch.with_long_range(long_range[0])
    # Batching or padding would have to offset and pad the long-range edges too: refused.
    with pytest.raises(ValueError, match="carries long-range edges"):
        pad_graph(batch.with_long_range(lr_batch), batch.num_nodes + 1, batch.num_edges, 5)
    with pytest.raises(ValueError, match="carries long-range edges"):
        batch_graphs([batch.with_long_range(lr_batch), batch])
    assert np.all(np.isfinite(np.asarray(_arr(out.forces))))
    # Coulomb kernel: 1/r at long range, finite at 0 with a finite gradient.
    r = jnp.asarray([0.0, 1.0, 6.0])
    values = physnet_switch(r)
    assert np.isclose(float(values[0]), 1.0) and np.isclose(float(values[2]), 1 / 6.0)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda x: jnp.sum(physnet_switch(x)))(r))))


def test_deterministic_scatter_ops_and_rotation_invariance():
    graph = Graph.from_atoms(molecule("C6H6"), CUTOFF)
    plain = _predict(_model(K(3)), graph)
    deterministic = _predict(_model(K(3), deterministic_scatter_ops=True), graph)
    assert np.allclose(plain.energy, deterministic.energy, rtol=1e-6)
    assert np.allclose(_arr(plain.forces), _arr(deterministic.forces), atol=1e-5)
    rotation = np.linalg.qr(np.asarray(jr.normal(K(4), (3, 3))))[0]
    rotated = eqx.tree_at(lambda g: g.positions, graph, np.asarray(graph.positions) @ rotation.T)
    turned = _predict(_model(K(3)), rotated)
    assert np.allclose(turned.energy, plain.energy, rtol=1e-5)
    assert np.allclose(_arr(turned.forces), np.asarray(_arr(plain.forces)) @ rotation.T, atol=1e-4)


def test_constructor_errors():
    config = NequipConfig(**SMALL)
    with pytest.raises(ValueError, match="sorted"):
        Nequip(config, (8, 1), cutoff=3.0, avg_num_neighbors=1.0, key=K(0))
    with pytest.raises(ValueError, match="avg_num_neighbors"):
        Nequip(config, (1, 8), cutoff=3.0, key=K(0))
    with pytest.raises(ValueError, match="not among the species"):
        Nequip(
            config, (1, 8), cutoff=3.0, avg_num_neighbors=1.0, atomic_energies={6: 1.0}, key=K(0)
        )
    with pytest.raises(ValueError, match="long_range_cutoff"):
        Nequip(
            NequipConfig(**SMALL, use_coulomb_term=True),
            (1, 8),
            cutoff=3.0,
            avg_num_neighbors=1.0,
            key=K(0),
        )
