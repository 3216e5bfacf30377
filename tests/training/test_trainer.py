import csv
import json
import re
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import Array, Float

from eqmlip import Graph, InputError
from eqmlip.data import Budget, make_batch, structure_graph
from eqmlip.io import load_model
from eqmlip.models import AbstractPotential
from eqmlip.training import (
    Loss,
    Progress,
    TrainConfig,
    _loop as loop_module,
    _step as step_module,
    evaluate,
    flat_parameters,
    init_state,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    train,
    train_step,
    trainable,
)

from ..helpers import CUTOFF, loader, tiny_model

FAST: dict[str, Any] = dict(
    batch_size=4, num_buckets=1, learning_rate=1e-2, warmup_steps=2, quiet=True
)


def _batch(structures, n_graph=5):
    graphs = [structure_graph(s, CUTOFF) for s in structures]
    return make_batch(
        structures, graphs, Budget(8 * (n_graph - 1) + 1, 150 * (n_graph - 1), n_graph)
    )


def test_loss_decreases_and_logs(alloy_structures, model, tmp_path):
    train_set, valid_set = alloy_structures[:12], alloy_structures[12:]
    config = TrainConfig(
        epochs=10, ema_decay=0.5, log_dir=str(tmp_path), **{**FAST, "learning_rate": 5e-2}
    )
    before = evaluate(model, loader(train_set), loss=Loss())
    result = train(model, loader(train_set), loader(valid_set, shuffle=False), config)
    after = evaluate(result.state.ema_model, loader(train_set), loss=Loss())
    assert after["loss"] < 0.6 * before["loss"]
    assert after["forces_mae"] < before["forces_mae"]
    assert result.progress.step == 10 * 3 and result.progress.epoch == 10

    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(3, 31, 3))
    assert lines[-1]["valid_forces_mae"] == pytest.approx(float(rows[-1]["valid_forces_mae"]))
    assert lines[-1]["valid_loss"] == result.history[-1]["valid_loss"]
    best = load_model(tmp_path / "best_model.eqx")
    assert evaluate(best, loader(valid_set, shuffle=False), loss=Loss())["loss"] == pytest.approx(
        result.progress.best_loss, rel=1e-6
    )
    assert (tmp_path / "checkpoint.eqx").exists()


def test_atomic_energies_are_not_trained(alloy_structures, model):
    mask = trainable(model)
    assert mask.atomic_energies is False
    optimizer = make_optimizer(TrainConfig(**FAST), 10)
    state = init_state(model, optimizer)
    batch = _batch(alloy_structures[:4])
    new, loss, _ = train_step(state, batch, optimizer, Loss(), 0.9)
    assert np.array_equal(new.model.atomic_energies, model.atomic_energies)
    changed = jax.tree.leaves(
        jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), eqx.filter(new.model, mask), eqx.filter(model, mask)
        )
    )
    assert all(changed) and np.isfinite(float(loss))
    assert int(new.step) == 1


class _DecayPair(AbstractPotential):
    """`E_i = 1/2 sum_j strength exp(-r_ij / length)`: `length` is a Python float leaf, not
    an array (a user's model need not mark such a field static)."""

    strength: Float[Array, ""]
    length: float
    species: tuple[int, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)

    def hyperparameters(self):
        return {"length": self.length}

    def __call__(self, graph: Graph) -> Float[Array, " nodes"]:
        r = jnp.sqrt(jnp.sum(graph.edge_vectors() ** 2, axis=-1) + 1e-12)
        pair = jnp.where(graph.edge_mask, self.strength * jnp.exp(-r / self.length), 0.0)
        energies = 0.5 * jax.ops.segment_sum(pair, graph.receivers, graph.num_nodes)
        return jnp.where(graph.node_mask, energies, 0.0)


