"""Equinox counterparts of `e3x.nn.Dense`, `Tensor` and `FusedTensor` (e3x feature layout)."""

import abc
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._misc import resolve_dtype
from ..ops.layouts import Precision
from ..ops.linear import dense_parameter_names, e3x_dense
from ..ops.tensor_product import (
    FusedKernels,
    check_tensor_degrees,
    e3x_fused_tensor,
    e3x_tensor,
    fused_matrix_degree,
    tensor_kernel_mask,
    tensor_num_parity,
)

Initializer = Callable[[PRNGKeyArray, tuple[int, ...], Any], Array]

# e3x's truncated normal initialisers divide by the standard deviation of a standard normal
# truncated to (-2, 2), so that the drawn values have the requested variance.
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978
# e3x's `FusedTensorInitializerFn`: `(scale, mask=True) -> initializer`.
FusedInitializer = Callable[..., Initializer]


def _check_input_description(caller: str, num_parity: int, max_degree: int, features: int) -> None:
    if num_parity not in (1, 2):
        raise ValueError(f"{caller}: num_parity must be 1 or 2, got {num_parity!r}.")
    if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 0:
        raise ValueError(f"{caller}: max_degree must be a non-negative int, got {max_degree!r}.")
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"{caller}: the feature count must be a positive int, got {features!r}.")


def _check_features(
    caller: str, name: str, x: Array, num_parity: int, max_degree: int, features: int
) -> None:
    """`ValueError` naming the expected `(..., P, (L+1)**2, F)` and the received shape."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{caller}: {name} must be floating point, got dtype {x.dtype}.")
    expected = (num_parity, (max_degree + 1) ** 2, features)
    if x.ndim < 3 or tuple(x.shape[-3:]) != expected:
        raise ValueError(
            f"{caller}: expected {name} of shape (..., {expected[0]}, {expected[1]}, "
            f"{expected[2]}) (P={num_parity}, L={max_degree}, F={features}), got {x.shape}."
        )


def _lecun_normal(key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any) -> Array:
    return jax.nn.initializers.lecun_normal()(key, shape, dtype)


def _zeros(key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any) -> Array:
    del key
    return jnp.zeros(shape, dtype)


def _truncated_normal(
    key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any, variance: Any
) -> Array:
    """e3x's `_random_array(..., 'truncated_normal')`: values in `(-2, 2)` standard deviations,
    rescaled to `variance`."""
    stddev = jnp.sqrt(jnp.asarray(variance, dtype)) / jnp.asarray(TRUNCATED_NORMAL_STDDEV, dtype)
    return stddev * jr.truncated_normal(key, -2.0, 2.0, shape, dtype)


class Dense(eqx.Module):
    """Equivariant dense layer on e3x features: Equinox counterpart of `e3x.nn.Dense`.

    $$y[\\ldots, c, l, m, :] = x[\\ldots, c, l, m, :]\\, W_{c,l} + b\\,[c = 0,\\ l = 0]$$

    One `(F_in, F_out)` matrix per degree `l` and parity channel `c` (Flax names `"{l}+"` and
    `"{l}-"`), and a bias on the scalar `0e` block only. The output keeps the input's `P` and
    `L`. Given the same weights, the output equals e3x's (to rounding; small inputs take one
    block-diagonal product, see [`eqmlip.ops.linear.e3x_dense`][]).

    Built eagerly: the input's parity-axis size, degree and feature count, which e3x reads from
    its first input, are constructor arguments.

    **Arguments:**

    - `num_parity`: `P` of the input, 1 or 2.
    - `max_degree`: `L` of the input.
    - `in_features`: `F_in` of the input.
    - `features`: `F_out` (e3x: `features`).
    - `use_bias`: add a bias to the `0e` block (e3x: `use_bias`, default `True`).
    - `dtype`: parameter dtype (e3x: `param_dtype`); `None` is the default floating dtype.
        Calls compute in the input's dtype, which is also the output's (e3x: the result type
        of input, parameters and `dtype`).
    - `precision`: passed to `lax.dot_general` (e3x: `precision`).
    - `kernel_init`: `(key, (F_in, F_out), dtype) -> array`; default LeCun normal (truncated),
        as e3x (`jax.nn.initializers.lecun_normal()`).
    - `bias_init`: `(key, (F_out,), dtype) -> array`; default zeros.
    - `key`: a `jax.random.PRNGKey`.
    """

    kernels: tuple[Float[Array, "fin fout"], ...]
    bias: Float[Array, " fout"] | None
    num_parity: int = eqx.field(static=True)
    max_degree: int = eqx.field(static=True)
    in_features: int = eqx.field(static=True)
    features: int = eqx.field(static=True)
    precision: Precision = eqx.field(static=True)

    def __init__(
        self,
        *,
        num_parity: int,
        max_degree: int,
        in_features: int,
        features: int,
        use_bias: bool = True,
        dtype: Any = None,
        precision: Precision = None,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        _check_input_description("Dense", num_parity, max_degree, in_features)
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"Dense: features must be a positive int, got {features!r}.")
        dtype = resolve_dtype(dtype)
        kernel_init = _lecun_normal if kernel_init is None else kernel_init
        bias_init = _zeros if bias_init is None else bias_init
        count = num_parity * (max_degree + 1)
        kkey, bkey = jr.split(key)
        self.kernels = tuple(
            jnp.asarray(kernel_init(k, (in_features, features), dtype), dtype)
            for k in jr.split(kkey, count)
        )
        self.bias = jnp.asarray(bias_init(bkey, (features,), dtype), dtype) if use_bias else None
        self.num_parity = num_parity
        self.max_degree = max_degree
        self.in_features = in_features
        self.features = features
        self.precision = precision

    def __check_init__(self):
        names = dense_parameter_names(self.num_parity, self.max_degree)
        if len(self.kernels) != len(names):
            raise ValueError(f"Dense: expected {len(names)} kernels, got {len(self.kernels)}.")
        for name, kernel in zip(names, self.kernels, strict=True):
            if kernel.shape != (self.in_features, self.features):
                raise ValueError(
                    f"Dense: kernel {name} has shape {kernel.shape}, expected "
                    f"{(self.in_features, self.features)}."
                )
        if self.bias is not None and self.bias.shape != (self.features,):
            raise ValueError(
                f"Dense: bias has shape {self.bias.shape}, expected {(self.features,)}."
            )

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Flax names of `kernels`, in order (`"0+", "1+", ..., "0-", ...`)."""
        return dense_parameter_names(self.num_parity, self.max_degree)

    def __call__(
        self, x: Float[Array, "*batch p dim fin"]
    ) -> Float[Array, "*batch {self.num_parity} {(self.max_degree+1)**2} {self.features}"]:
        """Apply the layer, as `Dense.apply(variables, x)` in e3x.

        **Arguments:**

        - `x`: features of shape `(..., P, (L+1)**2, F_in)` with this layer's `P`, `L`, `F_in`.

        **Returns:** `(..., P, (L+1)**2, features)` in the dtype of `x`.
        """
        _check_features("Dense", "an input", x, self.num_parity, self.max_degree, self.in_features)
        kernels = [k.astype(x.dtype) for k in self.kernels]
        bias = None if self.bias is None else self.bias.astype(x.dtype)
        return e3x_dense(x, kernels, bias, precision=self.precision)


