"""eqmlip.nn.MessagePass, MultiHeadAttention, SelfAttention side by side with e3x 1.0.2."""

import functools
from typing import Any

import e3x
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import ops
from eqmlip.interop import from_flax
from eqmlip.interop._flax import flax_slots
from eqmlip.nn import MessagePass, MultiHeadAttention, SelfAttention

from ..helpers import relative_error, tolerance

pytestmark = pytest.mark.parity

K = jax.random.PRNGKey
NUM_NODES, NUM_BASIS = 5, 3


@eqx.filter_jit
def _call(module, *args, **kwargs):
    """One compilation per module structure and input shapes."""
    return module(*args, **kwargs)


def _flax_call(flax_module, variables, *args, **kwargs) -> Any:
    """`flax_module.apply`, jitted (one compilation instead of one per operation).

    NaN checks are off inside e3x: its padded dense softmax makes intermediate NaNs (0/0 on
    all-padding rows) that it then masks out of the result.
    """
    with jax.debug_nans(False):
        return eqx.filter_jit(flax_module.apply)(variables, *args, **kwargs)


def _random_variables(module, seed):
    """Flax variables in `from_flax`'s layout for `module`, filled with N(0, 1) (NumPy draws).

    e3x's `apply` rejects a missing, extra or mis-shaped parameter, so this also checks the
    layout; random values also exercise entries that e3x initialises to zero.
    """
    rng = np.random.default_rng(seed)
    variables: dict[str, Any] = {}
    for slot in flax_slots(module)[0]:
        leaf = slot.get(module)
        *parents, name = slot.path
        node = variables
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = jnp.asarray(rng.standard_normal(leaf.shape).astype(leaf.dtype))
    return variables


@functools.cache
def _graph(padded: bool):
    """A small directed graph as sparse lists and as a dense adjacency.

    Unpadded: the dense adjacency is full (3 neighbours each). Padded: node 4 has no incoming
    edge (zero messages / bias-only attention output), two padding edges (destination = N)
    are appended, and rows are padded with N.
    """
    if not padded:
        adj = np.array([[1, 2, 3], [0, 2, 4], [0, 1, 3], [4, 0, 1], [0, 1, 2]])
        dst = np.repeat(np.arange(NUM_NODES), 3)
        return dst, adj.reshape(-1), adj
    dst = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, NUM_NODES, NUM_NODES])
    src = np.array([1, 2, 3, 0, 2, 0, 1, 3, 4, 0, NUM_NODES, 2])
    adj = np.full((NUM_NODES, 4), NUM_NODES)
    for i in range(NUM_NODES):
        neighbours = src[dst == i]
        adj[i, : neighbours.size] = neighbours
    return dst, src, adj


