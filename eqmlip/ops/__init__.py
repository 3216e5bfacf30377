"""Pure functions on arrays and static irreps, one module per concept; `eqmlip.nn` modules hold
parameters and call these."""

from . import (
    activation as activation,
    attention as attention,
    columns as columns,
    conversions as conversions,
    cutoffs as cutoffs,
    gate as gate,
    layouts as layouts,
    linear as linear,
    nequip as nequip,
    radial as radial,
    segment as segment,
    so3 as so3,
    tensor_product as tensor_product,
)
from .activation import inverse_softplus as inverse_softplus
from .batch_norm import batch_norm as batch_norm
from .conversions import from_irreps_array as from_irreps_array, to_irreps_array as to_irreps_array
from .cutoffs import (
    cosine_cutoff as cosine_cutoff,
    smooth_cutoff as smooth_cutoff,
    smooth_damping as smooth_damping,
    smooth_switch as smooth_switch,
)
from .layouts import (
    add as add,
    change_max_degree_or_type as change_max_degree_or_type,
    even_degree_mask as even_degree_mask,
    odd_degree_mask as odd_degree_mask,
)
from .linear import (
    LinearPath as LinearPath,
    bias_outputs as bias_outputs,
    e3x_dense as e3x_dense,
    fold_channels as fold_channels,
    linear_contract as linear_contract,
    linear_paths as linear_paths,
    normalization_exponent as normalization_exponent,
    per_channel_irreps as per_channel_irreps,
    regroup_columns as regroup_columns,
    unfold_channels as unfold_channels,
)
from .radial import (
    basic_bernstein as basic_bernstein,
    basic_chebyshev as basic_chebyshev,
    basic_fourier as basic_fourier,
    basic_gaussian as basic_gaussian,
    basis as basis,
    exponential_bernstein as exponential_bernstein,
    exponential_chebyshev as exponential_chebyshev,
    exponential_fourier as exponential_fourier,
    exponential_gaussian as exponential_gaussian,
    exponential_mapping as exponential_mapping,
    reciprocal_bernstein as reciprocal_bernstein,
    reciprocal_chebyshev as reciprocal_chebyshev,
    reciprocal_fourier as reciprocal_fourier,
    reciprocal_gaussian as reciprocal_gaussian,
    reciprocal_mapping as reciprocal_mapping,
    rectangular_window as rectangular_window,
    sinc as sinc,
    smooth_window as smooth_window,
    triangular_window as triangular_window,
)
from .segment import (
    dense_pairwise_indices as dense_pairwise_indices,
    dense_to_sparse_indices as dense_to_sparse_indices,
    indexed_max as indexed_max,
    indexed_min as indexed_min,
    indexed_softmax as indexed_softmax,
    indexed_sum as indexed_sum,
    normalize_and_return_norm as normalize_and_return_norm,
    sparse_pairwise_indices as sparse_pairwise_indices,
    sparse_to_dense_indices as sparse_to_dense_indices,
)
from .so3 import (
    clebsch_gordan as clebsch_gordan,
    reflect as reflect,
    rotate as rotate,
    spherical_harmonics as spherical_harmonics,
    wigner_d as wigner_d,
)
from .tensor_product import e3x_fused_tensor as e3x_fused_tensor, e3x_tensor as e3x_tensor
