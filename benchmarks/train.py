"""NequIP training step: `eqmlip.training.train_step` against mlip 0.2.5's own training step,
same batch, same weights, same loss, same optimizer, in the same process.

The default config (target irreps "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o", l_max 3,
2 layers, 8 Bessel functions, radial MLP [64, 64], cutoff 5 Å) on one batch of 8 small g2
molecules of the same size (9 atoms by default), padded by one node and one graph.

- mlip: `mlip.training.training_step.make_train_step` (the jitted step `TrainingLoop` uses),
  with mlip's `ForceField` predictor, `mlip.models.loss.MSELoss` (energy weight 1, forces 25,
  nothing else), mlip's EMA (decay 0.99) and the optax chain below.
- eqmlip: `eqmlip.training.train_step` with the model converted by `from_mlip`,
  `eqmlip.training.Loss(energy_weight=1, forces_weight=25, stress_weight=0)` and an EMA of
  decay 0.99.
- Both: `optax.chain(clip_by_global_norm(10), scale_by_amsgrad(), scale(-lr))` with a
  constant learning rate, from eqmlip's `make_optimizer`: for eqmlip as `train` runs it (on one
  vector of all parameters, `flat_parameters`), for mlip one array per parameter, as mlip's
  `TrainingLoop` runs its optax chain.

The two losses are the same function when every molecule of a batch has the same number of
atoms: both take the per-atom energy MSE averaged over structures; mlip averages the force
MSE per structure then over structures, eqmlip over all atoms of the batch. Hence one size per
batch. Targets are synthetic (the E0 sum plus noise, random forces): the step's cost does not
depend on their values, and EMT does not cover g2's elements.

Correctness first: the first step's loss must agree within 1e-5 (relative). Then, after
`jax.clear_caches()`, each step is compiled afresh and timed on its first call (trace +
compile + one step; the compile time reported is that minus the median step), and the
steady-state steps in `--rounds` interleaved rounds of `--repeats` steps of each library
(eqmlip first in even rounds, mlip in odd ones, one untimed step before each block;
`benchmarks/nequip.py`'s `interleaved`).
Prints one JSON line: medians over all steps, the median, range and list of the per-round
ratios, eqmlip's 10th/90th percentile step; `speedup_vs_mlip` > 1 means eqmlip is faster.

    python benchmarks/train.py [--atoms 9] [--batch 8] [--rounds 7] [--repeats 3]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

if os.environ.get("MLIP_TESTING"):
    raise SystemExit("unset MLIP_TESTING: the benchmark compares with mlip's production path")

import jax
import numpy as np
from ase.collections import g2
from mlip.data.chemical_system import ChemicalSystem
from mlip.data.dataset_info import DatasetInfo
from mlip.graph import Graph as MlipGraph
from mlip.graph.batching_helpers import batch_graphs as mlip_batch_graphs, pad_with_graphs
from mlip.models import ForceField, Nequip as MlipNequip
from mlip.models.force_field import get_dummy_graph_for_model_init
from mlip.models.loss import MSELoss
from mlip.models.nequip.config import NequipConfig as MlipNequipConfig
from mlip.training.ema import exponentially_moving_average
from mlip.training.training_state import init_training_state
from mlip.training.training_step import make_train_step
from mlip.typing.properties import Properties

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.nequip import interleaved, timing_summary  # noqa: E402
from eqmlip.data import Budget, Structure, make_batch, structure_graph  # noqa: E402
from eqmlip.interop.mlip import from_mlip  # noqa: E402
from eqmlip.training import (  # noqa: E402
    Loss,
    TrainConfig,
    cast_batch,
    init_state,
    make_optimizer,
    train_step,
)

DEFAULT_TARGET = "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o"
CUTOFF = 5.0
ENERGY_WEIGHT, FORCES_WEIGHT, EMA_DECAY = 1.0, 25.0, 0.99


def molecules(atoms_per_molecule: int, batch: int) -> list[Any]:
    """The first `batch` g2 molecules (by name) with `atoms_per_molecule` atoms."""
    found = [g2[name] for name in sorted(g2.names) if len(g2[name]) == atoms_per_molecule]
    if len(found) < batch:
        raise SystemExit(
            f"g2 has {len(found)} molecules of {atoms_per_molecule} atoms, fewer than --batch "
            f"{batch}; choose another --atoms (e.g. 6, 7, 9 or 10)."
        )
    return found[:batch]


def with_targets(mols: list[Any], e0: dict[int, float]) -> list[Structure]:
    rng = np.random.default_rng(0)
    return [
        Structure(
            positions=m.positions,
            atomic_numbers=m.numbers,
            cell=np.zeros((3, 3)),
            pbc=np.zeros(3, bool),
            energy=sum(e0[int(z)] for z in m.numbers) + rng.normal() * len(m),
            forces=rng.normal(scale=0.5, size=(len(m), 3)),
        )
        for m in mols
    ]


def mlip_force_field(config: MlipNequipConfig, info: DatasetInfo) -> ForceField:
    """`ForceField.from_mlip_network` with the parameter init compiled (eager init of the
    default network takes minutes on CPU); same initialisers."""
    network = MlipNequip(config, info)
    properties = Properties()  # energy and forces, no stress (as eqmlip's stress_weight=0)
    predictor = ForceField.get_predictor_class(properties, network.config)(
        mlip_network=network,
        required_properties=properties,
        energy_head=ForceField.get_energy_head(network.config, properties, network),
    )
    params = jax.jit(predictor.init)(jax.random.key(0), get_dummy_graph_for_model_init())
    return ForceField(predictor=predictor, params=params)


def mlip_batch(structures: list[Structure]) -> Any:
    graphs = []
    for s in structures:
        system = ChemicalSystem(
            atomic_numbers=s.atomic_numbers,
            positions=s.positions,
            energy=s.energy,
            forces=s.forces,
        )
        graph = MlipGraph.from_chemical_system(system, CUTOFF)
        graphs.append(graph)
    batch = mlip_batch_graphs(graphs)
    return pad_with_graphs(
        batch,
        n_node=int(np.sum(batch.n_node)) + 1,
        n_edge=int(np.sum(batch.n_edge)),
        n_graph=len(graphs) + 1,
    )


def eqmlip_batch(structures: list[Structure]) -> Any:
    graphs = [structure_graph(s, CUTOFF) for s in structures]
    nodes = sum(g.num_nodes for g in graphs)
    edges = sum(g.num_edges for g in graphs)
    return make_batch(structures, graphs, Budget(nodes + 1, edges, len(graphs) + 1))


class _Stepper:
    """`step(state) -> state` as a no-argument call that advances its own state and blocks."""

    def __init__(self, step: Any, state: Any):
        self.step, self.state = step, state

    def __call__(self) -> None:
        self.state = jax.block_until_ready(self.step(self.state))


def _first_call(stepper: _Stepper) -> float:
    """Seconds of the first call: trace, compile and one step."""
    start = time.perf_counter()
    stepper()
    return time.perf_counter() - start


def training_steps(
    force_field: ForceField, batch_size: int, learning_rate: float
) -> tuple[Any, ...]:
    """What both libraries' training steps share: `(optimizer, mlip_optimizer, ema_fun,
    mlip_step, loss)`, the same optax chain (clip + AMSGrad, constant rate) for eqmlip (on one
    vector of all parameters) and for mlip (one array per parameter, as its TrainingLoop runs
    it), mlip's EMA, mlip's jitted step (one device, no accumulation) and eqmlip's matching
    `Loss`."""
    config = TrainConfig(
        optimizer="amsgrad",
        learning_rate=learning_rate,
        warmup_steps=0,
        schedule="constant",
        grad_clip=10.0,
    )
    # One object per side, reused for every step (the jitted steps hash it by identity).
    optimizer = make_optimizer(config, total_steps=1)
    mlip_optimizer = make_optimizer(config, total_steps=1, flat=False)
    ema_fun = exponentially_moving_average(EMA_DECAY)
    mlip_loss = MSELoss(
        energy_weight_schedule=lambda _: ENERGY_WEIGHT,
        forces_weight_schedule=lambda _: FORCES_WEIGHT,
        stress_weight_schedule=lambda _: 0.0,
    )
    # (mlip's own annotations disagree: its MSELoss returns `dict[str, float | Array]` metrics.)
    mlip_step = make_train_step(
        force_field.predictor,
        mlip_loss,  # pyright: ignore[reportArgumentType]
        mlip_optimizer,
        ema_fun,
        avg_n_graphs_per_batch=batch_size,
    )
    loss = Loss(energy_weight=ENERGY_WEIGHT, forces_weight=FORCES_WEIGHT, stress_weight=0.0)
    return optimizer, mlip_optimizer, ema_fun, mlip_step, loss


def build(atoms: int, batch_size: int, learning_rate: float) -> dict[str, Any]:
    """Both libraries' training steps on one batch, from the same weights, checked against
    each other: `eqmlip_step` / `mlip_step` map a training state to the next one."""
    mols = molecules(atoms, batch_size)
    species = sorted({int(z) for m in mols for z in m.numbers})
    e0 = {z: -10.0 * z for z in species}
    structures = with_targets(mols, e0)
    info = DatasetInfo(atomic_energies_map=e0, graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=8.0)
    force_field = mlip_force_field(MlipNequipConfig(target_irreps=DEFAULT_TARGET), info)
    model = from_mlip(force_field.params, force_field.predictor.mlip_network.config, info)

    optimizer, mlip_optimizer, ema_fun, mlip_step, loss = training_steps(
        force_field, batch_size, learning_rate
    )
    mgraph = mlip_batch(structures)
    mlip_state = init_training_state(force_field.params, mlip_optimizer, ema_fun)

    # eqmlip: the library's step on the converted model.
    batch = cast_batch(eqmlip_batch(structures), np.float32)
    state = init_state(model, optimizer)

    # Correctness first: the loss of the first step (before its update) on the same batch.
    mlip_state, metrics = mlip_step(mlip_state, mgraph, 0)
    state, value, _ = train_step(state, batch, optimizer, loss, EMA_DECAY)
    ref, ours = float(metrics["loss"]), float(value)
    loss_error = abs(ours - ref) / abs(ref)
    if not loss_error <= 1e-5:
        raise SystemExit(f"eqmlip and mlip losses disagree: {ours=} {ref=} ({loss_error=:.2e})")
    # And the steps stay together: the second loss sees the first update.
    mlip_state, metrics = mlip_step(mlip_state, mgraph, 0)
    state, value, _ = train_step(state, batch, optimizer, loss, EMA_DECAY)
    second_error = abs(float(value) - float(metrics["loss"])) / abs(float(metrics["loss"]))
    if not second_error <= 1e-3:
        raise SystemExit(
            f"eqmlip and mlip diverge after one update: {float(value)=} "
            f"{float(metrics['loss'])=} ({second_error=:.2e})"
        )
    return {
        "eqmlip_step": lambda s: train_step(s, batch, optimizer, loss, EMA_DECAY)[0],
        "eqmlip_state": state,
        "mlip_step": lambda s: mlip_step(s, mgraph, 0)[0],
        "mlip_state": mlip_state,
        "batch": batch,
        "first_loss": ref,
        "loss_relative_error": loss_error,
        "second_loss_relative_error": second_error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="NequIP training step, eqmlip vs mlip.")
    parser.add_argument("--atoms", type=int, default=9, help="atoms per molecule")
    parser.add_argument("--batch", type=int, default=8, help="molecules per batch")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=3, help="steps per round")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    if min(args.rounds, args.repeats) < 1:
        parser.error("--rounds and --repeats must be at least 1")

    built = build(args.atoms, args.batch, args.learning_rate)
    batch = built["batch"]
    load_start = os.getloadavg()[0]
    ours = _Stepper(built["eqmlip_step"], built["eqmlip_state"])
    theirs = _Stepper(built["mlip_step"], built["mlip_state"])
    jax.clear_caches()  # or the correctness check's executables are served from the cache
    first = _first_call(ours), _first_call(theirs)
    ours_t, theirs_t, ratios = interleaved(ours, theirs, args.rounds, args.repeats)
    timing = timing_summary(ours_t, theirs_t, ratios)
    # The compile: the first call less one steady-state step.
    compile_s = first[0] - statistics.median(ours_t), first[1] - statistics.median(theirs_t)
    print(
        json.dumps(
            {
                "benchmark": "nequip_train_step",
                "config": "default (" + DEFAULT_TARGET.replace(" ", "") + ", l_max 3, 2 layers)",
                "batch": f"{args.batch} g2 molecules of {args.atoms} atoms, padded",
                "nodes": int(batch.graph.num_nodes),
                "edges": int(batch.graph.num_edges),
                "cutoff": CUTOFF,
                "optimizer": "clip_by_global_norm(10) + amsgrad, EMA 0.99; eqmlip on one "
                "vector of all parameters, mlip one array per parameter",
                "loss": {"energy_per_atom": ENERGY_WEIGHT, "forces": FORCES_WEIGHT},
                "first_loss": built["first_loss"],
                "loss_relative_error": built["loss_relative_error"],
                "second_loss_relative_error": built["second_loss_relative_error"],
                "eqmlip_steps_per_s": round(1e3 / timing["eqmlip_median_ms"], 3),
                "mlip_steps_per_s": round(1e3 / timing["mlip_median_ms"], 3),
                **timing,
                "eqmlip_compile_s": round(compile_s[0], 2),
                "mlip_compile_s": round(compile_s[1], 2),
                "compile_speedup_vs_mlip": round(compile_s[1] / compile_s[0], 3),
                "rounds": args.rounds,
                "repeats": args.repeats,
                "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                "dtype": "float32",
                "jax": jax.__version__,
                "device": jax.devices()[0].device_kind,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
