import functools
import io
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import testing
from eqmlip.interop._flax import flax_slots
from eqmlip.nn import MultiHeadReadoutBlock, ReadoutBlock, select_head

K = jr.PRNGKey

IRREPS_IN = "4x0e+2x0o+2x1o+1x1e+1x2e"
# The hidden layer has gates of both parities, so gated vectors change parity.
FEATURES = ["4x0e+2x0o+2x1o+1x1e", "2x0e+1x1o+1x1e"]


@eqx.filter_jit
def _apply(model, x) -> Any:
    """One compilation per model structure, shared by every Hypothesis example."""
    return model(x)


def _normal(irreps, key, shape, dtype):
    return e3nn.IrrepsArray(irreps, jr.normal(key, (*shape, e3nn.Irreps(irreps).dim), dtype))


@functools.cache
def _models(x64):
    """Built once per dtype: construction compiles every weight shape, examples only draw data."""
    with jax.enable_x64(x64):
        single = ReadoutBlock(IRREPS_IN, FEATURES, activation=jax.nn.silu, use_equiv=True, key=K(0))
        multi = MultiHeadReadoutBlock(
            2, IRREPS_IN, FEATURES, activation=jnp.tanh, use_equiv=True, key=K(1)
        )
    return single, multi


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(matrix=testing.o3_matrices(), seed=st.integers(0, 2**31 - 1))
def test_readouts_are_equivariant(x64, matrix, seed):
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        single, multi = _models(x64)
        x = _normal(IRREPS_IN, K(seed), (5,), dtype)
        out = _apply(single, x)
        assert out.irreps == e3nn.Irreps("2x0e+1x1o+1x1e") and out.dtype == dtype
        testing.assert_equivariant(functools.partial(_apply, single), x, matrix=matrix)
        assert _apply(multi, x).shape == (5, 2, out.irreps.dim)
        testing.assert_equivariant(functools.partial(_apply, multi), x, matrix=matrix)


@hypothesis.given(matrix=testing.o3_matrices(), seed=st.integers(0, 2**31 - 1))
def test_mlp_readout_is_invariant_on_scalars(matrix, seed):
    model = MultiHeadReadoutBlock(
        3, 6, [8, 2], activation=jax.nn.silu, mlp_kernel_init="fan_in_normal", key=K(0)
    )
    x = _normal("6x0e", K(seed), (4,), jnp.float32)
    out = _apply(model, x)
    assert out.shape == (4, 3, 2)
    testing.assert_equivariant(
        functools.partial(_apply, model), x, matrix=matrix, out_actions="invariant"
    )


def test_gate_output_irreps_feed_the_next_layer():
    """After a gate, the next linear reads the gate's irreps (mlip reads the pre-gate ones)."""
    model = ReadoutBlock(
        "8x0e+4x1o", ["6x0e+2x1o", "1x0e"], activation=jax.nn.silu, use_equiv=True, key=K(0)
    )
    second = model.layers[1]
    assert second.irreps_in == e3nn.Irreps("4x0e+2x1o")  # 2 of the 6 scalars became gates
    assert [w.shape for w in second.weights] == [(1, 4), (0, 2)]
    without = ReadoutBlock("8x0e+4x1o", ["6x0e+2x1o", "1x0e"], use_equiv=True, key=K(0))
    assert [w.shape for w in without.layers[1].weights] == [(1, 6), (0, 2)]


def test_init_statistics():
    """N(0, 1) weights scaled by 1/sqrt(fan_in): unit second moment per (l, p) block."""
    model = ReadoutBlock("128x0e+64x1o+32x2e", ["128x0e+64x1o+32x2e"], use_equiv=True, key=K(0))
    x = _normal("128x0e+64x1o+32x2e", K(1), (256,), jnp.float32)
    y: Any = model(x)
    for chunk in y.chunks:
        assert chunk is not None
        assert abs(float(jnp.mean(chunk**2)) - 1.0) < 0.1
        assert abs(float(jnp.mean(chunk))) < 0.05
    mlp = ReadoutBlock(128, [128], mlp_kernel_init="fan_in_normal", key=K(2))
    z: Any = mlp(x.array[:, :128])
    assert abs(float(jnp.mean(z**2)) - 1.0) < 0.1