def _positions(dtype):
    rng = np.random.default_rng(3)
    return jnp.asarray(2.0 * rng.standard_normal((NUM_NODES, 3)).astype(np.float64), dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _basis(vectors, max_degree, cartesian=True):
    return ops.basis(
        vectors,
        max_degree=max_degree,
        num=NUM_BASIS,
        radial_fn=ops.reciprocal_bernstein,
        cutoff_fn=functools.partial(ops.smooth_cutoff, cutoff=6.0),
        cartesian_order=cartesian,
    )


def _indices_and_basis(form, basis_degree, dtype, cartesian=True):
    x64 = bool(jax.config.read("jax_enable_x64"))
    return _cached_indices_and_basis(form, basis_degree, np.dtype(dtype).name, cartesian, x64)


@functools.cache
def _cached_indices_and_basis(form, basis_degree, dtype, cartesian, x64):
    del x64  # part of the cache key: index dtypes differ with and without x64
    """`(index kwargs, basis, per-edge shape)` for `form` in sparse/padded-sparse/dense/
    padded-dense."""
    dst, src, adj = _graph(form.startswith("padded"))
    pos = _positions(dtype)
    if form.endswith("sparse"):
        safe_src, safe_dst = np.minimum(src, NUM_NODES - 1), np.minimum(dst, NUM_NODES - 1)
        vectors = pos[safe_src] - pos[safe_dst]
        kwargs = dict(dst_idx=jnp.asarray(dst), src_idx=jnp.asarray(src))
        vectors = vectors + jnp.asarray([0.3, -0.2, 0.1], dtype)
    else:
        vectors = pos[np.minimum(adj, NUM_NODES - 1)] - pos[:, None, :]
        vectors = vectors + jnp.asarray([0.3, -0.2, 0.1], dtype)
        kwargs = dict(adj_idx=jnp.asarray(adj))
    return kwargs, _basis(vectors, basis_degree, cartesian)


def _features(seed, num_parity, max_degree, features, dtype, batch=(NUM_NODES,)):
    shape = (*batch, num_parity, (max_degree + 1) ** 2, features)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# ------------------------------------------------------------------------------------------
# MessagePass
# ------------------------------------------------------------------------------------------

# (id, x64, P, L, L_basis, extra constructor kwargs, index form, edge weights). Every case
# runs in float32; a representative subset also under x64 (each case costs two compilations).
MESSAGE_CASES = [
    ("sparse", False, 2, 1, 2, {}, "sparse", False),
    ("sparse", True, 2, 1, 2, {}, "sparse", False),
    ("padded-sparse-fused-weights", False, 1, 1, 2, {"use_fused_tensor": True}, "padded-sparse", True),
    ("dense-no-pseudo", False, 2, 2, 1, {"include_pseudotensors": False}, "dense", False),
    ("padded-dense-fused", False, 1, 2, 1, {"use_fused_tensor": True}, "padded-dense", False),
    ("padded-dense-fused", True, 1, 2, 1, {"use_fused_tensor": True}, "padded-dense", False),
    ("scalar-inputs", False, 1, 0, 2, {}, "sparse", False),
    ("scalar-only-fused", False, 1, 0, 0, {"use_fused_tensor": True}, "dense", False),
    ("above-input-degree-weights-bias", False, 2, 1, 1, {"max_degree": 2, "use_basis_bias": True}, "padded-dense", True),
    ("above-input-degree-weights-bias", True, 2, 1, 1, {"max_degree": 2, "use_basis_bias": True}, "padded-dense", True),
    ("standard-order-no-pseudo-fused", False, 2, 2, 2, {"cartesian_order": False, "max_degree": 1, "include_pseudotensors": False, "use_fused_tensor": True}, "sparse", False),
]  # fmt: skip


def _ids(cases):
    return [f"{case[0]}-{'x64' if case[1] else 'f32'}" for case in cases]


def _message_pass(p, lmax, lb, kwargs, features=3):
    return eqx.filter_eval_shape(
        lambda: MessagePass(
            in_num_parity=p,
            in_max_degree=lmax,
            features=features,
            basis_max_degree=lb,
            num_basis=NUM_BASIS,
            key=K(0),
            **kwargs,
        )
    )


def _weights(kwargs, dtype):
    idx = kwargs.get("dst_idx", kwargs.get("adj_idx"))
    assert idx is not None
    rng = np.random.default_rng(9)
    return jnp.asarray(rng.uniform(0.2, 1.5, (*idx.shape, 1, 1, 1)), dtype)


@pytest.mark.parametrize(
    "x64, p, lmax, lb, kwargs, form, with_weights",
    [case[1:] for case in MESSAGE_CASES],
    ids=_ids(MESSAGE_CASES),
)
def test_message_pass_matches_e3x(x64, p, lmax, lb, kwargs, form, with_weights):
    with jax.enable_x64(x64):
        _check_message_pass(p, lmax, lb, kwargs, form, with_weights)


def _check_message_pass(p, lmax, lb, kwargs, form, with_weights):
    dtype = jnp.result_type(float)
    cartesian = kwargs.get("cartesian_order", True)
    indices, basis = _indices_and_basis(form, lb, dtype, cartesian)
    x = _features(1, p, lmax, 3, dtype)
    weights = _weights(indices, dtype) if with_weights else None
    module = _message_pass(p, lmax, lb, kwargs)
    variables = _random_variables(module, 5)
    flax_module = e3x.nn.MessagePass(**kwargs, param_dtype=dtype)
    expected = _flax_call(flax_module, variables, x, basis, weights, **indices)
    actual = _call(from_flax(module, variables), x, basis, weights, **indices)
    assert actual.shape == expected.shape
    assert actual.shape == (NUM_NODES, module.num_parity, (module.max_degree + 1) ** 2, 3)
    assert actual.dtype == expected.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)
    assert np.max(np.abs(np.asarray(expected))) > 0.1
    if form.startswith("padded"):  # node 4 receives nothing: zero messages, in both
        assert not np.any(np.asarray(actual)[4])


