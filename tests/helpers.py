"""Shared test utilities."""

import importlib.util
import pathlib
from types import ModuleType

import equinox as eqx
import hypothesis.strategies as st
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from eqmlip.data import GraphLoader, statistics
from eqmlip.models.nequip import Nequip, NequipConfig
from eqmlip.potential import strain


def load_benchmark(name: str) -> ModuleType:
    """`benchmarks/<name>.py` as a module (the folder is not a package)."""
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.max(np.abs(expected), initial=0.0)
    diff = np.max(np.abs(actual - expected), initial=0.0)
    if scale == 0.0:
        return diff
    return float(diff / scale)


def tolerance(dtype) -> float:
    """Parity tolerance: 1e-6 relative in float32, 1e-12 in float64."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 1e-6


class CountingApply:
    """`eqx.filter_jit(lambda model, *args: model(*args))` that counts how often it traces."""

    def __init__(self):
        self.traces = 0

        @eqx.filter_jit
        def apply(model, *args):
            self.traces += 1
            return model(*args)

        self._apply = apply

    def __call__(self, model, *args):
        return self._apply(model, *args)


# A tiny NequIP on a tiny EMT Cu-Au dataset, shared by the training, io, cli and calculator tests.
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


def check_finite_differences(energy_of, graph, forces, stress, num_atoms: int, data) -> None:
    """One force component (atom and axis drawn by Hypothesis `data`) against central
    differences (h = 1e-5) of `energy_of(positions, cell)`, the first graph's energy, within
    1e-7; for a periodic graph one stress component against the strain derivative over the
    volume within 1e-8, else zero stress. For float64 models: O(h^2) truncation and 1e-16 / h
    rounding are both far below those bounds."""
    pos0 = np.asarray(graph.positions, dtype=np.float64)
    cell0 = np.asarray(graph.cell, dtype=np.float64)
    h = 1e-5
    atom = data.draw(st.integers(0, num_atoms - 1), label="atom")
    axis = data.draw(st.integers(0, 2), label="axis")
    step = np.zeros_like(pos0)
    step[atom, axis] = h
    fd = -(energy_of(pos0 + step, cell0) - energy_of(pos0 - step, cell0)) / (2 * h)
    assert abs(fd - float(np.asarray(forces)[atom, axis])) <= 1e-7

    if np.asarray(graph.pbc)[0].any():
        i, j = data.draw(st.integers(0, 2), label="i"), data.draw(st.integers(0, 2), label="j")
        eps = np.zeros((cell0.shape[0], 3, 3))
        eps[0, i, j] = h

        def strained(e) -> float:
            positions, cell = strain(graph, jnp.asarray(pos0), jnp.asarray(cell0), e)
            return energy_of(np.asarray(positions), np.asarray(cell))

        derivative = (strained(jnp.asarray(eps)) - strained(jnp.asarray(-eps))) / (2 * h)
        volume = abs(np.linalg.det(cell0[0]))
        assert abs(derivative / volume - float(np.asarray(stress)[0, i, j])) <= 1e-8
    else:
        assert not np.any(np.asarray(stress)[0])
