import io
import re

import e3nn_jax as e3nn
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest
from jax.test_util import check_grads

from eqmlip.nn import BatchNorm

from ..helpers import relative_error, tolerance

IRREPS = e3nn.Irreps("2x0e + 1x1o + 0o + 1x1e + 1x2e")
BATCH, SAMPLE = 4, 2


def _dtype(x64: bool):
    return jnp.float64 if x64 else jnp.float32


def _clone(state: eqx.nn.State) -> eqx.nn.State:
    # `State.set` invalidates the state it is called on; a clone keeps the original usable.
    leaves, treedef = jtu.tree_flatten(state)
    return jtu.tree_unflatten(treedef, leaves)


def _stats(bn: BatchNorm, state: eqx.nn.State) -> tuple[jax.Array, jax.Array]:
    """The running (mean, var) of `bn` in `state`."""
    assert bn.state_index is not None
    return state.get(bn.state_index)


def _randomised(bn: BatchNorm, state: eqx.nn.State, key) -> tuple[BatchNorm, eqx.nn.State]:
    """Random weights, biases and running statistics (var > 0), so that none is trivial."""
    wkey, bkey, mkey, vkey = jr.split(key, 4)
    if bn.affine:
        assert bn.weights is not None and bn.biases is not None
        bn = eqx.tree_at(
            lambda m: (m.weights, m.biases),
            bn,
            (
                jr.normal(wkey, bn.weights.shape, bn.weights.dtype),
                jr.normal(bkey, bn.biases.shape, bn.biases.dtype),
            ),
        )
    if bn.state_index is not None:
        mean, var = _stats(bn, state)
        state = state.set(
            bn.state_index,
            (
                jr.normal(mkey, mean.shape, mean.dtype),
                jr.uniform(vkey, var.shape, var.dtype, 0.5, 2.0),
            ),
        )
    return bn, state


def _make(x64: bool, key, irreps=IRREPS, **kwargs) -> tuple[BatchNorm, eqx.nn.State]:
    bn, state = eqx.nn.make_with_state(BatchNorm)(irreps, dtype=_dtype(x64), **kwargs)
    return _randomised(bn, state, key)


def _input(key, dtype, shape=(BATCH, SAMPLE), irreps=IRREPS) -> e3nn.IrrepsArray:
    return e3nn.IrrepsArray(irreps, 2.0 * jr.normal(key, (*shape, irreps.dim), dtype) + 0.5)


# --- equivariance -------------------------------------------------------------------------------


@st.composite
def orthogonal_matrices(draw) -> np.ndarray:
    """A rotation (from a drawn quaternion), times -1 when a rotoinversion is drawn."""
    q = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4)))
    hypothesis.assume(np.linalg.norm(q) > 0.1)
    w, x, y, z = q / np.linalg.norm(q)
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return -rotation if draw(st.booleans()) else rotation


_TRACES: list[None] = []


@eqx.filter_jit
def _equivariance_gaps(bn, state, rotated_state, x, matrix, use_running_average):
    """max |bn(R x) - R bn(x)| and the largest difference between the two updated states."""
    _TRACES.append(None)
    y, new_state = bn(x, state, use_running_average=use_running_average)
    y_rot, new_rotated_state = bn(
        x.transform_by_matrix(matrix), rotated_state, use_running_average=use_running_average
    )
    output_gap = jnp.max(jnp.abs(y.transform_by_matrix(matrix).array - y_rot.array))
    stats_gaps = jtu.tree_map(
        lambda a, b: jnp.max(jnp.abs(a - b), initial=0.0), new_state, new_rotated_state
    )
    return output_gap, jnp.max(jnp.stack(jtu.tree_leaves(stats_gaps)))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("normalization, reduce", [("component", "mean"), ("norm", "max")])
