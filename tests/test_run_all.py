"""`benchmarks/run_all.py --processes N`: the per-setting summary over fresh processes."""

from .helpers import load_benchmark


def _ok(molecule_speedup: float, train_speedup: float) -> dict:
    return {
        "status": "ok",
        "wall_s": 1.0,
        "result": {
            "benchmark": "fake",
            "speedup_vs_mlip": train_speedup,
            "compile_speedup_vs_mlip": 2.0,  # not a `speedup*` key
            "molecule": {
                "speedup_vs_mlip": molecule_speedup,
                "speedup_per_round_min_max": [1.0, 2.0],  # not a number
                "eqmlip_median_ms": 3.0,
            },
            "speedup_flag": True,  # a bool is not a measurement
        },
    }


def test_summary_over_processes():
    run_all = load_benchmark("run_all")
    failed = {"status": "failed", "returncode": 1, "error": ["boom"], "wall_s": 1.0}
    runs = [_ok(10.0, 8.0), failed, _ok(14.0, 9.0), _ok(11.0, 7.5)]
    entry = run_all.summarise(runs)
    assert entry["status"] == "failed"  # one process of four failed
    assert entry["processes"] == runs
    assert entry["summary"] == {
        "speedup_vs_mlip": {"median": 8.0, "min": 7.5, "max": 9.0, "n": 3},
        "molecule.speedup_vs_mlip": {"median": 11.0, "min": 10.0, "max": 14.0, "n": 3},
    }
    assert run_all.summarise(runs[2:])["status"] == "ok"
