"""eqmlip.ops.segment: segment sums and indexed softmax."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import ops

K = jr.PRNGKey
N = 4
DST = np.array([0, 0, 1, 1, 1, 2, 3, 3])


@hypothesis.given(
    logits=hnp.arrays(np.float64, (DST.size, 2), elements=st.floats(-30.0, 30.0)),
    mask=hnp.arrays(np.float64, (DST.size,), elements=st.sampled_from([0.0, 0.25, 1.0])),
)
def test_indexed_softmax_sums_to_one_or_zero(logits, mask):
    """Per destination and head, the weights sum to 1, or are all 0 when every mask is 0."""
    with jax.enable_x64(True):
        weights = np.asarray(
            ops.segment.indexed_softmax(
                jnp.asarray(logits),
                jnp.asarray(mask),
                dst_idx=jnp.asarray(DST),
                num_segments=N,
            )
        )
    for node in range(N):
        rows = DST == node
        total = weights[rows].sum(axis=0)
        expected = 1.0 if np.any(mask[rows] > 0) else 0.0
        np.testing.assert_allclose(total, expected, rtol=0, atol=1e-12)
    assert np.all(weights >= 0) and not np.any(weights[mask == 0])


def test_deterministic_segment_sum():
    data = jr.normal(K(4), (50, 3, 2))
    ids = jr.randint(K(5), (50,), -2, 9)  # some out of range, some segments empty
    expected = jax.jit(lambda d, i: jax.ops.segment_sum(d, i, num_segments=7))(data, ids)
    actual = jax.jit(lambda d, i: ops.segment.segment_sum(d, i, 7, deterministic=True))(data, ids)
    assert actual.shape == (7, 3, 2)
    assert np.allclose(actual, expected, atol=1e-6)
    again = jax.jit(lambda d, i: ops.segment.segment_sum(d, i, 7, deterministic=True))(data, ids)
    assert np.array_equal(np.asarray(actual), np.asarray(again))
    grad = jax.jit(
        jax.grad(lambda d: jnp.sum(ops.segment.segment_sum(d, ids, 7, deterministic=True) ** 2))
    )(data)
    expected_grad = jax.jit(jax.grad(lambda d: jnp.sum(jax.ops.segment_sum(d, ids, 7) ** 2)))(data)
    assert np.allclose(grad, expected_grad, atol=1e-5)
    empty = jax.jit(lambda d, i: ops.segment.segment_sum(d, i, 3, deterministic=True))(
        jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32)
    )
    assert empty.shape == (3, 2) and not np.any(np.asarray(empty))


def _numpy_segment_sum(data, ids, num_segments):
    out = np.zeros((num_segments, *data.shape[1:]), data.dtype)
    for row, i in zip(data, ids, strict=True):
        if 0 <= i < num_segments:
            out[i] += row
    return out


def test_segment_sum_drops_out_of_range_ids():
    """Items with a negative id or one `>= num_segments` add nowhere; empty segments are 0."""
    data = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], np.float32)
    ids = np.array([0, -1, 2, 3, 2, -7, 0], np.int32)  # 3 is out of range, segment 1 empty
    out = jax.jit(lambda d, i: ops.segment.segment_sum(d, i, 3))(data, ids)
    assert out.shape == (3,) and out.dtype == jnp.float32
    assert np.array_equal(np.asarray(out), [65.0, 0.0, 20.0])


@pytest.mark.parametrize("rest", [(), (3,), (2, 5), (4, 0)], ids=["1d", "3", "2x5", "4x0"])
def test_segment_sum_matches_jax_and_numpy(x64, rest):
    """Values, and gradients for a random cotangent, equal `jax.ops.segment_sum`'s (which also
    drops out-of-range ids), for any trailing shape, in the dtype of the data."""
    dtype = jnp.float64 if x64 else jnp.float32
    data = jr.normal(K(6), (40, *rest), dtype)
    ids = jr.randint(K(7), (40,), -3, 10)  # segments 0..6, some ids out of range on both sides
    cotangent = jr.normal(K(8), (7, *rest), dtype)
    ours = jax.jit(lambda d: ops.segment.segment_sum(d, ids, 7))
    theirs = jax.jit(lambda d: jax.ops.segment_sum(d, ids, num_segments=7))
    out = ours(data)
    assert out.shape == (7, *rest) and out.dtype == dtype
    np.testing.assert_allclose(
        out, _numpy_segment_sum(np.asarray(data), np.asarray(ids), 7), rtol=1e-6, atol=1e-6
    )
    _, vjp_ours = jax.vjp(ours, data)
    _, vjp_theirs = jax.vjp(theirs, data)
    (grad,), (expected,) = vjp_ours(cotangent), vjp_theirs(cotangent)
    # A gather: exactly the cotangent's row, or 0 for a dropped item.
    assert np.array_equal(np.asarray(grad), np.asarray(expected))
    dropped = (np.asarray(ids) < 0) | (np.asarray(ids) >= 7)
    assert dropped.any() and not np.any(np.asarray(grad)[dropped])


def test_segment_sum_forward_mode_and_second_order_match_jax():
    """The custom tangent rule gives `jax.ops.segment_sum`'s tangents in forward mode and its
    second derivatives (reverse over reverse, as a forces loss takes them)."""
    data = jr.normal(K(11), (30, 3))
    ids = jr.randint(K(12), (30,), -2, 8)  # segments 0..5, some ids out of range
    tangent = jr.normal(K(13), (30, 3))
    ours = lambda d: ops.segment.segment_sum(d, ids, 6)  # noqa: E731
    theirs = lambda d: jax.ops.segment_sum(d, ids, num_segments=6)  # noqa: E731
    out, out_dot = jax.jit(lambda d, t: jax.jvp(ours, (d,), (t,)))(data, tangent)
    ref, ref_dot = jax.jit(lambda d, t: jax.jvp(theirs, (d,), (t,)))(data, tangent)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_dot, ref_dot, rtol=1e-6, atol=1e-6)

    def second(f):
        inner = jax.grad(lambda d: jnp.sum(jnp.sin(f(d)) ** 3))
        return jax.jit(jax.grad(lambda d: jnp.sum(jnp.cos(inner(d)) * tangent)))(data)

    np.testing.assert_allclose(second(ours), second(theirs), rtol=1e-5, atol=1e-6)


def test_segment_sum_under_vmap_and_empty_inputs():
    """Batched data and ids (each batch its own ids) give the per-batch sums and gradients;
    no items, or no segments, give zeros of the right shape."""
    data = jr.normal(K(9), (3, 20, 2))
    ids = jr.randint(K(10), (3, 20), -2, 7)
    batched = jax.jit(jax.vmap(lambda d, i: ops.segment.segment_sum(d, i, 5)))
    out = batched(data, ids)
    assert out.shape == (3, 5, 2)
    for b in range(3):
        np.testing.assert_allclose(
            out[b], _numpy_segment_sum(np.asarray(data[b]), np.asarray(ids[b]), 5), atol=1e-6
        )
    grad = jax.jit(jax.grad(lambda d: jnp.sum(jnp.sin(batched(d, ids)))))(data)
    reference = jax.vmap(lambda d, i: jax.ops.segment_sum(d, i, num_segments=5))
    expected = jax.jit(jax.grad(lambda d: jnp.sum(jnp.sin(reference(d, ids)))))(data)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    empty = jax.jit(lambda d, i: ops.segment.segment_sum(d, i, 3))(
        jnp.zeros((0, 2)), jnp.zeros((0,), jnp.int32)
    )
    assert empty.shape == (3, 2) and not np.any(np.asarray(empty))
    none = ops.segment.segment_sum(jnp.ones((4, 2)), jnp.zeros((4,), jnp.int32), 0)
    assert none.shape == (0, 2)


def _eqns(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in its equations' parameters."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def test_segment_sum_gradient_is_a_gather_promised_in_bounds():
    """The gradient is one gather promised in bounds (out-of-range ids read a zero row padded
    onto the cotangent), with no items-sized select after it, the point of not calling
    `jax.ops.segment_sum`; the value's scatter-add skips the dropped items itself."""
    ids = jnp.array([0, 5, -1, 2])
    jaxpr = jax.make_jaxpr(jax.grad(lambda d: jnp.sum(ops.segment.segment_sum(d, ids, 3) ** 2)))(
        jnp.ones((4, 2))
    )
    eqns = list(_eqns(jaxpr.jaxpr))
    modes = {(e.primitive.name, e.params["mode"]) for e in eqns if "mode" in e.params}
    mode = jax.lax.GatherScatterMode
    assert modes == {
        ("gather", mode.PROMISE_IN_BOUNDS),
        ("scatter-add", mode.FILL_OR_DROP),
    }, jaxpr
    items_sized_selects = [
        e for e in eqns if e.primitive.name == "select_n" and e.outvars[0].aval.shape == (4, 2)
    ]
    assert not items_sized_selects, jaxpr


