import gc
import shutil
import tempfile

import hypothesis
import jax
import jax.random as jr
import pytest

from eqmlip import testing
from eqmlip.data import emt_alloy_dataset

from .helpers import tiny_model

# Equinox's own test settings: no silent dtype promotion, NaNs raise.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_debug_nans", True)

# XLA's persistent compilation cache, in a folder of this process's own (no two processes
# write it) that lives for the session. Tests that build the same program again (a new model
# or closure of the same shapes: a miss in `jax.jit`'s own cache, which is keyed by the Python
# objects) load the executable XLA built the first time instead of compiling it again; the
# loaded executable is the one compiled, so every number is unchanged.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="eqmlip-tests-xla-cache-")
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def pytest_configure(config: pytest.Config) -> None:
    # A cache entry that cannot be read or written is compiled instead (JAX warns): a fault of
    # the cache, not of the code under test, so it does not fail the test.
    config.addinivalue_line(
        "filterwarnings", "ignore:Error (reading|writing) persistent compilation cache entry"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


# The library's settings (no deadline, no explain phase, derandomised), with fewer examples.
hypothesis.settings.register_profile("ci", testing.hypothesis_settings(max_examples=10))
hypothesis.settings.register_profile(
    "dev", testing.hypothesis_settings(max_examples=100, derandomize=False)
)
# CI and the README use the bounded profile; `pytest --hypothesis-profile=dev` runs more examples.
hypothesis.settings.load_profile("ci")


@pytest.fixture
def getkey():
    """A fresh PRNG key each call, deterministic per test."""
    key = jr.PRNGKey(5678)

    def _getkey():
        nonlocal key
        key, sub = jr.split(key)
        return sub

    return _getkey


@pytest.fixture(params=[False, True], ids=["f32", "x64"])
def x64(request):
    """Run the test body with `jax_enable_x64` off and on."""
    with jax.enable_x64(request.param):
        yield request.param


@pytest.fixture(scope="session")
def alloy_structures():
    """16 Cu-Au cells of 8 atoms with EMT energy, forces and stress."""
    return emt_alloy_dataset(16, seed=1, repeat=(2, 1, 1), snapshots_per_trajectory=4)


@pytest.fixture(scope="session")
def model(alloy_structures):
    return tiny_model(alloy_structures)


# Every live XLA:CPU executable holds three memory mappings (code, constants, data). A test worker
# that keeps thousands of them passes Linux's default limit of 65,530 mappings per process
# (vm.max_map_count) near the end of the suite, and the next compile then segfaults inside LLVM.
# Past this many mappings the caches are dropped between modules (recompiling is cheap by comparison).
_MAX_MAPPINGS_KEPT_BETWEEN_MODULES = 20_000


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux: no such limit to stay under
        return 0


@pytest.fixture(scope="module", autouse=True)
def _bounded_compiled_executables():
    yield
    if _memory_mappings() > _MAX_MAPPINGS_KEPT_BETWEEN_MODULES:
        jax.clear_caches()
        gc.collect()


# The files that take a minute or more, slowest first (`-n 0 --durations=0` on a quiet 2-core
# machine; keep this list in step when a file grows). With `--dist loadfile`, xdist hands each
# idle worker the next file in collection order (`--no-loadscope-reorder` in pyproject.toml):
# a slow file started last leaves the other worker idle until it ends, so these go first.
SLOW_FILES = (
    "tests/parity/test_mace_parity.py",
    "tests/parity/test_nequip_parity.py",
    "tests/test_docs.py",
    "tests/models/test_mace_network.py",
    "tests/test_cli.py",
    "tests/training/test_trainer.py",
    "tests/parallel/test_data_parallel.py",
    "tests/parallel/test_graph_parallel.py",
    "tests/parallel/test_multihost.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow files first; the others after them in collection order (a stable sort keeps each
    file's tests together and in order)."""
    rank = {path: i for i, path in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
