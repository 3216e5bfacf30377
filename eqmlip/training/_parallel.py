"""Data-parallel training with `jax.sharding`: a 1-D mesh, replicated state, and one padded
batch per device stacked on a leading axis and sharded along it.

```
GraphLoader -> group_batches (N padded batches, one Budget) -> stack_batches -> shard_batch
            -> data_parallel_step(state replicated, batch [N, ...] sharded) -> TrainState
```
"""

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PyTree

from ..data import Batch, Budget, GraphLoader
from ..graph import Graph, pad_graph
from ..potential import predict
from ._loss import Loss
from ._step import TrainState, train_step

DATA_AXIS = "data"


def resolve_num_devices(num_devices: int | str | None) -> int:
    """The number of local devices a setting asks for: `None`, `-1` or `"all"` mean every
    local device; a positive int must not exceed `jax.local_device_count()`."""
    available = jax.local_device_count()
    if num_devices is None or num_devices == -1 or num_devices == "all":
        return available
    if not isinstance(num_devices, int) or isinstance(num_devices, bool) or num_devices < 1:
        raise ValueError(
            f"resolve_num_devices: num_devices must be a positive int, -1 or 'all', got "
            f"{num_devices!r}."
        )
    if num_devices > available:
        raise ValueError(
            f"resolve_num_devices: num_devices={num_devices} but this process has only "
            f"{available} local device(s) ({jax.default_backend()}); use num_devices <= "
            f"{available}, -1 for all, or on CPU set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax."
        )
    return num_devices