@jax.jit
def _norm_and_grad(x):
    return ops.segment.norm(x, axis=-1), jax.grad(lambda x: jnp.sum(ops.segment.norm(x, axis=-1)))(
        x
    )


def test_norm_is_safe_and_scales_each_vector_by_its_own_entries():
    """A zero vector has norm 0 and gradient 0; a tiny vector beside a huge one keeps its norm
    (e3x's `ops.norm` scales by the largest entry of the whole array and returns 0 here)."""
    x = jnp.asarray([[0.0, 0.0, 0.0], [3e-30, -4e-30, 0.0], [3e30, 0.0, -4e30]], jnp.float32)
    n, g = _norm_and_grad(x)
    np.testing.assert_allclose(n, [0.0, 5e-30, 5e30], rtol=1e-6)
    np.testing.assert_allclose(g, [[0, 0, 0], [0.6, -0.8, 0], [0.6, 0, -0.8]], rtol=1e-6)
    unit, norm = ops.segment.normalize_and_return_norm(x, axis=-1, keepdims=True)
    assert norm.shape == (3, 1)
    np.testing.assert_allclose(unit[2], [0.6, 0, -0.8], rtol=1e-6)
    # |x|^2 below the smallest normal float32: left unnormalised, as e3x does.
    np.testing.assert_array_equal(unit[:2], x[:2])


