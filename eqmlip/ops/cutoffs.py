"""Cutoff functions, envelopes and damping of distances (e3x's and mlip's)."""

import functools
import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Scalar = float | int | Float[Array, ""]


def _check_positive(name: str, value: Scalar) -> None:
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"{name} must be larger than 0, got {value}.")


def smooth_cutoff(x: Float[Array, "*shape"], cutoff: Scalar = 1.0) -> Float[Array, "*shape"]:
    """Infinitely smooth cutoff, as `e3x.nn.smooth_cutoff`.

    $$c(x) = \\exp\\Big(1 - \\frac{1}{1 - (x/x_c)^2}\\Big) \\ (x < x_c), \\qquad 0 \\ (x \\ge x_c)$$

    with `c(0) = 1`; values and gradients are finite everywhere.

    **Arguments:**

    - `x`: input values (distances).
    - `cutoff`: the cutoff `x_c > 0`.

    **Returns:** shape and dtype of `x`.
    """
    _check_positive("smooth_cutoff: cutoff", cutoff)
    x = x / cutoff
    inside = x < 1
    safe = jnp.where(inside, x, 0.0).astype(x.dtype)
    return jnp.where(inside, jnp.exp(1 - 1 / (1 - safe * safe)), 0.0).astype(x.dtype)


def cosine_cutoff(x: Float[Array, "*shape"], cutoff: Scalar = 1.0) -> Float[Array, "*shape"]:
    """Cosine cutoff `(cos(pi x / x_c) + 1) / 2` below `x_c`, zero above, as
    `e3x.nn.cosine_cutoff` and mlip's `cosine_cutoff` envelope.

    Evaluated in e3x's order, `0.5 cos(pi (x / x_c)) + 0.5`; mlip's
    `0.5 (cos(x pi / x_c) + 1)` agrees to rounding.

    **Arguments:**

    - `x`: input values.
    - `cutoff`: the cutoff `x_c > 0`.

    **Returns:** shape and dtype of `x`.
    """
    _check_positive("cosine_cutoff: cutoff", cutoff)
    x = x / cutoff
    return jnp.where(x < 1, 0.5 * jnp.cos(jnp.pi * x) + 0.5, 0.0).astype(x.dtype)


def smooth_damping(x: Float[Array, "*shape"], gamma: Scalar = 1.0) -> Float[Array, "*shape"]:
    """Smooth damping `exp(-e / (1 - e))`, `e = exp(-gamma x)`, as `e3x.nn.smooth_damping`.

    Zero (with all derivatives) at `x = 0`, tending to 1 for large `x`; used to damp the
    `l > 0` basis functions of short vectors (see [`eqmlip.ops.radial.basis`][]).

    **Arguments:**

    - `x`: input values.
    - `gamma`: decay constant.

    **Returns:** shape and dtype of `x`.
    """
    e = jnp.exp(-gamma * x)
    denominator = 1 - e
    ok = denominator * denominator > 0
    return jnp.where(ok, jnp.exp(-e / jnp.where(ok, denominator, 1.0)), 0.0).astype(x.dtype)


_SWITCH_SLOPE = math.sqrt(3) / 2


