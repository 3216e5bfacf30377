"""eqmlip.ops.columns: column ranges taken by one split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import ops

RANGES = [
    pytest.param([(0, 3), (3, 4)], id="tiling"),
    pytest.param([(5, 2), (1, 3)], id="unordered-with-gaps"),
    pytest.param([(1, 4), (2, 2), (2, 0)], id="overlapping-and-empty"),
    pytest.param([(0, 9)], id="whole"),
    pytest.param([], id="none"),
]


@pytest.mark.parametrize("ranges", RANGES)
def test_split_columns_equals_slices_and_their_gradient(ranges):
    """Same pieces as slicing, and the same cotangent (each column's reads summed)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 9)), jnp.float32)
    pieces = ops.columns.split_columns(x, ranges)
    assert [p.shape for p in pieces] == [(4, w) for _, w in ranges]
    for (start, width), piece in zip(ranges, pieces, strict=True):
        np.testing.assert_array_equal(piece, x[:, start : start + width])

    weights = [
        jnp.arange(1.0, 1.0 + 4 * w).reshape(4, w) * (k + 1) for k, (_, w) in enumerate(ranges)
    ]

    def total(f):
        return lambda x: sum((jnp.sum(p * w) for p, w in zip(f(x), weights, strict=True)), 0.0)

    ours = jax.grad(total(lambda x: ops.columns.split_columns(x, ranges)))(x)
    sliced = jax.grad(total(lambda x: [x[:, s : s + w] for s, w in ranges]))(x)
    np.testing.assert_array_equal(ours, sliced)


def test_split_columns_rejects_a_range_outside_the_array():
    with pytest.raises(ValueError, match=r"split_columns: range \(7, 3\) lies outside the 9"):
        ops.columns.split_columns(jnp.zeros((2, 9)), [(7, 3)])


def test_radial_mlp_columns_equals_the_full_mlp_sliced():
    rng = np.random.default_rng(1)
    radial = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    kernels = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(4, 5), (5, 5), (5, 10)]]
    ranges = [(0, 4), (4, 3), (7, 3)]
    full = ops.nequip.radial_mlp(radial, kernels, jax.nn.silu)
    pieces = ops.nequip.radial_mlp_columns(radial, kernels, jax.nn.silu, ranges)
    for (start, width), piece in zip(ranges, pieces, strict=True):
        np.testing.assert_allclose(piece, full[:, start : start + width], rtol=1e-6, atol=1e-6)


def test_split_sizes_tiles_the_last_axis_and_checks_the_sizes():
    x = jnp.arange(24.0).reshape(2, 12)
    pieces = ops.columns.split_sizes(x, [3, 5, 4])
    assert [p.shape for p in pieces] == [(2, 3), (2, 5), (2, 4)]
    assert np.array_equal(np.concatenate(pieces, axis=-1), np.asarray(x))
    with pytest.raises(ValueError, match=r"sum to 11, expected the last axis \(12\)"):
        ops.columns.split_sizes(x, [3, 5, 3])
