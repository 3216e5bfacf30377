"""A tiny EMT Cu-Au dataset and a tiny NequIP, shared by the training tests."""

import jax.random as jr
import pytest

from eqmlip.data import GraphLoader, statistics
from eqmlip.models.nequip import Nequip, NequipConfig
from eqmlip.training import emt_alloy_dataset

CUTOFF = 3.5
TINY = NequipConfig(
    num_layers=1, target_irreps="4x0e + 2x1o", l_max=1, num_rbf=4, radial_mlp_hidden=(8,)
)


def tiny_model(structures, *, heads: int = 1, seed: int = 0) -> Nequip:
    stats = statistics(structures, cutoff=CUTOFF)
    config = TINY if heads == 1 else NequipConfig(**{**TINY.__dict__, "num_readout_heads": heads})
    return Nequip(
        config,
        stats.species,
        cutoff=CUTOFF,
        avg_num_neighbors=stats.avg_num_neighbors,
        atomic_energies=stats.atomic_energies,
        energy_scale=stats.force_rms or 1.0,
        key=jr.key(seed),
    )


@pytest.fixture(scope="session")
def alloy_structures():
    """16 Cu-Au cells of 8 atoms with EMT energy, forces and stress."""
    return emt_alloy_dataset(16, seed=1, repeat=(2, 1, 1), snapshots_per_trajectory=4)


@pytest.fixture(scope="session")
def model(alloy_structures):
    return tiny_model(alloy_structures)


def loader(structures, *, batch_size=4, shuffle=True, seed=0):
    """One bucket and fixed limits, so every loader over these structures has one shape."""
    return GraphLoader(
        structures,
        CUTOFF,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        num_buckets=1,
        max_nodes=8 * batch_size,
        max_edges=150 * batch_size,
    )