def test_equivariance(mode, normalization, reduce, x64, getkey):
    dtype = _dtype(x64)
    atol = 1e-12 if x64 else 1e-5
    bn, state = _make(x64, getkey(), normalization=normalization, reduce=reduce)
    use_ra = mode == "eval"
    # One module and state for all examples, so that `_equivariance_gaps` compiles once.

    @hypothesis.settings(
        suppress_health_check=[
            hypothesis.HealthCheck.function_scoped_fixture,
            hypothesis.HealthCheck.too_slow,
        ]
    )
    @hypothesis.given(matrix=orthogonal_matrices(), seed=st.integers(0, 2**31 - 1))
    def check(matrix, seed):
        x = _input(jr.PRNGKey(seed), dtype)
        output_gap, stats_gap = _equivariance_gaps(
            bn, _clone(state), _clone(state), x, jnp.asarray(matrix, dtype), use_ra
        )
        assert float(output_gap) <= atol
        # The running statistics are invariant (and untouched in eval mode).
        assert float(stats_gap) <= atol

    traces = len(_TRACES)
    check()
    assert len(_TRACES) - traces <= 1  # compiled once for all examples


def test_pseudoscalars_are_not_centred():
    """0o changes sign under inversion, so it must be neither centred nor biased."""
    irreps = e3nn.Irreps("0o")
    bn, state = eqx.nn.make_with_state(BatchNorm)(irreps)
    bn = eqx.tree_at(lambda m: m.weights, bn, jnp.array([2.0]))
    x = e3nn.IrrepsArray(irreps, jnp.array([[1.0], [2.0], [3.0]]))
    y, _ = bn(x, state)
    rms = np.sqrt((1 - bn.eps) * np.mean(np.array([1.0, 4.0, 9.0])) + bn.eps)
    np.testing.assert_allclose(y.array, 2.0 * np.array([[1.0], [2.0], [3.0]]) / rms, rtol=1e-6)


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["component", "norm"])
def test_output_is_normalised(normalization, x64, getkey):
    """With default parameters, 0e channels have batch mean 0 and every irrep mean square 1."""
    dtype = _dtype(x64)
    bn, state = eqx.nn.make_with_state(BatchNorm)(
        IRREPS, normalization=normalization, eps=0.0, dtype=dtype
    )
    x = _input(getkey(), dtype, shape=(64, 3))
    y, _ = eqx.filter_jit(bn)(x, state)
    for (mul, ir), chunk in zip(IRREPS, y.chunks, strict=True):
        assert chunk is not None
        chunk = np.asarray(chunk, np.float64)  # (batch, sample, mul, 2l+1)
        if ir == e3nn.Irrep(0, 1):
            np.testing.assert_allclose(chunk.mean((0, 1)), 0.0, atol=1e-5)
        squares = np.square(chunk)
        norm2 = squares.sum(-1) if normalization == "norm" else squares.mean(-1)
        np.testing.assert_allclose(norm2.mean((0, 1)), np.ones(mul), rtol=1e-5)


# --- transformations ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_jit_vmap(mode, x64, getkey):
    dtype = _dtype(x64)
    tol = tolerance(dtype)
    use_ra = mode == "eval"
    bn, state = _make(x64, getkey())
    xs = _input(getkey(), dtype, shape=(3, BATCH, SAMPLE))

    jitted = eqx.filter_jit(bn)
    ys_ref, stats_ref = [], []
    for i in range(3):
        y, new_state = jitted(xs[i], _clone(state), use_running_average=use_ra)
        ys_ref.append(y.array)
        stats_ref.append(_stats(bn, new_state))

    y, new_state = bn(xs[0], _clone(state), use_running_average=use_ra)  # eager
    assert relative_error(y.array, ys_ref[0]) <= tol
    for a, b in zip(_stats(bn, new_state), stats_ref[0], strict=True):
        assert relative_error(a, b) <= tol

    # vmap over independent batches (e.g. an ensemble): one set of statistics per batch.
    ys, states = eqx.filter_jit(
        eqx.filter_vmap(lambda x: bn(x, _clone(state), use_running_average=use_ra))
    )(xs)
    assert ys.shape == xs.shape
    assert relative_error(ys.array, np.stack(ys_ref)) <= tol
    for a, b in zip(_stats(bn, states), zip(*stats_ref, strict=True), strict=True):
        assert relative_error(a, np.stack(b)) <= tol


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_grad(masked, x64, getkey):
    dtype = _dtype(x64)
    bn, state = _make(x64, getkey())
    x = _input(getkey(), dtype)
    mask = jnp.array([True, False, True, True]) if masked else None
    target = jr.normal(getkey(), x.shape, dtype)

    def loss(bn, array):
        y, _ = bn(e3nn.IrrepsArray(IRREPS, array), _clone(state), mask=mask)
        return jnp.sum(y.array * target)

    grad_bn, grad_x = eqx.filter_jit(eqx.filter_grad(lambda args: loss(*args)))((bn, x.array))
    assert grad_bn.weights is not None and grad_bn.biases is not None
    for g in (grad_bn.weights, grad_bn.biases, grad_x):
        assert jnp.all(jnp.isfinite(g))
        assert jnp.any(g != 0)
    # The batch statistics are differentiated through (the running ones are not): compare the
    # gradient with respect to the input with finite differences.
    if x64:
        check_grads(jax.jit(lambda a: loss(bn, a)), (x.array,), 1, ["rev"])


