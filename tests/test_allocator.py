"""The `eqmlip` command re-executes itself with glibc malloc tunables, unless told not to."""

import os
import platform
import subprocess
import sys

import pytest

from eqmlip._allocator import TUNED_MALLOC, tuned_environment
from eqmlip._errors import InputError

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc tunables"
)

_PRINT_TUNABLES = "import os; print(os.environ.get('GLIBC_TUNABLES', '<unset>'))"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "EQMLIP_MALLOC")}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


@glibc_only
def test_reexec_sets_the_tunables_once():
    code = (
        "from eqmlip._allocator import reexec_with_tuned_malloc as r; "
        f"r(['-c', {_PRINT_TUNABLES!r}]); print('not re-executed')"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [TUNED_MALLOC]  # replaced: the line after r(...) never ran


@glibc_only
def test_user_tunables_are_kept_and_opt_out_is_honoured():
    user = "glibc.pthread.rseq=0"
    kept = tuned_environment({"GLIBC_TUNABLES": user})
    assert kept is not None and kept["GLIBC_TUNABLES"] == f"{user}:{TUNED_MALLOC}"
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is None
    assert tuned_environment({"EQMLIP_MALLOC": "default"}) is None
    explicit = tuned_environment({"EQMLIP_MALLOC": "tuned"})
    assert explicit is not None and explicit["GLIBC_TUNABLES"] == TUNED_MALLOC


def test_unknown_choice_is_an_error():
    with pytest.raises(InputError, match=r"EQMLIP_MALLOC='fast'.*tuned, default"):
        tuned_environment({"EQMLIP_MALLOC": "fast"})


@glibc_only
def test_the_command_runs_under_the_tunables(tmp_path):
    # A sitecustomize on PYTHONPATH records GLIBC_TUNABLES at the start of every interpreter:
    # the command's own and the one it re-executes into.
    log = tmp_path / "tunables.log"
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(os.environ.get('GLIBC_TUNABLES', '<unset>') + '\\n')\n"
    )
    pythonpath = os.pathsep.join([str(tmp_path), *sys.path[1:]])
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "EQMLIP_MALLOC")}
    command = [sys.executable, "-m", "eqmlip", "relax"]  # a usage error, after the re-exec
    result = subprocess.run(
        command, env={**env, "PYTHONPATH": pythonpath}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "usage: eqmlip" in result.stderr, result.stderr
    assert log.read_text().split() == ["<unset>", TUNED_MALLOC]

    log.unlink()
    opted_out = {**env, "PYTHONPATH": pythonpath, "EQMLIP_MALLOC": "default"}
    result = subprocess.run(command, env=opted_out, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert log.read_text().split() == ["<unset>"]

    bad = {**env, "PYTHONPATH": pythonpath, "EQMLIP_MALLOC": "fast"}
    result = subprocess.run(command, env=bad, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "EQMLIP_MALLOC='fast' is not a choice" in result.stderr
