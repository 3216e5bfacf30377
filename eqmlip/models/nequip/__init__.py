"""NequIP (Batzner et al., 2022) as mlip 0.2.5 implements it, in Equinox."""

from .blocks import NequipEmbeddingBlock as NequipEmbeddingBlock, NequipLayer as NequipLayer
from .config import NequipConfig as NequipConfig
from .network import Nequip as Nequip, NequipOutputs as NequipOutputs
