import functools
import io

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
from eqmlip.nn import E3jLinear, Linear

from ..helpers import CountingApply

K = jr.PRNGKey


@eqx.filter_jit
def _apply(model, *args):
    """One compilation per model structure, shared by every Hypothesis example."""
    return model(*args)


def _normal(irreps, key, shape, dtype):
    return e3nn.IrrepsArray(irreps, jr.normal(key, (*shape, e3nn.Irreps(irreps).dim), dtype))


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(
    irreps_in=testing.irreps(max_l=2, max_mul=3),
    irreps_out=testing.irreps(max_l=2, max_mul=3, min_entries=1),
    matrix=testing.o3_matrices(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_equivariant(x64, irreps_in, irreps_out, matrix, seed):
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        linear = Linear(irreps_in, irreps_out, biases=True, key=K(seed))
        x = _normal(irreps_in, K(seed + 1), (3,), dtype)
        testing.assert_equivariant(linear, x, matrix=matrix)


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(matrix=testing.o3_matrices(), seed=st.integers(0, 2**31 - 1))
def test_linear_weighted_variants_equivariant(x64, matrix, seed):
    """Indexed, mixed, per-channel and channel_out layers commute with O(3) too."""
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        irreps = "2x0e+1x1o+1x0o+2x1e+1x2e"
        keys = jr.split(K(seed), 8)
        x = _normal(irreps, keys[0], (4,), dtype)
        xc = _normal(irreps, keys[1], (4, 2), dtype)
        index = jr.randint(keys[2], (4,), 0, 3)
        mix = jr.normal(keys[3], (4, 5), dtype)
        out = "3x0e+2x1o+1x1e+1x2e+1x0o"
        indexed = Linear(irreps, out, num_indexed_weights=3, biases=True, key=keys[4])
        mixed = Linear(irreps, out, weights_dim=5, biases=True, key=keys[5])
        per_channel = Linear(
            irreps, out, weights_dim=5, channel_in=2, weights_per_channel=True, key=keys[6]
        )
        channels = Linear(irreps, out, channel_in=2, channel_out=3, biases=True, key=keys[7])
        testing.assert_equivariant(functools.partial(_apply, indexed, index), x, matrix=matrix)
        testing.assert_equivariant(functools.partial(_apply, mixed, mix), x, matrix=matrix)
        testing.assert_equivariant(functools.partial(_apply, per_channel, mix), xc, matrix=matrix)
        testing.assert_equivariant(functools.partial(_apply, channels), xc, matrix=matrix)


def test_equal_arguments_give_equal_structure_and_no_retrace():
    a = Linear("2x0e+1x1o", "3x0e+2x1o", biases=True, key=K(0))
    b = Linear("2x0e+1x1o", "3x0e+2x1o", biases=True, key=K(1))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert not all(np.array_equal(u, v) for u, v in zip(a.weights, b.weights, strict=True))

    apply = CountingApply()
    x = e3nn.normal("2x0e+1x1o", K(2), (5,))
    ya, yb = apply(a, x), apply(b, x)
    assert apply.traces == 1
    assert not np.allclose(ya.array, yb.array)
    # optax/EMA-style tree_map across two models works because the structures agree.
    average = jax.tree.map(lambda u, v: (u + v) / 2, a, b)
    np.testing.assert_allclose(apply(average, x).array, (ya.array + yb.array) / 2, atol=1e-6)


def test_serialise_round_trip_is_exact():
    model = Linear("2x0e+1x1o+1x2e", "3x0e+2x1o", num_indexed_weights=4, biases=True, key=K(0))
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    buffer.seek(0)
    skeleton = Linear("2x0e+1x1o+1x2e", "3x0e+2x1o", num_indexed_weights=4, biases=True, key=K(9))
    loaded = eqx.tree_deserialise_leaves(buffer, skeleton)
    for u, v in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


def test_jit_vmap_grad():
    model = Linear("2x0e+1x1o", "3x0e+2x1o", weights_dim=3, biases=True, key=K(0))
    x = e3nn.normal("2x0e+1x1o", K(1), (6,))
    w = jr.normal(K(2), (6, 3))
    eager = model(w, x).array
    jitted = eqx.filter_jit(lambda m, w, x: m(w, x).array)(model, w, x)
    mapped = jax.vmap(lambda wi, xi: model(wi, xi).array)(w, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-6)

    def loss(m):
        return jnp.sum(m(w, x).array ** 2)

    grads = eqx.filter_grad(loss)(model)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(model.weights) + len(model.biases)
    assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    # Gradient check along one direction against central finite differences.
    direction = jax.tree.map(lambda g: g / jnp.linalg.norm(g), grads)
    eps = 1e-2
    plus = eqx.apply_updates(model, jax.tree.map(lambda d: eps * d, direction))
    minus = eqx.apply_updates(model, jax.tree.map(lambda d: -eps * d, direction))
    numeric = (loss(plus) - loss(minus)) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(leaves, jax.tree.leaves(direction), strict=True))
    np.testing.assert_allclose(numeric, analytic, rtol=2e-2)


@pytest.mark.parametrize(
    "irreps_in, irreps_out, kwargs",
    [
        ("8x0e+4x1o+2x2e", "6x0e+5x1o+3x2e", {}),
        ("2x0e+3x0e+4x1o", "6x0e+2x1o", {"gradient_normalization": "element"}),
        ("2x0e+3x0e+4x1o", "6x0e+2x1o", {"path_normalization": "path"}),
    ],
    ids=["default", "element-gradients", "path-normalization"],
)
def test_init_statistics(irreps_in, irreps_out, kwargs):
    """Fresh layers map unit inputs to outputs of mean 0 and second moment 1 per (l, p) block."""
    n_models, n_inputs = 400, 16
    keys = jr.split(K(0), n_models)
    models = eqx.filter_vmap(lambda k: Linear(irreps_in, irreps_out, key=k, **kwargs))(keys)
    # Fresh unit inputs per model, so the estimate averages over weights and inputs alike.
    x = _normal(irreps_in, K(1), (n_models, n_inputs), jnp.float32)
    y = eqx.filter_vmap(lambda m, xi: m(xi).array)(models, x)  # (models, inputs, dim)
    out = e3nn.Irreps(irreps_out)
    for (_, ir), s in zip(out, out.slices(), strict=True):
        block = np.asarray(y[..., s])
        assert abs(block.mean()) < 0.1, (ir, block.mean())
        assert abs((block**2).mean() - 1.0) < 0.1, (ir, (block**2).mean())


def test_bad_inputs_raise_clear_errors():
    model = Linear("2x0e+1x1o", "3x0e", key=K(0))
    with pytest.raises(ValueError, match=r"expected irreps 2x0e\+1x1o"):
        model(e3nn.normal("3x0e", K(1), (2,)))
    with pytest.raises(ValueError, match=r"expected irreps 2x0e\+1x1o"):
        model(jnp.ones((2, 5)))  # a plain array is read as 5x0e
    with pytest.raises(TypeError, match="floating point"):
        model(e3nn.IrrepsArray("2x0e+1x1o", jnp.ones((2, 5), jnp.int32)))
    with pytest.raises(ValueError, match="plain weights"):
        model(jnp.ones((2, 3)), e3nn.normal("2x0e+1x1o", K(1), (2,)))
    # Jaxtyping catches a shape that cannot be an irreps array at all.
    indexed = Linear("2x0e", "3x0e", num_indexed_weights=2, key=K(0))
    with pytest.raises(TypeError, match="integers"):
        indexed(jnp.ones((2,)), e3nn.normal("2x0e", K(1), (2,)))
    mixed = Linear("2x0e", "3x0e", weights_dim=4, key=K(0))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        mixed(jnp.ones((2, 3)), e3nn.normal("2x0e", K(1), (2,)))
    channels = Linear("2x0e", "3x0e", channel_in=2, channel_out=3, key=K(0))
    with pytest.raises(ValueError, match="channel_in=2"):
        channels(e3nn.normal("2x0e", K(1), (4, 3)))


def test_bad_construction_raises_clear_errors():
    with pytest.raises(ValueError, match="only 0e outputs"):
        Linear("1o", "1o", biases=[True], key=K(0))
    with pytest.raises(ValueError, match="one bool per output"):
        Linear("1o+0e", "1o+0e", biases=[True], key=K(0))
    with pytest.raises(ValueError, match="connects 0e to 1x1o|connects 0e to 1o"):
        Linear("0e+1o", "0e+1o", instructions=[(0, 1)], simplify_irreps_internally=False, key=K(0))
    with pytest.raises(ValueError, match="simplify_irreps_internally=False"):
        Linear("0e", "0e", instructions=[(0, 0)], key=K(0))
    with pytest.raises(ValueError, match="channel_in"):
        Linear("0e", "0e", channel_out=2, key=K(0))
    with pytest.raises(ValueError, match="exclusive"):
        Linear("0e", "0e", num_indexed_weights=2, weights_dim=3, key=K(0))
    with pytest.raises(ValueError, match="'element', 'path'"):
        Linear("0e", "0e", gradient_normalization="bogus", key=K(0))


def test_unsorted_input_is_regrouped_like_e3nn():
    """An input in another order than irreps_in is accepted and permuted, as in Flax."""
    model = Linear("2x0e+1x1o", "3x0e+1x1o", key=K(0))
    x = e3nn.normal("1x1o+1x0e+1x0e", K(1), (3,))
    regrouped = x.regroup()
    np.testing.assert_array_equal(model(x).array, model(regrouped).array)
    assert not np.array_equal(x.array, regrouped.array)


def test_e3j_linear_blocks_and_values():
    linear = E3jLinear("2x1o+3x0e", "1e+4x0e+2x2e", key=K(0))
    # e3nn order 0e, 0o, 1o, 1e, 2e: 0e (4, 3); 1o only in the input (0, 2); 1e and 2e only in
    # the output, fed with zeros.
    assert [(b.l, b.p, b.mul_in, b.mul_out) for b in linear.blocks] == [
        (0, 1, 3, 4), (1, -1, 2, 0), (1, 1, 0, 1), (2, 1, 0, 2)
    ]  # fmt: skip
    assert linear.irreps_out == e3nn.Irreps("4x0e+1e+2x2e")
    x = e3nn.IrrepsArray("2x1o+3x0e", jr.normal(K(1), (7, 9), jnp.float32))
    y = linear(x)
    scalars = x.array[:, 6:]  # the 3x0e chunk of the unsorted input
    expected = scalars @ linear.weights[0].T / np.sqrt(3)
    np.testing.assert_allclose(y.array[:, :4], expected, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(y.array[:, 4:]) == 0)
