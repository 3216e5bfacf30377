"""Equinox modules, one for each Flax class that eqmlip replaces (and e3x's activation
functions, where e3x users look for them)."""

from ..ops.activation import (
    bent_identity as bent_identity,
    celu as celu,
    elu as elu,
    gelu as gelu,
    hard_silu as hard_silu,
    hard_swish as hard_swish,
    hard_tanh as hard_tanh,
    leaky_relu as leaky_relu,
    mish as mish,
    relu as relu,
    relu6 as relu6,
    selu as selu,
    serf as serf,
    shifted_softplus as shifted_softplus,
    silu as silu,
    soft_sign as soft_sign,
    swish as swish,
)
from ..ops.layouts import (
    add as add,
    change_max_degree_or_type as change_max_degree_or_type,
    even_degree_mask as even_degree_mask,
    odd_degree_mask as odd_degree_mask,
)
from ._attention import MultiHeadAttention as MultiHeadAttention, SelfAttention as SelfAttention
from ._batch_norm import BatchNorm as BatchNorm
from ._e3x import Dense as Dense, FusedTensor as FusedTensor, Tensor as Tensor
from ._e3x_models import (
    Embed as Embed,
    ExponentialBasis as ExponentialBasis,
    TensorDense as TensorDense,
)
from ._linear import E3jLinear as E3jLinear, Linear as Linear
from ._message_pass import MessagePass as MessagePass
from ._mlp import MultiLayerPerceptron as MultiLayerPerceptron
from ._readout import (
    MultiHeadReadoutBlock as MultiHeadReadoutBlock,
    ReadoutBlock as ReadoutBlock,
    select_head as select_head,
)