# --- serialisation and structure ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{}, {"affine": False}, {"instance": True}], ids=["default", "no_affine", "instance"]
)
def test_serialise_round_trip(kwargs, getkey):
    bn, state = _make(False, getkey(), **kwargs)
    x = _input(getkey(), jnp.float32)
    _, state = bn(x, state)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, (bn, state))
    buffer.seek(0)
    like = eqx.nn.make_with_state(BatchNorm)(IRREPS, **kwargs)
    bn2, state2 = eqx.tree_deserialise_leaves(buffer, like)
    assert bool(eqx.tree_equal(bn2, bn))
    assert bool(eqx.tree_equal(state2, state))
    y, new_state = bn(x, _clone(state))
    y2, new_state2 = bn2(x, state2)
    np.testing.assert_array_equal(y2.array, y.array)
    assert bool(eqx.tree_equal(new_state2, new_state))


def test_tree_structure_is_deterministic():
    bn1, state1 = eqx.nn.make_with_state(BatchNorm)(IRREPS, reduce="max")
    bn2, state2 = eqx.nn.make_with_state(BatchNorm)(IRREPS, reduce="max")
    assert jax.tree.structure(bn1) == jax.tree.structure(bn2)
    assert jax.tree.structure(state1) == jax.tree.structure(state2)
    assert bool(eqx.tree_equal((bn1, state1), (bn2, state2)))
    # Two equal layers can be combined leaf by leaf (e.g. averaged).
    average = jax.tree.map(lambda a, b: (a + b) / 2, bn1, bn2)
    assert bool(eqx.tree_equal(average, bn1))
    bn3, _ = eqx.nn.make_with_state(BatchNorm)(IRREPS, reduce="mean")
    assert jax.tree.structure(bn3) != jax.tree.structure(bn1)


def test_parameters():
    bn, state = eqx.nn.make_with_state(BatchNorm)("2x0e + 1x1o + 0o + 3x0e", dtype=jnp.float32)
    assert bn.weights is not None and bn.biases is not None
    np.testing.assert_array_equal(bn.weights, np.ones(7, np.float32))
    np.testing.assert_array_equal(bn.biases, np.zeros(5, np.float32))
    mean, var = _stats(bn, state)
    np.testing.assert_array_equal(mean, np.zeros(5, np.float32))
    np.testing.assert_array_equal(var, np.ones(7, np.float32))
    assert bn.normalization == "component"

    plain, plain_state = eqx.nn.make_with_state(BatchNorm)("1x1o", affine=False, instance=True)
    assert plain.weights is None and plain.biases is None and plain.state_index is None
    assert jtu.tree_leaves(plain_state) == []


