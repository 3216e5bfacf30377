"""MACE: energy+forces and a training step, eqmlip against mlip 0.2.5 (its production path),
from the same weights, in the same process.

The default config (mlip's `MaceConfig()`: 2 layers, 128 channels, `l_max = 3`, correlation 3,
8 Bessel functions, radial MLP [64, 64, 64], e3j symmetric contraction; cutoff 5 Å, float32).
mlip's `Mace` is initialised by its own initialisers (the network's `init`, compiled), and the
eqmlip model is converted from those weights by `eqmlip.interop.from_mlip`. Cases:

- `molecule`, `crystal`: energy and forces (`ForceField.predictor.apply` against
  `eqmlip.potential.predict`) of 1-hexanol (21 atoms) and a rattled diamond Si crystal of
  `n x n x n` cubic cells (`--crystal-cells`, 4: 512 atoms), as `benchmarks/nequip.py` builds
  them, each padded by one node, one edge and one graph.
- `train`: one training step (energy and forces loss, second-order gradient, optimizer update,
  EMA) on a batch of 8 g2 molecules of 9 atoms, padded, as `benchmarks/train.py` sets it up:
  mlip's `make_train_step` with its `MSELoss` against `eqmlip.training.train_step` with
  `Loss`, the same optax chain (clip + AMSGrad) and an EMA of decay 0.99 on both sides.

Each step is compiled once (a fresh `jax.jit(...).lower().compile()` after `jax.clear_caches()`,
timed; its peak memory is XLA's estimate of that program: arguments + outputs + temporaries -
aliased). Correctness comes first, on the compiled programs that are timed: energies must agree
to 1e-6 (relative) and forces to 1e-4 eV/Å, the first training loss to 1e-5 (relative) and the
second, after one update, to 1e-3. Then the two libraries' steps alternate for `--repeats`
rounds (each round one eqmlip call and one mlip call, back to back), so that a change of load on
a shared machine reaches both; the JSON line gives medians, the ratio of the medians and the
median and range of the per-round ratios (mlip / eqmlip: > 1 means eqmlip is faster or smaller).

    python benchmarks/mace.py [--systems molecule,crystal,train] [--repeats 20]
        [--crystal-repeats 5] [--crystal-cells 4] [--train-repeats 10] [--config JSON]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

if os.environ.get("MLIP_TESTING"):
    raise SystemExit("unset MLIP_TESTING: the benchmark compares with mlip's production path")

import equinox as eqx
import jax
import numpy as np
from mlip.data.dataset_info import DatasetInfo
from mlip.models import ForceField, Mace as MlipMace
from mlip.models.force_field import get_dummy_graph_for_model_init
from mlip.models.mace.config import MaceConfig as MlipMaceConfig
from mlip.training.training_state import init_training_state
from mlip.typing.properties import Properties

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ase.build import bulk  # noqa: E402

from benchmarks.nequip import (  # noqa: E402
    CUTOFF,
    eqmlip_graph,
    hexanol,
    mlip_graph,
)
from benchmarks.train import (  # noqa: E402
    EMA_DECAY,
    ENERGY_WEIGHT,
    FORCES_WEIGHT,
    eqmlip_batch,
    mlip_batch,
    molecules,
    training_steps,
    with_targets,
)
from eqmlip.interop.mlip import from_mlip  # noqa: E402
from eqmlip.potential import predict  # noqa: E402
from eqmlip.training import (  # noqa: E402
    cast_batch,
    init_state,
    train_step,
)

SYSTEMS = ("molecule", "crystal", "train")
TRAIN_ATOMS, TRAIN_BATCH = 9, 8
AVG_NUM_NEIGHBORS = 12.0


def silicon(cells: int) -> Any:
    """Rattled diamond Si, `cells**3` cubic cells of 8 atoms (4: the 512 atoms of
    `benchmarks/nequip.py`, same rattle)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (cells, cells, cells)
    atoms.rattle(0.05, seed=0)
    return atoms


def mlip_force_field(config: MlipMaceConfig, info: DatasetInfo) -> ForceField:
    """`ForceField.from_mlip_network` with the parameter init compiled (eager init of the
    default network takes minutes on CPU); the network's own initialisers."""
    network = MlipMace(config, info)
    properties = Properties()  # energy and forces
    predictor = ForceField.get_predictor_class(properties, network.config)(
        mlip_network=network,
        required_properties=properties,
        energy_head=ForceField.get_energy_head(network.config, properties, network),
    )
    # The network's init traces in about half the time of the predictor's, same parameters.
    variables = jax.jit(network.init)(jax.random.key(0), get_dummy_graph_for_model_init())
    params = {"params": {"mlip_network": variables["params"]}}
    return ForceField(predictor=predictor, params=params)