def _tensor_lecun_normal(key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any) -> Array:
    """e3x's `tensor_lecun_normal`: truncated normal with variance `1 / fan_in(c3, l3)`, where
    `fan_in` counts the allowed paths into that output; forbidden entries are zero."""
    p1, d1, p2, d2, p3, d3, _ = shape
    mask = tensor_kernel_mask(p1, d1 - 1, p2, d2 - 1, p3, d3 - 1)
    fan_in = mask.sum(axis=(0, 1, 2, 3))  # (P3, L3+1)
    variance = 1.0 / np.where(fan_in > 0, fan_in, 1)
    params = _truncated_normal(key, shape, dtype, variance[None, None, None, None, :, :, None])
    return jnp.where(mask[..., None], params, 0.0).astype(dtype)


class _ProductShape(NamedTuple):
    """`(P, L)` of both inputs and of the output of a (fused) tensor product, and `F`."""

    num_parity1: int
    max_degree1: int
    num_parity2: int
    max_degree2: int
    features: int
    num_parity: int
    max_degree: int


class AbstractTensorProduct(eqx.Module):
    """What [`eqmlip.nn.Tensor`][] and [`eqmlip.nn.FusedTensor`][] share: e3x's constructor
    arguments and output shape rules, the static description of their inputs and output, and
    the checks of their inputs. Each concrete class adds its kernels (`_initial_kernels`) and
    its contraction (`__call__`)."""

    num_parity1: int = eqx.field(static=True)
    max_degree1: int = eqx.field(static=True)
    num_parity2: int = eqx.field(static=True)
    max_degree2: int = eqx.field(static=True)
    features: int = eqx.field(static=True)
    num_parity: int = eqx.field(static=True)
    max_degree: int = eqx.field(static=True)
    cartesian_order: bool = eqx.field(static=True)
    precision: Precision = eqx.field(static=True)

    def __init__(
        self,
        *,
        num_parity1: int,
        max_degree1: int,
        num_parity2: int,
        max_degree2: int,
        features: int,
        max_degree: int | None = None,
        include_pseudotensors: bool = True,
        cartesian_order: bool = True,
        dtype: Any = None,
        precision: Precision = None,
        kernel_init: Initializer | FusedInitializer | None = None,
        key: PRNGKeyArray,
    ):
        caller = type(self).__name__
        _check_input_description(caller, num_parity1, max_degree1, features)
        _check_input_description(caller, num_parity2, max_degree2, features)
        max_degree3 = max(max_degree1, max_degree2) if max_degree is None else max_degree
        if isinstance(max_degree3, bool) or not isinstance(max_degree3, int) or max_degree3 < 0:
            raise ValueError(
                f"{caller}: max_degree must be a non-negative int, got {max_degree!r}."
            )
        check_tensor_degrees(caller, max_degree1, max_degree2, max_degree3)
        num_parity3 = tensor_num_parity(
            num_parity1, max_degree1, num_parity2, max_degree2, max_degree3, include_pseudotensors
        )
        shape = _ProductShape(
            num_parity1, max_degree1, num_parity2, max_degree2, features, num_parity3, max_degree3
        )
        for name, value in shape._asdict().items():
            setattr(self, name, value)
        self.cartesian_order = cartesian_order
        self.precision = precision
        kernels = type(self)._initial_kernels(shape, resolve_dtype(dtype), kernel_init, key)
        for name, kernel in kernels.items():
            setattr(self, name, kernel)

    @classmethod
    @abc.abstractmethod
    def _initial_kernels(
        cls, shape: _ProductShape, dtype: Any, kernel_init: Any, key: PRNGKeyArray
    ) -> dict[str, Array]:
        """The kernels by field name, drawn as e3x draws them (`kernel_init=None`: e3x's
        default initialiser)."""

    @abc.abstractmethod
    def _contract(self, x1: Array, x2: Array) -> Array:
        """The product of checked inputs, by the concrete class's own kernels."""

    def __call__(
        self, x1: Float[Array, "*batch p1 d1 f1"], x2: Float[Array, "*batch p2 d2 f2"]
    ) -> Float[Array, "*batch {self.num_parity} {(self.max_degree+1)**2} {self.features}"]:
        """Apply the layer, as `Tensor.apply(variables, x1, x2)` (or `FusedTensor.apply`) in
        e3x.

        **Arguments:**

        - `x1`: `(..., P1, (L1+1)**2, F)`.
        - `x2`: `(..., P2, (L2+1)**2, F)`, same dtype and batch shape.

        **Returns:** `(..., P3, (L3+1)**2, F)` in the dtype of the inputs.
        """
        caller = type(self).__name__
        _check_features(caller, "inputs1", x1, self.num_parity1, self.max_degree1, self.features)
        _check_features(caller, "inputs2", x2, self.num_parity2, self.max_degree2, self.features)
        if x1.dtype != x2.dtype:
            raise TypeError(
                f"{caller}: both inputs must have the same dtype, got {x1.dtype} and {x2.dtype}."
            )
        return self._contract(x1, x2)


