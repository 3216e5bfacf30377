"""The optimizer, the training state and the one jitted training step."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PyTree

from ..data import Batch
from ..models._potential import AbstractPotential
from ._config import TrainConfig
from ._loss import Loss


def make_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule: linear warmup, then the configured decay until
    `total_steps` (constant at the final value afterwards)."""
    lr = config.learning_rate
    warmup = optax.linear_schedule(lr * config.warmup_init_factor, lr, max(config.warmup_steps, 1))
    decay_steps = max(total_steps - config.warmup_steps, 1)
    final = lr * config.final_lr_factor
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=config.final_lr_factor)
    elif config.schedule == "exponential":
        decay = optax.exponential_decay(lr, decay_steps, config.final_lr_factor, end_value=final)
    else:
        decay = optax.constant_schedule(lr)
    if config.warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def _flattens(tree: PyTree) -> bool:
    """Whether [`eqmlip.training.flat_parameters`][] joins the leaves of `tree` into one vector:
    more than one array leaf, all of one dtype (a join would otherwise promote)."""
    leaves = jax.tree.leaves(tree)
    return len(leaves) > 1 and len({jnp.result_type(x) for x in leaves}) == 1


def flat_parameters(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """`inner` run on one vector holding every parameter, so its state holds one vector per
    moment instead of one array per parameter.

    For transformations that act element by element or through sums over all parameters
    (those of [`eqmlip.training.make_optimizer`][]: global-norm clipping, Adam, AMSGrad, weight
    decay, a learning rate) the result is `inner`'s, with the global sums in another order.
    Transformations that treat each parameter array on its own do not carry over: masks and
    per-label transforms (`optax.masked`, `optax.multi_transform`), per-array trust ratios
    (LAMB, LARS) and factored moments (Adafactor) would see one array. A per-parameter
    optimizer costs a few small XLA ops per leaf: on NequIP's 21 trainable leaves, its
    training step ran 8 % faster flat (2 cores). Trees with a single leaf, or with leaves of
    mixed dtypes (which a join would promote), are passed to `inner` as they are.
    """
    flat = optax.flatten(inner)
    per_leaf = optax.with_extra_args_support(inner)

    def init(params: PyTree) -> Any:
        return (flat if _flattens(params) else per_leaf).init(params)

    def update(
        updates: PyTree, state: Any, params: PyTree | None = None, **extra: Any
    ) -> tuple[PyTree, Any]:
        return (flat if _flattens(updates) else per_leaf).update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(
    config: TrainConfig, total_steps: int, *, flat: bool = True
) -> optax.GradientTransformation:
    """`optax.chain(clip_by_global_norm, amsgrad | adam, add_decayed_weights,
    scale_by_learning_rate(schedule))` as [`eqmlip.training.TrainConfig`][] describes.

    With `flat` (the default) the chain runs on one vector of all trainable parameters
    ([`eqmlip.training.flat_parameters`][]): the optimizer state holds one vector per moment.
    `flat=False` keeps one array per parameter (the layout of checkpoints before format 2,
    which [`eqmlip.training.load_checkpoint`][] converts).
    """
    parts = []
    if config.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(config.grad_clip))
    scale = optax.scale_by_amsgrad if config.optimizer == "amsgrad" else optax.scale_by_adam
    parts.append(scale(b1=config.beta1, b2=config.beta2, eps=config.eps))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.scale_by_learning_rate(make_schedule(config, total_steps)))
    chain = optax.chain(*parts)
    return flat_parameters(chain) if flat else chain


def loss_from_config(config: TrainConfig) -> Loss:
    """The [`eqmlip.training.Loss`][] of a config."""
    return Loss(
        energy_weight=config.energy_weight,
        forces_weight=config.forces_weight,
        stress_weight=config.stress_weight,
        per_atom_energy=config.per_atom_energy,
        head_weights=config.head_weights,
    )


def trainable(model: PyTree) -> PyTree:
    """The filter of trainable leaves: a potential's `trainable_mask()` (e.g. NequIP leaves its
    E0s fixed), or every inexact array of any other pytree."""
    if isinstance(model, AbstractPotential):
        return model.trainable_mask()
    return jax.tree.map(eqx.is_inexact_array, model)


