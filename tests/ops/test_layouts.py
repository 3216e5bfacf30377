"""eqmlip.ops.layouts: changes of degree and parity axis."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import ops, testing

K = jr.PRNGKey


@jax.jit
def _degree_changes(x):
    change = ops.layouts.change_max_degree_or_type
    proper = change(x, include_pseudotensors=False)
    return proper, change(proper, max_degree=3, include_pseudotensors=True), change(x, max_degree=1)


def test_change_max_degree_or_type_round_trips():
    x = jr.normal(K(0), (3, 2, 9, 2))
    proper, back, lower = _degree_changes(x)
    assert proper.shape == (3, 1, 9, 2)
    # Degree l keeps the channel of parity (-1)^l: even for l = 0, 2, odd for l = 1.
    np.testing.assert_array_equal(proper[:, 0, 0], x[:, 0, 0])
    np.testing.assert_array_equal(proper[:, 0, 1:4], x[:, 1, 1:4])
    np.testing.assert_array_equal(proper[:, 0, 4:], x[:, 0, 4:])
    assert back.shape == (3, 2, 16, 2)
    assert (
        not np.any(back[..., 9:, :]) and not np.any(back[:, 1, 0]) and not np.any(back[:, 0, 1:4])
    )
    np.testing.assert_array_equal(back[:, 1, 1:4], x[:, 1, 1:4])
    np.testing.assert_array_equal(lower, x[..., :4, :])


@jax.jit
def _transformed_add(x1, x2, rotation):
    """`(f(g.x), g.f(x))` for `f = add` and for changes of degree/parity, under the rotation
    and under the reflection."""
    wigner = ops.wigner_d(rotation, 3)

    def rotate(x):
        dim = x.shape[-2]
        return ops.rotate(x, wigner[:dim, :dim])

    add = ops.layouts.add
    change = ops.layouts.change_max_degree_or_type
    functions = {
        "add": lambda a, b: add(a, b),
        "to-P1-L3": lambda a, b: change(b, 3, False),
        "to-P2-L1": lambda a, b: change(a, 1, True),
    }
    out = {}
    for name, f in functions.items():
        y = f(x1, x2)
        out[name] = (
            (f(rotate(x1), rotate(x2)), rotate(y)),
            (f(ops.reflect(x1), ops.reflect(x2)), ops.reflect(y)),
        )
    return out


@hypothesis.given(
    v1=hnp.arrays(np.float64, (2, 1, 4, 3), elements=st.floats(-2, 2, allow_subnormal=False)),
    v2=hnp.arrays(np.float64, (2, 2, 9, 3), elements=st.floats(-2, 2, allow_subnormal=False)),
    rotation=testing.rotations(),
)
def test_add_and_degree_changes_are_equivariant(v1, v2, rotation):
    """Adding features of different shapes, and changing degree or parity axis, commute with
    rotations and reflections (pseudotensors included)."""
    with jax.enable_x64(True):
        x1, x2 = jnp.asarray(v1), jnp.asarray(v2)
        for name, ((a, b), (c, d)) in _transformed_add(x1, x2, jnp.asarray(rotation)).items():
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=name)
            np.testing.assert_array_equal(c, d, err_msg=name)


def test_add_errors_name_the_input():
    with pytest.raises(TypeError, match=r"^add: every input needs the dtype of input 0"):
        with jax.enable_x64(True):
            ops.layouts.add(jnp.zeros((2, 1, 1, 3)), jnp.zeros((2, 1, 1, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"^add: input 1: axis -2 .*\(2, 1, 3, 3\)"):
        ops.layouts.add(jnp.zeros((2, 1, 1, 3)), jnp.zeros((2, 1, 3, 3)))
