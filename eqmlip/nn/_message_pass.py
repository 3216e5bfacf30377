"""Equinox counterpart of `e3x.nn.MessagePass` (e3x feature layout)."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, Integer, PRNGKeyArray

from .._misc import resolve_dtype
from ..ops.layouts import Precision
from ..ops.segment import check_indices, gather_src, indexed_sum
from ..ops.tensor_product import check_tensor_degrees
from ._e3x import (
    Dense,
    FusedInitializer,
    FusedTensor,
    Initializer,
    Tensor,
    _check_features,
    _check_input_description,
)


def _check_flag(caller: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{caller}: {name} must be a bool, got {value!r}.")


def _make_filter_and_tensor(
    caller: str,
    *,
    basis_max_degree: int | None,
    num_basis: int | None,
    num_parity: int,
    max_degree: int,
    features: int,
    out_max_degree: int | None,
    use_basis_bias: bool,
    include_pseudotensors: bool,
    cartesian_order: bool,
    use_fused_tensor: bool,
    dtype: Any,
    precision: Precision,
    dense_kernel_init: Initializer | None,
    dense_bias_init: Initializer | None,
    tensor_kernel_init: Initializer | FusedInitializer | None,
    key: PRNGKeyArray,
) -> tuple[Dense, Tensor | FusedTensor]:
    """e3x's `_Conv` layers: `filter = Dense(basis)` and `tensor(filter, x)`, filter first."""
    if basis_max_degree is None or num_basis is None:
        raise ValueError(
            f"{caller}: basis_max_degree and num_basis describe the basis (..., 1, "
            f"(Lb+1)**2, K) and are required here, got basis_max_degree={basis_max_degree!r} "
            f"and num_basis={num_basis!r}."
        )
    _check_input_description(caller, 1, basis_max_degree, num_basis)
    if out_max_degree is not None:
        if isinstance(out_max_degree, bool) or not isinstance(out_max_degree, int):
            raise ValueError(
                f"{caller}: max_degree must be a non-negative int or None, got {out_max_degree!r}."
            )
        check_tensor_degrees(caller, basis_max_degree, max_degree, out_max_degree)
    fkey, tkey = jr.split(key)
    filter_ = Dense(
        num_parity=1,
        max_degree=basis_max_degree,
        in_features=num_basis,
        features=features,
        use_bias=use_basis_bias,
        dtype=dtype,
        precision=precision,
        kernel_init=dense_kernel_init,
        bias_init=dense_bias_init,
        key=fkey,
    )
    cls = FusedTensor if use_fused_tensor else Tensor
    tensor = cls(
        num_parity1=1,
        max_degree1=basis_max_degree,
        num_parity2=num_parity,
        max_degree2=max_degree,
        features=features,
        max_degree=out_max_degree,
        include_pseudotensors=include_pseudotensors,
        cartesian_order=cartesian_order,
        dtype=dtype,
        precision=precision,
        kernel_init=tensor_kernel_init,  # pyright: ignore[reportArgumentType]
        key=tkey,
    )
    return filter_, tensor


def _check_basis(
    caller: str,
    basis: Any,
    edge_shape: tuple[int, ...],
    dtype: Any,
    max_degree: int,
    num_basis: int,
) -> None:
    """The basis must be `(*edge_shape, 1, (Lb+1)**2, K)` in the dtype of the features."""
    if basis is None:
        raise TypeError(f"{caller}: basis is required, got None.")
    _check_features(caller, "basis", basis, 1, max_degree, num_basis)
    if tuple(basis.shape[:-3]) != tuple(edge_shape):
        raise ValueError(
            f"{caller}: basis must have one entry per edge, shape "
            f"{(*edge_shape, 1, (max_degree + 1) ** 2, num_basis)}, got {basis.shape}."
        )
    if basis.dtype != dtype:
        raise TypeError(
            f"{caller}: basis and inputs must have the same dtype, got {basis.dtype} and {dtype}."
        )


def _edge_shape(
    caller: str, form: str, inputs: Array, adj_idx: Array | None, dst_idx: Array | None
) -> tuple[int, ...]:
    """The index shape `(..., E)` or `(..., N, M)`, after checking its batch axes against the
    node features `(..., N, P, (L+1)**2, F)`."""
    idx = adj_idx if form == "dense" else dst_idx
    assert idx is not None
    batch = tuple(idx.shape[: idx.ndim - (2 if form == "dense" else 1)])
    if batch != tuple(inputs.shape[:-4]):
        raise ValueError(
            f"{caller}: the index list of shape {idx.shape} and the inputs of shape "
            f"{inputs.shape} must have the same batch axes, got {batch} and "
            f"{tuple(inputs.shape[:-4])}."
        )
    return tuple(idx.shape)


def _check_num_segments(caller: str, num_segments: Any) -> None:
    if isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 0:
        raise ValueError(
            f"{caller}: num_segments must be a non-negative int, got {num_segments!r}."
        )


