"""Shared graphs, modules and helpers of the MessagePass and attention tests.

Modules are built once per test module with `eqx.filter_eval_shape` and filled with NumPy
draws (running the initialisers would compile once per parameter shape); every Hypothesis
example of a test reuses one compiled function.
"""

import functools
from typing import Any

import equinox as eqx
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from eqmlip import ops, testing
from eqmlip.nn import MessagePass, MultiHeadAttention, SelfAttention

K = jr.PRNGKey
N, F, NUM_BASIS = 4, 2, 3
# A small directed graph (no self-pairs): sparse lists, and the same as a dense adjacency
# whose rows are padded with N.
DST = np.array([0, 0, 1, 1, 1, 2, 3, 3])
SRC = np.array([1, 2, 0, 2, 3, 0, 1, 2])
ADJ = np.array([[1, 2, N], [0, 2, 3], [0, N, N], [1, 2, N]])
# Where each sparse edge sits in ADJ.
DENSE_ROWS = DST
DENSE_COLS = np.array([list(ADJ[d]).index(s) for d, s in zip(DST, SRC, strict=True)])
Array = jax.Array


def _filled(make, seed=0):
    """The module `make()` builds, with N(0, 0.5^2) parameters drawn by NumPy (no compile)."""
    skeleton = eqx.filter_eval_shape(make)
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.asarray(0.5 * rng.standard_normal(leaf.shape), leaf.dtype)
        return leaf

    return jax.tree.map(fill, skeleton, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


# (name) -> (constructor, kwargs, input descriptions (P, L, F), index form)
MODULES: dict[str, tuple[Any, dict[str, Any], list[tuple[int, int, int]], str]] = {
    "message-tensor": (MessagePass, dict(in_num_parity=2, in_max_degree=1, features=F, basis_max_degree=2, num_basis=NUM_BASIS), [(2, 1, F)], "sparse"),
    "message-fused-no-pseudo": (MessagePass, dict(in_num_parity=1, in_max_degree=2, features=F, basis_max_degree=1, num_basis=NUM_BASIS, use_fused_tensor=True, include_pseudotensors=False), [(1, 2, F)], "dense"),
    "message-standard-order": (MessagePass, dict(in_num_parity=2, in_max_degree=1, features=F, basis_max_degree=1, num_basis=NUM_BASIS, max_degree=2, cartesian_order=False), [(2, 1, F)], "dense"),
    "self-attention-tensor": (SelfAttention, dict(in_num_parity=2, in_max_degree=1, in_features=F, basis_max_degree=1, num_basis=NUM_BASIS, num_heads=2, qkv_features=4), [(2, 1, F)], "sparse"),
    "self-attention-fused": (SelfAttention, dict(in_num_parity=2, in_max_degree=2, in_features=F, basis_max_degree=1, num_basis=NUM_BASIS, use_fused_tensor=True), [(2, 2, F)], "dense"),
    "cross-attention": (MultiHeadAttention, dict(q_num_parity=2, q_max_degree=2, q_features=F, kv_num_parity=1, kv_max_degree=1, kv_features=3, basis_max_degree=1, num_basis=NUM_BASIS, num_heads=2, qkv_features=4), [(2, 2, F), (1, 1, 3)], "sparse"),
}  # fmt: skip


@functools.cache
def _module(name: str, x64: bool):
    cls, kwargs, _, _ = MODULES[name]
    with jax.enable_x64(x64):
        return _filled(lambda: cls(**kwargs, key=K(0)), seed=len(name))


def _indices(form: str) -> dict[str, Array]:
    if form == "sparse":
        return dict(dst_idx=jnp.asarray(DST, jnp.int32), src_idx=jnp.asarray(SRC, jnp.int32))
    return dict(adj_idx=jnp.asarray(ADJ, jnp.int32))


def _edge_vectors(pos, indices):
    if "adj_idx" in indices:
        return pos[jnp.minimum(indices["adj_idx"], N - 1)] - pos[:, None, :]
    return pos[indices["src_idx"]] - pos[indices["dst_idx"]]


def _apply(model, pos, features, cutoff, indices):
    """Run any of the modules on a graph with positions `pos`."""
    basis_degree = model.filter.max_degree if model.filter is not None else 1
    cartesian = getattr(model.tensor, "cartesian_order", True)
    basis = ops.basis(
        _edge_vectors(pos, indices),
        max_degree=basis_degree,
        num=NUM_BASIS,
        radial_fn=ops.reciprocal_bernstein,
        cutoff_fn=functools.partial(ops.smooth_cutoff, cutoff=4.0),
        cartesian_order=cartesian,
    )
    if isinstance(model, MessagePass):
        (x,) = features
        return model(x, basis, **indices)
    if isinstance(model, SelfAttention):
        (x,) = features
        return model(x, basis, cutoff, **indices)
    x_q, x_kv = features
    return model(x_q, x_kv, basis, cutoff, **indices)


@eqx.filter_jit
def _transformed(model, pos, features, cutoff, matrix, indices):
    """`(f(g.x), g.f(x))` for the O(3) element `matrix = s R`: positions `r @ matrix`,
    features `x @ D(R)` and, when `s = -1`, reflected."""
    sign = jnp.sign(jnp.linalg.det(matrix))
    rotation = matrix * sign
    cartesian = getattr(model.tensor, "cartesian_order", True)
    out = _apply(model, pos, features, cutoff, indices)
    degree = max(ops.layouts.feature_shape(x.shape)[1] for x in (*features, out))
    wigner = ops.wigner_d(rotation, degree, cartesian_order=cartesian)

    def act(x):
        dim = x.shape[-2]
        moved = ops.rotate(x, wigner[:dim, :dim])
        return jnp.where(sign < 0, ops.reflect(moved), moved)

    moved = _apply(model, pos @ matrix, tuple(act(x) for x in features), cutoff, indices)
    return moved, act(out)


def _assert_close(actual, expected, dtype):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected), initial=0.0), 1.0)
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= testing.default_tolerance(dtype) * scale, (error, scale)