def _graphs_of(n_node):
    return jnp.repeat(jnp.arange(len(n_node)), jnp.asarray(n_node), total_repeat_length=sum(n_node))


def test_select_head_per_graph():
    outputs = jr.normal(K(0), (6, 3, 2))
    n_node = jnp.array([2, 3, 1])
    dataset_idx = jnp.array([2, 0, 1])
    expected = jnp.stack([outputs[i, h] for i, h in enumerate([2, 2, 0, 0, 0, 1])])
    np.testing.assert_array_equal(select_head(outputs, dataset_idx, n_node), expected)
    np.testing.assert_array_equal(
        select_head(outputs, dataset_idx, node_graph_index=_graphs_of([2, 3, 1])), expected
    )
    np.testing.assert_array_equal(select_head(outputs), outputs[:, 0])  # no dataset_idx
    np.testing.assert_array_equal(
        select_head(outputs[:, :1], dataset_idx, n_node), outputs[:, 0]
    )  # one head: head 0 for every dataset, as in mlip
    irreps = e3nn.IrrepsArray("1x0e+1x0o", outputs)
    picked = select_head(irreps, dataset_idx, n_node)
    assert isinstance(picked, e3nn.IrrepsArray) and picked.irreps == irreps.irreps
    np.testing.assert_array_equal(picked.array, expected)


@eqx.filter_jit
def _select_jit(outputs, dataset_idx, n_node):
    return select_head(outputs, dataset_idx, n_node)


@pytest.mark.parametrize("bad", [3, 7, -1], ids=["heads", "beyond", "negative"])
def test_select_head_out_of_range_raises(bad):
    outputs = jr.normal(K(0), (6, 3, 2))
    n_node = jnp.array([2, 3, 1])
    dataset_idx = jnp.array([0, bad, 1])
    with pytest.raises(RuntimeError, match=r"outside 0..2.*3 readout heads"):
        jax.block_until_ready(_select_jit(outputs, dataset_idx, n_node))
    with pytest.raises(RuntimeError, match="outside 0..2"):
        select_head(outputs, dataset_idx, n_node)
    # A padding graph without nodes is never looked at.
    fine = _select_jit(outputs, jnp.array([0, 1, 2, bad]), jnp.array([2, 3, 1, 0]))
    assert fine.shape == (6, 2)


def test_select_head_argument_errors():
    outputs = jr.normal(K(0), (6, 3, 2))
    with pytest.raises(ValueError, match="exactly one of n_node"):
        select_head(outputs, jnp.array([0, 1]))
    with pytest.raises(TypeError, match="dataset_idx"):
        select_head(outputs, jnp.array([0.0, 1.0]), jnp.array([3, 3]))
    with pytest.raises((ValueError, TypeError)):
        select_head(outputs[0], jnp.array([0]), jnp.array([3]))


def test_structure_retrace_and_serialisation():
    kwargs: dict[str, Any] = dict(activation=jax.nn.silu, use_equiv=True)
    a = MultiHeadReadoutBlock(2, IRREPS_IN, FEATURES, key=K(0), **kwargs)
    b = MultiHeadReadoutBlock(2, IRREPS_IN, FEATURES, key=K(1), **kwargs)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    traces = 0

    @eqx.filter_jit
    def apply(model, x):
        nonlocal traces
        traces += 1
        return model(x).array

    x = _normal(IRREPS_IN, K(2), (3,), jnp.float32)
    assert not np.allclose(apply(a, x), apply(b, x))
    assert traces == 1

    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, a)
    buffer.seek(0)
    loaded = eqx.tree_deserialise_leaves(buffer, b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(apply(loaded, x), apply(a, x))


def test_jit_vmap_grad_and_dtype():
    model = ReadoutBlock(IRREPS_IN, FEATURES, activation=jax.nn.silu, use_equiv=True, key=K(0))
    x = _normal(IRREPS_IN, K(1), (4,), jnp.float32)

    def row(r):
        out: Any = model(e3nn.IrrepsArray(IRREPS_IN, r[None]))
        return out.array[0]

    rows = eqx.filter_jit(jax.vmap(row))(x.array)
    np.testing.assert_allclose(rows, _apply(model, x).array, rtol=1e-5, atol=1e-6)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m(x).array ** 2)))(model)
    leaves = [g for g in jax.tree.leaves(grads) if g.size]
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    with jax.enable_x64(True):
        x64 = _normal(IRREPS_IN, K(1), (4,), jnp.float64)
        assert _apply(model, x64).dtype == jnp.float64
        mlp = ReadoutBlock(3, [4, 1], mlp_kernel_init=jax.nn.initializers.lecun_normal(), key=K(2))
        assert _apply(mlp, jnp.ones((2, 3), jnp.float32)).dtype == jnp.float32


