"""eqmlip: E(3)-equivariant layers and interatomic potentials as Equinox modules."""

__version__ = "0.1.0"

from . import interop as interop, nn as nn, ops as ops
