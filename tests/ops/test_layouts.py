"""eqmlip.ops.layouts: changes of degree and parity axis."""

import jax
import jax.random as jr
import numpy as np

from eqmlip import ops

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