class TrainState(eqx.Module):
    """Everything that changes during training, as one pytree (checkpointed with
    `eqx.tree_serialise_leaves`).

    **Fields:**

    - `model`: the current model.
    - `ema_model`: the exponential moving average of the model's trainable parameters
        (its other leaves are the model's).
    - `opt_state`: the optax state of the trainable parameters.
    - `step`: the number of steps taken (an int32 scalar).
    """

    model: PyTree
    ema_model: PyTree
    opt_state: PyTree
    step: Int[Array, ""]


def init_state(model: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """The state before the first step: the EMA starts at the model."""
    params = eqx.filter(model, trainable(model))
    return TrainState(
        model=model,
        ema_model=model,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
    )


def _loss_of_params(params: PyTree, static: PyTree, batch: Batch, loss: Loss):
    return loss(eqx.combine(params, static), batch)


def _step(
    state: TrainState,
    batch: Batch,
    optimizer: optax.GradientTransformation,
    loss: Loss,
    ema_decay: float,
) -> tuple[TrainState, Float[Array, ""], dict[str, Float[Array, ""]]]:
    params, static = eqx.partition(state.model, trainable(state.model))
    (value, terms), grads = eqx.filter_value_and_grad(_loss_of_params, has_aux=True)(
        params, static, batch, loss
    )
    # optax's bias corrections raise a float to an int32 step count, which strict dtype
    # promotion (used by the test suite) rejects; the optimizer's own arithmetic is optax's.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
    params = eqx.apply_updates(params, updates)
    model = eqx.combine(params, static)
    step = state.step + 1
    if ema_decay > 0:
        count = step.astype(jnp.float32)
        decay = jnp.minimum(jnp.float32(ema_decay), (1.0 + count) / (10.0 + count))
        ema_params = eqx.filter(state.ema_model, trainable(state.ema_model))
        ema_params = jax.tree.map(
            lambda e, p: decay.astype(p.dtype) * e + (1 - decay).astype(p.dtype) * p,
            ema_params,
            params,
        )
        ema_model = eqx.combine(ema_params, static)
    else:
        ema_model = model
    return TrainState(model, ema_model, opt_state, step), value, terms


# Two jitted forms of the same step. When every leaf of the state and the batch is an array (as
# for eqmlip's potentials), `jax.jit` flattens them in its C++ dispatch, where `eqx.filter_jit`
# partitions and recombines the whole state in Python: 0.7 ms of a 10 ms NequIP training step
# on 2 CPU cores. Other pytrees (a user's model with a Python scalar leaf) keep `filter_jit`,
# which makes such leaves static.
_array_step = jax.jit(_step, static_argnums=(2, 3, 4))
_filtered_step = eqx.filter_jit(_step)


def _static_hashable(*values: Any) -> bool:
    try:
        hash(values)
    except TypeError:
        return False
    return True


def train_step(
    state: TrainState,
    batch: Batch,
    optimizer: optax.GradientTransformation,
    loss: Loss,
    ema_decay: float,
) -> tuple[TrainState, Float[Array, ""], dict[str, Float[Array, ""]]]:
    """One optimisation step on one batch.

    The gradient of `loss(model, batch)` is taken with respect to the trainable leaves only
    (see [`eqmlip.training.trainable`][]), the optax update applied to them, and the EMA
    updated with decay `min(ema_decay, (1 + step) / (10 + step))` (`ema_decay=0`: the EMA is
    the model).

    **Arguments:**

    - `state`: a [`eqmlip.training.TrainState`][].
    - `batch`: a padded [`eqmlip.data.Batch`][] (its floating arrays in the model's dtype;
        each new batch shape compiles once).
    - `optimizer`, `loss`, `ema_decay`: static; pass the same objects every step (the
        optimizer is hashed by identity).

    **Returns:** `(new_state, loss, terms)`, with the loss and its terms before the update.
    """
    if all(eqx.is_array(leaf) for leaf in jax.tree.leaves((state, batch))) and _static_hashable(
        optimizer, loss, ema_decay
    ):
        return _array_step(state, batch, optimizer, loss, ema_decay)
    return _filtered_step(state, batch, optimizer, loss, ema_decay)


def cast_batch(batch: Batch, dtype: Any) -> Batch:
    """The batch with its floating arrays (positions, cell, shifts, targets, weights) in
    `dtype`, on the host, so the model computes in its own dtype."""

    def cast(x: Any) -> Any:
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, batch)
