"""Shared set-up of the subprocess workers of tests/parallel (imported by them, not by pytest).

Each worker is started with its own `XLA_FLAGS` (forced host devices), which must be set
before JAX initialises, so the pytest process cannot run these checks itself.
"""

import json
import os
import sys

import jax

# The suite's settings (tests/conftest.py, pyproject.toml): strict promotion, NaNs raise,
# and jaxtyping + beartype checks on eqmlip.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_debug_nans", True)

import ase.build  # noqa: E402, F401
import e3nn_jax  # noqa: E402, F401
import equinox  # noqa: E402, F401
import optax  # noqa: E402, F401
from jaxtyping import install_import_hook  # noqa: E402

# jaxtyping's import hook rewrites every eqmlip module (7-10 s at each start where bytecode
# is not written); the workers of one session share that bytecode in a folder of their own
# (tests/parallel/_run.py). The libraries above keep their installed bytecode.
_pycache = os.environ.get("EQMLIP_TEST_PYCACHE")
if _pycache:
    sys.pycache_prefix, sys.dont_write_bytecode = _pycache, False
with install_import_hook(
    "eqmlip", "beartype.beartype(conf=beartype.BeartypeConf(strategy=beartype.BeartypeStrategy.On))"
):
    import eqmlip  # noqa: F401
    import eqmlip.parallel  # noqa: F401
    import eqmlip.training  # noqa: F401

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

from eqmlip.data import GraphLoader, statistics  # noqa: E402
from eqmlip.models.nequip import Nequip, NequipConfig  # noqa: E402
from eqmlip.training import emt_alloy_dataset  # noqa: E402

CUTOFF = 3.5
TINY = NequipConfig(
    num_layers=1, target_irreps="4x0e + 2x1o", l_max=1, num_rbf=4, radial_mlp_hidden=(8,)
)


def dataset(n: int = 16):
    """`n` Cu-Au cells of 8 atoms with EMT energy, forces and stress."""
    return emt_alloy_dataset(n, seed=1, repeat=(2, 1, 1), snapshots_per_trajectory=4)


def tiny_model(structures, seed: int = 0) -> Nequip:
    stats = statistics(structures, cutoff=CUTOFF)
    return Nequip(
        TINY,
        stats.species,
        cutoff=CUTOFF,
        avg_num_neighbors=stats.avg_num_neighbors,
        atomic_energies=stats.atomic_energies,
        energy_scale=stats.force_rms or 1.0,
        key=jr.key(seed),
    )


def loader(structures, batch_size: int, *, shuffle: bool = False) -> GraphLoader:
    """One bucket and fixed limits, so every batch has the same shape."""
    return GraphLoader(
        structures,
        CUTOFF,
        batch_size=batch_size,
        shuffle=shuffle,
        num_buckets=1,
        max_nodes=8 * batch_size,
        max_edges=150 * batch_size,
    )


def rel(a, b) -> float:
    """max |a - b| / max |b| over the array leaves of two pytrees."""
    la = [np.asarray(x, np.float64) for x in jax.tree.leaves(a)]
    lb = [np.asarray(x, np.float64) for x in jax.tree.leaves(b)]
    assert len(la) == len(lb)
    num = max(float(np.max(np.abs(x - y))) for x, y in zip(la, lb, strict=True))
    den = max(float(np.max(np.abs(y))) for y in lb)
    return num / den


def report(result: dict) -> None:
    """The worker's one JSON line on stdout (the last line; the test parses it)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
