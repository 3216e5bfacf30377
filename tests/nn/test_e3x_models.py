"""eqmlip.nn.Embed and TensorDense."""

import functools
import io
from typing import Any

import equinox as eqx
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import ops, testing
from eqmlip.nn import Embed, ExponentialBasis, FusedTensor, Tensor, TensorDense

from .test_e3x import _apply, _assert_close, _transformed

K = jr.PRNGKey

# (id, constructor keyword arguments); the input is (2, P_in, (L_in+1)**2, F_in).
TENSOR_DENSE: dict[str, dict[str, Any]] = {
    "P2": dict(in_num_parity=2, in_max_degree=2, in_features=3, features=2),
    "P1-pseudo-up": dict(in_num_parity=1, in_max_degree=1, in_features=2, max_degree=2),
    "P2-no-pseudo-standard": dict(
        in_num_parity=2,
        in_max_degree=1,
        in_features=2,
        include_pseudotensors=False,
        cartesian_order=False,
    ),
    "fused-P1": dict(in_num_parity=1, in_max_degree=2, in_features=2, use_fused_tensor=True),
}


@functools.cache
def _module(name: str, x64: bool) -> TensorDense:
    with jax.enable_x64(x64):
        return TensorDense(**TENSOR_DENSE[name], key=K(len(name)))


@pytest.mark.parametrize("name", list(TENSOR_DENSE))
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(data=st.data(), rotation=testing.rotations())
def test_tensor_dense_is_equivariant(x64, name, data, rotation):
    """Rotating the input by `x @ D(R)` rotates the output; reflecting it reflects the output
    (pseudotensors included)."""
    kwargs = TENSOR_DENSE[name]
    shape = (2, kwargs["in_num_parity"], (kwargs["in_max_degree"] + 1) ** 2, kwargs["in_features"])
    elements = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False)
    values = data.draw(hnp.arrays(np.float64, shape, elements=elements))
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        model = _module(name, x64)
        x = jnp.asarray(values, dtype)
        (rot_of_out, out_of_rot), (ref_of_out, out_of_ref) = _transformed(
            model, jnp.asarray(rotation, dtype), x
        )
        assert rot_of_out.dtype == dtype
        _assert_close(rot_of_out, out_of_rot, dtype)
        _assert_close(ref_of_out, out_of_ref, dtype)


def test_tensor_dense_is_dense_then_tensor_of_the_two_halves():
    model = TensorDense(in_num_parity=2, in_max_degree=1, in_features=3, features=2, key=K(0))
    assert isinstance(model.tensor, Tensor) and not model.use_fused_tensor
    assert (model.dense.features, model.num_parity, model.max_degree) == (4, 2, 1)

    @eqx.filter_jit
    def by_hand(model, x):
        projected = model.dense(x)
        return model.tensor(projected[..., :2], projected[..., 2:])

    x = jr.normal(K(1), (5, 2, 4, 3))
    np.testing.assert_array_equal(_apply(model, x), by_hand(model, x))


def test_tensor_dense_output_shape_rules():
    def make(**kw):  # the structure only: no initialiser runs
        return eqx.filter_eval_shape(lambda: TensorDense(key=K(0), **kw))

    default = make(in_num_parity=1, in_max_degree=2, in_features=3)
    assert (default.num_parity, default.max_degree, default.features) == (2, 2, 3)
    scalars = make(in_num_parity=1, in_max_degree=0, in_features=3, features=5)
    assert (scalars.num_parity, scalars.max_degree, scalars.features) == (1, 0, 5)
    fused = make(in_num_parity=2, in_max_degree=1, in_features=3, use_fused_tensor=True)
    assert isinstance(fused.tensor, FusedTensor) and fused.use_fused_tensor
    with pytest.raises(
        ValueError, match=r"^TensorDense: max_degree .* at most 2, got max_degree=3"
    ):
        make(in_num_parity=1, in_max_degree=1, in_features=3, max_degree=3)
    with pytest.raises(ValueError, match=r"^TensorDense: the feature count must be a positive"):
        make(in_num_parity=1, in_max_degree=1, in_features=0)


