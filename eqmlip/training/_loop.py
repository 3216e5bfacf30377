"""The training loop: epochs of jitted steps, EMA evaluation, logs, checkpoints, early stopping
and exact resume."""

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import PyTree

from .._errors import InputError
from ..data import GraphLoader, check_known_species
from ..io import load_model, model_header, save_model
from ..models._potential import AbstractPotential, parameter_dtype, potential_name
from ._config import TrainConfig
from ._loss import ERROR_SUMS, Loss, batch_error_sums
from ._parallel import (
    data_parallel_step,
    make_mesh,
    plan_batch,
    plan_epoch,
    replicate,
    resolve_num_devices,
    shard_batch,
    to_host,
)
from ._step import (
    TrainState,
    _flattens,
    cast_batch,
    init_state,
    loss_from_config,
    make_optimizer,
    train_step,
    trainable,
)

CHECKPOINT_FORMAT = "eqmlip-checkpoint"
# 2: `make_optimizer`'s state holds one vector per moment (`flat_parameters`); format 1 held
# one array per parameter and is converted on loading.
CHECKPOINT_VERSION = 2
METRICS = (
    "energy_mae",
    "energy_rmse",
    "forces_mae",
    "forces_rmse",
    "stress_mae",
    "stress_rmse",
)


def evaluate(
    model: PyTree,
    loader: GraphLoader | Iterable,
    *,
    loss: Loss | None = None,
    across_processes: bool = False,
) -> dict:
    """Error metrics of `model` over every batch of a loader (one pass, in order for a
    `GraphLoader`: its epoch 0).

    Energies are compared per atom (eV/atom), forces and stresses per component (eV/Å,
    eV/Å³). Only real targets count (the batch masks); structure weights do not. A metric
    whose target no structure has is `None`.

    **Arguments:**

    - `model`: the potential (e.g. the EMA model of a [`eqmlip.training.TrainState`][]).
    - `loader`: a [`eqmlip.data.GraphLoader`][] or an iterable of [`eqmlip.data.Batch`][]es.
    - `loss`: also report `"loss"`, the loss's weighted sum of the mean squared errors over
        the whole loader (unweighted by structure).
    - `across_processes`: in a multi-host run, each process evaluates its own share of the
        data and the error sums and counts are added over the processes (every process
        gets the same metrics).

    **Returns:** `{"energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "stress_mae",
    "stress_rmse", "num_structures"[, "loss"]}`.
    """
    dtype = parameter_dtype(model)
    # Once per loader (cached), not once per structure and evaluation: train() evaluates often.
    if isinstance(loader, GraphLoader) and not loader.species <= set(model.species):
        check_known_species(
            loader.structures, model.species, what="loader", known="the model", item="structure"
        )
    batches = loader.batches(0) if isinstance(loader, GraphLoader) else loader
    totals: dict[str, float] = dict.fromkeys(ERROR_SUMS, 0.0)
    structures = 0
    pending = []
    for batch in batches:
        structures += int(np.sum(np.asarray(batch.graph.graph_mask)))
        pending.append(batch_error_sums(model, cast_batch(batch, dtype)))
    for sums in jax.device_get(pending):  # one transfer at the end: batches run asynchronously
        for k in ERROR_SUMS:
            totals[k] += float(sums[k])
    if across_processes and jax.process_count() > 1:
        from .distributed import process_sum

        summed = process_sum({**totals, "structures": float(structures)})
        structures = int(summed.pop("structures"))
        totals = summed
    out: dict[str, Any] = {}
    mse = {}
    for kind in ("energy", "forces", "stress"):
        count = totals[f"{kind}_count"]
        if count > 0:
            out[f"{kind}_mae"] = totals[f"{kind}_abs"] / count
            mse[kind] = totals[f"{kind}_sq"] / count
            out[f"{kind}_rmse"] = math.sqrt(mse[kind])
        else:
            out[f"{kind}_mae"] = out[f"{kind}_rmse"] = None
    out["num_structures"] = structures
    if loss is not None:
        out["loss"] = sum(
            weight * mse.get(kind, 0.0)
            for kind, weight in (
                ("energy", loss.energy_weight),
                ("forces", loss.forces_weight),
                ("stress", loss.stress_weight),
            )
        )
    return out


