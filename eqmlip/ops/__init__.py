"""Pure functions on arrays and static irreps; `eqmlip.nn` modules hold parameters, call these."""

from . import e3x as e3x, e3x_message as e3x_message, nequip as nequip
from .batch_norm import batch_norm as batch_norm
from .e3x import (
    basic_bernstein as basic_bernstein,
    basic_fourier as basic_fourier,
    basic_gaussian as basic_gaussian,
    basis as basis,
    clebsch_gordan as clebsch_gordan,
    cosine_cutoff as cosine_cutoff,
    e3x_dense as e3x_dense,
    e3x_fused_tensor as e3x_fused_tensor,
    e3x_tensor as e3x_tensor,
    exponential_bernstein as exponential_bernstein,
    exponential_fourier as exponential_fourier,
    exponential_gaussian as exponential_gaussian,
    exponential_mapping as exponential_mapping,
    from_irreps_array as from_irreps_array,
    reciprocal_bernstein as reciprocal_bernstein,
    reciprocal_fourier as reciprocal_fourier,
    reciprocal_gaussian as reciprocal_gaussian,
    reciprocal_mapping as reciprocal_mapping,
    reflect as reflect,
    rotate as rotate,
    sinc as sinc,
    smooth_cutoff as smooth_cutoff,
    smooth_damping as smooth_damping,
    spherical_harmonics as spherical_harmonics,
    to_irreps_array as to_irreps_array,
    wigner_d as wigner_d,
)
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