# --- masking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_masked_rows_do_not_influence_statistics(reduce, x64, getkey):
    dtype = _dtype(x64)
    tol = tolerance(dtype)
    bn, state = _make(x64, getkey(), reduce=reduce)
    x = _input(getkey(), dtype)
    garbage = 1e4 * jr.normal(getkey(), (3, SAMPLE, IRREPS.dim), dtype)
    padded = e3nn.IrrepsArray(IRREPS, jnp.concatenate([x.array, garbage]))
    mask = jnp.arange(BATCH + 3) < BATCH

    apply = eqx.filter_jit(lambda bn, x, state, mask: bn(x, state, mask=mask))
    y, new_state = apply(bn, x, _clone(state), None)
    y_padded, new_state_padded = apply(bn, padded, _clone(state), mask)
    assert relative_error(y_padded.array[:BATCH], y.array) <= tol
    for a, b in zip(_stats(bn, new_state_padded), _stats(bn, new_state), strict=True):
        assert relative_error(a, b) <= tol
    # An all-True mask is the same as no mask.
    y_all, _ = apply(bn, x, _clone(state), jnp.ones(BATCH, bool))
    assert relative_error(y_all.array, y.array) <= tol


def test_all_padding_batch_is_finite_and_keeps_statistics(x64, getkey):
    """A batch whose mask is all False (pure padding) must not poison the running statistics."""
    dtype = _dtype(x64)
    bn, state = _make(x64, getkey())
    x = _input(getkey(), dtype)
    before = _stats(bn, state)
    y, new_state = eqx.filter_jit(lambda bn, x, s, m: bn(x, s, mask=m))(
        bn, x, _clone(state), jnp.zeros(BATCH, bool)
    )
    assert bool(jnp.all(jnp.isfinite(y.array)))
    for a, b in zip(_stats(bn, new_state), before, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- dtype and errors ---------------------------------------------------------------------------


def test_output_dtype_follows_input(getkey):
    with jax.enable_x64(True):
        bn, state = eqx.nn.make_with_state(BatchNorm)(IRREPS, dtype=jnp.float64)
        x = _input(getkey(), jnp.float32)
        y, state = eqx.filter_jit(bn)(x, state)
        assert y.dtype == jnp.float32
        mean, var = _stats(bn, state)
        assert mean.dtype == var.dtype == jnp.float64


def test_bad_inputs(getkey):
    bn, state = eqx.nn.make_with_state(BatchNorm)(IRREPS)
    x = _input(getkey(), jnp.float32)
    wrong = e3nn.IrrepsArray(IRREPS.regroup(), x.array)
    with pytest.raises(ValueError, match=re.escape(f"expected irreps {IRREPS}")):
        bn(wrong, state)
    with pytest.raises(ValueError, match=r"mask must have shape \(batch,\) = \(4,\), got \(5,\)"):
        bn(x, state, mask=jnp.ones(5, bool))
    with pytest.raises(ValueError, match="must have shape"):
        bn(x[0, 0], state)
    with pytest.raises(TypeError):
        bn(x.array, state)  # pyright: ignore

    instance_bn, instance_state = eqx.nn.make_with_state(BatchNorm)(IRREPS, instance=True)
    with pytest.raises(ValueError, match="instance=True"):
        instance_bn(x, instance_state, use_running_average=True)
    y, same_state = instance_bn(x, instance_state)
    assert same_state is instance_state
    assert y.shape == x.shape


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reduce": "sum"}, "reduce must be 'mean' or 'max', got 'sum'"),
        ({"normalization": "integral"}, "normalization must be .*, got 'integral'"),
        ({"eps": 1.5}, r"eps must be in \[0, 1\], got 1.5"),
        ({"eps": -1e-3}, r"eps must be in \[0, 1\], got -0.001"),
        ({"momentum": 2.0}, r"momentum must be in \[0, 1\], got 2.0"),
        ({"instance": True, "use_running_average": True}, "instance=True keeps no running"),
    ],
    ids=["reduce", "normalization", "eps_high", "eps_negative", "momentum", "instance_eval"],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match="BatchNorm: " + match):
        BatchNorm(IRREPS, **kwargs)


def test_eval_mode_field_and_override(getkey):
    bn, state = _make(False, getkey(), use_running_average=True)
    x = _input(getkey(), jnp.float32)
    y_eval, same = bn(x, state)
    assert same is state
    y_train, new_state = bn(x, _clone(state), use_running_average=False)
    assert relative_error(y_train.array, y_eval.array) > 1e-3
    assert not bool(eqx.tree_equal(new_state, state))
