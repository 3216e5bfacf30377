"""Equinox counterparts of `e3x.nn.MultiHeadAttention` and `SelfAttention` (e3x feature
layout)."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, Integer, PRNGKeyArray

from .._misc import resolve_dtype
from ..ops.attention import attention_scale, head_broadcast, head_split
from ..ops.layouts import Precision, change_max_degree_or_type
from ..ops.segment import gather_dst, gather_src, indexed_softmax, indexed_sum
from ._e3x import (
    Dense,
    FusedInitializer,
    FusedTensor,
    Initializer,
    Tensor,
    _check_features,
    _check_input_description,
    _lecun_normal,
    _zeros,
)
from ._message_pass import _check_basis, _check_flag, _make_filter_and_tensor, _resolve_indices


class MultiHeadAttention(eqx.Module):
    """Equivariant multi-head attention on e3x features: Equinox counterpart of
    `e3x.nn.MultiHeadAttention`.

    With queries `q = Dense_query(x_q)`, keys `k = Dense_key(x_kv)` (both restricted to the
    common `P` and `L` of the two inputs), values `v = Dense_value(x_kv)`, and `H` heads:

    $$s_{ij,h} = \\sum_{c,l,m,f:\\ f \\bmod H = h} \\frac{q_{i,clmf}\\, k_{j,clmf}\\,
        r_{ij,clf}}{\\sqrt{P (L+1)^2 F_{qkv}/H}}, \\qquad
      a_{ij,h} = \\frac{c_{ij}\\, e^{s_{ij,h}}}{\\sum_{j'} c_{ij'}\\, e^{s_{ij',h}}}$$

    $$y_i = \\mathrm{Dense}_{\\mathrm{out}}\\Big(\\sum_j \\mathrm{Tensor}\\big(
        \\mathrm{Dense}_{\\mathrm{filter}}(b_{ij}),\\, a_{ij,\\lfloor f H / F_{qkv}
        \\rfloor}\\, v_{j}\\big)\\Big)$$

    where `r = Dense(b[..., 0, 0, :])` is the relative positional encoding of queries and
    keys (1 without it), `c` the optional `cutoff_value` and the `Tensor` term is the
    relative positional encoding of the values (identity without it). As in e3x, queries and
    keys group features into heads by `f % H` but the attention weights are spread onto the
    values by `f // (F_qkv / H)`: the two groupings differ, and both are reproduced exactly.

    Deliberate difference from e3x: a node whose every edge has `cutoff_value` 0 gets zero
    attention (its output is the output layer's bias) instead of e3x's NaN; padding never
    gives NaN, in values or gradients. Also as for [`eqmlip.nn.MessagePass`][]: float32
    inputs keep float32 outputs under `jax_enable_x64`, all inputs share one dtype.

    Built eagerly: the descriptions of the query inputs, the key/value inputs and the basis
    are constructor arguments. Given the same weights, the output equals e3x's.

    **Arguments:**

    - `q_num_parity`, `q_max_degree`, `q_features`: `P`, `L`, `F` of `inputs_q`.
    - `kv_num_parity`, `kv_max_degree`, `kv_features`: `P`, `L`, `F` of `inputs_kv`.
    - `basis_max_degree`, `num_basis`: the basis `(..., 1, (L_basis+1)**2, K)`; required
        when a relative positional encoding is used.
    - `max_degree`: `L` of the values after the relative positional encoding (e3x:
        `max_degree`; default `max(L_basis, L_kv)`); unused without it.
    - `use_basis_bias`, `include_pseudotensors`, `cartesian_order`, `use_fused_tensor`,
        `dtype`, `precision`, `dense_kernel_init`, `dense_bias_init`, `tensor_kernel_init`:
        as for [`eqmlip.nn.MessagePass`][] (they configure the value encoding `filter` and
        `tensor`; `dense_*` also initialise `relative_positional_encoding`).
    - `num_heads`: `H` (default 1); `qkv_features` must be divisible by it.
    - `qkv_features`: features of queries, keys and values (default: `F` of the queries).
    - `out_features`: features of the output (default: `F` of the queries).
    - `use_relative_positional_encoding_qk`, `use_relative_positional_encoding_v`: e3x's
        flags (default `True`); either needs a basis.
    - `{query,key,value,output}_kernel_init`, `{...}_bias_init`, `{...}_use_bias`: the
        four `Dense` layers' initialisers and biases (e3x's arguments; biases default to
        `False`, `False`, `False`, `True`).
    - `key`: a `jax.random.PRNGKey`.
    """

    query: Dense
    key: Dense
    value: Dense
    relative_positional_encoding_kernel: Float[Array, "k r"] | None
    relative_positional_encoding_bias: Float[Array, " r"] | None
    filter: Dense | None
    tensor: Tensor | FusedTensor | None
    out: Dense
    num_heads: int = eqx.field(static=True)
    qkv_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    q_num_parity: int = eqx.field(static=True)
    q_max_degree: int = eqx.field(static=True)
    q_features: int = eqx.field(static=True)
    kv_num_parity: int = eqx.field(static=True)
    kv_max_degree: int = eqx.field(static=True)
    kv_features: int = eqx.field(static=True)
    basis_max_degree: int | None = eqx.field(static=True)
    num_basis: int | None = eqx.field(static=True)
    num_parity: int = eqx.field(static=True)
    max_degree: int = eqx.field(static=True)
    precision: Precision = eqx.field(static=True)

    def __init__(
        self,
        *,
        q_num_parity: int,
        q_max_degree: int,
        q_features: int,
        kv_num_parity: int,
        kv_max_degree: int,
        kv_features: int,
        basis_max_degree: int | None = None,
        num_basis: int | None = None,
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
        num_heads: int = 1,
        qkv_features: int | None = None,
        out_features: int | None = None,
        use_relative_positional_encoding_qk: bool = True,
        use_relative_positional_encoding_v: bool = True,
        query_kernel_init: Initializer | None = None,
        query_bias_init: Initializer | None = None,
        query_use_bias: bool = False,
        key_kernel_init: Initializer | None = None,
        key_bias_init: Initializer | None = None,
        key_use_bias: bool = False,
        value_kernel_init: Initializer | None = None,
        value_bias_init: Initializer | None = None,
        value_use_bias: bool = False,
        output_kernel_init: Initializer | None = None,
        output_bias_init: Initializer | None = None,
        output_use_bias: bool = True,
        key: PRNGKeyArray,
    ):
        caller = type(self).__name__  # "SelfAttention" when built through it
        q = (q_num_parity, q_max_degree, q_features)
        kv = (kv_num_parity, kv_max_degree, kv_features)
        inits = {
            "query": (query_kernel_init, query_bias_init, query_use_bias),
            "key": (key_kernel_init, key_bias_init, key_use_bias),
            "value": (value_kernel_init, value_bias_init, value_use_bias),
            "out": (output_kernel_init, output_bias_init, output_use_bias),
        }
        _check_input_description(caller, *q)
        _check_input_description(caller, *kv)
        for name, value in (
            ("use_basis_bias", use_basis_bias),
            ("include_pseudotensors", include_pseudotensors),
            ("cartesian_order", cartesian_order),
            ("use_fused_tensor", use_fused_tensor),
            ("use_relative_positional_encoding_qk", use_relative_positional_encoding_qk),
            ("use_relative_positional_encoding_v", use_relative_positional_encoding_v),
            *((f"{part}_use_bias", use) for part, (_, _, use) in inits.items()),
        ):
            _check_flag(caller, name, value)
        qkv = q[2] if qkv_features is None else qkv_features
        out = q[2] if out_features is None else out_features
        for name, value in (("num_heads", num_heads), ("qkv_features", qkv), ("out_features", out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{caller}: {name} must be a positive int, got {value!r}.")
        if qkv % num_heads:
            raise ValueError(
                f"{caller}: qkv_features ({qkv}) must be divisible by num_heads ({num_heads})."
            )
        dtype = resolve_dtype(dtype)
        p_qk = 2 if q[0] == kv[0] == 2 else 1
        l_qk = min(q[1], kv[1])
        names = ("query", "key", "value", "rel", "conv", "out")
        keys: dict[str, PRNGKeyArray] = dict(zip(names, jr.split(key, len(names)), strict=True))

        def dense(part: str, description: tuple[int, int], fin: int, fout: int) -> Dense:
            kernel_init, bias_init, use_bias = inits[part]
            return Dense(
                num_parity=description[0],
                max_degree=description[1],
                in_features=fin,
                features=fout,
                use_bias=use_bias,
                dtype=dtype,
                precision=precision,
                kernel_init=kernel_init,
                bias_init=bias_init,
                key=keys[part],
            )

        self.query = dense("query", (p_qk, l_qk), q[2], qkv)
        self.key = dense("key", (p_qk, l_qk), kv[2], qkv)
        self.value = dense("value", (kv[0], kv[1]), kv[2], qkv)
        if use_relative_positional_encoding_qk:
            if num_basis is None or basis_max_degree is None:
                raise ValueError(
                    f"{caller}: relative positional encodings need the basis description; "
                    f"got basis_max_degree={basis_max_degree!r}, num_basis={num_basis!r}."
                )
            _check_input_description(caller, 1, basis_max_degree, num_basis)
            width = p_qk * (l_qk + 1) * qkv
            kernel_init = _lecun_normal if dense_kernel_init is None else dense_kernel_init
            bias_init = _zeros if dense_bias_init is None else dense_bias_init
            kkey, bkey = jr.split(keys["rel"])
            self.relative_positional_encoding_kernel = jnp.asarray(
                kernel_init(kkey, (num_basis, width), dtype), dtype
            )
            self.relative_positional_encoding_bias = (
                jnp.asarray(bias_init(bkey, (width,), dtype), dtype) if use_basis_bias else None
            )
        else:
            self.relative_positional_encoding_kernel = None
            self.relative_positional_encoding_bias = None
        if use_relative_positional_encoding_v:
            self.filter, self.tensor = _make_filter_and_tensor(
                caller,
                basis_max_degree=basis_max_degree,
                num_basis=num_basis,
                num_parity=kv[0],
                max_degree=kv[1],
                features=qkv,
                out_max_degree=max_degree,
                use_basis_bias=use_basis_bias,
                include_pseudotensors=include_pseudotensors,
                cartesian_order=cartesian_order,
                use_fused_tensor=use_fused_tensor,
                dtype=dtype,
                precision=precision,
                dense_kernel_init=dense_kernel_init,
                dense_bias_init=dense_bias_init,
                tensor_kernel_init=tensor_kernel_init,
                key=keys["conv"],
            )
            att = (self.tensor.num_parity, self.tensor.max_degree)
        else:
            self.filter = self.tensor = None
            att = (kv[0], kv[1])
        self.out = dense("out", att, qkv, out)
        self.num_heads = num_heads
        self.qkv_features = qkv
        self.out_features = out
        self.q_num_parity, self.q_max_degree, self.q_features = q
        self.kv_num_parity, self.kv_max_degree, self.kv_features = kv
        needs_basis = use_relative_positional_encoding_qk or use_relative_positional_encoding_v
        self.basis_max_degree = basis_max_degree if needs_basis else None
        self.num_basis = num_basis if needs_basis else None
        self.num_parity, self.max_degree = att
        self.precision = precision

    def __check_init__(self):
        rel = self.relative_positional_encoding_kernel
        if rel is not None:
            width = self.query.num_parity * (self.query.max_degree + 1) * self.qkv_features
            if rel.shape != (self.num_basis, width):
                raise ValueError(
                    f"{type(self).__name__}: relative_positional_encoding_kernel has shape "
                    f"{rel.shape}, expected {(self.num_basis, width)}."
                )

    @property
    def use_relative_positional_encoding_qk(self) -> bool:
        return self.relative_positional_encoding_kernel is not None

    @property
    def use_relative_positional_encoding_v(self) -> bool:
        return self.tensor is not None

    def __call__(
        self,
        inputs_q: Float[Array, "*batch nq p1 d1 f1"],
        inputs_kv: Float[Array, "*batch nkv p2 d2 f2"],
        basis: Float[Array, "..."] | None = None,
        cutoff_value: Float[Array, "..."] | None = None,
        *,
        adj_idx: Integer[Array, "*batch nq nbrs"] | None = None,
        where: Bool[Array, "*batch nq nbrs"] | None = None,
        dst_idx: Integer[Array, "*batch edges"] | None = None,
        src_idx: Integer[Array, "*batch edges"] | None = None,
        num_segments: int | None = None,
        indices_are_sorted: bool = False,
    ) -> Float[Array, "..."]:
        """Attend from `inputs_q` to `inputs_kv`, as `MultiHeadAttention.apply(variables, ...)`
        in e3x.

        **Arguments:**

        - `inputs_q`: `(..., N, P_q, (L_q+1)**2, F_q)`; each edge's destination.
        - `inputs_kv`: `(..., M, P_kv, (L_kv+1)**2, F_kv)`; each edge's source.
        - `basis`: per edge `(..., E, 1, (L_basis+1)**2, K)` or `(..., N, M', 1, ..., K)`.
        - `cutoff_value`: optional multiplicative weights per edge, shape `(..., E)` or
            `(..., N, M')`, applied to the exponentials before normalising.
        - `adj_idx`, `where`, `dst_idx`, `src_idx`, `num_segments`, `indices_are_sorted`:
            as for [`eqmlip.nn.MessagePass`][]; dense `where` defaults to `adj_idx < M` and
            `num_segments` to `N`.

        **Returns:** `(..., N, P_out, (L_out+1)**2, out_features)` in the input dtype.
        """
        caller = type(self).__name__
        _check_features(
            caller, "inputs_q", inputs_q, self.q_num_parity, self.q_max_degree, self.q_features
        )
        _check_features(
            caller,
            "inputs_kv",
            inputs_kv,
            self.kv_num_parity,
            self.kv_max_degree,
            self.kv_features,
        )
        if inputs_q.ndim < 4 or inputs_q.shape[:-4] != inputs_kv.shape[:-4]:
            raise ValueError(
                f"{caller}: inputs_q and inputs_kv need a node axis and equal batch axes, "
                f"got shapes {inputs_q.shape} and {inputs_kv.shape}."
            )
        if inputs_q.dtype != inputs_kv.dtype:
            raise TypeError(
                f"{caller}: inputs_q and inputs_kv must have the same dtype, got "
                f"{inputs_q.dtype} and {inputs_kv.dtype}."
            )
        if (
            self.use_relative_positional_encoding_qk or self.use_relative_positional_encoding_v
        ) and basis is None:
            raise TypeError(
                f"{caller}: relative positional encodings are on, so basis is required; got "
                "basis=None."
            )
        dtype = inputs_q.dtype
        num_kv = inputs_kv.shape[-4]
        heads = self.num_heads
        index_shape, indices = _resolve_indices(
            caller,
            inputs_q,
            num_kv,
            adj_idx=adj_idx,
            where=where,
            dst_idx=dst_idx,
            src_idx=src_idx,
            num_segments=num_segments,
            indices_are_sorted=indices_are_sorted,
        )
        if cutoff_value is not None:
            if tuple(cutoff_value.shape) != index_shape:
                raise ValueError(
                    f"{caller}: cutoff_value must have the shape of the index list "
                    f"{index_shape}, got {cutoff_value.shape}."
                )
            cutoff_value = cutoff_value.astype(dtype)
        if self.basis_max_degree is not None and self.num_basis is not None:
            _check_basis(caller, basis, index_shape, dtype, self.basis_max_degree, self.num_basis)

        # Queries and keys share P and L, so that their dot product is defined.
        p_qk, l_qk = self.query.num_parity, self.query.max_degree
        query = self.query(change_max_degree_or_type(inputs_q, l_qk, p_qk == 2))
        key = self.key(change_max_degree_or_type(inputs_kv, l_qk, p_qk == 2))
        value = self.value(inputs_kv)
        query, key = head_split(query, heads), head_split(key, heads)
        scale = attention_scale(p_qk, l_qk, self.qkv_features // heads)
        query = query / jnp.asarray(scale, dtype)
        query = gather_dst(query, adj_idx=adj_idx, dst_idx=dst_idx)
        key = gather_src(key, adj_idx=adj_idx, src_idx=src_idx)
        if self.relative_positional_encoding_kernel is not None:
            assert basis is not None
            radial = basis[..., 0, 0, :]  # the p=0, l=0 part: radial functions times Y_00
            kernel = self.relative_positional_encoding_kernel.astype(dtype)
            encoding = jax.lax.dot_general(
                radial, kernel, (((radial.ndim - 1,), (0,)), ((), ())), precision=self.precision
            )
            if self.relative_positional_encoding_bias is not None:
                encoding = encoding + self.relative_positional_encoding_bias.astype(dtype)
            encoding = jnp.reshape(encoding, (*encoding.shape[:-1], p_qk, l_qk + 1, -1))
            repeats = 2 * np.arange(l_qk + 1) + 1
            encoding = jnp.repeat(encoding, repeats, axis=-2, total_repeat_length=(l_qk + 1) ** 2)
            dot = jnp.einsum(
                "...plfh,...plfh,...plfh->...h",
                query,
                key,
                head_split(encoding, heads),
                precision=self.precision,
                optimize="optimal",
            )
        else:
            dot = jnp.einsum("...plfh,...plfh->...h", query, key, precision=self.precision)
        weight = indexed_softmax(dot, cutoff_value, num_nodes=num_kv, **indices)
        weight = head_broadcast(weight, self.qkv_features)[..., None, None, :]
        values = weight * gather_src(value, adj_idx=adj_idx, src_idx=src_idx)
        if self.tensor is not None:
            assert self.filter is not None and basis is not None
            values = self.tensor(self.filter(basis), values)
        attention = indexed_sum(values, **indices)
        return self.out(attention)


class SelfAttention(MultiHeadAttention):
    """Equivariant self-attention on e3x features: Equinox counterpart of
    `e3x.nn.SelfAttention`, which is [`eqmlip.nn.MultiHeadAttention`][] applied with
    `x_q = x_kv` (a subclass, as in e3x: it is built by `MultiHeadAttention`'s constructor from
    one description of the inputs, and its call passes one input as queries, keys and values).

    The computation, the head grouping and the deliberate differences from e3x (finite output
    where every cutoff is 0, float32 kept under x64) are those of
    [`eqmlip.nn.MultiHeadAttention`][], with one input for queries, keys and values.

    Built eagerly: the descriptions of the inputs and of the basis are constructor arguments.
    Given the same weights, the output equals e3x's. Parameters have e3x's names (`query`,
    `key`, `value`, `relative_positional_encoding`, `filter`, `tensor`/`fused_tensor`,
    `out`).

    **Arguments:**

    - `in_num_parity`, `in_max_degree`, `in_features`: `P`, `L`, `F` of `inputs`.
    - every other argument: as for [`eqmlip.nn.MultiHeadAttention`][] (same names and
        defaults).
    - `key`: a `jax.random.PRNGKey`.
    """

    def __init__(
        self,
        *,
        in_num_parity: int,
        in_max_degree: int,
        in_features: int,
        key: PRNGKeyArray,
        **kwargs: Any,
    ):
        super().__init__(
            q_num_parity=in_num_parity,
            q_max_degree=in_max_degree,
            q_features=in_features,
            kv_num_parity=in_num_parity,
            kv_max_degree=in_max_degree,
            kv_features=in_features,
            key=key,
            **kwargs,
        )

    def __call__(
        self,
        inputs: Float[Array, "*batch nodes p dim f"],
        basis: Float[Array, "..."] | None = None,
        cutoff_value: Float[Array, "..."] | None = None,
        **indices: Any,
    ) -> Float[Array, "..."]:
        """Attend from `inputs` to themselves, as `SelfAttention.apply(variables, ...)` in e3x.

        **Arguments:**

        - `inputs`: `(..., N, P, (L+1)**2, F)`.
        - `basis`, `cutoff_value`, and the keyword-only `adj_idx`, `where`, `dst_idx`,
            `src_idx`, `num_segments`, `indices_are_sorted`: as for
            [`eqmlip.nn.MultiHeadAttention`][].

        **Returns:** `(..., N, P_out, (L_out+1)**2, out_features)` in the input dtype.
        """
        return super().__call__(inputs, inputs, basis, cutoff_value, **indices)
