"""glibc malloc settings for XLA:CPU: re-executing the `eqmlip` command, or `tune_malloc`.

By default glibc serves XLA:CPU's large scratch buffers with `mmap` and returns them to the
kernel after every call, so each step page-faults its whole working set again (41% of CPU
time in the kernel at 512 atoms). No `mmap` for large blocks, a high trim threshold and a
large top pad keep those pages: NequIP energy+forces measured 1.2x (512 atoms) to 3.3x (4,096
atoms) faster, at the cost of a larger resident set. The number of malloc arenas is left to
glibc: one arena for every thread (`arena_max=1`, in this set until 2026-12-04) put XLA's
threads behind one lock and made the 21-atom step 1.3x and the training step 1.4x slower.
glibc reads these tunables only at process start, hence the re-exec. They change where memory
comes from, never a number.

Opt out with `EQMLIP_MALLOC=default` in the environment. A program that imports eqmlip
applies the same settings to its own process with `eqmlip.tune_malloc()` (glibc's `mallopt`).
"""

import ctypes
import os
import platform
import sys
from collections.abc import Mapping, Sequence

from ._errors import InputError

TUNED_MALLOC = ":".join(
    (
        "glibc.malloc.mmap_max=0",
        "glibc.malloc.trim_threshold=68719476736",  # 64 GiB: never give freed pages back
        "glibc.malloc.top_pad=1073741824",  # grow the heap 1 GiB at a time
    )
)
OPT_OUT_VARIABLE = "EQMLIP_MALLOC"
_CHOICES = ("tuned", "default")


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when the process should run as it is.

    None when the user opted out (`EQMLIP_MALLOC=default`), when malloc tunables are already
    set (by the user, or by an earlier re-exec), or when the C library is not glibc.
    """
    choice = environ.get(OPT_OUT_VARIABLE, "tuned")
    if choice not in _CHOICES:
        raise InputError(
            f"{OPT_OUT_VARIABLE}={choice!r} is not a choice; expected one of {', '.join(_CHOICES)}"
        )
    existing = environ.get("GLIBC_TUNABLES", "")
    if choice == "default" or "glibc.malloc." in existing:
        return None
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    environment = dict(environ)
    environment["GLIBC_TUNABLES"] = f"{existing}:{TUNED_MALLOC}" if existing else TUNED_MALLOC
    return environment


def reexec_with_tuned_malloc(python_arguments: Sequence[str]) -> None:
    """Replace this process by `python *python_arguments` under the tuned allocator.

    Returns (doing nothing) when `tuned_environment` says the process should run as it is.
    Call it before any work: the process image is replaced, output buffers included.
    """
    environment = tuned_environment(os.environ)
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *python_arguments], environment)


# glibc's malloc.h: the `mallopt` options and the values `tune_malloc` sets, in the order of
# TUNED_MALLOC. `mallopt` takes a C int, so the trim threshold is 2 GiB - 1 rather than the
# tunable's 64 GiB; either keeps the freed pages of XLA:CPU's working sets (0.85 GiB for the
# default NequIP on 4,096 Si atoms).
_MALLOPT_SETTINGS = (
    ("M_MMAP_MAX", -4, 0),
    ("M_TRIM_THRESHOLD", -1, 2**31 - 1),
    ("M_TOP_PAD", -2, 2**30),
)


def tune_malloc() -> None:
    """Apply the `eqmlip` command's glibc malloc settings to this process, with `mallopt`.

    XLA:CPU runs faster when glibc's malloc keeps the pages of its large buffers instead of
    mapping them fresh and returning them to the kernel on every call: with these settings
    the default NequIP's time per edge stays within 1.2x from 64 to 4,096 atoms, against a
    1.4-1.8x drift without them, and this function removed the page faults and measured as
    fast as the tunables at 512 and 4,096 atoms (see the Benchmarks page). The `eqmlip`
    command sets them itself; a Python program that imports eqmlip calls this once, first:

    ```python
    import eqmlip

    eqmlip.tune_malloc()  # before JAX allocates its large buffers
    import jax
    ```

    It sets no `mmap` for large blocks (`M_MMAP_MAX` 0), a trim threshold of 2 GiB
    (`M_TRIM_THRESHOLD`) and a 1 GiB top pad (`M_TOP_PAD`), the equivalent of
    `eqmlip._allocator.TUNED_MALLOC` through `GLIBC_TUNABLES`, whose malloc settings it
    overrides. It changes where memory comes from, never a computed number.

    **Caveats.** It changes the allocator of the whole process, not only eqmlip's: memory that
    is freed stays with the process (a larger resident set), for every library in it. Call it
    before JAX allocates large buffers: blocks already mapped stay mapped until freed. Calling
    it again sets the same values again (it is idempotent). There is no undo short of
    restarting the process.

    **Returns:** None, once glibc has accepted every setting.

    **Raises:** `RuntimeError` where the C library is not glibc on Linux (macOS, Windows,
    musl): the error names the platform and C library found. Other allocators have other
    knobs, so nothing is changed there; catch the error to run the same script anywhere.
    `RuntimeError` too if glibc refuses a setting (it names which; those before it stay set).
    """
    libc_name, libc_version = platform.libc_ver()
    if sys.platform != "linux" or libc_name != "glibc":
        found = f"{libc_name} {libc_version}" if libc_name else "an unknown C library"
        raise RuntimeError(
            f"tune_malloc: found {found} on {sys.platform!r}, expected glibc on 'linux'; "
            "the settings are glibc malloc's (mallopt), so nothing was changed"
        )
    mallopt = ctypes.CDLL(None).mallopt  # the process's own malloc, as it allocates
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    for name, option, value in _MALLOPT_SETTINGS:
        if mallopt(option, value) != 1:  # glibc's mallopt returns 1 on success, 0 on error
            raise RuntimeError(f"tune_malloc: glibc's mallopt refused {name}={value}")
