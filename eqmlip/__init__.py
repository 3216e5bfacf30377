"""eqmlip: E(3)-equivariant layers and interatomic potentials as Equinox modules."""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ._allocator import tune_malloc as tune_malloc
from ._errors import ConfigError as ConfigError, InputError as InputError

if TYPE_CHECKING:
    from . import interop as interop, nn as nn, ops as ops
    from .graph import (
        Graph as Graph,
        batch_graphs as batch_graphs,
        pad_graph as pad_graph,
        species_index as species_index,
    )

# Imported on first use, so that `import eqmlip.cli` (the `eqmlip` command's `--help`) and
# `import eqmlip.testing` do not pay for JAX and every layer up front.
_SUBMODULES = ("interop", "nn", "ops")
_FROM_GRAPH = ("Graph", "batch_graphs", "pad_graph", "species_index")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _FROM_GRAPH:
        value = getattr(importlib.import_module(".graph", __name__), name)
    else:
        raise AttributeError(f"module 'eqmlip' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_FROM_GRAPH])