@dataclasses.dataclass
class Progress:
    """Where a run stands, saved with each checkpoint: the next batch to train on is batch
    `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_loss: float | None = None
    best_epoch: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


def _config_json(config: TrainConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    if out["head_weights"] is not None:
        out["head_weights"] = list(out["head_weights"])
    return out


# Fields that may differ when resuming: they change neither the numerics nor the schedule, except
# `epochs`, which may be raised to train longer (the learning-rate schedule is then stretched).
_RESUMABLE_CHANGES = {
    "quiet",
    "progress_every",
    "log_dir",
    "checkpoint_every",
    "patience",
    "eval_every",
    "epochs",
}


def save_checkpoint(path: str, state: TrainState, progress: Progress, config: TrainConfig) -> None:
    """Write a checkpoint: a JSON header line (progress, training config, model header) and
    `eqx.tree_serialise_leaves(state)`; written to a temporary file, then renamed."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, state)
    payload = buffer.getvalue()
    header = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "progress": dataclasses.asdict(progress),
        "train_config": _config_json(config),
        "model": model_header(state.model),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload)
    os.replace(tmp, path)


def load_checkpoint(
    path: str, like: TrainState, config: TrainConfig | None = None
) -> tuple[TrainState, Progress]:
    """Read a checkpoint written by [`eqmlip.training.save_checkpoint`][] into the structure of
    `like` (a state built the same way, e.g. by [`eqmlip.training.init_state`][]).

    When `config` is given, a checkpoint trained with different loss, optimizer, schedule,
    data or EMA settings is refused (the resumed run would not match an uninterrupted one).
    """
    with open(path, "rb") as f:
        data = f.read()
    newline = data.find(b"\n")
    try:
        header = json.loads(data[:newline].decode()) if newline >= 0 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"load_checkpoint: {path!r} is not an eqmlip checkpoint.")
    if header["format_version"] > CHECKPOINT_VERSION:
        raise InputError(
            f"load_checkpoint: {path!r} has checkpoint format version {header['format_version']}, "
            f"this eqmlip reads versions up to {CHECKPOINT_VERSION}."
        )
    payload = data[newline + 1 :]
    if (
        len(payload) != header["payload_bytes"]
        or hashlib.sha256(payload).hexdigest() != header["payload_sha256"]
    ):
        raise InputError(f"load_checkpoint: {path!r} is truncated or corrupted (size or SHA-256).")
    if config is not None:
        saved = header["train_config"]
        current = _config_json(config)
        changed = sorted(
            k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k]
        )
        if changed:
            raise InputError(
                f"load_checkpoint: {path!r} was trained with different settings for {changed} "
                f"(saved {[saved.get(k) for k in changed]}, now {[current[k] for k in changed]}); "
                "resume with the same configuration or start a new log_dir."
            )
    if header["format_version"] < 2:
        return _load_per_parameter_state(payload, like), Progress(**header["progress"])
    state = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    return state, Progress(**header["progress"])


