"""Equinox modules, one for each Flax class that eqmlip replaces."""

from ._attention import MultiHeadAttention as MultiHeadAttention, SelfAttention as SelfAttention
from ._batch_norm import BatchNorm as BatchNorm
from ._e3x import Dense as Dense, FusedTensor as FusedTensor, Tensor as Tensor
from ._linear import E3jLinear as E3jLinear, Linear as Linear
from ._message_pass import MessagePass as MessagePass
from ._mlp import MultiLayerPerceptron as MultiLayerPerceptron
from ._readout import (
    MultiHeadReadoutBlock as MultiHeadReadoutBlock,
    ReadoutBlock as ReadoutBlock,
    select_head as select_head,
)
