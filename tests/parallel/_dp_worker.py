"""Data-parallel worker: run with XLA_FLAGS=--xla_force_host_platform_device_count=4.

Compares the sharded step (4 devices) with the same step on one device, on the same stacked
global batch, and prints one `RESULT {json}` line.
"""

import _common  # noqa: I001  (sets JAX flags and the jaxtyping hook before eqmlip loads)
import equinox as eqx
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eqmlip.data import make_batch
from eqmlip.training import (
    Loss,
    StackedLoss,
    TrainConfig,
    data_parallel_step,
    group_batches,
    init_state,
    make_mesh,
    make_optimizer,
    replicate,
    shard_batch,
    to_host,
    train,
)

N_DEV = 4
STEPS = 3
traces = []


def keep_gradient(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`, with the gradient of the last update kept as `state[0]`."""

    def init(params):
        return jax.tree.map(jnp.zeros_like, params), inner.init(params)

    def update(updates, state, params=None):  # the incoming updates are the gradient
        new_updates, inner_state = inner.update(updates, state[1], params)
        return new_updates, (updates, inner_state)

    return optax.GradientTransformation(init, update)


class CountingLoss(StackedLoss):
    """Counts how often the step is traced (the loss runs only while tracing)."""

    def __call__(self, model, batch):
        traces.append(1)
        return super().__call__(model, batch)


def main() -> None:
    assert jax.device_count() == N_DEV, jax.devices()
    structures = _common.dataset(28)  # 14 batches of 2: the last step has 2 empty ones
    model = _common.tiny_model(structures)
    loader = _common.loader(structures, batch_size=2)
    config = TrainConfig(learning_rate=1e-2, warmup_steps=0)
    optimizer = make_optimizer(config, 10)
    loss = Loss(energy_weight=1.0, forces_weight=10.0, stress_weight=1.0)
    counting = CountingLoss.from_loss(loss)
    mesh = make_mesh(N_DEV)
    batches = list(group_batches(loader, N_DEV, epoch=0))
    out: dict = {"steps_per_epoch": len(batches)}
    out["empty_in_last"] = int(np.sum(~np.asarray(batches[-1].graph.graph_mask).any(axis=1)))

    # One compiled step per placement serves every check: the optimizer keeps the gradient
    # of its last update, so the first step's loss and gradient (of the trainable leaves, at
    # the initial model, on the first global batch) compare sharded over 4 devices against
    # one device without a separate value_and_grad compile.
    optimizer = keep_gradient(optimizer)
    state1 = init_state(model, optimizer)
    staten = replicate(init_state(model, optimizer), mesh)
    losses1, lossesn, grads1, gradsn = [], [], [], []
    traces.clear()
    for k in range(STEPS):
        staten, vn, _ = data_parallel_step(
            staten, shard_batch(batches[k], mesh), optimizer, counting, 0.99
        )
        lossesn.append(float(vn))
        gradsn.append(staten.opt_state[0])
    out["traces_sharded"] = len(traces)
    for k in range(STEPS):
        state1, v1, _ = data_parallel_step(state1, batches[k], optimizer, counting, 0.99)
        losses1.append(float(v1))
        grads1.append(state1.opt_state[0])
    out["losses_1"], out["losses_n"] = losses1, lossesn
    out["loss_rel"] = abs(lossesn[0] - losses1[0]) / abs(losses1[0])
    out["grad_rel"] = _common.rel(to_host(gradsn[0]), to_host(grads1[0]))
    out["grad_max"] = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(to_host(grads1[0])))

    # The global masked mean equals the plain loss on one batch holding all 8 structures.
    first = np.concatenate(loader.batch_indices(0)[:N_DEV])
    budget = loader.budgets[0]
    merged = make_batch(
        [structures[i] for i in first],
        [loader.graphs[i] for i in first],
        type(budget)(N_DEV * budget.n_node, N_DEV * budget.n_edge, len(first) + 1),
    )
    v_merged, _ = eqx.filter_jit(loss)(model, merged)
    out["merged_loss_rel"] = abs(losses1[0] - float(v_merged)) / abs(float(v_merged))

    out["param_rel"] = _common.rel(to_host(staten.model), to_host(state1.model))
    out["ema_rel"] = _common.rel(to_host(staten.ema_model), to_host(state1.ema_model))
    out["param_sharding_replicated"] = all(
        x.sharding.is_fully_replicated and len(x.sharding.device_set) == N_DEV
        for x in jax.tree.leaves(eqx.filter(staten.model, eqx.is_array))
    )
    moved = _common.rel(to_host(staten.model), to_host(model))
    out["params_moved"] = moved

    # The last step (3 real batches + 1 empty) runs and is finite.
    staten, v_last, _ = data_parallel_step(
        staten, shard_batch(batches[-1], mesh), optimizer, counting, 0.99
    )
    out["last_loss"] = float(v_last)
    out["traces_total"] = len(traces)

    # train() with num_devices=4: one epoch of 4 steps, logs and checkpoint written.
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            epochs=1, warmup_steps=0, num_devices=4, log_dir=tmp, quiet=True, ema_decay=0.0
        )
        result = train(model, _common.loader(structures, batch_size=2, shuffle=True), None, config)
        out["train_steps"] = result.progress.step
        out["train_files"] = sorted(os.listdir(tmp))
        out["train_loss_finite"] = bool(np.isfinite(result.history[-1]["train_loss"]))
        out["train_forces_mae"] = result.history[-1]["valid_forces_mae"]
    # Errors name what was received.
    errors = {}
    try:
        shard_batch(batches[0], make_mesh(2))
    except ValueError as e:
        errors["shard"] = str(e)
    try:
        make_mesh(8)
    except ValueError as e:
        errors["mesh"] = str(e)
    out["errors"] = errors
    _common.report(out)


if __name__ == "__main__":
    main()