def test_step_dispatch(alloy_structures, model, monkeypatch):
    """An all-array state goes through `jax.jit`, one with a Python scalar leaf through
    `eqx.filter_jit` (which keeps that leaf static); the step is the same computation."""
    taken = []
    for name in ("_array_step", "_filtered_step"):
        compiled = getattr(step_module, name)
        monkeypatch.setattr(
            step_module, name, lambda *a, _c=compiled, _n=name: (taken.append(_n), _c(*a))[1]
        )
    optimizer = make_optimizer(TrainConfig(**FAST), 10)
    batch = _batch(alloy_structures[:4])
    state = init_state(model, optimizer)
    new, value, _ = train_step(state, batch, optimizer, Loss(), 0.9)
    assert taken == ["_array_step"]
    filtered, filtered_value, _ = step_module._filtered_step(state, batch, optimizer, Loss(), 0.9)
    taken.clear()
    assert float(value) == float(filtered_value)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(filtered), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    pair = _DecayPair(jnp.float32(0.3), 1.5, model.species, model.cutoff)
    pair_state = init_state(pair, optimizer)
    pair_new, pair_value, _ = train_step(pair_state, batch, optimizer, Loss(), 0.9)
    assert taken == ["_filtered_step"]
    assert pair_new.model.length == 1.5 and float(pair_new.model.strength) != 0.3
    assert np.isfinite(float(pair_value))


def test_flat_optimizer_state(alloy_structures, model):
    """`make_optimizer`'s state holds one vector per moment, and its steps are those of the
    per-parameter chain up to the order of the global norm's sum."""
    config = TrainConfig(**FAST)
    flat, per_leaf = make_optimizer(config, 10), make_optimizer(config, 10, flat=False)
    batch = _batch(alloy_structures[:4])
    params = eqx.filter(model, trainable(model))
    size = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    flat_state, leaf_state = init_state(model, flat), init_state(model, per_leaf)
    moments = [x for x in jax.tree.leaves(flat_state.opt_state) if x.ndim == 1]
    assert moments and all(x.shape == (size,) for x in moments)
    assert len(jax.tree.leaves(leaf_state.opt_state)) > len(jax.tree.leaves(params))
    for _ in range(3):
        flat_state, flat_loss, _ = train_step(flat_state, batch, flat, Loss(), 0.9)
        leaf_state, leaf_loss, _ = train_step(leaf_state, batch, per_leaf, Loss(), 0.9)
        np.testing.assert_allclose(float(flat_loss), float(leaf_loss), rtol=1e-5)
    for a, b in zip(_leaves(flat_state.model), _leaves(leaf_state.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not all(
        np.array_equal(a, b) for a, b in zip(_leaves(flat_state.model), _leaves(model), strict=True)
    )

    # One leaf, or leaves of two dtypes, stay as they are (a join would promote).
    adam = flat_parameters(optax.adam(1e-2))
    mixed = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.bfloat16)}
    state: Any = adam.init(mixed)
    assert jax.tree.structure(state[0].mu) == jax.tree.structure(mixed)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction, as in `train_step`
        updates: Any = adam.update(mixed, state, mixed)[0]
    assert {k: v.dtype for k, v in updates.items()} == {"a": jnp.float32, "b": jnp.bfloat16}
    single = {"w": jnp.ones((2, 3))}
    single_state: Any = adam.init(single)
    assert single_state[0].mu["w"].shape == (2, 3)


def _beside_a_copy(inner: Any) -> Any:
    """`inner` with a per-parameter tree of its own beside its state (as a wrapper that keeps
    the last gradient)."""

    def init(params: Any) -> Any:
        return jax.tree.map(jnp.zeros_like, params), inner.init(params)

    def update(updates: Any, state: Any, params: Any = None) -> Any:
        return updates, (updates, inner.update(updates, state[1], params)[1])

    return optax.GradientTransformation(init, update)