class Tensor(AbstractTensorProduct):
    """Tensor product of two e3x features: Equinox counterpart of `e3x.nn.Tensor`.

    $$z[\\ldots, c_3, (l_3 m_3), f] = \\sum w[c_1, l_1, c_2, l_2, c_3, l_3, f]
      \\sum_{m_1 m_2} C^{l_3 m_3}_{l_1 m_1, l_2 m_2}\\, x_1[\\ldots, c_1, (l_1 m_1), f]\\,
      x_2[\\ldots, c_2, (l_2 m_2), f]$$

    over the allowed paths (`|l1 - l2| <= l3 <= l1 + l2` and matching parity), with one weight
    per path and feature (see [`eqmlip.ops.tensor_product.e3x_tensor`][]). Given the same
    weights, the output equals e3x's.

    Output shape (e3x's rules): `L3 = max_degree`, by default `max(L1, L2)`, and at most
    `L1 + L2`; `P3 = 2` if `include_pseudotensors` else 1, except that two `P=1` inputs give
    `P3 = 1` whenever one of `L1, L2, L3` is 0.

    Differences from e3x: products of up to 320 non-zero Clebsch-Gordan terms (`L <= 2`
    against a `P=1` input, as in `MessagePass`) are written out term by term, larger ones fold
    the kernel, its mask and the Clebsch-Gordan coefficients into one constant before the
    contraction (see [`eqmlip.ops.tensor_product.e3x_tensor`][]; faster, same result up to
    rounding); the
    Clebsch-Gordan constants are built in the dtype of the inputs, so float32
    inputs give float32 outputs even under `jax_enable_x64` (e3x promotes them to float64);
    both inputs must have the same dtype (e3x promotes mixed dtypes) and the same batch shape;
    e3x's `dtype` (computation dtype) has no counterpart: computation follows the inputs.

    **Arguments:**

    - `num_parity1`, `max_degree1`: `P1`, `L1` of the first input.
    - `num_parity2`, `max_degree2`: `P2`, `L2` of the second input.
    - `features`: `F`, shared by both inputs and the output.
    - `max_degree`: `L3` (e3x: `max_degree`).
    - `include_pseudotensors`: e3x's flag (default `True`).
    - `cartesian_order`: order of the components (e3x: `cartesian_order`, default `True`).
    - `dtype`: parameter dtype (e3x: `param_dtype`); `None` is the default floating dtype.
    - `precision`: passed to the contractions.
    - `kernel_init`: `(key, shape, dtype) -> array` for the kernel; default as e3x's
        `tensor_lecun_normal()` (variance `1/fan_in` per output degree and parity, forbidden
        entries zero).
    - `key`: a `jax.random.PRNGKey`.

    The parameter `kernel` has e3x's shape `(P1, L1+1, P2, L2+1, P3, L3+1, F)`; entries of
    forbidden paths are never used.
    """

    kernel: Float[Array, "p1 l1 p2 l2 p3 l3 f"]

    __init__ = AbstractTensorProduct.__init__  # e3x's arguments (explicit for type checkers)

    @classmethod
    def _initial_kernels(
        cls, shape: _ProductShape, dtype: Any, kernel_init: Any, key: PRNGKeyArray
    ) -> dict[str, Array]:
        p1, l1, p2, l2, features, p3, l3 = shape
        init = _tensor_lecun_normal if kernel_init is None else kernel_init
        kernel_shape = (p1, l1 + 1, p2, l2 + 1, p3, l3 + 1, features)
        return {"kernel": jnp.asarray(init(key, kernel_shape, dtype), dtype)}

    def __check_init__(self):
        expected = (
            self.num_parity1,
            self.max_degree1 + 1,
            self.num_parity2,
            self.max_degree2 + 1,
            self.num_parity,
            self.max_degree + 1,
            self.features,
        )
        if self.kernel.shape != expected:
            raise ValueError(f"Tensor: kernel has shape {self.kernel.shape}, expected {expected}.")

    def _contract(self, x1: Array, x2: Array) -> Array:
        return e3x_tensor(
            x1,
            x2,
            self.kernel.astype(x1.dtype),
            cartesian_order=self.cartesian_order,
            precision=self.precision,
        )


