"""e3x's gated activations (eqmlip.ops.activation): equivariance, scalar values, errors."""

import functools
import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import ops, testing
from eqmlip.ops import activation

GATED = {
    "relu": activation.relu,
    "leaky_relu": functools.partial(activation.leaky_relu, negative_slope=0.2),
    "elu": activation.elu,
    "selu": activation.selu,
    "celu": functools.partial(activation.celu, alpha=0.5),
    "silu": activation.silu,
    "gelu": activation.gelu,
    "gelu-exact": functools.partial(activation.gelu, approximate=False),
    "mish": activation.mish,
    "serf": activation.serf,
    "shifted_softplus": activation.shifted_softplus,
    "hard_tanh": activation.hard_tanh,
    "soft_sign": activation.soft_sign,
    "relu6": activation.relu6,
    "hard_silu": activation.hard_silu,
    "bent_identity": activation.bent_identity,
}


@jax.jit
def _transformed(x, rotation):
    """For each activation and for `P = 2` features `x` and their `P = 1` part: the pairs
    `(f(g.x), g.f(x))` for the rotation and for the reflection. (One call per activation and
    parity layout, on the stacked inputs, keeps the compilation small.)"""
    wigner = ops.wigner_d(rotation, 2)
    out = {}
    for name, fn in GATED.items():
        for p in (1, 2):
            xp = x[:, :p]
            y, rotated, reflected = fn(jnp.stack([xp, ops.rotate(xp, wigner), ops.reflect(xp)]))
            out[name, p] = ((rotated, ops.rotate(y, wigner)), (reflected, ops.reflect(y)))
    return out


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(
    values=hnp.arrays(
        np.float64,
        (3, 2, 9, 4),
        elements=st.floats(-8.0, 8.0, allow_nan=False, allow_subnormal=False),
    ),
    rotation=testing.rotations(),
)
def test_gated_activations_are_equivariant(x64, values, rotation):
    """Rotating (reflecting) the input rotates (reflects) the output, for `P = 1` features and
    for `P = 2` features with pseudotensors: the gate reads only the even scalar, which
    neither changes."""
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        results = _transformed(jnp.asarray(values, dtype), jnp.asarray(rotation, dtype))
        assert len(results) == 2 * len(GATED)
        for name, ((rot_in, rot_out), (ref_in, ref_out)) in results.items():
            assert rot_in.dtype == dtype
            scale = max(float(np.max(np.abs(rot_out))), 1.0)
            error = float(np.max(np.abs(np.asarray(rot_in) - np.asarray(rot_out))))
            assert error <= 10 * testing.default_tolerance(dtype) * scale, name
            np.testing.assert_array_equal(ref_in, ref_out, err_msg=str(name))


def _softplus(s):
    return np.logaddexp(s, 0.0)


# Each activation on scalar features equals its ordinary (non-gated) counterpart.
SCALAR = {
    "relu": lambda s: np.maximum(s, 0),
    "leaky_relu": lambda s: np.where(s >= 0, s, 0.2 * s),
    "elu": lambda s: np.where(s > 0, s, np.expm1(s)),
    "selu": lambda s: 1.0507009873554805 * np.where(s > 0, s, 1.6732632423543772 * np.expm1(s)),
    "celu": lambda s: np.where(s > 0, s, 0.5 * np.expm1(s / 0.5)),
    "silu": lambda s: s / (1 + np.exp(-s)),
    "gelu": lambda s: 0.5 * s * (1 + np.tanh(math.sqrt(2 / math.pi) * (s + 0.044715 * s**3))),
    "gelu-exact": lambda s: 0.5 * s * (1 + np.vectorize(math.erf)(s / math.sqrt(2))),
    "mish": lambda s: s * np.tanh(_softplus(s)),
    "serf": lambda s: s * np.vectorize(math.erf)(_softplus(s)),
    "shifted_softplus": lambda s: _softplus(s) - math.log(2),
    "hard_tanh": lambda s: np.clip(s, -1, 1),
    "soft_sign": lambda s: s / (np.abs(s) + 1),
    "relu6": lambda s: np.clip(s, 0, 6),
    "hard_silu": lambda s: s * np.clip(s + 3, 0, 6) / 6,
    "bent_identity": lambda s: (np.sqrt(s * s + 1) - 1) / 2 + s,
}


@functools.cache
def _scalar_values():
    s = np.concatenate([np.linspace(-9.0, 9.0, 73), [0.0, 1e-12, -1e-12, 1e-5, -1e-5]])
    with jax.enable_x64(True):
        x = jnp.asarray(s, jnp.float64)[:, None, None, None]
        return s, jax.device_get(jax.jit(lambda x: {n: f(x) for n, f in GATED.items()})(x))


@pytest.mark.parametrize("name", list(GATED))
def test_scalar_features_give_the_ordinary_activation(name):
    s, values = _scalar_values()
    np.testing.assert_allclose(values[name][:, 0, 0, 0], SCALAR[name](s), rtol=1e-13, atol=1e-14)


def test_higher_degrees_are_scaled_by_the_gate_of_the_even_scalar():
    x = np.zeros((2, 4, 1))
    x[0, 0, 0] = 2.0  # 0e
    x[1, 0, 0] = -3.0  # 0o: a pseudoscalar does not gate
    x[0, 1:, 0] = [1.0, -2.0, 0.5]  # 1e
    x[1, 1:, 0] = [4.0, 0.0, -1.0]  # 1o
    y = np.asarray(activation.silu(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(y, x / (1 + np.exp(-2.0)), rtol=1e-6)


def test_gated_activation_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"gated_linear: axis -3 .*\(3, 1, 5\)"):
        activation.silu(jnp.zeros((3, 1, 5)))
    with pytest.raises(ValueError, match=r"gated_linear: axis -2 .*\(1, 3, 2\)"):
        activation.relu(jnp.zeros((1, 3, 2)))
    with pytest.raises(TypeError):  # integer features
        activation.relu(jnp.zeros((1, 1, 2), jnp.int32))
