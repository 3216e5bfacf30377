"""Activation functions: mlip's table by name, their parity, and their second-moment
normalisation as e3nn-jax computes it; and e3x's gated activations on features in e3x layout.

## Gated activations (e3x)

A nonlinearity applied to every component of equivariant features would break equivariance.
e3x writes each activation `act` as a *gated linear* map
$$\\mathrm{act}(\\mathbf{x}) = g\\big(x^{(0_+)}\\big) \\circ \\mathbf{x}, \\qquad
  g(s) = \\mathrm{act}(s) / s,$$
where the gate `g` is evaluated on the even scalar `x[..., 0, 0, f]` (parity channel 0,
degree 0) of each feature `f` and multiplies every component of that feature: all degrees,
both parity channels (the pseudoscalar `0o` included). The gate is rotation and reflection
invariant, so the result is equivariant; on scalars it equals `act` itself. These functions
are e3x's `e3x.nn.relu`, `silu`, ... (same names, same extra arguments) and are re-exported
from `eqmlip.nn`, where e3x users find them.
"""

import functools
import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jaxtyping import Array, Float

from .layouts import feature_shape

Scalar = float | Float[Array, ""]

# e3nn evaluates the second moment on this many normal quantiles.
_NUM_QUANTILES = 1_000_001


@functools.lru_cache(maxsize=64)
def activation_scale(act: Callable[[jax.Array], jax.Array], dtype: np.dtype) -> float | None:
    """The constant `c = sqrt(E[act(z)**2])`, `z ~ N(0, 1)`, such that `act(z) / c` has unit
    second moment; `None` when `c` is close to 1 (the activation is then used unchanged).

    Computed in `dtype` on the normal quantiles `sqrt(2) erfinv(linspace(-1, 1, n+2)[1:-1])`, so
    the value equals `e3nn_jax.normalize_function`'s bit for bit when `dtype` is the default
    floating dtype in effect (float32 and float64 differ by about 1e-6 relative).
    """
    with jax.ensure_compile_time_eval():
        grid = jnp.linspace(-1.0, 1.0, _NUM_QUANTILES + 2, dtype=dtype)
        z = jnp.sqrt(2) * jsp.erfinv(grid[1:-1])
        c = float(jnp.mean(act(z) ** 2) ** 0.5)
    if np.allclose(c, 1.0):
        return None
    return c


ActivationName = Literal["tanh", "silu", "relu", "elu", "swish", "sigmoid", "none"]


def _identity(x: jax.Array) -> jax.Array:
    return x


