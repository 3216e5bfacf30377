"""eqmlip.ops' degree/parity changes, add, index helpers and safe norms side by side with e3x
1.0.2."""

import functools
import itertools

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import ops

from ..helpers import relative_error, tolerance
from .test_e3x_parity import _features

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("num_parity, max_degree", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_change_max_degree_or_type_matches_e3x(num_parity, max_degree):
    x = _features(0, num_parity, max_degree, 3, batch=(2,))
    for degree, pseudo in itertools.product([None, 0, 1, 3], [None, False, True]):
        expected = e3x.nn.change_max_degree_or_type(x, degree, pseudo)
        actual = ops.layouts.change_max_degree_or_type(x, degree, pseudo)
        assert actual.shape == expected.shape, (degree, pseudo)
        np.testing.assert_array_equal(actual, expected, err_msg=f"{degree}, {pseudo}")


@pytest.mark.parametrize(
    "shapes",
    [[(1, 1)], [(1, 2), (2, 1)], [(2, 0), (1, 3), (1, 1)], [(2, 2), (2, 2)], [(1, 0), (1, 0)]],
    ids=["one", "P1-P2", "three", "same", "scalars"],
)
def test_add_matches_e3x(x64, shapes):
    dtype = jnp.result_type(float)
    inputs = [_features(i, p, lmax, 4, batch=(3,)) for i, (p, lmax) in enumerate(shapes)]
    expected = e3x.nn.add(*inputs)
    actual = jax.jit(ops.layouts.add)(*inputs)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)


def test_pairwise_indices_match_e3x():
    for num, mask_self in itertools.product([1, 2, 5], [True, False]):
        expected = e3x.ops.dense_pairwise_indices(num, mask_self)
        actual = ops.segment.dense_pairwise_indices(num, mask_self)
        assert actual.dtype == jnp.int32
        np.testing.assert_array_equal(actual, expected)
        for a, e in zip(
            ops.segment.sparse_pairwise_indices(num, mask_self),
            e3x.ops.sparse_pairwise_indices(num, mask_self),
            strict=True,
        ):
            np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="num must be an int >= 1, got 0"):
        ops.segment.dense_pairwise_indices(0)


# A graph of 5 nodes: sparse indices with two padding edges (destination 5), and the same
# neighbourhoods as dense indices padded with 5.
DST = np.array([0, 0, 1, 2, 2, 2, 3, 5, 5])
SRC = np.array([1, 2, 0, 0, 1, 3, 2, 5, 5])
ADJ = np.array([[1, 2, 5], [0, 5, 5], [0, 1, 3], [2, 5, 5], [5, 5, 5]])


@functools.cache
def _indexed(x64: bool, keepdims: bool):
    """indexed_sum/max/min and indexed_softmax, ours and e3x's, sparse and dense, in one compile
    each."""
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        rng = np.random.default_rng(3)
        edge = jnp.asarray(rng.standard_normal((DST.size, 2, 3)), dtype)
        dense = jnp.asarray(rng.standard_normal((*ADJ.shape, 2, 3)), dtype)
        logits = jnp.asarray(3 * rng.standard_normal(DST.size), dtype)
        dense_logits = jnp.asarray(3 * rng.standard_normal(ADJ.shape), dtype)
        cut = jnp.asarray(rng.uniform(0.1, 1.0, DST.size), dtype)
        dense_cut = jnp.asarray(rng.uniform(0.1, 1.0, ADJ.shape), dtype)
        sparse_idx = dict(dst_idx=jnp.asarray(DST), num_segments=5)
        dense_idx = dict(adj_idx=jnp.asarray(ADJ), where=jnp.asarray(ADJ < 5))

        def run(segment):
            softmax = functools.partial(segment.indexed_softmax)
            return {
                "sum-sparse": segment.indexed_sum(edge, keepdims, **sparse_idx),
                "sum-dense": segment.indexed_sum(dense, keepdims, **dense_idx),
                "max-sparse": segment.indexed_max(edge, keepdims, **sparse_idx),
                "max-dense": segment.indexed_max(dense, keepdims, **dense_idx),
                "min-sparse": segment.indexed_min(edge, keepdims, **sparse_idx),
                "min-dense": segment.indexed_min(dense, keepdims, **dense_idx),
                "softmax-sparse": softmax(logits, **sparse_idx),
                "softmax-sparse-mask": softmax(logits, cut, **sparse_idx),
                "softmax-dense": softmax(dense_logits, **dense_idx),
                "softmax-dense-mask": softmax(dense_logits, dense_cut, **dense_idx),
            }

        ours = jax.device_get(jax.jit(lambda: run(ops.segment))())
        theirs = jax.device_get(jax.jit(lambda: run(e3x.ops))())
        return ours, theirs, dtype