def make_mesh(num_devices: int | str | None = None, *, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D data-parallel mesh over the first `num_devices` local devices of every process
    (in a multi-host run: `num_devices * jax.process_count()` devices, ordered by process).

    The axis type is `AxisType.Auto` (jax >= 0.9 defaults to `Explicit`, under which the
    gathers and segment sums of a GNN's backward pass raise `ShardingTypeError`).

    **Arguments:**

    - `num_devices`: local devices per process (`None`, `-1` or `"all"`: all of them).
    - `axis_name`: the name of the mesh axis.

    **Returns:** a `jax.sharding.Mesh` with one axis.
    """
    n = resolve_num_devices(num_devices)
    by_process: dict[int, list[Any]] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    devices = [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:n]]
    return Mesh(np.array(devices), (axis_name,), axis_types=(AxisType.Auto,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array leaf of `tree` replicated on every device of `mesh` (parameters,
    optimizer state, EMA). Other leaves are left as they are. Every process must pass the
    same values."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x: Any) -> Any:
        if not eqx.is_array(x):
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_process_local_data(sharding, host, host.shape)

    return jax.tree.map(put, tree)


def to_host(tree: PyTree) -> PyTree:
    """Every array leaf of a (replicated) tree as a NumPy array, e.g. to evaluate a
    replicated model on one device or to compare processes."""
    return jax.tree.map(lambda x: np.asarray(x) if eqx.is_array(x) else x, tree)


def empty_batch(budget: Budget) -> Batch:
    """A batch of padding only (no real structure, every mask `False`): it contributes
    nothing to the loss, and fills the devices left over by the last group of an epoch."""
    graph = Graph(
        positions=np.zeros((0, 3)),
        atomic_numbers=np.zeros(0, np.int64),
        senders=np.zeros(0, np.int64),
        receivers=np.zeros(0, np.int64),
        shifts=np.zeros((0, 3)),
        cell=np.zeros((0, 3, 3)),
        pbc=np.zeros((0, 3), bool),
        n_node=np.zeros(0, np.int64),
        n_edge=np.zeros(0, np.int64),
        node_mask=np.zeros(0, bool),
        edge_mask=np.zeros(0, bool),
        graph_mask=np.zeros(0, bool),
        dataset_idx=np.zeros(0, np.int64),
        charge=np.zeros(0, np.int64),
    )
    graphs = budget.n_graph
    return Batch(
        graph=pad_graph(graph, *budget),
        energy=np.zeros(graphs),
        forces=np.zeros((budget.n_node, 3)),
        stress=np.zeros((graphs, 3, 3)),
        weight=np.zeros(graphs),
        has_energy=np.zeros(graphs, bool),
        has_forces=np.zeros(graphs, bool),
        has_stress=np.zeros(graphs, bool),
    )


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """Stack padded batches of one [`eqmlip.data.Budget`][] on a new leading axis (one per
    device), on the host.

    The result is a `Batch` whose every leaf has a leading axis of size `len(batches)`; it
    is the input of [`eqmlip.training.data_parallel_step`][] (built without `Batch`'s shape
    checks, which concern a single batch).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("stack_batches: got no batches; pass at least one Batch.")
    budgets = [b.budget for b in batches]
    if any(budget != budgets[0] for budget in budgets):
        raise ValueError(
            f"stack_batches: the batches have different budgets {budgets}; all batches of one "
            "step must be padded to the same Budget (see eqmlip.training.group_batches)."
        )
    host = [jax.tree.map(np.asarray, b) for b in batches]
    return jax.tree.map(lambda *xs: np.stack(xs), *host)


def group_budget(loader: GraphLoader, indices: Sequence[np.ndarray]) -> Budget:
    """The smallest budget of `loader.budgets` that holds each batch of a group (batches
    are padded separately, so each must fit, not their sum)."""
    needed = [loader.budget_for(ix) for ix in indices]
    n_node = max(b.n_node for b in needed)
    n_edge = max(b.n_edge for b in needed)
    for budget in loader.budgets:
        if budget.n_node >= n_node and budget.n_edge >= n_edge:
            return budget
    raise AssertionError("the largest budget holds every batch")


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One data-parallel step of an epoch: the structure indices of each of the process's
    devices (`None`: an empty batch) and the common budget."""

    indices: tuple[np.ndarray | None, ...]
    budget: Budget


def plan_epoch(
    loader: GraphLoader, num_devices: int, epoch: int, *, across_processes: bool | None = None
) -> list[StepPlan]:
    """Group `num_devices` consecutive batches of an epoch into one step each.

    The last step of an epoch whose batch count is not a multiple of `num_devices` is
    completed with empty batches (all padding), which change neither the loss nor the
    gradient. In a multi-process run the processes agree (one all-gather per epoch) on the
    number of steps, the largest of theirs, and on each step's budget, the elementwise
    maximum of theirs, so that every process's share of a global batch has the same shape
    (`across_processes=False` skips this, e.g. to plan another process's share locally;
    default: when `jax.process_count() > 1`).
    """
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"plan_epoch: num_devices must be an int >= 1, got {num_devices!r}.")
    batches = loader.batch_indices(epoch)
    groups = [batches[i : i + num_devices] for i in range(0, len(batches), num_devices)]
    budgets = [group_budget(loader, g) for g in groups]
    if across_processes is None:
        across_processes = jax.process_count() > 1
    if across_processes:
        from .distributed import agree_budgets

        budgets = agree_budgets(budgets)
    plans = []
    for k, budget in enumerate(budgets):
        group: list[np.ndarray | None] = list(groups[k]) if k < len(groups) else []
        group += [None] * (num_devices - len(group))
        plans.append(StepPlan(tuple(group), budget))
    return plans


def plan_batch(loader: GraphLoader, plan: StepPlan) -> Batch:
    """The stacked host batch of one step (see [`eqmlip.training.plan_epoch`][])."""
    out = [
        empty_batch(plan.budget) if ix is None else loader.batch(ix, plan.budget)
        for ix in plan.indices
    ]
    return stack_batches(out)


def group_batches(
    loader: GraphLoader, num_devices: int, epoch: int | None = None, start: int = 0
) -> Iterator[Batch]:
    """The stacked host batches of an epoch, `num_devices` loader batches per step, each
    padded to the step's common budget, from step `start` on (to resume).

    **Arguments:**

    - `loader`: a [`eqmlip.data.GraphLoader`][] (in a multi-host run: this process's share
        of the data).
    - `num_devices`: batches per step (the process's devices).
    - `epoch`: the epoch (default: `loader.epoch`).
    - `start`: the first step.

    **Returns:** an iterator of stacked [`eqmlip.data.Batch`][]es with leading axis
    `num_devices`; shard them with [`eqmlip.training.shard_batch`][].
    """
    epoch = loader.epoch if epoch is None else int(epoch)
    for plan in plan_epoch(loader, num_devices, epoch)[start:]:
        yield plan_batch(loader, plan)


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """A stacked host batch (this process's devices' share, leading axis = its devices in
    `mesh`) as a global batch sharded along the mesh axis.

    Single process: `jax.device_put`. Several processes: each passes its own share and the
    global array is built with `jax.make_array_from_process_local_data`.
    """
    (axis,) = mesh.axis_names
    local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
    leaves = jax.tree.leaves(batch)
    leading = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if leading != {local}:
        raise ValueError(
            f"shard_batch: the batch's leading axes are {sorted(map(str, leading))}, expected "
            f"{local} (this process's devices in the mesh); build it with stack_batches or "
            "group_batches."
        )
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    size = mesh.devices.size

    def put(x: Any) -> Any:
        x = np.asarray(x)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x, (size, *x.shape[1:]))

    return jax.tree.map(put, batch)


@dataclasses.dataclass(frozen=True)
class StackedLoss(Loss):
    """A [`eqmlip.training.Loss`][] over a stacked batch (a leading axis of padded
    batches, one per device): the **global** masked mean over all of them,

    $$L_E = \\frac{\\sum_d \\sum_g w_{dg} m^E_{dg} (\\hat E_{dg} - E_{dg})^2 / n_{dg}^2}
        {\\sum_d \\sum_g w_{dg} m^E_{dg}}$$

    and likewise for forces and stress: each device computes the numerator and denominator
    sums of its batch (a `vmap` over the leading axis, which GSPMD partitions along the mesh
    axis when the batch is sharded), and the ratio is taken once. The loss is thus that of
    one batch holding every structure, whatever the number of devices or the padding, and
    empty batches count for nothing.
    """

    @classmethod
    def from_loss(cls, loss: Loss) -> "StackedLoss":
        return cls(**{f.name: getattr(loss, f.name) for f in dataclasses.fields(Loss)})

    def sums(self, model: Any, batch: Batch) -> dict[str, Float[Array, ""]]:
        """Numerators and denominators (`"energy_num"`, `"energy_den"`, ...) of the three
        terms on one (unstacked) batch."""
        prediction = predict(model, batch.graph, forces=True, stress=self.needs_stress)
        return self.error_sums(prediction, batch)

    def __call__(self, model: Any, batch: Batch) -> tuple[Float[Array, ""], dict[str, Array]]:
        """The global loss of `model` on a stacked batch, and its terms."""
        per_device = jax.vmap(self.sums, in_axes=(None, 0))(model, batch)
        terms = self.terms_of_sums({k: jnp.sum(v) for k, v in per_device.items()})
        return self.total(terms), terms


def data_parallel_step(
    state: TrainState,
    batch: Batch,
    optimizer: optax.GradientTransformation,
    loss: Loss,
    ema_decay: float,
) -> tuple[TrainState, Float[Array, ""], dict[str, Float[Array, ""]]]:
    """One data-parallel optimisation step: [`eqmlip.training.train_step`][] (the one
    jitted step) with the [`eqmlip.training.StackedLoss`][] of `loss`.

    With `state` replicated on a mesh ([`eqmlip.training.replicate`][]) and `batch` sharded
    along it ([`eqmlip.training.shard_batch`][]), XLA partitions the per-device losses and
    gradients across the devices and all-reduces the sums; the updated state stays
    replicated. The same compiled step runs on one device when the stacked batch is not
    sharded, with the same numbers up to the order of floating-point sums.

    **Arguments:** as [`eqmlip.training.train_step`][], with `batch` a stacked batch
    ([`eqmlip.training.stack_batches`][], [`eqmlip.training.group_batches`][]).

    **Returns:** `(new_state, loss, terms)`, the global loss and its terms.
    """
    stacked = loss if isinstance(loss, StackedLoss) else StackedLoss.from_loss(loss)
    return train_step(state, batch, optimizer, stacked, ema_decay)
