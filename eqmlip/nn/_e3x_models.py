"""Equinox counterparts of `e3x.nn.Embed`, `e3x.nn.TensorDense` and `e3x.nn.ExponentialBasis`:
the pieces around `Dense`, `Tensor` and `MessagePass` that whole e3x models are built from."""

import functools
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Integer, PRNGKeyArray

from .._misc import resolve_dtype
from ..ops.activation import inverse_softplus
from ..ops.layouts import Precision
from ..ops.radial import basis
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

# e3x's (and Flax's) embedding initialiser: variance 1 / features, untruncated normal.
_default_embed_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def _check_positive_int(caller: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{caller}: {name} must be a positive int, got {value!r}.")


def _check_flag(caller: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{caller}: {name} must be a bool, got {value!r}.")


class Embed(eqx.Module):
    """Embedding of integers (e.g. atomic numbers) as scalar e3x features: Equinox counterpart
    of `e3x.nn.Embed`.

    $$y[\\ldots, 0, 0, :] = E[z_{\\ldots}, 0, 0, :]$$

    A lookup in a table `E` of shape `(num_embeddings, 1, 1, features)`, so that the output
    already has e3x's parity and degree axes (`P = 1`, `L = 0`). Given the same table, the
    output equals e3x's. Indices outside `[-num_embeddings, num_embeddings)` give NaN, as in
    e3x (`jnp.take`'s fill mode; negative indices count from the end).

    **Arguments:**

    - `num_embeddings`: the number of rows `n` (e3x: `num_embeddings`); inputs are
        `0..n-1`.
    - `features`: the feature count `F` (e3x: `features`).
    - `dtype`: parameter dtype (e3x: `param_dtype`; its `dtype` casts the table before the
        lookup, which `dtype` here already does); `None` is the default floating dtype.
    - `embedding_init`: `(key, (n, 1, 1, F), dtype) -> array`; default as e3x's
        (`variance_scaling(1.0, "fan_in", "normal", out_axis=0)`: normal with variance
        `1 / F`).
    - `key`: a `jax.random.PRNGKey`.
    """

    embedding: Float[Array, "n 1 1 f"]
    num_embeddings: int = eqx.field(static=True)
    features: int = eqx.field(static=True)

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Any = None,
        embedding_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        _check_positive_int("Embed", "num_embeddings", num_embeddings)
        _check_positive_int("Embed", "features", features)
        dtype = resolve_dtype(dtype)
        init = _default_embed_init if embedding_init is None else embedding_init
        shape = (num_embeddings, 1, 1, features)
        self.embedding = jnp.asarray(init(key, shape, dtype), dtype)
        self.num_embeddings = num_embeddings
        self.features = features

    def __check_init__(self):
        expected = (self.num_embeddings, 1, 1, self.features)
        if self.embedding.shape != expected:
            raise ValueError(
                f"Embed: embedding has shape {self.embedding.shape}, expected {expected}."
            )

    def __call__(
        self, inputs: Integer[Array, "*batch"]
    ) -> Float[Array, "*batch 1 1 {self.features}"]:
        """Look up the embeddings, as `Embed.apply(variables, inputs)` in e3x.

        **Arguments:**

        - `inputs`: integers of any shape (all axes are batch axes).

        **Returns:** `(*inputs.shape, 1, 1, features)` in the parameter dtype.
        """
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise TypeError(f"Embed: inputs must be integers, got dtype {inputs.dtype}.")
        return jnp.take(self.embedding, inputs, axis=0)


class TensorDense(eqx.Module):
    """Two linear projections of e3x features coupled by a tensor product: Equinox
    counterpart of `e3x.nn.TensorDense`.

    $$a, b = \\mathrm{split}\\big(\\mathrm{Dense}_{2F}(x)\\big), \\qquad
      y = \\mathrm{Tensor}(a, b)$$

    One [`eqmlip.nn.Dense`][] with `2F` output features (Flax name `dense`, bias on `0e` with
    `use_bias`), split into its first and last `F` features, then a [`eqmlip.nn.Tensor`][]
    (`tensor`) or, with `use_fused_tensor`, a [`eqmlip.nn.FusedTensor`][] (`fused_tensor`).
    Given the same weights, the output equals e3x's.

    Output shape (e3x's rules): `F = features`, by default `F_in`; `L_out = max_degree`, by
    default `L_in`, at most `2 L_in`; `P_out` by the rule of `Tensor` for two inputs of
    parity axis `P_in` (`2` with `include_pseudotensors`, except that `P_in = 1` with a
    degree 0 gives 1).

    Built eagerly: the input's parity-axis size, degree and feature count, which e3x reads
    from its first call, are constructor arguments. Differences from e3x are those of `Dense`
    and `Tensor` (computation in the input's dtype; e3x's `dtype` has no counterpart).

    **Arguments:**

    - `in_num_parity`, `in_max_degree`, `in_features`: `P_in`, `L_in`, `F_in` of the input.
    - `features`: `F` (e3x: `features`; `None` keeps `F_in`).
    - `max_degree`: `L_out` (e3x: `max_degree`; `None` keeps `L_in`).
    - `use_bias`: bias of the `Dense` layer (e3x: `use_bias`, default `True`).
    - `include_pseudotensors`, `cartesian_order`: e3x's flags (default `True`).
    - `use_fused_tensor`: `FusedTensor` instead of `Tensor` (default `False`).
    - `dtype`: parameter dtype (e3x: `param_dtype`); `None` is the default floating dtype.
    - `precision`: passed to the contractions (e3x: `precision`).
    - `dense_kernel_init`, `dense_bias_init`: initialisers of the `Dense` layer (defaults
        LeCun normal and zeros, as e3x).
    - `tensor_kernel_init`: initialiser of the tensor product, in the protocol of
        [`eqmlip.nn.Tensor`][] or [`eqmlip.nn.FusedTensor`][] (e3x: `tensor_kernel_init`).
    - `key`: a `jax.random.PRNGKey`.
    """

    dense: Dense
    tensor: Tensor | FusedTensor
    in_num_parity: int = eqx.field(static=True)
    in_max_degree: int = eqx.field(static=True)
    in_features: int = eqx.field(static=True)
    features: int = eqx.field(static=True)
    num_parity: int = eqx.field(static=True)
    max_degree: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        in_num_parity: int,
        in_max_degree: int,
        in_features: int,
        features: int | None = None,
        max_degree: int | None = None,
        use_bias: bool = True,
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
        caller = "TensorDense"
        _check_input_description(caller, in_num_parity, in_max_degree, in_features)
        for name, value in (
            ("use_bias", use_bias),
            ("include_pseudotensors", include_pseudotensors),
            ("cartesian_order", cartesian_order),
            ("use_fused_tensor", use_fused_tensor),
        ):
            _check_flag(caller, name, value)
        out_features = in_features if features is None else features
        _check_positive_int(caller, "features", out_features)
        out_degree = in_max_degree if max_degree is None else max_degree
        if isinstance(out_degree, bool) or not isinstance(out_degree, int) or out_degree < 0:
            raise ValueError(
                f"{caller}: max_degree must be a non-negative int or None, got {max_degree!r}."
            )
        check_tensor_degrees(caller, in_max_degree, in_max_degree, out_degree)
        dtype = resolve_dtype(dtype)
        dkey, tkey = jr.split(key)
        self.dense = Dense(
            num_parity=in_num_parity,
            max_degree=in_max_degree,
            in_features=in_features,
            features=2 * out_features,
            use_bias=use_bias,
            dtype=dtype,
            precision=precision,
            kernel_init=dense_kernel_init,
            bias_init=dense_bias_init,
            key=dkey,
        )
        cls = FusedTensor if use_fused_tensor else Tensor
        self.tensor = cls(
            num_parity1=in_num_parity,
            max_degree1=in_max_degree,
            num_parity2=in_num_parity,
            max_degree2=in_max_degree,
            features=out_features,
            max_degree=out_degree,
            include_pseudotensors=include_pseudotensors,
            cartesian_order=cartesian_order,
            dtype=dtype,
            precision=precision,
            kernel_init=tensor_kernel_init,  # pyright: ignore[reportArgumentType]
            key=tkey,
        )
        self.in_num_parity = in_num_parity
        self.in_max_degree = in_max_degree
        self.in_features = in_features
        self.features = out_features
        self.num_parity = self.tensor.num_parity
        self.max_degree = self.tensor.max_degree

    def __check_init__(self):
        dense = (self.dense.num_parity, self.dense.max_degree, self.dense.in_features)
        tensor = (
            self.tensor.num_parity1,
            self.tensor.max_degree1,
            self.tensor.num_parity2,
            self.tensor.max_degree2,
        )
        p, lmax = self.in_num_parity, self.in_max_degree
        if (
            dense != (p, lmax, self.in_features)
            or self.dense.features != 2 * self.features
            or tensor != (p, lmax, p, lmax)
            or self.tensor.features != self.features
        ):
            raise ValueError(
                f"TensorDense: the dense and tensor layers do not fit inputs with P={p}, "
                f"L={lmax}, F={self.in_features} and {self.features} output features."
            )

    @property
    def use_fused_tensor(self) -> bool:
        return isinstance(self.tensor, FusedTensor)

    @property
    def cartesian_order(self) -> bool:
        return self.tensor.cartesian_order

    def __call__(
        self, inputs: Float[Array, "*batch p dim fin"]
    ) -> Float[Array, "*batch {self.num_parity} {(self.max_degree+1)**2} {self.features}"]:
        """Apply the layer, as `TensorDense.apply(variables, inputs)` in e3x.

        **Arguments:**

        - `inputs`: features `(..., P_in, (L_in+1)**2, F_in)`.

        **Returns:** `(..., P_out, (L_out+1)**2, F)` in the dtype of `inputs`.
        """
        _check_features(
            "TensorDense",
            "inputs",
            inputs,
            self.in_num_parity,
            self.in_max_degree,
            self.in_features,
        )
        projected = self.dense(inputs)
        a, b = projected[..., : self.features], projected[..., self.features :]
        return self.tensor(a, b)


class ExponentialBasis(eqx.Module):
    """Radial-angular basis with a learnable scale `gamma` for exponentially mapped radial
    functions: Equinox counterpart of `e3x.nn.ExponentialBasis`.

    $$B(\\vec r) = \\mathrm{basis}\\big(\\vec r;\\ g_n(r; \\gamma)\\big), \\qquad
      \\gamma = \\mathrm{softplus}(\\theta)$$

    with `eqmlip.ops.basis` and a radial function `g_n(r; gamma)` that takes `gamma` as a
    keyword (`exponential_bernstein`, `exponential_chebyshev`, `exponential_fourier`,
    `exponential_gaussian`). The parameter `theta` is unconstrained and the softplus keeps
    `gamma > 0`. Given the same `theta`, the output equals e3x's.

    **Arguments:**

    - `initial_gamma`: `gamma` at initialisation, `> 0` (e3x: `initial_gamma`); `theta`
        starts at `inverse_softplus(initial_gamma)`, so no key is needed.
    - `dtype`: parameter dtype (e3x: `param_dtype`); `None` is the default floating dtype.
    """

    gamma: Float[Array, ""]  # theta: e3x's parameter "gamma", before the softplus

    def __init__(self, initial_gamma: float = 1.0, *, dtype: Any = None):
        if (
            isinstance(initial_gamma, bool)
            or not isinstance(initial_gamma, int | float)
            or not 0 < initial_gamma < float("inf")
        ):
            raise ValueError(
                f"ExponentialBasis: initial_gamma must be a finite number > 0, got "
                f"{initial_gamma!r}."
            )
        dtype = resolve_dtype(dtype)
        self.gamma = inverse_softplus(jnp.asarray(initial_gamma, dtype))

    def __check_init__(self):
        if self.gamma.shape != ():
            raise ValueError(f"ExponentialBasis: gamma has shape {self.gamma.shape}, expected ().")

    def __call__(
        self,
        r: Float[Array, "*batch 3"],
        *,
        max_degree: int,
        num: int,
        radial_fn: Callable[..., Array],
        angular_fn: Callable[..., Array] | None = None,
        cutoff_fn: Callable[[Array], Array] | None = None,
        return_cutoff: bool = False,
        return_norm: bool = False,
        damping_fn: Callable[[Array], Array] | None = None,
        cartesian_order: bool = True,
    ) -> Float[Array, "*batch 1 {(max_degree+1)**2} {num}"] | tuple[Float[Array, "..."], ...]:
        """The basis of `r`, as `ExponentialBasis.apply(variables, r, ...)` in e3x.

        **Arguments:** those of `eqmlip.ops.basis`; `radial_fn` must take a `gamma` keyword.
        `r` must have the parameter dtype.

        **Returns:** what `eqmlip.ops.basis` returns for these arguments.
        """
        if not _takes_gamma(radial_fn):
            raise TypeError(
                f"ExponentialBasis: radial_fn must take a gamma keyword (the exponential_* "
                f"radial functions do), got {getattr(radial_fn, '__name__', radial_fn)!r}."
            )
        if r.dtype != self.gamma.dtype:
            raise TypeError(
                f"ExponentialBasis: r has dtype {r.dtype}, expected the parameter dtype "
                f"{self.gamma.dtype}."
            )
        return basis(
            r,
            max_degree=max_degree,
            num=num,
            radial_fn=functools.partial(radial_fn, gamma=jax.nn.softplus(self.gamma)),
            angular_fn=angular_fn,
            cutoff_fn=cutoff_fn,
            return_cutoff=return_cutoff,
            return_norm=return_norm,
            damping_fn=damping_fn,
            cartesian_order=cartesian_order,
        )


def _takes_gamma(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return True
    return any(p.name == "gamma" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