@pytest.mark.parametrize("keepdims", [False, True], ids=["reduced", "keepdims"])
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
def test_indexed_reductions_and_softmax_match_e3x(x64, keepdims):
    ours, theirs, dtype = _indexed(x64, keepdims)
    real_edges, real_entries = DST < 5, ADJ < 5
    for name in ours:
        actual, expected = ours[name], theirs[name]
        assert actual.shape == expected.shape and actual.dtype == dtype, name
        if name.startswith("softmax"):
            # Padding entries: e3x gives them weights from the padding logits, eqmlip 0.
            valid = real_edges if name.startswith("softmax-sparse") else real_entries
            assert not np.any(actual[~valid])
            actual, expected = actual[valid], expected[valid]
        elif keepdims and name.endswith("-sparse"):
            actual, expected = actual[real_edges], expected[real_edges]
        if name.startswith(("max", "min")):
            # A selection, exact; node 4 has no edges: -inf / +inf (sparse) or the dtype's
            # extreme value (dense), in both libraries.
            np.testing.assert_array_equal(actual, expected, err_msg=name)
            continue
        assert relative_error(actual, expected) <= tolerance(dtype), name
    assert ours["sum-dense"].shape == ((5, 1, 2, 3) if keepdims else (5, 2, 3))
    empty = ours["max-dense"][4] if not keepdims else ours["max-dense"][4, 0]
    assert np.all(empty == np.finfo(dtype).min)
    if not keepdims:
        assert np.all(ours["max-sparse"][4] == -np.inf) and np.all(ours["min-sparse"][4] == np.inf)
        # Nodes 0 and 2 have several edges, nodes 1 and 3 one each.
        assert np.all(ours["max-sparse"][[0, 2]] > ours["min-sparse"][[0, 2]])
        np.testing.assert_array_equal(ours["max-sparse"][[1, 3]], ours["min-sparse"][[1, 3]])


# (id, adj_idx, pad_idx): a batch of two with different edge counts, and no padding at all.
DENSE_CASES = [
    ("padded", ADJ, 5),
    ("no-pad-idx", ADJ, None),
    ("batch", np.stack([ADJ, np.where(ADJ == 2, 5, ADJ)]), 5),
    ("all-padding", np.full((3, 2), 3), 3),
]
# (id, dst_idx, src_idx, pad_idx): unsorted destinations, padding edges, rows without edges.
SPARSE_CASES = [
    ("padded", DST, SRC, 5),
    ("no-pad-idx", DST, SRC, None),
    ("unsorted-cut", np.array([2, 0, 2, 1, 0, 4]), np.array([0, 1, 3, 0, 2, 1]), 3),
    ("batch", np.stack([DST, DST[::-1]]), np.stack([SRC, SRC]), 6),
]


@pytest.mark.parametrize(
    "adj, pad_idx", [c[1:] for c in DENSE_CASES], ids=[c[0] for c in DENSE_CASES]
)
def test_dense_to_sparse_indices_match_e3x(adj, pad_idx):
    adj = jnp.asarray(adj, jnp.int32)
    actual = ops.dense_to_sparse_indices(adj, pad_idx)
    expected = e3x.ops.dense_to_sparse_indices(adj, pad_idx)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype == jnp.int32
        np.testing.assert_array_equal(a, e)
    if pad_idx == 5 and adj.ndim == 2:
        np.testing.assert_array_equal(actual[0], DST[:7])  # row-major: the sparse lists above
        np.testing.assert_array_equal(actual[1], SRC[:7])


@pytest.mark.parametrize(
    "dst, src, pad_idx", [c[1:] for c in SPARSE_CASES], ids=[c[0] for c in SPARSE_CASES]
)
def test_sparse_to_dense_indices_match_e3x(dst, src, pad_idx):
    dst, src = jnp.asarray(dst, jnp.int32), jnp.asarray(src, jnp.int32)
    actual = ops.sparse_to_dense_indices(dst, src, pad_idx)
    expected = e3x.ops.sparse_to_dense_indices(dst, src, pad_idx)
    assert actual.dtype == expected.dtype == jnp.int32
    np.testing.assert_array_equal(actual, expected)
    if pad_idx == 5 and dst.ndim == 1:
        np.testing.assert_array_equal(actual, ADJ)


