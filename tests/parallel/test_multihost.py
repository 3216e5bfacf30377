"""Two `jax.distributed` processes on 127.0.0.1, each with 2 forced CPU devices."""

import pytest


@pytest.fixture(scope="module")
def results(jobs):
    return jobs["mh"].results()


def test_processes_form_one_mesh(results):
    for i, r in enumerate(results):
        assert r["process_index"] == i
        assert r["process_count"] == 2
        assert (r["devices"], r["local_devices"]) == (4, 2)
        assert r["mesh_processes"] == [0, 0, 1, 1]
        assert r["share"] == 8  # structures[process_index::2] of 16
        assert r["structures_total"] == 16  # summed over the processes


def test_processes_agree_and_match_single_process(results):
    assert all(r["agree"] for r in results)  # bitwise, checked by all-gather in the workers
    assert results[0]["checksum"] == results[1]["checksum"]
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["param_rel_to_single"] <= 1e-6
    for a, b in zip(results[0]["losses"], results[0]["ref_losses"], strict=True):
        assert abs(a - b) <= 1e-6 * abs(b)
    assert results[0]["losses"][1] < results[0]["losses"][0]


def test_a_failing_process_ends_the_run(jobs):
    # Process 1 crashes after joining while process 0 waits in a collective: it is stopped.
    job = jobs["mh_fail"]
    codes = job.wait()
    assert codes[1] == 3, job.outputs[1][-2000:]
    assert codes[0] is None or codes[0] != 0  # killed, or ended with an error by itself
    assert job.wall < job.timeout