def test_flax_layout_names():
    """Parameter paths of mlip (read from mlip 0.2.5's init), without importing Flax."""
    multi = MultiHeadReadoutBlock(2, "8x0e+4x1o+2x2e", ["4x0e", "1x0e"], use_equiv=True, key=K(0))
    params, states = flax_slots(multi)
    shapes = {"/".join(s.path): s.get(multi).shape for s in params}
    assert not states
    expected = {}
    for h in range(2):
        expected |= {
            f"params/ReadoutBlock_{h}/Linear_0/weight0_0_1": (4, 8),
            f"params/ReadoutBlock_{h}/Linear_0/weight1_1_-1": (0, 4),
            f"params/ReadoutBlock_{h}/Linear_0/weight2_2_1": (0, 2),
            f"params/ReadoutBlock_{h}/Linear_1/weight0_0_1": (1, 4),
        }
    assert shapes == expected
    mlp = ReadoutBlock(30, [16, 1], mlp_kernel_init="fan_in_normal", key=K(0))
    shapes = {"/".join(s.path): s.get(mlp).shape for s in flax_slots(mlp)[0]}
    assert shapes == {
        "params/MLP_0/layers_0/kernel": (30, 16),
        "params/MLP_0/layers_0/bias": (16,),
        "params/MLP_0/layers_1/kernel": (16, 1),
        "params/MLP_0/layers_1/bias": (1,),
    }


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="mlp_kernel_init"):
        ReadoutBlock(4, [2], key=K(0))
    with pytest.raises(ValueError, match="fan_in_normal"):
        ReadoutBlock(4, [2], mlp_kernel_init="lecun", key=K(0))
    with pytest.raises(ValueError, match="positive ints"):
        ReadoutBlock(4, ["2x0e"], mlp_kernel_init="fan_in_normal", key=K(0))
    with pytest.raises(TypeError, match="in_features"):
        ReadoutBlock("4x0e", [2], mlp_kernel_init="fan_in_normal", key=K(0))
    with pytest.raises(ValueError, match="features is empty"):
        ReadoutBlock("4x0e", [], use_equiv=True, key=K(0))
    with pytest.raises(ValueError, match="cannot gate"):
        ReadoutBlock(
            "4x0e+4x1o", ["1x0e+4x1o", "1x0e"], activation=jax.nn.silu, use_equiv=True, key=K(0)
        )
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadReadoutBlock(0, "4x0e", ["1x0e"], use_equiv=True, key=K(0))
    model = ReadoutBlock("4x0e+1x1o", ["1x0e"], use_equiv=True, key=K(0))
    with pytest.raises(ValueError, match="do not match"):
        model(_normal("4x0e+1x1e", K(1), (2,), jnp.float32))
    with pytest.raises(TypeError, match="IrrepsArray"):
        model(jnp.ones((2, 7)))
    scalar_input = ReadoutBlock("3x0e", [1], use_equiv=True, key=K(0))
    assert scalar_input(jnp.ones((2, 3))).shape == (2, 1)  # plain scalars are accepted
    mlp = ReadoutBlock(4, [2], mlp_kernel_init="fan_in_normal", key=K(0))
    with pytest.raises(ValueError, match="plain features"):
        mlp(_normal("2x0e+1x0o+1x1o", K(1), (2,), jnp.float32))
