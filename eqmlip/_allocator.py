"""glibc malloc settings for XLA:CPU, applied by re-executing the `eqmlip` command.

By default glibc serves XLA:CPU's large scratch buffers with `mmap` and returns them to the
kernel after every call, so each step page-faults its whole working set again (41% of CPU
time in the kernel at 512 atoms). One arena, no `mmap` for large blocks and a high trim
threshold keep those pages: NequIP energy+forces measured 1.2x (512 atoms) to 3.3x (4,096
atoms) faster, at the cost of a larger resident set. glibc reads these tunables only at
process start, hence the re-exec. They change where memory comes from, never a number.

Opt out with `EQMLIP_MALLOC=default` in the environment.
"""

import os
import platform
import sys
from collections.abc import Mapping, Sequence

from ._errors import InputError

TUNED_MALLOC = ":".join(
    (
        "glibc.malloc.arena_max=1",
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
