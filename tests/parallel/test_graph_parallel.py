"""Graph parallelism: one 2048-atom Cu crystal with nodes and edges sharded over 4 devices."""

import pytest


@pytest.fixture(scope="module")
def result(jobs):
    (out,) = jobs["gp"].results()
    return out


def test_edges_and_nodes_are_sharded(result):
    assert result["atoms"] == 2048
    assert result["edges"] == 2048 * 12  # fcc, 12 neighbours within 3 Å
    assert result["edge_spec"] == "P('data',)"
    assert result["node_spec"] == "P('data',)"
    assert result["edge_shard_sizes"] == [2048 * 12 // 4]


def test_energy_forces_stress_match_one_device(result):
    assert result["shapes"] == [[2048, 3], [1]]
    assert result["energy_rel"] <= 1e-6
    assert result["forces_max"] > 1e-3  # rattled: forces are not zero by symmetry
    assert result["forces_abs"] <= 1e-5
    assert result["stress_abs"] <= 1e-5
