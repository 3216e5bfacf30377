"""eqmlip.ops.attention: e3x's head groupings."""

import jax.numpy as jnp
import numpy as np

from eqmlip import ops


def test_head_groupings():
    x = jnp.arange(6.0)
    # Queries/keys: feature f is in head f % 3; values: feature f uses head f // 2.
    np.testing.assert_array_equal(ops.attention.head_split(x, 3)[:, 1], [1.0, 4.0])
    np.testing.assert_array_equal(
        ops.attention.head_broadcast(jnp.asarray([10.0, 20.0, 30.0]), 6), [10, 10, 20, 20, 30, 30]
    )