def test_tensor_dense_bad_input_raises_clear_error():
    model = TensorDense(in_num_parity=2, in_max_degree=1, in_features=3, key=K(0))
    with pytest.raises(
        ValueError,
        match=r"^TensorDense: expected inputs of shape \(\.\.\., 2, 4, 3\).*got \(5, 1, 4, 3\)",
    ):
        model(jnp.ones((5, 1, 4, 3)))


def test_tensor_dense_init_statistics():
    """Fresh layers map unit normal inputs to outputs of mean 0 and second moment of order 1
    per (parity, degree) block; every block of a P=2 output is reached."""
    n_models, n_inputs = 32, 8
    kwargs = dict(in_num_parity=2, in_max_degree=2, in_features=8)
    models = eqx.filter_vmap(lambda k: TensorDense(**kwargs, key=k))(jr.split(K(0), n_models))  # pyright: ignore[reportArgumentType]
    x = jr.normal(K(1), (n_models, n_inputs, 2, 9, 8))
    y = np.asarray(eqx.filter_jit(eqx.filter_vmap(lambda m, x: m(x)))(models, x))
    assert y.shape == (n_models, n_inputs, 2, 9, 8)
    for p in range(2):
        for degree in range(3):
            block = y[..., p, degree**2 : (degree + 1) ** 2, :]
            assert abs(block.mean()) < 0.1, (p, degree, block.mean())
            assert 0.5 < (block**2).mean() < 2.0, (p, degree, (block**2).mean())


def test_tensor_dense_jit_vmap_grad_and_no_retrace():
    a = TensorDense(in_num_parity=1, in_max_degree=1, in_features=3, key=K(0))
    b = TensorDense(in_num_parity=1, in_max_degree=1, in_features=3, key=K(1))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    x = jr.normal(K(2), (4, 1, 4, 3))
    traces = 0

    @eqx.filter_jit
    def apply(model, x):
        nonlocal traces
        traces += 1
        return model(x)

    ya, yb = apply(a, x), apply(b, x)
    assert traces == 1 and not np.allclose(ya, yb)
    np.testing.assert_allclose(eqx.filter_jit(jax.vmap(a))(x), ya, rtol=1e-5, atol=1e-6)
    grads = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(apply(m, x))))(a)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == 2 + 1 + 1  # dense kernels 0 and 1, dense bias, tensor kernel
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in leaves)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: Embed(5, 3, key=k),
        lambda k: TensorDense(in_num_parity=2, in_max_degree=1, in_features=3, key=k),
        lambda k: TensorDense(
            in_num_parity=1, in_max_degree=1, in_features=2, use_fused_tensor=True, key=k
        ),
        # No key: the seed picks gamma, so the loading template differs from the saved model.
        lambda k: ExponentialBasis(0.5 + int(k[1])),
    ],
    ids=["embed", "tensor-dense", "tensor-dense-fused", "exponential-basis"],
)
def test_serialise_round_trip_is_exact(make):
    model = make(K(0))
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    buffer.seek(0)
    loaded = eqx.tree_deserialise_leaves(buffer, make(K(9)))
    leaves, loaded_leaves = jax.tree.leaves(model), jax.tree.leaves(loaded)
    assert len(leaves) == len(loaded_leaves) > 0
    for u, v in zip(leaves, loaded_leaves, strict=True):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


def test_embed_looks_up_rows_as_invariant_scalars():
    model = Embed(6, 4, key=K(0))
    z = jnp.asarray([[2, 0], [5, 2]], jnp.int32)
    y = _apply(model, z)
    assert y.shape == (2, 2, 1, 1, 4) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y[0, 0], model.embedding[2])
    np.testing.assert_array_equal(y[1, 1], y[0, 0])
    # Only even scalars (P = 1, L = 0): invariant under rotations and reflections.
    assert ops.layouts.feature_shape(y.shape) == (1, 0, 4)


