import pytest

from ._run import Job

_JOBS = {
    "dp": lambda: Job("_dp_worker.py", 4, 300),
    "gp": lambda: Job("_gp_worker.py", 4, 300),
    "mh": lambda: Job("_mh_worker.py", 2, 300, processes=2),
    "mh_fail": lambda: Job("_mh_fail_worker.py", 2, 120, processes=2),
}


@pytest.fixture(scope="session")
def jobs():
    """The workers of tests/parallel, each started when first asked for (one at a time: on
    2 shared cores, overlapping them is slower) and waited for at the end of the session."""
    started: dict[str, Job] = {}

    class Jobs:
        def __getitem__(self, name: str) -> Job:
            if name not in started:
                for job in started.values():
                    job.wait()
                started[name] = _JOBS[name]()
            return started[name]

    yield Jobs()
    for job in started.values():
        job.wait()