def _resolve_indices(
    caller: str,
    inputs: Array,
    num_sources: int,
    *,
    adj_idx: Array | None,
    where: Array | None,
    dst_idx: Array | None,
    src_idx: Array | None,
    num_segments: int | None,
    indices_are_sorted: bool,
) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Check the indices against the destination features `inputs` `(..., N, P, D, F)` and
    fill in e3x's defaults (dense `where = adj_idx < num_sources`, sparse `num_segments = N`).

    **Returns:** the index shape `(..., E)` or `(..., N, M)`, and the index arguments of
    `indexed_sum` and `indexed_softmax`.
    """
    form = check_indices(caller, adj_idx=adj_idx, dst_idx=dst_idx, src_idx=src_idx, where=where)
    index_shape = _edge_shape(caller, form, inputs, adj_idx, dst_idx)
    if form == "dense":
        assert adj_idx is not None
        where = adj_idx < num_sources if where is None else where
    else:
        num_segments = inputs.shape[-4] if num_segments is None else num_segments
        _check_num_segments(caller, num_segments)
    indices = dict(
        adj_idx=adj_idx,
        where=where,
        dst_idx=dst_idx,
        num_segments=num_segments,
        indices_are_sorted=indices_are_sorted,
    )
    return index_shape, indices


class MessagePass(eqx.Module):
    """Equivariant message passing on e3x features: Equinox counterpart of
    `e3x.nn.MessagePass`.

    $$f_{ij} = \\mathrm{Dense}(b_{ij}), \\qquad
      m_i = \\sum_{j \\in \\mathcal{N}(i)} w_{ij}\\, \\mathrm{Tensor}(f_{ij},\\, x_j)$$

    The filter `f` is a [`eqmlip.nn.Dense`][] of the basis `b` (with `F` features, Flax name
    `filter`); the product is a [`eqmlip.nn.Tensor`][] (`tensor`) or, with
    `use_fused_tensor`, a [`eqmlip.nn.FusedTensor`][] (`fused_tensor`), filter first.
    `w` are the optional edge `weights`. There is no self-interaction and no normalisation by
    the number of neighbours. Given the same weights, the output equals e3x's.

    Output shape (e3x's rules): `L_out = max_degree`, by default `max(L_basis, L_in)`, at most
    `L_basis + L_in`; `P_out` by the rule of `Tensor` (a `P=1, L=0` input gives `P_out = 1`
    whatever `include_pseudotensors` says); `F` is unchanged.

    Built eagerly: the description of the inputs (`in_num_parity`, `in_max_degree`,
    `features`) and of the basis (`basis_max_degree`, `num_basis`), which e3x reads from its
    first call, are constructor arguments.

    Differences from e3x: float32 inputs give float32 outputs under `jax_enable_x64` (e3x
    promotes them to float64); inputs, basis and weights share one dtype (weights are cast to
    it); e3x's `dtype` (computation dtype) has no counterpart.

    **Arguments:**

    - `in_num_parity`, `in_max_degree`, `features`: `P`, `L`, `F` of the node features.
    - `basis_max_degree`, `num_basis`: `L_basis` and `K` of the basis `(..., 1,
        (L_basis+1)**2, K)`, e.g. from [`eqmlip.ops.radial.basis`][].
    - `max_degree`: `L_out` (e3x: `max_degree`).
    - `use_basis_bias`: bias on the filter's `0e` block (e3x: `use_basis_bias`, default
        `False`).
    - `include_pseudotensors`, `cartesian_order`: e3x's flags (default `True`).
    - `use_fused_tensor`: `FusedTensor` instead of `Tensor` (default `False`).
    - `dtype`: parameter dtype (e3x: `param_dtype`); `None` is the default floating dtype.
    - `precision`: passed to the contractions (e3x: `precision`).
    - `dense_kernel_init`, `dense_bias_init`: initialisers of the filter (e3x's
        arguments; defaults LeCun normal and zeros).
    - `tensor_kernel_init`: initialiser of the tensor product, in the protocol of
        [`eqmlip.nn.Tensor`][] or [`eqmlip.nn.FusedTensor`][] (e3x: `tensor_kernel_init`).
    - `key`: a `jax.random.PRNGKey`.
    """

    filter: Dense
    tensor: Tensor | FusedTensor
    in_num_parity: int = eqx.field(static=True)
    in_max_degree: int = eqx.field(static=True)
    features: int = eqx.field(static=True)
    num_parity: int = eqx.field(static=True)
    max_degree: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        in_num_parity: int,
        in_max_degree: int,
        features: int,
        basis_max_degree: int,
        num_basis: int,
        max_degree: int | None = None,
        use_basis_bias: bool = False,
        include_pseudotensors: bool = True,
        cartesian_order: bool = True,
        use_fused_tensor: bool = False,
        dtype: Any = None,
        precision: Precision = None,
        dense_kernel_init: Initializer | None = None,
        dense_bias_init: Initializer | None = None,
        tensor_kernel_init: Initializer | FusedInitializer | None = None,
        key: PRNGKeyArray,
    ):
        _check_input_description("MessagePass", in_num_parity, in_max_degree, features)
        for name, value in (
            ("use_basis_bias", use_basis_bias),
            ("include_pseudotensors", include_pseudotensors),
            ("cartesian_order", cartesian_order),
            ("use_fused_tensor", use_fused_tensor),
        ):
            _check_flag("MessagePass", name, value)
        self.filter, self.tensor = _make_filter_and_tensor(
            "MessagePass",
            basis_max_degree=basis_max_degree,
            num_basis=num_basis,
            num_parity=in_num_parity,
            max_degree=in_max_degree,
            features=features,
            out_max_degree=max_degree,
            use_basis_bias=use_basis_bias,
            include_pseudotensors=include_pseudotensors,
            cartesian_order=cartesian_order,
            use_fused_tensor=use_fused_tensor,
            dtype=resolve_dtype(dtype),
            precision=precision,
            dense_kernel_init=dense_kernel_init,
            dense_bias_init=dense_bias_init,
            tensor_kernel_init=tensor_kernel_init,
            key=key,
        )
        self.in_num_parity = in_num_parity
        self.in_max_degree = in_max_degree
        self.features = features
        self.num_parity = self.tensor.num_parity
        self.max_degree = self.tensor.max_degree

    def __check_init__(self):
        expected = (1, self.in_num_parity, self.in_max_degree, self.features)
        got = (
            self.tensor.num_parity1,
            self.tensor.num_parity2,
            self.tensor.max_degree2,
            self.tensor.features,
        )
        if got != expected or self.filter.features != self.features:
            raise ValueError(
                f"MessagePass: the filter and tensor layers do not fit inputs with "
                f"P={self.in_num_parity}, L={self.in_max_degree}, F={self.features}."
            )

    @property
    def use_fused_tensor(self) -> bool:
        return isinstance(self.tensor, FusedTensor)

    def __call__(
        self,
        inputs: Float[Array, "*batch nodes p dim f"],
        basis: Float[Array, "..."],
        weights: Float[Array, "..."] | None = None,
        *,
        adj_idx: Integer[Array, "*batch nodes nbrs"] | None = None,
        where: Bool[Array, "*batch nodes nbrs"] | None = None,
        dst_idx: Integer[Array, "*batch edges"] | None = None,
        src_idx: Integer[Array, "*batch edges"] | None = None,
        num_segments: int | None = None,
        indices_are_sorted: bool = False,
    ) -> Float[Array, "..."]:
        """One message-passing step, as `MessagePass.apply(variables, ...)` in e3x.

        **Arguments:**

        - `inputs`: node features `(..., N, P, (L+1)**2, F)`.
        - `basis`: per edge, `(..., E, 1, (L_basis+1)**2, K)` (sparse) or
            `(..., N, M, 1, (L_basis+1)**2, K)` (dense), same dtype as `inputs`.
        - `weights`: optional edge weights that broadcast against the gathered features
            `(..., E, P, (L+1)**2, F)`, e.g. shape `(E, 1, 1, 1)`.
        - `adj_idx`, `where`: dense indices `(..., N, M)`; `where` defaults to
            `adj_idx < N` (padding is any index `>= N`).
        - `dst_idx`, `src_idx`: sparse indices `(..., E)`; padding edges have a destination
            outside `[0, num_segments)`.
        - `num_segments`: sparse only, the number of output nodes (default `N`).
        - `indices_are_sorted`: sparse only, whether `dst_idx` is sorted.

        **Returns:** `(..., N_out, P_out, (L_out+1)**2, F)` in the dtype of `inputs`.
        """
        caller = "MessagePass"
        _check_features(
            caller, "inputs", inputs, self.in_num_parity, self.in_max_degree, self.features
        )
        if inputs.ndim < 4:
            raise ValueError(
                f"{caller}: inputs need a node axis, shape (..., N, P, (L+1)**2, F), got "
                f"{inputs.shape}."
            )
        index_shape, indices = _resolve_indices(
            caller,
            inputs,
            inputs.shape[-4],
            adj_idx=adj_idx,
            where=where,
            dst_idx=dst_idx,
            src_idx=src_idx,
            num_segments=num_segments,
            indices_are_sorted=indices_are_sorted,
        )
        # Everything is checked before any computation.
        gathered_shape = (*index_shape, *inputs.shape[-3:])
        if weights is not None:
            if not jnp.issubdtype(weights.dtype, jnp.floating):
                raise TypeError(
                    f"{caller}: weights must be floating point, got dtype {weights.dtype}."
                )
            try:
                shape = np.broadcast_shapes(gathered_shape, weights.shape)
            except ValueError:
                shape = None
            if shape != gathered_shape:
                raise ValueError(
                    f"{caller}: weights of shape {weights.shape} do not broadcast to the "
                    f"gathered features of shape {gathered_shape} (e.g. use shape "
                    f"{(*gathered_shape[:-3], 1, 1, 1)})."
                )
        _check_basis(
            caller,
            basis,
            gathered_shape[:-3],
            inputs.dtype,
            self.filter.max_degree,
            self.filter.in_features,
        )
        gathered = gather_src(inputs, adj_idx=adj_idx, src_idx=src_idx)
        if weights is not None:
            gathered = gathered * weights.astype(gathered.dtype)
        return indexed_sum(self.tensor(self.filter(basis), gathered), **indices)
