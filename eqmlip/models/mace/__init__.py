"""MACE (Batatia et al., 2022) as mlip 0.2.5 implements it, in Equinox."""

from .blocks import (
    EquivariantProductBasisBlock as EquivariantProductBasisBlock,
    MaceLayer as MaceLayer,
    SymmetricContraction as SymmetricContraction,
)
from .config import MaceConfig as MaceConfig
from .network import Mace as Mace