def test_format_1_checkpoint_loads_into_the_flat_state(
    alloy_structures, model, tmp_path, monkeypatch
):
    """A checkpoint of format 1 (one optimizer array per parameter) resumes with today's flat
    optimizer: the moments are joined, and the next step is the per-parameter one."""
    config = TrainConfig(**FAST)
    flat, per_leaf = make_optimizer(config, 10), make_optimizer(config, 10, flat=False)
    batch = _batch(alloy_structures[:4])
    old = init_state(model, per_leaf)
    for _ in range(2):
        old, _, _ = train_step(old, batch, per_leaf, Loss(), 0.9)
    monkeypatch.setattr(loop_module, "CHECKPOINT_VERSION", 1)
    save_checkpoint(str(tmp_path / "old.eqx"), old, Progress(step=2), config)
    monkeypatch.undo()
    assert b'"format_version":1' in (tmp_path / "old.eqx").read_bytes()[:2000]

    loaded, progress = load_checkpoint(str(tmp_path / "old.eqx"), init_state(model, flat), config)
    assert progress.step == 2 and int(loaded.step) == 2
    params = eqx.filter(old.model, trainable(old.model))
    mu = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(old.opt_state[1].mu)])
    assert jax.tree.structure(params) == jax.tree.structure(old.opt_state[1].mu)
    np.testing.assert_array_equal(loaded.opt_state[1].mu, mu)
    for a, b in zip(_leaves(loaded.model), _leaves(old.model), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    after_flat, _, _ = train_step(loaded, batch, flat, Loss(), 0.9)
    after_old, _, _ = train_step(old, batch, per_leaf, Loss(), 0.9)
    for a, b in zip(_leaves(after_flat.model), _leaves(after_old.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    # Into a per-parameter state (`flat=False`), the same file loads as it was saved.
    as_saved, _ = load_checkpoint(str(tmp_path / "old.eqx"), init_state(model, per_leaf), config)
    assert jax.tree.structure(as_saved) == jax.tree.structure(old)
    for a, b in zip(_leaves(as_saved), _leaves(old), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # A wrapper's own per-parameter tree next to the flat moments is not joined.
    old_wrapped = init_state(model, _beside_a_copy(per_leaf))
    monkeypatch.setattr(loop_module, "CHECKPOINT_VERSION", 1)
    save_checkpoint(str(tmp_path / "wrapped.eqx"), old_wrapped, Progress(), config)
    monkeypatch.undo()
    like = init_state(model, _beside_a_copy(flat))
    loaded_wrapped, _ = load_checkpoint(str(tmp_path / "wrapped.eqx"), like, config)
    assert jax.tree.structure(loaded_wrapped) == jax.tree.structure(like)


def test_masked_targets_do_not_contribute(alloy_structures, model):
    structures = list(alloy_structures[:4])
    structures[1] = structures[1].replace(stress=None)
    structures[2] = structures[2].replace(forces=None, energy=None)
    batch = _batch(structures)
    loss = Loss(energy_weight=1.0, forces_weight=1.0, stress_weight=1.0)
    value, terms = eqx.filter_jit(loss)(model, batch)
    junk_stress = np.array(batch.stress)
    junk_stress[1] = 1e3  # masked out: has_stress[1] is False
    junk_forces = np.array(batch.forces)
    junk_forces[16:24] = 1e3  # the nodes of structure 2, whose forces are missing
    junk_energy = np.array(batch.energy)
    junk_energy[2] = 1e3
    junk = eqx.tree_at(
        lambda b: (b.stress, b.forces, b.energy), batch, (junk_stress, junk_forces, junk_energy)
    )
    value_junk, _ = eqx.filter_jit(loss)(model, junk)
    assert float(value_junk) == float(value)
    # The same change on a real target does change the loss.
    junk_stress[0] = 1e3
    real = eqx.tree_at(lambda b: b.stress, batch, junk_stress)
    assert float(eqx.filter_jit(loss)(model, real)[0]) > float(value) + 1.0
    # No stress target at all: the stress term is 0, not NaN.
    no_stress = _batch([s.replace(stress=None) for s in structures])
    assert float(eqx.filter_jit(loss)(model, no_stress)[1]["stress"]) == 0.0


def test_per_head_loss(alloy_structures):
    heads = [s.replace(dataset_idx=k % 2) for k, s in enumerate(alloy_structures[:4])]
    model = tiny_model(alloy_structures, heads=2)
    mixed = _batch(heads)
    only_head0 = _batch([heads[0], heads[2]])
    loss = eqx.filter_jit(Loss(head_weights=(1.0, 0.0)))
    value_mixed, terms_mixed = loss(model, mixed)
    value_head0, terms_head0 = loss(model, only_head0)
    np.testing.assert_allclose(float(value_mixed), float(value_head0), rtol=1e-5)
    value_head1, _ = eqx.filter_jit(Loss(head_weights=(0.0, 1.0)))(model, mixed)
    assert abs(float(value_head1) - float(value_mixed)) > 1e-6 * float(value_mixed)
    with pytest.raises(ValueError, match="head_weights"):
        TrainConfig(head_weights=(1.0, -1.0))


def _leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def test_resume_is_exact(alloy_structures, model, tmp_path):
    train_set = alloy_structures[:12]  # 3 batches per epoch
    config = TrainConfig(epochs=3, ema_decay=0.9, **FAST)
    straight = train(model, loader(train_set), None, config.replace(log_dir=str(tmp_path / "a")))
    resumable = config.replace(log_dir=str(tmp_path / "b"))
    first = train(model, loader(train_set), None, resumable, max_steps=4)  # stops mid-epoch 2
    assert first.progress.step == 4 and (first.progress.epoch, first.progress.batch) == (1, 1)
    resumed = train(model, loader(train_set), None, resumable, resume=True)
    assert resumed.progress.step == straight.progress.step == 9
    for a, b in zip(_leaves(straight.state), _leaves(resumed.state), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # The first run really stopped early: its parameters differ from the final ones.
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(_leaves(first.state), _leaves(resumed.state), strict=True)
    )
    # A resume with different settings is refused, naming them.
    with pytest.raises(ValueError, match="learning_rate"):
        train(model, loader(train_set), None, resumable.replace(learning_rate=1e-3), resume=True)


def test_early_stopping(alloy_structures, model):
    # A learning rate far below float32 resolution: the validation loss never improves.
    # ema_decay=0: averaging equal parameters still rounds, which would "improve" the loss.
    config = TrainConfig(epochs=10, patience=2, ema_decay=0.0, **{**FAST, "learning_rate": 1e-30})
    result = train(model, loader(alloy_structures[:8]), loader(alloy_structures[12:]), config)
    assert result.progress.stopped_early
    assert result.progress.epoch == 3 and len(result.history) == 3
    assert result.progress.best_epoch == 1


def test_resume_after_an_epochs_last_step(alloy_structures, model, tmp_path, monkeypatch, capsys):
    """A run killed between an epoch's last step (checkpointed) and its evaluation."""
    from eqmlip.training import _loop

    train_set = alloy_structures[:12]  # 3 batches per epoch
    config = TrainConfig(epochs=1, checkpoint_every=3, log_dir=str(tmp_path), **FAST)

    def killed(*args, **kwargs):
        raise RuntimeError("killed before the evaluation")

    with monkeypatch.context() as patch:
        patch.setattr(_loop, "evaluate", killed)
        with pytest.raises(RuntimeError, match="killed"):
            train(model, loader(train_set), None, config)
    resumed = train(model, loader(train_set), None, config, resume=True)
    row = resumed.history[-1]
    assert (row["epoch"], row["step"]) == (1, 3)
    # No step of that epoch ran in the resumed process: its training terms are unknown, not 0.
    assert row["train_loss"] is None and row["train_forces"] is None
    logged = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))[-1]
    assert logged["train_loss"] == "" and float(logged["valid_loss"]) > 0

    # Training longer than first planned is allowed on resume, and says where it resumes.
    capsys.readouterr()
    longer = train(
        model,
        loader(train_set),
        None,
        config.replace(epochs=2, quiet=False, progress_every=2),
        resume=True,
    )
    assert (longer.progress.epoch, longer.progress.step) == (2, 6)
    out = capsys.readouterr().out
    assert "resuming at epoch 2, step 3" in out
    # stderr is not a terminal here: compile notices and a line every progress_every steps.
    lines = out.splitlines()
    notice = lines.index(
        "compiling the training step for a batch of 33 nodes, 600 edges, 5 graphs..."
    )
    # A longer schedule is a new optimizer, so this may compile again; either way it says so.
    assert re.fullmatch(r"(compiled|found already compiled) in \d+\.\d s", lines[notice + 1])
    assert [line.split(",")[0] for line in lines if line.startswith("epoch 2/2:")] == [
        "epoch 2/2: batch 1/3",  # step 4
        "epoch 2/2: batch 3/3",  # step 6
    ]
    assert longer.history[-1]["train_loss"] > 0

    with pytest.raises(ValueError, match="no checkpoint"):
        train(
            model,
            loader(train_set),
            None,
            config.replace(log_dir=str(tmp_path / "new")),
            resume=True,
        )


def test_unknown_elements_are_refused_before_compiling(alloy_structures, model):
    numbers = np.array(alloy_structures[1].atomic_numbers)
    numbers[3] = 47  # silver, which the Cu-Au model has no embedding for
    silver = alloy_structures[1].replace(atomic_numbers=numbers)
    message = r"structure 1: element Ag \(Z=47, atom 3\) is not among the species of the model"
    with pytest.raises(InputError, match="loader, " + message):
        evaluate(model, loader([alloy_structures[0], silver]))
    with pytest.raises(InputError, match="valid_loader, " + message):
        train(
            model,
            loader(alloy_structures[:4]),
            loader([alloy_structures[0], silver]),
            TrainConfig(**FAST),
        )