def _compile(fn: Callable, *args: Any) -> tuple[Any, float, int]:
    """(compiled `fn`, compile seconds, peak bytes) for arguments already on the device."""
    jax.clear_caches()  # no executable served from a cache
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    stats: Any = compiled.memory_analysis()
    peak = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return compiled, compile_s, int(peak)


def _interleaved(steps: Sequence[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Seconds of each step per round: the steps run one after the other in every round."""
    for step in steps:
        step()  # warm-up
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for record, step in zip(times, steps, strict=True):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return times


def _summary(
    ours: list[float],
    theirs: list[float],
    compile_s: tuple[float, float],
    peak: tuple[int, int],
) -> dict[str, Any]:
    eqmlip_median, mlip_median = statistics.median(ours), statistics.median(theirs)
    rounds = [t / o for o, t in zip(ours, theirs, strict=True)]
    return {
        "eqmlip_median_ms": round(eqmlip_median * 1e3, 3),
        "mlip_median_ms": round(mlip_median * 1e3, 3),
        "speedup_vs_mlip": round(mlip_median / eqmlip_median, 3),
        "speedup_per_round_median": round(statistics.median(rounds), 3),
        "speedup_per_round_min_max": [round(min(rounds), 3), round(max(rounds), 3)],
        "eqmlip_compile_s": round(compile_s[0], 2),
        "mlip_compile_s": round(compile_s[1], 2),
        "eqmlip_peak_mib": round(peak[0] / 2**20, 2),
        "mlip_peak_mib": round(peak[1] / 2**20, 2),
        "memory_ratio_vs_mlip": round(peak[1] / peak[0], 3),
    }


def energy_forces(
    atoms: Any, force_field: ForceField, model: Any, repeats: int, name: str
) -> dict[str, Any]:
    """Energy and forces of one structure, both libraries, checked then timed."""
    params, static = eqx.partition(model, eqx.is_array)

    def mlip_step(params, graph):
        out: Any = force_field.predictor.apply(params, graph)
        return out.globals.energy, out.nodes.forces

    def eqmlip_step(params, graph):
        out = predict(eqx.combine(params, static), graph, stress=False)
        return out.energy, out.forces

    ours_args = jax.device_put((params, eqmlip_graph(atoms)))
    theirs_args = jax.device_put((force_field.params, mlip_graph(atoms)))
    ours, ours_compile, ours_peak = _compile(eqmlip_step, *ours_args)
    theirs, theirs_compile, theirs_peak = _compile(mlip_step, *theirs_args)

    # Correctness first, from the programs that are timed.
    n = len(atoms)
    e_ours, f_ours = ours(*ours_args)
    e_ref, f_ref = theirs(*theirs_args)
    energy_error = float(abs(e_ours[0] - e_ref[0]) / abs(e_ref[0]))
    f_ref = np.asarray(f_ref)[:n]
    force_error = float(np.max(np.abs(np.asarray(f_ours)[:n] - f_ref)))
    if not (energy_error <= 1e-6 and force_error <= 1e-4):
        raise SystemExit(f"{name}: eqmlip and mlip disagree: {energy_error=}, {force_error=}")
    if not np.max(np.abs(f_ref)) > 1e-3:
        raise SystemExit(f"{name}: mlip's forces are all about 0: nothing was compared")

    times = _interleaved(
        [
            lambda: jax.block_until_ready(ours(*ours_args)),
            lambda: jax.block_until_ready(theirs(*theirs_args)),
        ],
        repeats,
    )
    return {
        "atoms": n,
        "edges": int(ours_args[1].n_edge[0]),
        "energy_relative_error": energy_error,
        "force_max_abs_error": force_error,
        **_summary(times[0], times[1], (ours_compile, theirs_compile), (ours_peak, theirs_peak)),
    }


class _Carry:
    """A compiled `state -> (state, loss)` step and its current state (one call per step)."""

    def __init__(self, compiled: Any, state: Any, *args: Any):
        self.compiled, self.state, self.args = compiled, state, args

    def __call__(self) -> float:
        self.state, loss = jax.block_until_ready(self.compiled(self.state, *self.args))
        return float(loss)


def training(
    force_field: ForceField, model: Any, e0: dict[int, float], repeats: int
) -> dict[str, Any]:
    """One training step on a batch of molecules, both libraries, checked then timed."""
    structures = with_targets(molecules(TRAIN_ATOMS, TRAIN_BATCH), e0)
    optimizer, mlip_optimizer, ema_fun, mlip_step, loss = training_steps(
        force_field, TRAIN_BATCH, 1e-3
    )
    batch = cast_batch(eqmlip_batch(structures), np.float32)
    state, state_static = eqx.partition(init_state(model, optimizer), eqx.is_array)
    batch_arrays, batch_static = eqx.partition(batch, eqx.is_array)

    def eqmlip_step(state, batch_arrays):
        full = eqx.combine(state, state_static)
        new, value, _ = train_step(
            full, eqx.combine(batch_arrays, batch_static), optimizer, loss, EMA_DECAY
        )
        return eqx.filter(new, eqx.is_array), value

    def theirs_step(state, graph):
        new, metrics = mlip_step(state, graph, 0)
        return new, metrics["loss"]

    ours_args = jax.device_put((state, batch_arrays))
    theirs_args = jax.device_put(
        (init_training_state(force_field.params, mlip_optimizer, ema_fun), mlip_batch(structures))
    )
    ours_compiled, ours_compile, ours_peak = _compile(eqmlip_step, *ours_args)
    theirs_compiled, theirs_compile, theirs_peak = _compile(theirs_step, *theirs_args)
    ours = _Carry(ours_compiled, *ours_args)
    theirs = _Carry(theirs_compiled, *theirs_args)

    # Correctness first: the first loss (before any update), then the second (after one).
    errors = []
    for allowed in (1e-5, 1e-3):
        value, ref = ours(), theirs()
        errors.append(abs(value - ref) / abs(ref))
        if not errors[-1] <= allowed:
            raise SystemExit(
                f"train: eqmlip and mlip losses disagree at step {len(errors)}: {value=} "
                f"{ref=} (relative {errors[-1]:.2e} > {allowed})"
            )

    times = _interleaved([ours, theirs], repeats)
    return {
        "batch": f"{TRAIN_BATCH} g2 molecules of {TRAIN_ATOMS} atoms, padded",
        "nodes": int(batch.graph.num_nodes),
        "edges": int(batch.graph.num_edges),
        "optimizer": "clip_by_global_norm(10) + amsgrad, EMA 0.99",
        "loss": {"energy_per_atom": ENERGY_WEIGHT, "forces": FORCES_WEIGHT},
        "loss_relative_error": errors[0],
        "second_loss_relative_error": errors[1],
        **_summary(times[0], times[1], (ours_compile, theirs_compile), (ours_peak, theirs_peak)),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="MACE energy+forces and training, vs mlip.")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="molecule,crystal,train")
    parser.add_argument("--repeats", type=int, default=20, help="rounds, molecule")
    parser.add_argument("--crystal-repeats", type=int, default=5, help="rounds, crystal")
    parser.add_argument(
        "--crystal-cells", type=int, default=4, help="Si cubic cells per side (4: 512 atoms)"
    )
    parser.add_argument("--train-repeats", type=int, default=10, help="rounds, training step")
    parser.add_argument(
        "--config",
        default="{}",
        help="JSON of mlip MaceConfig fields over the defaults (a smaller model for tests)",
    )
    args = parser.parse_args(argv)
    if jax.config.read("jax_enable_x64"):
        raise SystemExit("run without JAX_ENABLE_X64: the benchmark compares float32 models")
    names = [n for n in args.systems.split(",") if n]
    if unknown := sorted(set(names) - set(SYSTEMS)):
        raise SystemExit(f"--systems: unknown {unknown}; expected some of {list(SYSTEMS)}")
    overrides = json.loads(args.config)
    config = MlipMaceConfig(**overrides)

    # One model for every case: its species cover the structures and the training molecules.
    if args.crystal_cells < 1:
        raise SystemExit(f"--crystal-cells must be >= 1, got {args.crystal_cells}")
    structures = {"molecule": hexanol(), "crystal": silicon(args.crystal_cells)}
    species = {int(z) for atoms in structures.values() for z in atoms.numbers}
    species |= {int(z) for m in molecules(TRAIN_ATOMS, TRAIN_BATCH) for z in m.numbers}
    e0 = {z: -10.0 * z for z in sorted(species)}
    info = DatasetInfo(
        atomic_energies_map=e0, graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=AVG_NUM_NEIGHBORS
    )
    force_field = mlip_force_field(config, info)
    model = from_mlip(force_field.params, config, info)
    results: dict[str, Any] = {}
    for name in names:
        if name == "train":
            results[name] = training(force_field, model, e0, args.train_repeats)
        else:
            repeats = args.crystal_repeats if name == "crystal" else args.repeats
            results[name] = energy_forces(structures[name], force_field, model, repeats, name)

    record = {
        "benchmark": "mace",
        "config": "mlip MaceConfig() defaults" + (f" with {overrides}" if overrides else ""),
        "num_channels": config.num_channels,
        "l_max": config.l_max,
        "correlation": config.correlation,
        "num_layers": config.num_layers,
        "cutoff": CUTOFF,
        "crystal_cells": args.crystal_cells,
        "dtype": "float32",
        **results,
        "repeats": {
            "molecule": args.repeats,
            "crystal": args.crystal_repeats,
            "train": args.train_repeats,
        },
        "memory": "XLA compiled.memory_analysis(): arguments + outputs + temporaries - aliased",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