def _load_per_parameter_state(payload: bytes, like: TrainState) -> TrainState:
    """A format-1 payload into `like`: where `like`'s optimizer state holds one vector of all
    trainable parameters ([`eqmlip.training.flat_parameters`][]), the payload holds one array
    per parameter (the same values in the same order), read as such and joined."""
    params = eqx.filter(like.model, trainable(like.model))
    if not _flattens(params):
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    leaves = jax.tree.leaves(params)
    flat_shape = (sum(int(np.size(x)) for x in leaves),)
    flat_dtype = leaves[0].dtype

    def is_flat(x: Any) -> bool:
        return eqx.is_array(x) and x.shape == flat_shape and x.dtype == flat_dtype

    def per_parameter(x: Any) -> Any:
        return jax.tree.map(lambda p: np.zeros(p.shape, p.dtype), params) if is_flat(x) else x

    old_like = TrainState(
        like.model, like.ema_model, jax.tree.map(per_parameter, like.opt_state), like.step
    )
    old = eqx.tree_deserialise_leaves(io.BytesIO(payload), old_like)

    # Join exactly the subtrees that replaced a flat vector of `like` (a per-parameter tree
    # elsewhere, e.g. a wrapper's own copy of the gradients, stays as `like` has it).
    opt_state = jax.tree.map(
        lambda template, loaded: ravel_pytree(loaded)[0] if is_flat(template) else loaded,
        like.opt_state,
        old.opt_state,
    )
    return TrainState(old.model, old.ema_model, opt_state, old.step)


class _Logger:
    """Appends one row per evaluation to `log.csv` and `log.jsonl` (the CSV header once)."""

    def __init__(self, log_dir: str | None, columns: tuple[str, ...]):
        self.columns = columns
        self.csv_path = self.jsonl_path = None
        if log_dir is not None:
            self.csv_path = os.path.join(log_dir, "log.csv")
            self.jsonl_path = os.path.join(log_dir, "log.jsonl")

    def write(self, row: Mapping[str, Any]) -> None:
        if self.csv_path is None or self.jsonl_path is None:
            return
        new = not os.path.exists(self.csv_path)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(self.columns)
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in self.columns])
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({c: row.get(c) for c in self.columns}) + "\n")


@dataclasses.dataclass
class TrainResult:
    """What [`eqmlip.training.train`][] returns.

    - `model`: the model to use: the EMA model with the best validation loss (the final EMA
        model without validation data).
    - `state`: the final [`eqmlip.training.TrainState`][].
    - `history`: one dict per evaluation (the rows of the logs).
    - `progress`: the final progress (epoch, step, best loss, whether it stopped early).
    """

    model: PyTree
    state: TrainState
    history: list[dict[str, Any]]
    progress: Progress


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


# XLA's backend-compile event (jax/_src/dispatch.py), counted to tell a compile from a cache hit.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _CompileCounter:
    """Counts XLA compilations in this process between `start` and `stop`."""

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == _COMPILE_EVENT:
            self.count += 1

    def start(self) -> "_CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def stop(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


@dataclasses.dataclass
class _Report:
    """Progress lines on stdout for a run without a progress bar (stderr not a terminal), and
    the compile notices shown either way (in the bar's description, or as lines)."""

    enabled: bool
    lines: bool

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def compiling(self, bar: Any, graph: Any) -> None:
        shape = f"{graph.num_nodes} nodes, {graph.num_edges} edges, {graph.num_graphs} graphs"
        if self.lines:
            self.line(f"compiling the training step for a batch of {shape}...")
        elif self.enabled:
            bar.set_description_str(f"{bar.desc} (compiling)")

    def compiled(self, bar: Any, seconds: float, compiled: bool) -> None:
        if self.lines:
            what = "compiled" if compiled else "found already compiled"
            self.line(f"{what} in {seconds:.1f} s")
        elif self.enabled:
            bar.set_description_str(bar.desc.removesuffix(" (compiling)"))


def _make_bar(total: int, desc: str, disable: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)