def test_parameter_trees_equal_e3x_init():
    """No parameter more or fewer than e3x's `init` makes (`apply` alone would not notice an
    extra one), with every optional parameter switched on."""
    x = _features(1, 2, 1, 3, jnp.float32)
    indices, basis = _indices_and_basis("sparse", 2, jnp.float32)
    cases: list[tuple[Any, Any]] = [
        (
            e3x.nn.MessagePass(use_fused_tensor=True, use_basis_bias=True),
            _message_pass(2, 1, 2, {"use_fused_tensor": True, "use_basis_bias": True}),
        ),
        (
            e3x.nn.SelfAttention(use_basis_bias=True, query_use_bias=True, key_use_bias=True),
            _self_attention(
                2, 1, 2, {"use_basis_bias": True, "query_use_bias": True, "key_use_bias": True}
            ),
        ),
    ]
    for flax_module, module in cases:
        expected = jax.eval_shape(flax_module.init, K(0), x, basis, **indices)
        assert jax.tree.map(jnp.shape, _random_variables(module, 0)) == jax.tree.map(
            jnp.shape, expected
        )


def test_message_pass_with_batch_axes_matches_e3x():
    """Leading batch axes shared by features, indices and basis (e3x vmaps over them)."""
    dtype = jnp.float32
    indices, basis = _indices_and_basis("padded-sparse", 1, dtype)
    batched = {k: jnp.stack([v, v[::-1]]) for k, v in indices.items()}
    basis = jnp.stack([basis, basis[::-1] * 0.5])
    x = _features(2, 2, 1, 3, dtype, batch=(2, NUM_NODES))
    module = _message_pass(2, 1, 1, {})
    variables = _random_variables(module, 2)
    expected = _flax_call(e3x.nn.MessagePass(), variables, x, basis, **batched)
    actual = _call(from_flax(module, variables), x, basis, **batched)
    assert actual.shape == expected.shape == (2, NUM_NODES, 2, 4, 3)
    assert relative_error(actual, expected) <= tolerance(dtype)


def test_message_pass_float32_stays_float32_under_x64():
    """e3x promotes float32 products to float64 under x64 (its float64 CG constant); eqmlip
    keeps the input dtype."""
    with jax.enable_x64(True):
        dtype = jnp.float32
        indices, basis = _indices_and_basis("sparse", 2, dtype)
        x = _features(1, 2, 1, 3, dtype)
        module = _message_pass(2, 1, 2, {"dtype": dtype})
        variables = _random_variables(module, 5)
        expected = _flax_call(e3x.nn.MessagePass(param_dtype=dtype), variables, x, basis, **indices)
        actual = _call(from_flax(module, variables), x, basis, **indices)
        assert expected.dtype == jnp.float64  # e3x's promotion (a known e3x issue)
        assert actual.dtype == jnp.float32
        assert relative_error(actual, expected) <= tolerance(jnp.float32)


# ------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------

