"""Data parallelism on 4 forced CPU devices (in a subprocess: XLA_FLAGS must precede JAX)."""

import pytest


@pytest.fixture(scope="module")
def result(jobs):
    (out,) = jobs["dp"].results()
    return out


def test_loss_and_gradient_match_single_device(result):
    # The first step's loss and gradient (of the trainable leaves, as the optimizer gets it).
    assert result["loss_rel"] <= 1e-6
    assert result["grad_rel"] <= 1e-6
    assert result["grad_max"] > 1e-3  # a gradient that is not trivially zero


def test_global_masked_mean_equals_one_merged_batch(result):
    # 4 device batches of 2 structures = the loss of one batch holding the 8 structures.
    assert result["merged_loss_rel"] <= 1e-6


def test_sharded_steps_match_single_device_steps(result):
    assert result["traces_sharded"] == 1
    # One more trace for the unsharded inputs; the last step (with empty batches) reuses it.
    assert result["traces_total"] == 2
    assert result["param_rel"] <= 1e-6
    assert result["ema_rel"] <= 1e-6
    assert result["params_moved"] > 1e-4  # the steps did change the parameters
    assert result["param_sharding_replicated"]
    for a, b in zip(result["losses_1"], result["losses_n"], strict=True):
        assert abs(a - b) <= 1e-6 * abs(a)
    assert result["losses_1"][-1] < result["losses_1"][0]


def test_last_step_is_padded_with_empty_batches(result):
    # 28 structures in batches of 2: 14 batches, 4 steps, the last with 2 empty batches.
    assert result["steps_per_epoch"] == 4
    assert result["empty_in_last"] == 2
    assert 0 < result["last_loss"] < result["losses_n"][0]


def test_errors_name_received_and_expected(result):
    assert "leading axes are ['4'], expected 2" in result["errors"]["shard"]
    assert "num_devices=8" in result["errors"]["mesh"]
    assert "only 4 local device(s)" in result["errors"]["mesh"]


def test_train_with_num_devices(result):
    # 14 batches of 2 on 4 devices: 4 steps, only process 0 (the only one) writes.
    assert result["train_steps"] == 4
    assert {"checkpoint.eqx", "log.csv", "log.jsonl"} <= set(result["train_files"])
    assert result["train_loss_finite"]
    assert 0 < result["train_forces_mae"] < 10
