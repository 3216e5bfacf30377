"""eqmlip: E(3)-equivariant layers and interatomic potentials as Equinox modules."""

__version__ = "0.1.0"

from . import interop as interop, nn as nn, ops as ops
from .graph import (
    Graph as Graph,
    batch_graphs as batch_graphs,
    pad_graph as pad_graph,
    species_index as species_index,
)
