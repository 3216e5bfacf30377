"""The `eqmlip` command re-executes itself with glibc malloc tunables, unless told not to;
`eqmlip.tune_malloc()` applies the same settings inside a running process."""

import os
import platform
import subprocess
import sys

import pytest

import eqmlip
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
    # One arena for every thread made XLA's small steps 1.3-1.4x slower (docs/benchmarks.md).
    assert "arena_max" not in TUNED_MALLOC
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


# Frees and re-allocates a 64 MiB block (above glibc's largest dynamic mmap threshold, 32 MiB),
# writing every byte, and prints the process's minor page faults over the last 8 rounds.
_FAULTS = """
import ctypes, resource, sys
import eqmlip
for _ in range(int(sys.argv[1])):
    eqmlip.tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def touch():
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
touch()  # the first round faults its pages in under any setting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc_only
def test_tune_malloc_keeps_freed_pages():
    def faults(calls: int) -> int:
        result = _run(f"import sys; sys.argv[1:] = [{str(calls)!r}]\n{_FAULTS}")
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    # glibc's default maps the block fresh each round: at least one fault per 2 MiB (a huge
    # page) per round, 16,384 per round with 4 KiB pages. Tuned (called twice: idempotent),
    # the freed block stays in the heap and the rounds after the first fault not once each.
    assert faults(0) >= 8 * 32
    assert faults(2) < 8


@pytest.mark.parametrize(
    ("system", "libc", "found"),
    [
        ("darwin", ("", ""), "found an unknown C library on 'darwin'"),
        ("linux", ("musl", "1.2.4"), "found musl 1.2.4 on 'linux'"),
    ],
    ids=["macos", "musl"],
)
def test_tune_malloc_is_an_error_without_glibc(monkeypatch, system, libc, found):
    monkeypatch.setattr(sys, "platform", system)
    monkeypatch.setattr(platform, "libc_ver", lambda *args, **kwargs: libc)
    with pytest.raises(RuntimeError, match=f"{found}, expected glibc on 'linux'"):
        eqmlip.tune_malloc()


@glibc_only
def test_tune_malloc_names_a_refused_setting(monkeypatch):
    class Refusing:
        def __init__(self, name):
            self.mallopt = lambda option, value: 0 if option == -1 else 1

    monkeypatch.setattr("eqmlip._allocator.ctypes.CDLL", Refusing)
    with pytest.raises(RuntimeError, match=r"mallopt refused M_TRIM_THRESHOLD=2147483647"):
        eqmlip.tune_malloc()