# (id, x64, P, L, L_basis, constructor kwargs, index form, with cutoff)
ATTENTION_CASES = [
    ("sparse-defaults", False, 2, 1, 2, {}, "sparse", False),
    ("sparse-heads-cutoff-standard-order", False, 2, 2, 1, {"num_heads": 3, "qkv_features": 6, "out_features": 2, "cartesian_order": False}, "sparse", True),
    ("sparse-heads-cutoff-standard-order", True, 2, 2, 1, {"num_heads": 3, "qkv_features": 6, "out_features": 2, "cartesian_order": False}, "sparse", True),
    ("dense-heads-fused", False, 1, 2, 1, {"num_heads": 2, "qkv_features": 4, "use_fused_tensor": True}, "dense", True),
    ("padded-dense-no-qk", False, 2, 1, 1, {"num_heads": 2, "qkv_features": 4, "use_relative_positional_encoding_qk": False}, "padded-dense", True),
    ("padded-dense-no-qk", True, 2, 1, 1, {"num_heads": 2, "qkv_features": 4, "use_relative_positional_encoding_qk": False}, "padded-dense", True),
    ("padded-sparse-no-v", False, 2, 2, 2, {"num_heads": 2, "qkv_features": 4, "use_relative_positional_encoding_v": False}, "padded-sparse", True),
    ("no-relpos-no-output-bias", False, 1, 1, 1, {"use_relative_positional_encoding_qk": False, "use_relative_positional_encoding_v": False, "output_use_bias": False}, "sparse", False),
    ("all-biases-no-pseudo", False, 2, 1, 2, {"query_use_bias": True, "key_use_bias": True, "value_use_bias": True, "use_basis_bias": True, "include_pseudotensors": False, "max_degree": 1}, "padded-dense", True),
    ("scalar-inputs-above", False, 1, 0, 1, {"max_degree": 1, "num_heads": 2, "qkv_features": 4}, "sparse", True),
]  # fmt: skip


def _self_attention(p, lmax, lb, kwargs, features=3):
    return eqx.filter_eval_shape(
        lambda: SelfAttention(
            in_num_parity=p,
            in_max_degree=lmax,
            in_features=features,
            basis_max_degree=lb,
            num_basis=NUM_BASIS,
            key=K(0),
            **kwargs,
        )
    )


def _cutoff(indices, dtype):
    idx = indices.get("dst_idx", indices.get("adj_idx"))
    assert idx is not None
    rng = np.random.default_rng(4)
    return jnp.asarray(rng.uniform(0.1, 1.0, idx.shape), dtype)


@pytest.mark.parametrize(
    "x64, p, lmax, lb, kwargs, form, with_cutoff",
    [case[1:] for case in ATTENTION_CASES],
    ids=_ids(ATTENTION_CASES),
)
def test_self_attention_matches_e3x(x64, p, lmax, lb, kwargs, form, with_cutoff):
    with jax.enable_x64(x64):
        _check_self_attention(p, lmax, lb, kwargs, form, with_cutoff)


def _check_self_attention(p, lmax, lb, kwargs, form, with_cutoff):
    dtype = jnp.result_type(float)
    indices, basis = _indices_and_basis(form, lb, dtype, kwargs.get("cartesian_order", True))
    x = _features(1, p, lmax, 3, dtype)
    cutoff = _cutoff(indices, dtype) if with_cutoff else None
    module = _self_attention(p, lmax, lb, kwargs)
    variables = _random_variables(module, 6)
    flax_module = e3x.nn.SelfAttention(**kwargs, param_dtype=dtype)
    expected = _flax_call(flax_module, variables, x, basis, cutoff, **indices)
    actual = _call(from_flax(module, variables), x, basis, cutoff, **indices)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)
    assert np.max(np.abs(np.asarray(expected))) > 0.1
    if form.startswith("padded"):  # node 4 has no edge: only the output bias
        bias = np.zeros(actual.shape[1:], np.asarray(actual).dtype)
        if kwargs.get("output_use_bias", True):
            bias[0, 0] = variables["params"]["out"]["0+"]["bias"]
        np.testing.assert_allclose(actual[4], bias, rtol=0, atol=0)


# (id, (P, L, F) of queries, (P, L, F) of keys/values, kwargs)
CROSS_CASES = [
    ("P2-to-P1-sparse", False, (2, 2, 3), (1, 1, 2), {"num_heads": 2, "qkv_features": 4}, "sparse"),
    ("P1-to-P2-fused-padded-dense", True, (1, 1, 2), (2, 2, 3), {"use_fused_tensor": True, "out_features": 4}, "padded-dense"),
]  # fmt: skip


