"""A `jax.distributed` run where process 1 crashes after joining while process 0 waits in a
collective: `python _mh_fail_worker.py PROCESS_ID NUM_PROCESSES PORT`. Light on purpose
(JAX only), as it tests that the run is stopped, not what it computes."""

import os
import sys

import jax
from jax.experimental import multihost_utils


def main() -> None:
    pid, nproc, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    jax.distributed.initialize(
        f"127.0.0.1:{port}",
        nproc,
        pid,
        initialization_timeout=60,
        heartbeat_timeout_seconds=10,
        shutdown_timeout_seconds=10,
    )
    if pid == 1:
        os._exit(3)  # a crash: no shutdown barrier (sys.exit would run JAX's atexit one)
    multihost_utils.sync_global_devices("never reached by process 1")
    print("RESULT {}", flush=True)


if __name__ == "__main__":
    main()