def _fused_tensor_normal(scale: Any, mask: Any = True) -> Initializer:
    """e3x's `fused_tensor_normal(scale, mask)`: truncated normal of variance `scale`, zero where
    `mask` is false."""

    def init(key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any) -> Array:
        params = _truncated_normal(key, shape, dtype, scale)
        return jnp.where(mask, params, 0.0).astype(dtype)

    return init


_FUSED_NAMES = ("e1", "o1", "e2", "o2", "eee", "ooe", "eoo", "oeo")


class FusedTensor(AbstractTensorProduct):
    """Fused tensor product of two e3x features: Equinox counterpart of `e3x.nn.FusedTensor`.

    A cheaper tensor product with fewer parameters: both inputs are mapped to
    `(2k+1) x (2k+1)` matrices (`k = ceil(max(L1, L2, L3) / 2)`) with per-degree weights,
    multiplied, and mapped back with per-degree weights (see
    [`eqmlip.ops.tensor_product.e3x_fused_tensor`][]). Output shape rules are those of
    [`eqmlip.nn.Tensor`][]. Given the same weights, the output equals e3x's.

    Differences from e3x: structurally zero parts (the odd part of a `P=1, L=0` input) are
    skipped and the even/odd selection of `P=1` inputs is folded into the constants (same
    result up to rounding, except that e3x turns infinities in masked-out entries into NaN);
    float32 inputs
    give float32 outputs even under `jax_enable_x64` (e3x promotes to float64).

    **Arguments:**

    - `num_parity1`, `max_degree1`, `num_parity2`, `max_degree2`, `features`, `max_degree`,
        `include_pseudotensors`, `cartesian_order`, `dtype`, `precision`, `key`: as for
        [`eqmlip.nn.Tensor`][].
    - `kernel_init`: e3x's protocol `kernel_init(scale, mask) -> (key, shape, dtype) -> array`
        (so `e3x.nn.initializers.fused_tensor_uniform` can be passed as is), called with e3x's
        scales and masks for each of the eight kernels; default as e3x's
        `fused_tensor_normal` (truncated normal). `scale` is a Python float or an array of
        shape `(L3+1, 1)` in the parameter dtype; `mask` is `True` or a boolean NumPy array of
        shape `(L+1, 1)`.

    The parameters `kernel_e1, kernel_o1` (`(L1+1, F)`), `kernel_e2, kernel_o2` (`(L2+1, F)`),
    `kernel_eee, kernel_ooe, kernel_eoo, kernel_oeo` (`(L3+1, F)`) have e3x's names and shapes.
    """

    kernel_e1: Float[Array, "l1 f"]
    kernel_o1: Float[Array, "l1 f"]
    kernel_e2: Float[Array, "l2 f"]
    kernel_o2: Float[Array, "l2 f"]
    kernel_eee: Float[Array, "l3 f"]
    kernel_ooe: Float[Array, "l3 f"]
    kernel_eoo: Float[Array, "l3 f"]
    kernel_oeo: Float[Array, "l3 f"]

    __init__ = AbstractTensorProduct.__init__  # e3x's arguments (explicit for type checkers)

    @classmethod
    def _initial_kernels(
        cls, shape: _ProductShape, dtype: Any, kernel_init: Any, key: PRNGKeyArray
    ) -> dict[str, Array]:
        p1, l1, p2, l2, features, _, l3 = shape
        factory = _fused_tensor_normal if kernel_init is None else kernel_init

        # e3x's scales: inputs by the matrix size and the number of degrees, outputs by the
        # number of parity products that reach them.
        size = 2 * fused_matrix_degree(l1, l2, l3) + 1
        var_in = 1.0 / math.sqrt(size) * (size / min(l1 + 1, l2 + 1))
        if p1 == p2 == 2:
            var_out: Any = 0.5
        elif p1 == p2 == 1 and (l1 == 0 or l2 == 0):
            var_out = 1.0
        elif p1 == p2 == 1:
            var_out = jnp.asarray(np.where(np.arange(l3 + 1) == 0, 1.0, 2.0)[:, None], dtype)
        else:
            var_out = 1.0

        def parity_mask(num_parity: int, degree: int, parity: int) -> Any:
            if num_parity == 2:
                return True
            return (np.arange(degree + 1) % 2 == parity)[:, None]

        mask_o3: Any = (np.arange(l3 + 1) > 0)[:, None] if p1 == p2 == 1 else True
        specs = [
            (var_in, parity_mask(p1, l1, 0), l1),
            (var_in, parity_mask(p1, l1, 1), l1),
            (var_in, parity_mask(p2, l2, 0), l2),
            (var_in, parity_mask(p2, l2, 1), l2),
            (var_out, None, l3),
            (var_out, None, l3),
            (var_out, mask_o3, l3),
            (var_out, mask_o3, l3),
        ]
        keys = jr.split(key, len(specs))
        # Called as e3x calls it: `kernel_init(scale)` where e3x passes no mask.
        kernels = [
            jnp.asarray(
                (factory(scale) if mask is None else factory(scale, mask))(
                    k, (degree + 1, features), dtype
                ),
                dtype,
            )
            for k, (scale, mask, degree) in zip(keys, specs, strict=True)
        ]
        return {f"kernel_{name}": k for name, k in zip(_FUSED_NAMES, kernels, strict=True)}

    def __check_init__(self):
        degrees = {
            "e1": self.max_degree1,
            "o1": self.max_degree1,
            "e2": self.max_degree2,
            "o2": self.max_degree2,
        }
        for name in _FUSED_NAMES:
            kernel = getattr(self, f"kernel_{name}")
            expected = (degrees.get(name, self.max_degree) + 1, self.features)
            if kernel.shape != expected:
                raise ValueError(
                    f"FusedTensor: kernel_{name} has shape {kernel.shape}, expected {expected}."
                )

    def _contract(self, x1: Array, x2: Array) -> Array:
        kernels = FusedKernels(
            *(getattr(self, f"kernel_{name}").astype(x1.dtype) for name in _FUSED_NAMES)
        )
        return e3x_fused_tensor(
            x1,
            x2,
            kernels,
            include_pseudotensors=self.num_parity == 2,
            cartesian_order=self.cartesian_order,
            precision=self.precision,
        )
