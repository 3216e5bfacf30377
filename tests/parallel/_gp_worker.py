"""Graph-parallel worker: run with XLA_FLAGS=--xla_force_host_platform_device_count=4.

Energy and forces of one periodic Cu crystal (2048 atoms) with its nodes and edges sharded
over 4 devices, against the unsharded computation on one device, for a NequIP and a MACE (the
same sharded call for any potential), and the error for an unknown element; prints
`RESULT {json}` (the test also reads XLA's log lines).
"""

from typing import Any

import _common  # noqa: I001  (sets JAX flags and the jaxtyping hook before eqmlip loads)
import equinox as eqx
import jax
import jax.random as jr
import numpy as np
from ase.build import bulk

from eqmlip import Graph
from eqmlip.models.mace import Mace, MaceConfig
from eqmlip.models.nequip import Nequip, NequipConfig
from eqmlip.parallel import make_mesh, shard_graph, sharded_predict
from eqmlip.potential import predict

N_DEV = 4
CUTOFF = 3.0


def main() -> None:
    assert jax.device_count() == N_DEV, jax.devices()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (8, 8, 8)
    atoms.positions += 0.05 * np.random.default_rng(0).standard_normal(atoms.positions.shape)
    graph = Graph.from_atoms(atoms, CUTOFF)
    config = NequipConfig(
        num_layers=1, target_irreps="4x0e + 2x1o", l_max=1, num_rbf=4, radial_mlp_hidden=(8,)
    )
    model = Nequip(config, (29,), cutoff=CUTOFF, avg_num_neighbors=12.0, key=jr.key(0))

    mesh = make_mesh(N_DEV)
    sharded = shard_graph(graph, mesh)
    senders: Any = sharded.senders
    positions: Any = sharded.positions
    out: dict = {
        "atoms": graph.num_nodes,
        "edges": graph.num_edges,
        "edge_spec": str(senders.sharding.spec),
        "node_spec": str(positions.sharding.spec),
        "edge_shard_sizes": sorted({s.data.shape[0] for s in senders.addressable_shards}),
    }
    ref = eqx.filter_jit(predict)(model, graph)
    par = sharded_predict(model, graph, mesh)
    assert par.forces is not None and ref.forces is not None
    assert par.stress is not None and ref.stress is not None
    out["energy"] = float(ref.energy[0])
    out["energy_rel"] = abs(float(par.energy[0] - ref.energy[0])) / abs(float(ref.energy[0]))
    out["forces_abs"] = float(np.max(np.abs(np.asarray(par.forces) - np.asarray(ref.forces))))
    out["forces_max"] = float(np.max(np.abs(np.asarray(ref.forces))))
    out["stress_abs"] = float(np.max(np.abs(np.asarray(par.stress) - np.asarray(ref.stress))))
    out["shapes"] = [list(par.forces.shape), list(par.energy.shape)]
    # A small MACE (correlation 2, l_max 1) through the same sharded call.
    mace = Mace(
        MaceConfig(
            num_layers=1, num_channels=4, l_max=1, correlation=2, num_rbf=4, radial_mlp_hidden=(8,)
        ),
        (29,),
        cutoff=CUTOFF,
        avg_num_neighbors=12.0,
        avg_r_min=2.4,
        key=jr.key(1),
    )
    ref = eqx.filter_jit(predict)(mace, graph)
    par = sharded_predict(mace, graph, mesh)
    assert par.forces is not None and ref.forces is not None
    out["mace_energy_rel"] = abs(float(par.energy[0] - ref.energy[0])) / abs(float(ref.energy[0]))
    out["mace_forces_abs"] = float(np.max(np.abs(np.asarray(par.forces) - np.asarray(ref.forces))))
    out["mace_forces_max"] = float(np.max(np.abs(np.asarray(ref.forces))))
    # An element the model does not know is refused before anything is sharded.
    atoms.numbers[5] = 79
    try:
        sharded_predict(model, Graph.from_atoms(atoms, CUTOFF), mesh)
    except ValueError as error:
        out["unknown_species_error"] = str(error)
    _common.report(out)


if __name__ == "__main__":
    main()