# mlip's `parse_activation` table (mlip.models.options.Activation).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jax.nn.tanh,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "swish": jax.nn.swish,
    "sigmoid": jax.nn.sigmoid,
    "none": _identity,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name` in mlip (`"swish"`, `"tanh"`, ...)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


@functools.lru_cache(maxsize=32)
def activation_parity(name: str) -> int:
    """`1` for an even activation, `-1` for an odd one, `0` for neither (e3nn's test)."""
    x = np.linspace(0.0, 10.0, 256)
    with jax.ensure_compile_time_eval():
        a1 = np.asarray(activation(name)(jnp.asarray(x)))
        a2 = np.asarray(activation(name)(jnp.asarray(-x)))
    if np.max(np.abs(a1 - a2)) < 1e-5:
        return 1
    if np.max(np.abs(a1 + a2)) < 1e-5:
        return -1
    return 0


# ------------------------------------------------------------------------------------------
# e3x's gated activations
# ------------------------------------------------------------------------------------------

Gate = Callable[[Array], Array]


def gated_linear(gate: Gate, x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """`gate(x[..., 0:1, 0:1, :]) * x`: the rule behind every e3x activation.

    **Arguments:**

    - `gate`: elementwise function of the even scalars, `(..., 1, 1, F) -> (..., 1, 1, F)`.
    - `x`: features `(..., P, (L+1)**2, F)` in e3x layout.

    **Returns:** the gated features, shape and dtype of `x`.
    """
    feature_shape(x.shape, caller="gated_linear")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"gated_linear: features must be floating point, got dtype {x.dtype}.")
    scalars = x[..., 0:1, 0:1, :]
    return gate(scalars).astype(x.dtype) * x


def _ones(s: Array) -> Array:
    return jnp.ones_like(s)


def _small(s: Array) -> Array:
    """Where `s` is too close to 0 to divide by (`|s| <= eps`, as e3x)."""
    return jnp.abs(s) <= jnp.finfo(s.dtype).eps


def _divide_or_series(s: Array, numerator: Array, series: Array) -> Array:
    """`numerator / s`, replaced by its Taylor series where `s` is tiny (finite gradients)."""
    small = _small(s)
    return jnp.where(small, series, numerator / jnp.where(small, _ones(s), s))


def relu(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Rectified linear unit, gated: `g(s) = [s > 0]`, so `relu(s) = max(s, 0)` on scalars.

    Replaces `e3x.nn.relu`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(lambda s: (s > 0).astype(s.dtype), x)


def leaky_relu(
    x: Float[Array, "*batch p dim f"], negative_slope: Scalar = 1e-2
) -> Float[Array, "*batch p dim f"]:
    """Leaky ReLU, gated: `g(s) = 1` for `s >= 0`, `negative_slope` below.

    Replaces `e3x.nn.leaky_relu`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.
    - `negative_slope`: the slope `alpha` for negative scalars.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(lambda s: jnp.where(s >= 0, _ones(s), negative_slope), x)


def _elu_gate(s: Array, alpha: Scalar, inner: Scalar) -> Array:
    """`1` for `s > 0`, else `alpha (exp(s / inner) - 1) / s` (series near 0)."""
    negative = jnp.where(s > 0, jnp.zeros_like(s), s)
    ratio = _divide_or_series(
        s,
        alpha * jnp.expm1(negative / inner),
        alpha / inner * (1 + s / (2 * inner) + s * s / (6 * inner * inner)),
    )
    return jnp.where(s > 0, _ones(s), ratio)


def elu(x: Float[Array, "*batch p dim f"], alpha: Scalar = 1.0) -> Float[Array, "*batch p dim f"]:
    """Exponential linear unit, gated: `g(s) = 1` for `s > 0`, `alpha (e^s - 1) / s` otherwise.

    On scalars `elu(s) = s` (`s > 0`), `alpha (e^s - 1)` (`s <= 0`). Replaces `e3x.nn.elu`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.
    - `alpha`: scale of the negative branch.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(lambda s: _elu_gate(s, alpha, 1.0), x)


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Scaled ELU, gated: `lambda * elu(x, alpha)` with the self-normalising constants
    `lambda = 1.0507...`, `alpha = 1.6732...`. Replaces `e3x.nn.selu`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """
    return _SELU_SCALE * elu(x, _SELU_ALPHA)


def celu(x: Float[Array, "*batch p dim f"], alpha: Scalar = 1.0) -> Float[Array, "*batch p dim f"]:
    """Continuously differentiable ELU, gated: `g(s) = 1` for `s > 0`,
    `alpha (e^{s/alpha} - 1) / s` otherwise. Replaces `e3x.nn.celu`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.
    - `alpha`: scale of the negative branch.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(lambda s: _elu_gate(s, alpha, alpha), x)


def silu(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """SiLU (swish), gated by the logistic sigmoid: `g(s) = 1 / (1 + e^{-s})`.

    Replaces `e3x.nn.silu` (and `e3x.nn.swish`, the same function).

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(jax.nn.sigmoid, x)


swish = silu


def gelu(
    x: Float[Array, "*batch p dim f"], approximate: bool = True
) -> Float[Array, "*batch p dim f"]:
    """Gaussian error linear unit, gated by the normal CDF `g(s) = (1 + erf(s / sqrt 2)) / 2`
    or, with `approximate` (default), by
    `g(s) = (1 + tanh(sqrt(2/pi) (s + 0.044715 s^3))) / 2`. Replaces `e3x.nn.gelu`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.
    - `approximate`: use the tanh approximation.

    **Returns:** shape and dtype of `x`.
    """

    def gate(s: Array) -> Array:
        if approximate:
            return 0.5 * (1.0 + jnp.tanh(math.sqrt(2 / math.pi) * (s + 0.044715 * (s**3))))
        return (jax.lax.erf(s / math.sqrt(2)) + 1) / 2

    return gated_linear(gate, x)


def mish(x: Float[Array, "*batch p dim f"], fast: bool = True) -> Float[Array, "*batch p dim f"]:
    """Mish, gated: `g(s) = tanh(softplus(s))`. Replaces `e3x.nn.mish`.

    With `fast` (default) the gate is evaluated as `(2u + 1) / (2u + 1 + 2u^2)`,
    `u = e^{-s}` (the same function, e3x's faster form).

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.
    - `fast`: use the rational form.

    **Returns:** shape and dtype of `x`.
    """

    def gate(s: Array) -> Array:
        if not fast:
            return jnp.tanh(jax.nn.softplus(s))
        u = jnp.exp(-s)
        numerator = 2 * u + 1
        return numerator / (numerator + 2 * u * u)

    return gated_linear(gate, x)


def serf(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Serf, gated: `g(s) = erf(softplus(s))`. Replaces `e3x.nn.serf`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(lambda s: jax.lax.erf(jax.nn.softplus(s)), x)


def shifted_softplus(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Shifted softplus, gated: `g(s) = log((1 + e^s) / 2) / s` (`1/2 + s/8` near 0), so that
    `shifted_softplus(s) = log(1 + e^s) - log 2` on scalars. Replaces
    `e3x.nn.shifted_softplus`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """

    def gate(s: Array) -> Array:
        return _divide_or_series(s, jnp.logaddexp(s, 0) - math.log(2), s / 8 + 1 / 2)

    return gated_linear(gate, x)


def hard_tanh(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Hard tanh, gated: `g(s) = 1` for `|s| <= 1`, `1 / |s|` otherwise, so that
    `hard_tanh(s) = clip(s, -1, 1)` on scalars. Replaces `e3x.nn.hard_tanh`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """

    def gate(s: Array) -> Array:
        outside = jnp.abs(s) > 1
        return jnp.where(outside, 1 / jnp.where(outside, jnp.abs(s), _ones(s)), _ones(s))

    return gated_linear(gate, x)


def soft_sign(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Soft sign, gated: `g(s) = 1 / (|s| + 1)`. Replaces `e3x.nn.soft_sign`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(lambda s: 1 / (jnp.abs(s) + 1), x)


def relu6(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """ReLU6, gated: `g(s) = 0` for `s <= 0`, `1` for `0 < s <= 6`, `6 / s` above, so that
    `relu6(s) = min(max(s, 0), 6)` on scalars. Replaces `e3x.nn.relu6`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """

    def gate(s: Array) -> Array:
        # The smaller of the step [s > 0] and 6 / s (taken as 6 for s <= 1); at s = 6 the
        # gradient is split between the two, as e3x's.
        step = (s > 0).astype(s.dtype)
        return jnp.minimum(step, 6 / jnp.where(s > 1, s, _ones(s)))

    return gated_linear(gate, x)


def hard_silu(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Hard SiLU (hard swish), gated by the hard sigmoid `g(s) = relu6(s + 3) / 6`.

    Replaces `e3x.nn.hard_silu` (and `e3x.nn.hard_swish`, the same function).

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """
    return gated_linear(jax.nn.hard_sigmoid, x)


hard_swish = hard_silu


def bent_identity(x: Float[Array, "*batch p dim f"]) -> Float[Array, "*batch p dim f"]:
    """Bent identity, gated: `g(s) = (sqrt(s^2 + 1) - 1) / (2s) + 1` (`1 + s/4` near 0), so
    that `bent_identity(s) = (sqrt(s^2 + 1) - 1) / 2 + s` on scalars. Replaces
    `e3x.nn.bent_identity`.

    **Arguments:**

    - `x`: features `(..., P, (L+1)**2, F)`.

    **Returns:** shape and dtype of `x`.
    """

    def gate(s: Array) -> Array:
        return _divide_or_series(s, (jnp.sqrt(s * s + 1) - 1) / 2, s / 4) + 1

    return gated_linear(gate, x)


def inverse_softplus(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """The inverse of `softplus(x) = log(1 + exp(x))` for `x > 0` (e3x's
    `ops.inverse_softplus`): `x + log(-expm1(-x))`.

    Used to start a parameter that passes through a softplus (such as the `gamma` of
    `eqmlip.nn.ExponentialBasis`) at a chosen positive value.

    **Returns:** shape and dtype of `x`; `-inf` at 0 and NaN below.
    """
    return x + jnp.log(-jnp.expm1(-x))
