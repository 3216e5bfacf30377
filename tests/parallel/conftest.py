import os

import pytest

from ._run import Job

_JOBS = {
    "dp": lambda cache: Job("_dp_worker.py", 4, 300, pycache=cache),
    "gp": lambda cache: Job("_gp_worker.py", 4, 300, pycache=cache),
    "mh": lambda cache: Job("_mh_worker.py", 2, 300, processes=2, pycache=cache),
    "mh_fail": lambda cache: Job("_mh_fail_worker.py", 2, 120, processes=2, pycache=cache),
}


@pytest.fixture(scope="session")
def jobs(tmp_path_factory):
    """The workers of tests/parallel, each started when first asked for (one at a time: on
    2 shared cores, overlapping them is slower) and waited for at the end of the session.
    They share one bytecode folder, new in every session: the first worker writes eqmlip's
    bytecode as jaxtyping's import hook rewrites it, the others read it. Under xdist the
    folder is the session's, above each xdist worker's own (Python writes bytecode files
    atomically, so workers started by two xdist workers at once can share it)."""
    started: dict[str, Job] = {}
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent
    cache = base / "worker_pycache"
    cache.mkdir(exist_ok=True)

    class Jobs:
        def __getitem__(self, name: str) -> Job:
            if name not in started:
                for job in started.values():
                    job.wait()
                started[name] = _JOBS[name](str(cache))
            return started[name]

    yield Jobs()
    for job in started.values():
        job.wait()