_values = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False)
# Cutoff values are 0 or not tiny: with all cutoffs near 1e-38, the gradient of any softmax
# normalisation (e3x's too) overflows through 1 / denominator**2.
_cutoffs = st.one_of(st.just(0.0), st.floats(1e-3, 1.0))


@st.composite
def _graph_inputs(draw, name):
    """Positions (away from each other), features and cutoff values; shapes fixed per module."""
    _, _, shapes, form = MODULES[name]
    grid = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64) * 1.5
    jitter = draw(hnp.arrays(np.float64, (N, 3), elements=st.floats(-0.4, 0.4)))
    features = tuple(
        draw(hnp.arrays(np.float64, (N, p, (lmax + 1) ** 2, f), elements=_values))
        for p, lmax, f in shapes
    )
    index_shape = ADJ.shape if form == "dense" else DST.shape
    cutoff = draw(hnp.arrays(np.float64, index_shape, elements=_cutoffs))
    return grid + jitter, features, cutoff


# ------------------------------------------------------------------------------------------
# Padding
# ------------------------------------------------------------------------------------------

PAD = 3


@eqx.filter_jit
def _padded_and_plain(model, pos, features, cutoff, pad_src, pad_cutoff):
    """Outputs and input gradients on the plain sparse graph, then with `PAD` padding edges
    (destination N, arbitrary sources) and on the dense graph padded with N."""

    def loss_and_out(feats, indices, cut):
        out = _apply(model, pos, feats, cut, indices)
        return jnp.sum(out**2), out

    grad = jax.grad(loss_and_out, has_aux=True)
    plain = grad(features, _indices("sparse"), cutoff)
    padded_indices = dict(
        dst_idx=jnp.concatenate([jnp.asarray(DST, jnp.int32), jnp.full((PAD,), N, jnp.int32)]),
        src_idx=jnp.concatenate([jnp.asarray(SRC, jnp.int32), pad_src]),
    )
    padded = grad(features, padded_indices, jnp.concatenate([cutoff, pad_cutoff]))
    # The same graph as a dense adjacency (`ADJ` lists exactly the edges of DST/SRC).
    dense_cutoff = jnp.zeros(ADJ.shape, cutoff.dtype).at[DENSE_ROWS, DENSE_COLS].set(cutoff)
    dense = grad(features, _indices("dense"), dense_cutoff)
    return plain, padded, dense


@functools.cache
def _isolated_node_fn():
    @eqx.filter_jit
    def run(model, pos, features, cutoff):
        def loss(feats, cut):
            out = _apply(model, pos, feats, cut, _indices("sparse"))
            return jnp.sum(out**2), out

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(features, cutoff)

    return run


# ------------------------------------------------------------------------------------------
# Construction, errors, transformations
# ------------------------------------------------------------------------------------------


def _inputs_for(name, dtype=jnp.float32):
    _, _, shapes, form = MODULES[name]
    pos = jnp.asarray(np.random.default_rng(0).standard_normal((N, 3)), dtype)
    feats = tuple(jnp.ones((N, p, (lmax + 1) ** 2, f), dtype) for p, lmax, f in shapes)
    cutoff = jnp.ones(ADJ.shape if form == "dense" else DST.shape, dtype)
    return pos, feats, cutoff, _indices(form)


# The property tests shared by the MessagePass and attention test files.


def check_equivariance(x64, name, data, matrix):
    """Rotating positions and features (`x @ D(R)`) rotates the output; inverting positions
    and reflecting features (pseudotensors keep their sign) reflects it."""
    pos, features, cutoff = data.draw(_graph_inputs(name))
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        model = _module(name, x64)
        moved_out, out_moved = _transformed(
            model,
            jnp.asarray(pos, dtype),
            tuple(jnp.asarray(x, dtype) for x in features),
            jnp.asarray(cutoff, dtype),
            jnp.asarray(matrix, dtype),
            _indices(MODULES[name][3]),
        )
        assert moved_out.dtype == dtype
        _assert_close(moved_out, out_moved, dtype)


def check_padding(name, data, pad_src, pad_cutoff):
    """Padding edges (sparse: destination N; dense: index N) leave the real outputs and the
    gradients unchanged and finite (NaN checks are on in this test suite)."""
    pos, features, cutoff = data.draw(_graph_inputs(name))
    model = _module(name, False)
    (g0, y0), (g1, y1), (g2, y2) = _padded_and_plain(
        model,
        jnp.asarray(pos, jnp.float32),
        tuple(jnp.asarray(x, jnp.float32) for x in features),
        jnp.asarray(cutoff, jnp.float32),
        jnp.asarray(pad_src),
        jnp.asarray(pad_cutoff, jnp.float32),
    )
    for y, g in ((y1, g1), (y2, g2)):
        assert np.all(np.isfinite(np.asarray(y))) and np.all(np.isfinite(np.asarray(g[0])))
        _assert_close(y, y0, jnp.float32)
        _assert_close(g[0], g0[0], jnp.float32)
