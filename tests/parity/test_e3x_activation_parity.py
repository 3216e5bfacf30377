"""e3x's gated activations in eqmlip side by side with e3x 1.0.2: values and gradients."""

import functools

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import nn
from eqmlip.ops import activation

from ..helpers import relative_error, tolerance

pytestmark = pytest.mark.parity

# (id, name, keyword arguments): every activation e3x.nn exports, over its options.
CASES = [
    ("relu", "relu", {}),
    ("leaky_relu", "leaky_relu", {}),
    ("leaky_relu-0.3", "leaky_relu", {"negative_slope": 0.3}),
    ("elu", "elu", {}),
    ("elu-2", "elu", {"alpha": 2.0}),
    ("selu", "selu", {}),
    ("celu", "celu", {}),
    ("celu-0.5", "celu", {"alpha": 0.5}),
    ("silu", "silu", {}),
    ("swish", "swish", {}),
    ("gelu", "gelu", {}),
    ("gelu-exact", "gelu", {"approximate": False}),
    ("mish", "mish", {}),
    ("mish-slow", "mish", {"fast": False}),
    ("serf", "serf", {}),
    ("shifted_softplus", "shifted_softplus", {}),
    ("hard_tanh", "hard_tanh", {}),
    ("soft_sign", "soft_sign", {}),
    ("relu6", "relu6", {}),
    ("hard_silu", "hard_silu", {}),
    ("hard_swish", "hard_swish", {}),
    ("bent_identity", "bent_identity", {}),
]


def test_every_e3x_activation_is_ported():
    module = e3x.nn.activations
    exported = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_") and getattr(obj, "__module__", "") == module.__name__
    }
    assert len(exported) == 17
    assert exported == {name for _, name, _ in CASES}
    for _, name, _ in CASES:
        assert getattr(nn, name) is getattr(activation, name)


def _inputs(dtype):
    """P=2, L=2 features whose even scalars cover 0, tiny values, the kinks at +-1, 0, 6 and
    large values; the other components are random."""
    rng = np.random.default_rng(0)
    x = 3.0 * rng.standard_normal((6, 2, 9, 8))
    special = [0.0, 1e-9, -1e-9, 1.0, -1.0, 6.0, -30.0, 30.0]
    x[0, 0, 0, :] = special
    x[1, 0, 0, :] = [1e-5, -1e-5, 2.5, -2.5, 7.5, -0.5, 0.7, 1.3]
    return jnp.asarray(x, dtype)


@functools.cache
def _evaluate(x64: bool):
    """Values and gradients of every case, ours and e3x's, in one compilation each."""
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        x = _inputs(dtype)
        weights = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), dtype)

        def run(module):
            out = {}
            for case, name, kwargs in CASES:
                fn = functools.partial(getattr(module, name), **kwargs)
                grad = jax.grad(lambda y, fn=fn: jnp.sum(fn(y) * weights))(x)
                out[case] = (fn(x), grad)
            return out

        ours = jax.device_get(jax.jit(lambda: run(activation))())
        theirs = jax.device_get(jax.jit(lambda: run(e3x.nn))())
        return ours, theirs, dtype


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_activation_matches_e3x(x64, case):
    ours, theirs, dtype = _evaluate(x64)
    (value, grad), (expected, expected_grad) = ours[case], theirs[case]
    assert value.dtype == expected.dtype == dtype
    assert value.shape == expected.shape == (6, 2, 9, 8)
    assert relative_error(value, expected) <= tolerance(dtype)
    assert relative_error(grad, expected_grad) <= tolerance(dtype)
    assert np.all(np.isfinite(grad))
    assert np.max(np.abs(expected)) > 1.0
