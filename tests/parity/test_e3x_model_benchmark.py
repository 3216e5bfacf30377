"""`benchmarks/e3x_model.py` at a tiny size: it runs the page's model, checks it against e3x and
prints the record it returns; its random cluster keeps the requested density and distances."""

import json

import numpy as np
import pytest

from ..helpers import load_benchmark

pytestmark = pytest.mark.parity


def _load_script():
    return load_benchmark("e3x_model")


def test_molecule_record(capsys):
    record = _load_script().main(["--systems", "molecule", "--molecule-repeats", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    assert (record["features"], record["max_degree"], record["iterations"]) == (8, 1, 3)
    molecule = record["molecule"]
    assert (molecule["atoms"], molecule["edges"]) == (20, 336)  # the S22 pyrazine dimer, 5 Å
    assert molecule["energy_relative_error"] <= 1e-5
    assert molecule["forces_relative_error"] <= 1e-5
    for key in ("eqmlip_median_ms", "e3x_median_ms", "eqmlip_peak_mib", "e3x_peak_mib"):
        assert molecule[key] > 0, key
    assert "cluster" not in record and record["repeats"]["molecule"] == 2


def test_random_cluster_density_and_distances():
    script = _load_script()
    positions = script.random_cluster(300, 0.1, 1.0, np.random.default_rng(0))
    radius = (3 * 300 / (4 * np.pi * 0.1)) ** (1 / 3)  # 8.95 Å
    assert positions.shape == (300, 3)
    assert np.max(np.linalg.norm(positions, axis=1)) <= radius
    assert np.max(np.linalg.norm(positions, axis=1)) > 0.95 * radius  # the ball is filled
    dst, src = script.radius_pairs(positions, 5.0)
    assert np.all(dst != src) and np.all(np.diff(dst) >= 0)
    distances = np.linalg.norm(positions[dst] - positions[src], axis=1)
    assert np.min(distances) >= 1.0 and np.max(distances) < 5.0
    # Both orders of every pair; the ball interior has ~0.1 * 4/3 pi 5^3 = 52 neighbours.
    assert sorted(zip(dst, src, strict=True)) == sorted(zip(src, dst, strict=True))
    assert 20 < len(dst) / 300 < 52


def test_unknown_system_is_named():
    with pytest.raises(SystemExit, match=r"unknown \['crystal'\]"):
        _load_script().main(["--systems", "molecule,crystal"])