def test_indexed_extrema_and_index_conversions_on_small_graphs():
    dst, src = jnp.asarray([0, 2, 0, 2, 2]), jnp.asarray([1, 0, 2, 1, 3])
    x = jnp.asarray([1.0, -2.0, 3.0, 5.0, 0.5])
    np.testing.assert_array_equal(
        ops.indexed_max(x, dst_idx=dst, num_segments=3), [3.0, -np.inf, 5.0]
    )
    np.testing.assert_array_equal(
        ops.indexed_min(x, True, dst_idx=dst, num_segments=3), [1.0, -2.0, 1.0, -2.0, -2.0]
    )
    adj = ops.sparse_to_dense_indices(dst, src, 4)
    np.testing.assert_array_equal(adj, [[1, 2, 4], [4, 4, 4], [0, 1, 3], [4, 4, 4]])
    # pad_idx may be any concrete integer scalar, as in e3x.
    np.testing.assert_array_equal(ops.sparse_to_dense_indices(dst, src, jnp.asarray(4)), adj)
    back = ops.dense_to_sparse_indices(adj, 4)
    np.testing.assert_array_equal(back[0], [0, 0, 2, 2, 2])  # sorted by destination
    np.testing.assert_array_equal(back[1], [1, 2, 0, 1, 3])
    dense = jnp.asarray([[1.0, 3.0, 9.0], [7.0, 7.0, 7.0]])
    where = jnp.asarray([[True, True, False], [False, False, False]])
    maxima = ops.indexed_max(dense, adj_idx=jnp.zeros((2, 3), jnp.int32), where=where)
    np.testing.assert_array_equal(maxima, [3.0, np.finfo(np.float32).min])


def test_indexed_extrema_and_index_conversions_name_bad_input():
    # (Wrong dtypes and shapes are the annotations' to catch; these are the value errors.)
    with pytest.raises(ValueError, match=r"^indexed_min: sparse reductions need dst_idx and"):
        ops.indexed_min(jnp.ones(3), dst_idx=jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match=r"^dense_to_sparse_indices: adj_idx must be concrete"):
        jax.jit(ops.dense_to_sparse_indices)(jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"pad_idx must be an int >= 1 or None, got 0"):
        ops.sparse_to_dense_indices(jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32), 0)
    with pytest.raises(ValueError, match=r"^even_degree_mask: max_degree must be a non-negative"):
        ops.even_degree_mask(-1)