@pytest.mark.parametrize(
    "x64, q, kv, kwargs, form", [c[1:] for c in CROSS_CASES], ids=_ids(CROSS_CASES)
)
def test_multi_head_attention_matches_e3x(x64, q, kv, kwargs, form):
    """Cross-attention between inputs of different parity axes, degrees and features."""
    with jax.enable_x64(x64):
        _check_cross_attention(q, kv, kwargs, form)


def _check_cross_attention(q, kv, kwargs, form):
    dtype = jnp.result_type(float)
    indices, basis = _indices_and_basis(form, 1, dtype)
    x_q = _features(1, q[0], q[1], q[2], dtype)
    x_kv = _features(2, kv[0], kv[1], kv[2], dtype)
    module = eqx.filter_eval_shape(
        lambda: MultiHeadAttention(
            q_num_parity=q[0],
            q_max_degree=q[1],
            q_features=q[2],
            kv_num_parity=kv[0],
            kv_max_degree=kv[1],
            kv_features=kv[2],
            basis_max_degree=1,
            num_basis=NUM_BASIS,
            key=K(0),
            **kwargs,
        )
    )
    variables = _random_variables(module, 8)
    cutoff = _cutoff(indices, dtype)
    flax_module = e3x.nn.MultiHeadAttention(**kwargs, param_dtype=dtype)
    expected = _flax_call(flax_module, variables, x_q, x_kv, basis, cutoff, **indices)
    actual = _call(from_flax(module, variables), x_q, x_kv, basis, cutoff, **indices)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)


def test_head_grouping_is_e3xs():
    """With 2 heads, swapping the query/key grouping (f % H) for the value grouping
    (f // (F/H)) changes the output: the parity above is not an accident of symmetric heads."""
    dtype = jnp.float32
    indices, basis = _indices_and_basis("sparse", 1, dtype)
    x = _features(1, 2, 1, 3, dtype)
    kwargs = {"num_heads": 2, "qkv_features": 4}
    module = from_flax(
        _self_attention(2, 1, 1, kwargs), _random_variables(_self_attention(2, 1, 1, kwargs), 3)
    )
    cutoff = _cutoff(indices, dtype)
    actual = _call(module, x, basis, cutoff, **indices)
    # Permute the value features so that value feature f is weighted by head f % H instead.
    order = np.array([0, 2, 1, 3])  # f // 2 grouping of (0, 2 | 1, 3) becomes f % 2
    permuted = eqx.tree_at(
        lambda m: m.value.kernels, module, tuple(k[:, order] for k in module.value.kernels)
    )
    other = _call(permuted, x, basis, cutoff, **indices)
    assert relative_error(other, actual) > 1e-3


def test_all_zero_cutoff_gives_zero_attention_not_nan():
    """Deliberate difference: e3x returns NaN rows for a node whose every edge has cutoff 0;
    eqmlip returns the output bias there, and e3x's values everywhere else."""
    dtype = jnp.float32
    indices, basis = _indices_and_basis("sparse", 1, dtype)
    dst = np.asarray(indices["dst_idx"])
    cutoff = np.array(_cutoff(indices, dtype))
    cutoff[dst == 1] = 0.0  # node 1: every edge cut off
    cutoff = jnp.asarray(cutoff)
    x = _features(1, 2, 1, 3, dtype)
    module = _self_attention(2, 1, 1, {})
    variables = _random_variables(module, 6)
    expected = np.asarray(
        _flax_call(e3x.nn.SelfAttention(), variables, x, basis, cutoff, **indices)
    )
    loaded = from_flax(module, variables)
    actual = np.asarray(_call(loaded, x, basis, cutoff, **indices))
    assert np.all(np.isnan(expected[1])) and np.all(np.isfinite(actual))
    keep = np.arange(NUM_NODES) != 1
    assert relative_error(actual[keep], expected[keep]) <= tolerance(dtype)
    bias_only = np.zeros_like(actual[1])
    bias_only[0, 0] = np.asarray(loaded.out.bias)
    np.testing.assert_array_equal(actual[1], bias_only)
