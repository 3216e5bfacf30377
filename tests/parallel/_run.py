"""Running the tests/parallel workers in subprocesses with forced host devices.

`XLA_FLAGS=--xla_force_host_platform_device_count=N` must be set before JAX initialises,
and the pytest process has already imported JAX, so every check runs in a worker script
that prints one `RESULT {json}` line. The workers of all the test modules start together
(see conftest.py): their compiles then overlap.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


# LLVM's optimisation of the generated CPU code is a large part of each compile (a
# data-parallel step took 4.0-4.4 s at the default level, 2.4-2.8 s at 0, load 4-5). These
# tests check how XLA partitions and reduces across devices, which happens in XLA's own
# passes before LLVM, and compare programs built with the same flags, so they skip it.
_XLA_FLAGS = "--xla_backend_optimization_level=0"


def worker_env(devices: int, pycache: str | None = None) -> dict[str, str]:
    """The environment of a worker: `devices` forced CPU devices, no accelerator, and the
    bytecode folder the workers of a session share (`pycache`, see _common.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    if pycache is not None:
        env["EQMLIP_TEST_PYCACHE"] = pycache
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {_XLA_FLAGS}",
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_result(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the worker printed no RESULT line:\n{output[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


class Job:
    """One worker script in `num_processes` processes (> 1: one `jax.distributed` run on
    127.0.0.1, each process getting `ID NUM_PROCESSES PORT` as its first arguments).

    Bounded whatever happens: as soon as one process exits with an error the others are
    killed (they would wait in a collective until JAX's heartbeat timeout), and all are
    killed `timeout` seconds after the start.
    """

    def __init__(
        self,
        script: str,
        devices: int,
        timeout: float,
        *args: str,
        processes: int = 1,
        pycache: str | None = None,
    ):
        self.timeout = timeout
        self.start = time.monotonic()
        if processes == 1:
            argvs = [[*args]]
        else:
            port = str(free_port())
            argvs = [[str(i), str(processes), port, *args] for i in range(processes)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(HERE / script), *argv],
                env=worker_env(devices, pycache),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=HERE,
            )
            for argv in argvs
        ]
        self.outputs = [""] * len(self.procs)
        # Drain the pipes in threads, so that a chatty process never blocks on a full pipe.
        self.threads = [
            threading.Thread(target=self._drain, args=(i,), daemon=True)
            for i in range(len(self.procs))
        ]
        for t in self.threads:
            t.start()
        self.codes: list[int | None] | None = None
        self.wall = 0.0

    def _drain(self, i: int) -> None:
        stream = self.procs[i].stdout
        assert stream is not None
        self.outputs[i] = stream.read()

    def wait(self) -> list[int | None]:
        """The exit codes (`None`: killed while still running)."""
        if self.codes is not None:
            return self.codes
        codes: list[int | None] = [None] * len(self.procs)
        try:
            while time.monotonic() - self.start < self.timeout:
                codes = [p.poll() for p in self.procs]
                if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                    break
                time.sleep(0.1)
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()  # only the processes started here, by their handle
            for p in self.procs:
                p.wait()
            for t in self.threads:
                t.join(timeout=10)
            for p in self.procs:
                if p.stdout is not None:
                    p.stdout.close()
        self.codes = codes
        self.wall = time.monotonic() - self.start
        return codes

    def results(self) -> list[dict[str, Any]]:
        """The JSON results of every process, failing with their output unless all exited 0."""
        codes = self.wait()
        assert codes == [0] * len(codes), f"exit codes {codes}:\n" + "\n----\n".join(
            o[-4000:] for o in self.outputs
        )
        return [parse_result(o) for o in self.outputs]