def test_degree_masks_match_e3x():
    for max_degree in range(5):
        even, odd = ops.even_degree_mask(max_degree), ops.odd_degree_mask(max_degree)
        np.testing.assert_array_equal(even, e3x.nn.even_degree_mask(max_degree))
        np.testing.assert_array_equal(odd, e3x.nn.odd_degree_mask(max_degree))
        assert even.shape == ((max_degree + 1) ** 2, 1) and even.dtype == jnp.bool_
    assert ops.odd_degree_mask(2)[:, 0].tolist() == [False, True, True, True] + [False] * 5


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
def test_inverse_softplus_matches_e3x(x64):
    with jax.enable_x64(x64):
        x = jnp.asarray(np.geomspace(1e-3, 30.0, 50), jnp.result_type(float))
        actual, expected = ops.inverse_softplus(x), e3x.ops.inverse_softplus(x)
        assert actual.dtype == expected.dtype == x.dtype
        assert relative_error(actual, expected) <= tolerance(x.dtype)
        # It inverts softplus: back to x to rounding.
        assert relative_error(jax.nn.softplus(actual), x) <= 10 * tolerance(x.dtype)


@functools.cache
def _norms(x64: bool):
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        rng = np.random.default_rng(4)
        x = rng.standard_normal((4, 5, 3))
        x[0, 0] = 0.0  # a zero vector
        # A tiny and a large vector. (In float32 e3x scales every norm by the largest entry of
        # the whole array, so a vector 1e-19 times smaller than it comes out as 0; eqmlip
        # scales each norm by its own entries, see tests/ops/test_segment.py.)
        x[1, 1] = [1e-25, -2e-25, 0.0] if x64 else [1e-6, -2e-6, 0.0]
        x[2, 2] = [3e15, 1.0, -2e15] if x64 else [3e4, 1.0, -2e4]
        x = jnp.asarray(x, dtype)

        def run(segment, x):
            cases = {
                "norm": lambda x: segment.norm(x, axis=-1),
                "norm-keepdims": lambda x: segment.norm(x, axis=-1, keepdims=True),
                "norm-axes": lambda x: segment.norm(x, axis=(0, 2)),
                "normalize": lambda x: segment.normalize(x, axis=-1),
                "normalize-and-norm": lambda x: segment.normalize_and_return_norm(x, axis=-1),
                "normalize-and-norm-keepdims": lambda x: segment.normalize_and_return_norm(
                    x, axis=-1, keepdims=True
                ),
            }
            out = {}
            for name, fn in cases.items():

                def loss(x, fn=fn):
                    total = jnp.zeros((), dtype)
                    for leaf in jax.tree.leaves(fn(x)):  # fixed weights of the leaf's shape
                        w = jnp.cos(jnp.arange(leaf.size, dtype=dtype)).reshape(leaf.shape)
                        total = total + jnp.sum(leaf * w)
                    return total

                out[name] = (fn(x), jax.grad(loss)(x))
            return out

        # x is an argument, not a constant: XLA's constant folding rewrites the scaled sum
        # of squares of the tiny vector into 0/0 (with traced inputs it does not).
        ours = jax.device_get(jax.jit(functools.partial(run, ops.segment))(x))
        theirs = jax.device_get(jax.jit(functools.partial(run, e3x.ops))(x))
        return ours, theirs, dtype


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
def test_norms_match_e3x(x64):
    ours, theirs, dtype = _norms(x64)
    for name in ours:
        (value, grad), (expected, expected_grad) = ours[name], theirs[name]
        for a, e in zip(jax.tree.leaves(value), jax.tree.leaves(expected), strict=True):
            assert a.shape == e.shape and a.dtype == dtype, name
            # Per entry: the norms span 40 orders of magnitude.
            scale = np.maximum(np.abs(np.asarray(e, np.float64)), np.finfo(dtype).tiny)
            assert np.max(np.abs(a - e) / scale) <= 2 * tolerance(dtype), name
        assert np.all(np.isfinite(grad)), name
        assert relative_error(grad, expected_grad) <= tolerance(dtype), name
