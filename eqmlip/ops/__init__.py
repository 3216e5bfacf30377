"""Pure functions on arrays and static irreps; `eqmlip.nn` modules hold parameters, call these."""

from .batch_norm import batch_norm as batch_norm
from .linear import (
    LinearPath as LinearPath,
    bias_outputs as bias_outputs,
    fold_channels as fold_channels,
    linear_contract as linear_contract,
    linear_paths as linear_paths,
    normalization_exponent as normalization_exponent,
    per_channel_irreps as per_channel_irreps,
    regroup_columns as regroup_columns,
    unfold_channels as unfold_channels,
)