def _switch_parts(x: Array) -> tuple[Array, Array, Array, Array]:
    """Masks `x <= 0`-ish and `x >= 1`-ish (within `epsneg`), a safe `x` inside, and
    `exp(slope (1/x - 1/(1-x)))` there."""
    eps = jnp.finfo(x.dtype).epsneg
    below, above = x < eps, x > 1 - eps
    inside = jnp.where(below | above, jnp.full_like(x, 0.5), x)
    e = jnp.exp(_SWITCH_SLOPE * (1 / inside - 1 / (1 - inside)))
    return below, above, inside, e


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def smooth_switch(
    x: Float[Array, "*shape"], x0: float = 0.0, x1: float = 1.0
) -> Float[Array, "*shape"]:
    """Infinitely smooth step from 0 (at `x <= x0`) to 1 (at `x >= x1`), as
    `e3x.nn.smooth_switch`.

    $$s(x) = \\Big(1 + \\exp\\Big(\\tfrac{\\sqrt 3}{2}\\big(\\tfrac{1}{t} - \\tfrac{1}{1 - t}\\big)
      \\Big)\\Big)^{-1}, \\qquad t = \\frac{x - x_0}{x_1 - x_0} \\in (0, 1)$$

    Values within `epsneg` of the ends are set to exactly 0 and 1, and the derivative (a
    custom JVP) is 0 there and wherever its factors underflow, so that derivatives of any
    order stay finite.

    **Arguments:**

    - `x`: input values.
    - `x0`, `x1`: the ends of the step, `x0 < x1`.

    **Returns:** shape and dtype of `x`.
    """
    if not x0 < x1:
        raise ValueError(f"smooth_switch: x1 must be larger than x0, got x0={x0} and x1={x1}.")
    if x0 != 0.0 or x1 != 1.0:
        x = (x - x0) / (x1 - x0)
    below, above, _, e = _switch_parts(x)
    return jnp.where(below, jnp.zeros_like(x), jnp.where(above, jnp.ones_like(x), 1 / (1 + e)))


@smooth_switch.defjvp
def _smooth_switch_jvp(x0: float, x1: float, primals: tuple, tangents: tuple) -> tuple:
    (x,), (x_dot,) = primals, tangents
    if x0 != 0.0 or x1 != 1.0:
        x, x_dot = (x - x0) / (x1 - x0), x_dot / (x1 - x0)
    below, above, t, e = _switch_parts(x)
    value = jnp.where(below, jnp.zeros_like(x), jnp.where(above, jnp.ones_like(x), 1 / (1 + e)))
    # ds/dt = slope (1/t^2 + 1/(1-t)^2) e s^2, set to 0 at the ends and where it underflows.
    square = value * value
    slope = _SWITCH_SLOPE * (1 / (t * t) + 1 / ((1 - t) * (1 - t))) * e * square
    zero = below | above | (square == 0) | (e == 0)
    return value, jnp.where(zero, jnp.zeros_like(x), slope) * x_dot


def polynomial_envelope(
    r: Float[Array, " edges"], cutoff: float, p: int = 5
) -> Float[Array, " edges"]:
    """DimeNet's envelope `1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`,
    `x = r/c`, times `[r < c]`."""
    x = r / cutoff
    u = (
        1.0
        - ((p + 1.0) * (p + 2.0) / 2.0) * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - (p * (p + 1.0) / 2.0) * x ** (p + 2)
    )
    return jnp.where(r < cutoff, u, 0.0)


def soft_envelope(r: Float[Array, " edges"], cutoff: float) -> Float[Array, " edges"]:
    """e3nn's `soft_envelope(r, cutoff, arg_multiplicator=2, value_at_origin=1.2)`:
    `1.2 sus(2 (1 - r/c)) / sus(2)` with `sus(x) = exp(-1/x) [x > 0]`."""
    x = 2.0 * (1.0 - r / cutoff)
    positive = x > 0.0
    sus = jnp.where(positive, jnp.exp(-1.0 / jnp.where(positive, x, 1.0)), 0.0)
    return (1.2 / math.exp(-1.0 / 2.0)) * sus


EnvelopeName = Literal["polynomial_envelope", "soft_envelope", "cosine_cutoff"]

# mlip's radial envelopes (`mlip.models.options.RadialEnvelope`), by name: `(r, cutoff) -> u(r)`.
ENVELOPE_FUNCTIONS: dict[str, Callable[[Array, float], Array]] = {
    "polynomial_envelope": polynomial_envelope,
    "soft_envelope": soft_envelope,
    "cosine_cutoff": cosine_cutoff,
}
ENVELOPES: tuple[str, ...] = tuple(ENVELOPE_FUNCTIONS)
