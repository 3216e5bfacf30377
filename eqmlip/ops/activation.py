"""Activation functions: mlip's table by name, their parity, and their second-moment
normalisation as e3nn-jax computes it."""

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

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
