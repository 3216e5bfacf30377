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


@pytest.mark.parametrize(
    "shapes",
    [
        pytest.param([[(4, 5), (5, 5), (5, 10)], [(4, 5), (5, 5), (5, 7)]], id="merged"),
        pytest.param(
            [[(4, 5), (5, 10)], [(4, 5), (5, 7)], [(4, 5), (5, 3)]], id="merged-no-hidden"
        ),
        pytest.param([[(4, 5), (5, 10)], [(4, 6), (6, 7)]], id="different-hidden-sizes"),
    ],
)
def test_radial_mlps_columns_equals_each_mlp_with_its_gradients(shapes):
    """Several MLPs on one basis, evaluated together: each MLP's sliced output, and the same
    gradients with respect to the basis and every kernel."""
    rng = np.random.default_rng(2)
    ranges = [[(0, 2), (2, mlp[-1][1] - 2)] for mlp in shapes]
    cotangents = [[rng.normal(size=(6, w)) for _, w in r] for r in ranges]
    radial_np = rng.normal(size=(6, 4))
    kernels_np = [[rng.normal(size=s) for s in mlp] for mlp in shapes]

    def total(pieces):
        return sum(
            jnp.sum(p * c)
            for ps, cs in zip(pieces, cotangents, strict=True)
            for p, c in zip(ps, cs, strict=True)
        )

    def together(radial, kernels):
        return ops.nequip.radial_mlps_columns(radial, kernels, jax.nn.silu, ranges)

    def apart(radial, kernels):
        return [
            [ops.nequip.radial_mlp(radial, ks, jax.nn.silu)[:, s : s + w] for s, w in r]
            for ks, r in zip(kernels, ranges, strict=True)
        ]

    with jax.enable_x64(True):
        radial = jnp.asarray(radial_np, jnp.float64)
        kernels = [[jnp.asarray(k, jnp.float64) for k in mlp] for mlp in kernels_np]
        ours, theirs = together(radial, kernels), apart(radial, kernels)
        assert [[p.shape for p in ps] for ps in ours] == [[p.shape for p in ps] for ps in theirs]
        for ps, qs in zip(ours, theirs, strict=True):
            for p, q in zip(ps, qs, strict=True):
                np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)
        grads = jax.grad(lambda r, k: total(together(r, k)), argnums=(0, 1))(radial, kernels)
        expected = jax.grad(lambda r, k: total(apart(r, k)), argnums=(0, 1))(radial, kernels)
        assert float(jnp.max(jnp.abs(expected[0]))) > 1e-2
        for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_split_sizes_tiles_the_last_axis_and_checks_the_sizes():
    x = jnp.arange(24.0).reshape(2, 12)
    pieces = ops.columns.split_sizes(x, [3, 5, 4])
    assert [p.shape for p in pieces] == [(2, 3), (2, 5), (2, 4)]
    assert np.array_equal(np.concatenate(pieces, axis=-1), np.asarray(x))
    with pytest.raises(ValueError, match=r"sum to 11, expected the last axis \(12\)"):
        ops.columns.split_sizes(x, [3, 5, 3])