def test_embed_init_variance_and_errors():
    model = Embed(512, 64, key=K(0))
    assert model.embedding.shape == (512, 1, 1, 64)
    assert abs(float(jnp.mean(model.embedding))) < 0.01
    assert abs(float(jnp.var(model.embedding)) * 64 - 1.0) < 0.05  # variance 1 / features
    with jax.enable_x64(True):
        assert Embed(3, 2, key=K(0)).embedding.dtype == jnp.float64
        assert Embed(3, 2, dtype=jnp.float32, key=K(0)).embedding.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"^Embed: num_embeddings must be a positive int, got 0"):
        Embed(0, 2, key=K(0))
    with pytest.raises(TypeError):  # float indices
        model(jnp.ones((3,)))


def test_exponential_basis_is_the_basis_at_softplus_theta_and_errors():
    with jax.enable_x64(True):
        module = ExponentialBasis(2.0)
        assert module.gamma.dtype == jnp.float64
        assert abs(float(jax.nn.softplus(module.gamma)) - 2.0) <= 1e-15
        r = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)))
        kwargs: dict[str, Any] = dict(max_degree=1, num=4)

        @eqx.filter_jit
        def apply(module, r):
            return module(r, radial_fn=ops.exponential_gaussian, **kwargs)

        expected = ops.basis(
            r, radial_fn=functools.partial(ops.exponential_gaussian, gamma=2.0), **kwargs
        )
        _assert_close(apply(module, r), expected, jnp.float64)
        grad = eqx.filter_grad(lambda m: jnp.sum(apply(m, r) ** 2))(module)
        assert np.isfinite(grad.gamma) and abs(float(grad.gamma)) > 1e-3
        with pytest.raises(TypeError, match=r"^ExponentialBasis: r has dtype float32, expected"):
            module(r.astype(jnp.float32), radial_fn=ops.exponential_gaussian, **kwargs)
    with pytest.raises(TypeError, match=r"^ExponentialBasis: radial_fn must take a gamma"):
        ExponentialBasis()(jnp.ones((2, 3)), radial_fn=ops.basic_gaussian, max_degree=0, num=2)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^ExponentialBasis: initial_gamma must be a finite"):
            ExponentialBasis(bad)


@functools.cache
def _exponential_basis_apply():
    @eqx.filter_jit
    def apply(module: ExponentialBasis, r: jax.Array) -> Any:
        return module(
            r,
            max_degree=2,
            num=3,
            radial_fn=ops.exponential_chebyshev,
            cutoff_fn=functools.partial(ops.smooth_cutoff, cutoff=5.0),
        )

    return apply


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(data=st.data(), rotation=testing.rotations())
def test_exponential_basis_is_equivariant(x64, data, rotation):
    """`B(r @ R) = B(r) @ D(R)`, and `B(-r)` is `B(r)` reflected (odd degrees change sign)."""
    elements = st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False)
    values = data.draw(hnp.arrays(np.float64, (4, 3), elements=elements))
    hypothesis.assume(bool(np.all(np.linalg.norm(values, axis=-1) > 0.1)))
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        apply = _exponential_basis_apply()
        module = ExponentialBasis(0.8)
        r, rotation = jnp.asarray(values, dtype), jnp.asarray(rotation, dtype)
        out = apply(module, r)
        assert out.shape == (4, 1, 9, 3) and out.dtype == dtype
        wigner = ops.wigner_d(rotation, 2)
        _assert_close(apply(module, r @ rotation), ops.rotate(out, wigner), dtype)
        _assert_close(apply(module, -r), ops.reflect(out), dtype)
        assert np.any(np.asarray(ops.reflect(out)) != np.asarray(out))  # degree 1 flips