def train(
    model: PyTree,
    train_loader: GraphLoader,
    valid_loader: GraphLoader | None = None,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    max_steps: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a potential with [`eqmlip.training.train_step`][], epoch by epoch.

    Each epoch `e` trains on `train_loader.batches(e)` (reproducibly shuffled by the loader's
    seed and `e`). Every `eval_every` epochs (and after the last), the EMA model is evaluated
    on the validation loader (else on the training loader) with
    [`eqmlip.training.evaluate`][]; a row goes to the logs; a better validation loss saves
    `best_model.eqx`; `patience` evaluations without improvement stop the run. The checkpoint
    `checkpoint.eqx` is written at the end of each epoch, every `checkpoint_every` steps, when
    `max_steps` is reached and on `KeyboardInterrupt`.

    **Exact resume:** with `resume=True` and a checkpoint in `config.log_dir`, training
    continues from the saved state at the saved batch of the saved epoch, so that stopping
    after `k` steps and resuming gives bit for bit the parameters of an uninterrupted run on
    the same machine. `model` is then only the skeleton the checkpoint is read into: build
    it exactly as for the first run.

    **Several devices and hosts:** with `config.num_devices` other than 1, or in a
    multi-process run, each step takes `num_devices` loader batches (per process), padded to
    one budget and sharded over a 1-D mesh ([`eqmlip.training.plan_epoch`][],
    [`eqmlip.training.data_parallel_step`][]); the state is replicated. In a multi-process
    run, `train_loader` and `valid_loader` hold this process's share of the data, metrics
    are summed over the processes, and only process 0 writes logs, checkpoints and models
    and prints (every process reads the checkpoint on resume: use a shared file system).

    **Arguments:**

    - `model`: the initial model (e.g. a [`eqmlip.models.nequip.Nequip`][] with the data's
        E0s and average neighbour count). Its dtype is the training dtype.
    - `train_loader`: a [`eqmlip.data.GraphLoader`][] of the training set.
    - `valid_loader`: a loader of the validation set, or `None`.
    - `config`: a [`eqmlip.training.TrainConfig`][] (`None`: the defaults).
    - `resume`: continue from `config.log_dir`'s checkpoint (an error if there is none).
        `config.epochs` may be raised on resume; any other change of a setting that affects
        the numbers is refused, naming the field.
    - `max_steps`: stop (with a checkpoint) once this many steps in total have been taken.
    - `callback`: called with each log row.

    **Returns:** a [`eqmlip.training.TrainResult`][].
    """
    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a TrainConfig, got {type(config).__name__}.")
    if not isinstance(train_loader, GraphLoader):
        raise TypeError(
            f"train: train_loader must be a GraphLoader, got {type(train_loader).__name__}."
        )
    if resume and config.log_dir is None:
        raise ValueError("train: resume=True needs config.log_dir (where the checkpoint is).")
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"train: max_steps must be >= 0 or None, got {max_steps}.")
    if not isinstance(model, AbstractPotential):
        raise TypeError(
            f"train: model must be an eqmlip.models.AbstractPotential, got {type(model).__name__}."
        )
    if config.log_dir is not None:
        potential_name(model)  # model files name the class: refuse an unregistered one now
    for name, loader in (("train_loader", train_loader), ("valid_loader", valid_loader)):
        if loader is not None and not loader.species <= set(model.species):
            check_known_species(
                loader.structures, model.species, what=name, known="the model", item="structure"
            )
    dtype = parameter_dtype(model)
    n_local = resolve_num_devices(config.num_devices)
    parallel = n_local > 1 or jax.process_count() > 1
    main = jax.process_index() == 0  # the one process that writes and prints
    if parallel:
        steps_per_epoch = len(plan_epoch(train_loader, n_local, 0))
    else:
        steps_per_epoch = len(train_loader.batch_indices(0))
    total_steps = config.epochs * steps_per_epoch
    optimizer = _optimizer(config, total_steps)
    schedule_lr = _lr_reader(config, total_steps)
    loss = loss_from_config(config)
    state = init_state(model, optimizer)
    progress = Progress()
    ckpt_path = best_path = None
    if config.log_dir is not None:
        if main:
            os.makedirs(config.log_dir, exist_ok=True)
        ckpt_path = os.path.join(config.log_dir, "checkpoint.eqx")
        best_path = os.path.join(config.log_dir, "best_model.eqx")
        if resume:
            if not os.path.exists(ckpt_path):
                raise InputError(
                    f"train: resume=True, but there is no checkpoint {ckpt_path!r} to resume "
                    "from; start without resume (or point log_dir at the interrupted run)."
                )
            state, progress = load_checkpoint(ckpt_path, state, config)
            if not config.quiet and main:
                print(f"resuming at epoch {progress.epoch + 1}, step {progress.step}", flush=True)
        elif not resume and main:
            for name in ("log.csv", "log.jsonl", "checkpoint.eqx", "best_model.eqx"):
                if os.path.exists(os.path.join(config.log_dir, name)):
                    os.remove(os.path.join(config.log_dir, name))
    mesh = make_mesh(n_local) if parallel else None
    if mesh is not None:
        state = replicate(state, mesh)
    best_model = state.ema_model
    if best_path is not None and os.path.exists(best_path) and progress.best_loss is not None:
        best_model = load_model(best_path)

    columns = ("epoch", "step", "lr", "train_loss", "train_energy", "train_forces", "train_stress")
    columns += tuple(f"valid_{m}" for m in ("loss", *METRICS)) + ("best_loss", "time")
    logger = _Logger(config.log_dir if main else None, columns)
    history: list[dict[str, Any]] = []
    disable_bar = config.quiet or not sys.stderr.isatty() or not main
    report = _Report(enabled=main and not config.quiet, lines=disable_bar)
    compiled_shapes: set[tuple[int, int, int]] = set()
    compile_counter = _CompileCounter().start()
    eval_loader = valid_loader if valid_loader is not None else train_loader
    # Without a validation set the EMA model is evaluated on the training set: say so.
    eval_name = "valid" if valid_loader is not None else "train"
    start_time = time.perf_counter()

    def checkpoint() -> None:
        if ckpt_path is not None and main:
            save_checkpoint(ckpt_path, state, progress, config)
            save_model(os.path.join(os.path.dirname(ckpt_path), "last_model.eqx"), state.ema_model)

    try:
        while progress.epoch < config.epochs and not progress.stopped_early:
            epoch = progress.epoch
            if parallel:
                assert mesh is not None
                plans = plan_epoch(train_loader, n_local, epoch)
                n_batches = len(plans)
                batches: Iterable = (
                    shard_batch(cast_batch(plan_batch(train_loader, plan), dtype), mesh)
                    for plan in plans[progress.batch :]
                )
                step_fn: Callable = data_parallel_step
            else:
                n_batches = len(train_loader.batch_indices(epoch))
                batches = (
                    cast_batch(b, dtype) for b in train_loader.batches(epoch, start=progress.batch)
                )
                step_fn = train_step
            bar = _make_bar(n_batches, f"epoch {epoch + 1}/{config.epochs}", disable_bar)
            bar.update(progress.batch)
            sums = {"loss": 0.0, "energy": 0.0, "forces": 0.0, "stress": 0.0}
            device_terms = []
            for batch in batches:
                if max_steps is not None and progress.step >= max_steps:
                    break
                # A batch shape not seen before compiles the step (seconds to minutes): say so.
                graph = batch.graph
                shape = (graph.num_nodes, graph.num_edges, graph.num_graphs)
                compiling = shape not in compiled_shapes
                if compiling:
                    compiled_shapes.add(shape)
                    report.compiling(bar, batch.graph)
                tic, compiles = time.perf_counter(), compile_counter.count
                state, value, terms = step_fn(state, batch, optimizer, loss, config.ema_decay)
                if compiling:  # jit traces and compiles inside the call, before dispatching
                    seconds = time.perf_counter() - tic
                    report.compiled(bar, seconds, compile_counter.count > compiles)
                progress.batch += 1
                progress.step += 1
                device_terms.append((value, terms))
                bar.update(1)
                if not disable_bar and progress.step % 10 == 0:
                    bar.set_postfix(
                        loss=f"{float(value):.4g}", lr=f"{schedule_lr(progress.step):.2e}"
                    )
                elif report.lines and progress.step % config.progress_every == 0:
                    report.line(
                        f"epoch {epoch + 1}/{config.epochs}: batch {progress.batch}/{n_batches}, "
                        f"step {progress.step}, loss {float(value):.4g}, lr "
                        f"{schedule_lr(progress.step):.2e}, "
                        f"{time.perf_counter() - start_time:.0f} s"
                    )
                if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
                    checkpoint()
            bar.close()
            for value, terms in jax.device_get(device_terms):
                sums["loss"] += float(value)
                for k in ("energy", "forces", "stress"):
                    sums[k] += float(terms[k])
            if progress.batch < n_batches:  # stopped by max_steps in the middle of the epoch
                checkpoint()
                break
            progress.epoch += 1
            progress.batch = 0
            last = progress.epoch == config.epochs
            if progress.epoch % config.eval_every == 0 or last:
                # A replicated model is evaluated from a host copy, on one device per process.
                ema = to_host(state.ema_model) if parallel else state.ema_model
                metrics = evaluate(ema, eval_loader, loss=loss, across_processes=parallel)
                improved = progress.best_loss is None or metrics["loss"] < progress.best_loss
                if improved:
                    progress.best_loss = metrics["loss"]
                    progress.best_epoch = progress.epoch
                    progress.evals_without_improvement = 0
                    best_model = state.ema_model
                    if best_path is not None and main:
                        save_model(best_path, best_model, metadata={"epoch": progress.epoch})
                else:
                    progress.evals_without_improvement += 1
                    if (
                        config.patience is not None
                        and progress.evals_without_improvement >= config.patience
                    ):
                        progress.stopped_early = True
                # An epoch resumed after its last step took none here: its training terms are
                # unknown (None: empty in the CSV, null in the JSONL), never a fake 0.
                n = len(device_terms)
                row = {
                    "epoch": progress.epoch,
                    "step": progress.step,
                    "lr": schedule_lr(progress.step),
                    **{f"train_{k}": sums[k] / n if n else None for k in sums},
                    **{f"valid_{k}": metrics.get(k) for k in ("loss", *METRICS)},
                    "best_loss": progress.best_loss,
                    "time": time.perf_counter() - start_time,
                }
                history.append(row)
                logger.write(row)
                if callback is not None:
                    callback(row)
                if not config.quiet and main:
                    print(
                        f"epoch {progress.epoch:4d}  step {progress.step:6d}  "
                        f"train loss {_fmt(row['train_loss'])}  "
                        f"{eval_name} loss {_fmt(metrics['loss'])}  "
                        f"{eval_name} E MAE {_fmt(metrics['energy_mae'])} eV/atom  "
                        f"F MAE {_fmt(metrics['forces_mae'])} eV/Å  "
                        f"S MAE {_fmt(metrics['stress_mae'])} eV/Å³"
                        + ("  (early stop)" if progress.stopped_early else ""),
                        flush=True,
                    )
            checkpoint()
    except KeyboardInterrupt:
        checkpoint()  # the state only changes between steps, so this is a consistent point
        raise
    finally:
        compile_counter.stop()
    return TrainResult(
        model=best_model if valid_loader is not None else state.ema_model,
        state=state,
        history=history,
        progress=progress,
    )


@functools.lru_cache(maxsize=16)
def _cached_optimizer(config: TrainConfig, total_steps: int) -> Any:
    return make_optimizer(config, total_steps)


def _optimizer(config: TrainConfig, total_steps: int) -> Any:
    """One optimizer object per optimizer setting: the jitted step hashes it by identity, so
    reusing it lets a second run (or a resumed one) in the same process skip compilation."""
    neutral = config.replace(
        log_dir=None, quiet=False, checkpoint_every=None, patience=None, eval_every=1
    )
    return _cached_optimizer(neutral, total_steps)


def _lr_reader(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    from ._step import make_schedule

    schedule = make_schedule(config, total_steps)
    return lambda step: float(np.asarray(schedule(step)))
