"""eqmlip.ops.gate: one gate for NequIP's layout and for `e3nn.gate`'s split."""

from typing import Any

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip.ops.activation import activation_scale
from eqmlip.ops.gate import (
    ScaledActivation,
    e3nn_gate_spec,
    gate,
    gate_irreps,
    gate_spec,
)

from ..helpers import relative_error, tolerance


def _e3nn_like(act):
    dtype = jnp.result_type(float)
    return dict(
        even=ScaledActivation(act, activation_scale(act, dtype)),
        odd=ScaledActivation(e3nn.soft_odd, activation_scale(e3nn.soft_odd, dtype)),
        even_gate=None,
        odd_gate=ScaledActivation(jnp.tanh, activation_scale(jnp.tanh, dtype)),
    )


@pytest.mark.parametrize(
    "irreps",
    [
        "6x0e + 2x1o",  # even gates only
        "4x0e + 2x0o + 2x1o + 2x1e",  # odd gates: gated vectors change parity
        "2x0e + 1x0o + 3x1o",  # the gates straddle the 0e and 0o entries
        "3x0e + 1x0o",  # scalars only: no gates
        "1x1o + 3x0e + 1x2e",  # unsorted input
    ],
)
def test_e3nn_gate_spec_equals_e3nn_gate(irreps):
    irreps = e3nn.Irreps(irreps)
    x = e3nn.normal(irreps, jr.PRNGKey(0), (5,))
    e3nn_gate: Any = e3nn.gate  # e3nn-jax's annotations are narrower than what it accepts
    expected = e3nn_gate(x, even_act=jax.nn.silu, even_gate_act=None)
    spec = e3nn_gate_spec(irreps, **_e3nn_like(jax.nn.silu))
    actual = gate(x.array, spec)
    assert gate_irreps(spec) == expected.irreps
    assert actual.shape == expected.shape
    assert relative_error(actual, expected.array) <= tolerance(actual.dtype)


def test_e3nn_gate_spec_needs_a_scalar_per_nonscalar():
    with pytest.raises(ValueError, match=r"one scalar per non-scalar irrep: 1x0e\+2x1o has 1"):
        e3nn_gate_spec(e3nn.Irreps("1x0e + 2x1o"), **_e3nn_like(jax.nn.silu))


def test_nequip_gate_spec_reads_the_regrouped_layout():
    """Scalars, gates and nonscalars are found in `(scalars + gates + nonscalars).regroup()`;
    the output is scalars then gated nonscalars, in the un-regrouped order."""
    scalars, gates, nonscalars = (
        e3nn.Irreps(s) for s in ("2x0e + 1x0o", "1x0e + 1x0e", "1x2e + 1x1o")
    )
    double = ScaledActivation(lambda v: 2 * v)
    spec = gate_spec(
        scalars, gates, nonscalars, even=double, odd=None, even_gate=double, odd_gate=None
    )
    layout = (scalars + gates + nonscalars).regroup()  # 4x0e + 1x0o + 1x1o + 1x2e
    x = np.arange(layout.dim, dtype=np.float64) + 1.0
    out = np.asarray(gate(jnp.asarray(x), spec))
    gate_2e, gate_1o = 2 * x[2], 2 * x[3]  # the gates follow the two even scalars
    np.testing.assert_array_equal(out[:2], 2 * x[:2])  # even scalars, activated
    np.testing.assert_array_equal(out[2], x[4])  # the odd scalar, unchanged
    np.testing.assert_array_equal(out[3:8], gate_2e * x[8:13])  # 2e, gated by the first gate
    np.testing.assert_array_equal(out[8:11], gate_1o * x[5:8])  # 1o, by the second
    assert gate_irreps(spec) == e3nn.Irreps("2x0e + 1x0o + 1x2e + 1x1o")
