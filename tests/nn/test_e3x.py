"""eqmlip.nn.Dense, Tensor and FusedTensor."""

import functools
import io
import math

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
from eqmlip.nn import Dense, FusedTensor, MessagePass, Tensor

from . import _e3x_graph as graph

K = jr.PRNGKey


@eqx.filter_jit
def _apply(model, *args):
    """One compilation per model structure, shared by every Hypothesis example."""
    return model(*args)


def _degree(x) -> int:
    return math.isqrt(x.shape[-2]) - 1


@eqx.filter_jit
def _transformed(model, rotation, *inputs):
    """`(f(g.x), g.f(x))` for the rotation `x -> x @ D(R)` and for the reflection."""
    out = model(*inputs)
    cartesian = getattr(model, "cartesian_order", True)  # Dense works in either order
    wigner = ops.wigner_d(
        rotation, max(_degree(x) for x in (*inputs, out)), cartesian_order=cartesian
    )

    def rotate(x):
        dim = x.shape[-2]
        return ops.rotate(x, wigner[:dim, :dim])

    rotated = (model(*(rotate(x) for x in inputs)), rotate(out))
    reflected = (model(*(ops.reflect(x) for x in inputs)), ops.reflect(out))
    return rotated, reflected


# (id, constructor keyword arguments, input descriptions (P, L, F))
MODULES = {
    "dense-P2": (Dense, dict(num_parity=2, max_degree=2, in_features=3, features=4), [(2, 2, 3)]),
    "dense-P1": (Dense, dict(num_parity=1, max_degree=2, in_features=3, features=2), [(1, 2, 3)]),
    "tensor-P21": (Tensor, dict(num_parity1=2, max_degree1=2, num_parity2=1, max_degree2=1, features=3), [(2, 2, 3), (1, 1, 3)]),
    "tensor-P11-above": (Tensor, dict(num_parity1=1, max_degree1=2, num_parity2=1, max_degree2=1, features=3, max_degree=3), [(1, 2, 3), (1, 1, 3)]),
    "tensor-P12-no-pseudo": (Tensor, dict(num_parity1=1, max_degree1=1, num_parity2=2, max_degree2=2, features=3, include_pseudotensors=False, cartesian_order=False), [(1, 1, 3), (2, 2, 3)]),
    "fused-P22": (FusedTensor, dict(num_parity1=2, max_degree1=1, num_parity2=2, max_degree2=2, features=3), [(2, 1, 3), (2, 2, 3)]),
    "fused-P11-no-pseudo": (FusedTensor, dict(num_parity1=1, max_degree1=2, num_parity2=1, max_degree2=2, features=3, include_pseudotensors=False), [(1, 2, 3), (1, 2, 3)]),
    "fused-P11-pseudo-below": (FusedTensor, dict(num_parity1=1, max_degree1=2, num_parity2=1, max_degree2=1, features=3, max_degree=1, cartesian_order=False), [(1, 2, 3), (1, 1, 3)]),
}  # fmt: skip


@functools.cache
def _module(name: str, x64: bool):
    cls, kwargs, _ = MODULES[name]
    with jax.enable_x64(x64):
        return cls(**kwargs, key=K(len(name)))


def _input_arrays(name):
    """Hypothesis arrays (values only; the shapes are fixed per module)."""
    _, _, shapes = MODULES[name]
    elements = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False)
    return st.tuples(
        *(
            hnp.arrays(np.float64, (2, p, (lmax + 1) ** 2, f), elements=elements)
            for p, lmax, f in shapes
        )
    )


def _assert_close(actual, expected, dtype):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(np.max(np.abs(expected), initial=0.0), 1.0)
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= testing.default_tolerance(dtype) * scale, (error, scale)


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(data=st.data(), rotation=testing.rotations())
def test_equivariance(x64, name, data, rotation):
    """Rotating the inputs by `x @ D(R)` rotates the output; reflecting them reflects it."""
    arrays = data.draw(_input_arrays(name))
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        model = _module(name, x64)
        inputs = [jnp.asarray(a, dtype) for a in arrays]
        (rot_of_out, out_of_rot), (ref_of_out, out_of_ref) = _transformed(
            model, jnp.asarray(rotation, dtype), *inputs
        )
        assert rot_of_out.dtype == dtype
        _assert_close(rot_of_out, out_of_rot, dtype)
        _assert_close(ref_of_out, out_of_ref, dtype)


def test_pseudotensor_path_is_the_cross_product():
    """Two vectors (P=1, 1o) couple to the pseudovector a x b, stored as even parity 1e."""
    weights = np.zeros((1, 2, 1, 2, 2, 2, 1), np.float32)
    weights[0, 1, 0, 1, 0, 1, 0] = 1.0  # 1o x 1o -> 1e only
    model = Tensor(
        num_parity1=1,
        max_degree1=1,
        num_parity2=1,
        max_degree2=1,
        features=1,
        kernel_init=lambda key, shape, dtype: jnp.asarray(weights, dtype),
        key=K(0),
    )
    assert model.num_parity == 2 and model.max_degree == 1
    a, b = jr.normal(K(1), (2, 5, 3))
    x1 = jnp.concatenate([jnp.ones((5, 1)), a], axis=-1)[:, None, :, None]
    x2 = jnp.concatenate([jnp.ones((5, 1)), b], axis=-1)[:, None, :, None]
    out = _apply(model, x1, x2)
    np.testing.assert_allclose(out[:, 0, 1:, 0], jnp.cross(a, b) / np.sqrt(2), atol=1e-6)
    assert not np.any(out[:, 1]) and not np.any(out[:, 0, 0])
    # Reflection flips both vectors, so the (even) pseudovector is unchanged.
    np.testing.assert_array_equal(_apply(model, ops.reflect(x1), ops.reflect(x2)), out)


INIT_CASES = {
    "dense": (Dense, dict(num_parity=2, max_degree=2, in_features=16, features=8), [(2, 2, 16)]),
    "tensor-P22": (Tensor, dict(num_parity1=2, max_degree1=2, num_parity2=2, max_degree2=2, features=8), [(2, 2, 8), (2, 2, 8)]),
    "tensor-P12": (Tensor, dict(num_parity1=1, max_degree1=1, num_parity2=2, max_degree2=2, features=8, max_degree=3), [(1, 1, 8), (2, 2, 8)]),
    "tensor-P11": (Tensor, dict(num_parity1=1, max_degree1=1, num_parity2=1, max_degree2=1, features=8), [(1, 1, 8), (1, 1, 8)]),
    "fused-P22": (FusedTensor, dict(num_parity1=2, max_degree1=2, num_parity2=2, max_degree2=2, features=8), [(2, 2, 8), (2, 2, 8)]),
    "fused-P11-scalar": (FusedTensor, dict(num_parity1=1, max_degree1=0, num_parity2=1, max_degree2=2, features=8), [(1, 0, 8), (1, 2, 8)]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(INIT_CASES))
def test_init_statistics(name):
    """Fresh layers map unit normal inputs to outputs of mean 0 and second moment 1 per block.

    As e3x's own tests, blocks that no path reaches (e.g. 0o from two P=1 inputs) are skipped;
    FusedTensor is checked where e3x's normalisation is exact (equal, even degrees).
    """
    cls, kwargs, shapes = INIT_CASES[name]
    n_models, n_inputs = 128, 8
    models = eqx.filter_vmap(lambda k: cls(**kwargs, key=k))(jr.split(K(0), n_models))
    keys = jr.split(K(1), len(shapes))
    inputs = [
        jr.normal(k, (n_models, n_inputs, p, (lmax + 1) ** 2, f))
        for k, (p, lmax, f) in zip(keys, shapes, strict=True)
    ]
    y = np.asarray(eqx.filter_vmap(lambda m, *xs: m(*xs))(models, *inputs))
    checked = 0
    for p in range(y.shape[-3]):
        for degree in range(_degree(y) + 1):
            block = y[..., p, degree**2 : (degree + 1) ** 2, :]
            if not np.any(block):
                continue  # no allowed path reaches this block
            assert abs(block.mean()) < 0.1, (p, degree, block.mean())
            assert abs((block**2).mean() - 1.0) < 0.15, (p, degree, (block**2).mean())
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("cls", [Tensor, FusedTensor])
def test_equal_arguments_give_equal_structure_and_no_retrace(cls):
    kwargs = dict(num_parity1=2, max_degree1=1, num_parity2=1, max_degree2=1, features=3)
    a, b = cls(**kwargs, key=K(0)), cls(**kwargs, key=K(1))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    traces = 0

    @eqx.filter_jit
    def apply(model, x1, x2):
        nonlocal traces
        traces += 1
        return model(x1, x2)

    x1, x2 = jr.normal(K(2), (4, 2, 4, 3)), jr.normal(K(3), (4, 1, 4, 3))
    ya, yb = apply(a, x1, x2), apply(b, x1, x2)
    assert traces == 1
    assert not np.allclose(ya, yb)
    average = jax.tree.map(lambda u, v: (u + v) / 2, a, b)  # optax/EMA-style tree_map
    assert jax.tree.structure(average) == jax.tree.structure(a)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: Dense(num_parity=2, max_degree=1, in_features=3, features=4, key=k),
        lambda k: Dense(
            num_parity=1, max_degree=2, in_features=3, features=4, use_bias=False, key=k
        ),
        lambda k: Tensor(
            num_parity1=2, max_degree1=1, num_parity2=1, max_degree2=2, features=3, key=k
        ),
        lambda k: FusedTensor(
            num_parity1=1, max_degree1=2, num_parity2=2, max_degree2=1, features=3, key=k
        ),
    ],
    ids=["dense", "dense-no-bias", "tensor", "fused"],
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


def test_tensor_jit_vmap_grad():
    model = Tensor(num_parity1=2, max_degree1=1, num_parity2=1, max_degree2=2, features=3, key=K(0))
    x1, x2 = jr.normal(K(1), (6, 2, 4, 3)), jr.normal(K(2), (6, 1, 9, 3))
    jitted = _apply(model, x1, x2)
    mapped = jax.vmap(model)(x1, x2)
    np.testing.assert_allclose(mapped, jitted, rtol=1e-6, atol=1e-6)
    assert jitted.shape == (6, 2, 9, 3)  # L3 = max(L1, L2) = 2

    def loss(m):
        return jnp.sum(jnp.sin(_apply(m, x1, x2)))

    grad = eqx.filter_grad(loss)(model).kernel
    mask = ops.tensor_product.tensor_kernel_mask(2, 1, 1, 2, 2, 2)
    assert np.all(np.isfinite(grad))
    # Forbidden paths get exactly zero gradient; allowed ones do not.
    assert not np.any(np.asarray(grad)[~mask])
    assert np.all(np.any(np.asarray(grad)[mask] != 0, axis=-1))
    # Directional derivative against central finite differences.
    direction = jnp.asarray(mask[..., None], jnp.float32) * jr.normal(K(3), grad.shape)
    eps = 1e-2
    plus = eqx.tree_at(lambda m: m.kernel, model, model.kernel + eps * direction)
    minus = eqx.tree_at(lambda m: m.kernel, model, model.kernel - eps * direction)
    numeric = (loss(plus) - loss(minus)) / (2 * eps)
    np.testing.assert_allclose(numeric, jnp.vdot(grad, direction), rtol=2e-2)


def test_dense_and_fused_grad_and_vmap():
    dense = Dense(num_parity=2, max_degree=1, in_features=3, features=2, key=K(0))
    fused = FusedTensor(
        num_parity1=2, max_degree1=1, num_parity2=2, max_degree2=1, features=2, key=K(1)
    )
    x = jr.normal(K(2), (5, 2, 4, 3))

    def loss(models):
        d, f = models
        y = _apply(d, x)
        return jnp.sum(_apply(f, y, y) ** 2)

    grads = eqx.filter_grad(loss)((dense, fused))
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(dense.kernels) + 1 + 8
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in leaves)
    np.testing.assert_allclose(jax.vmap(dense)(x), _apply(dense, x), rtol=1e-6, atol=1e-6)


def test_outputs_follow_the_input_dtype():
    with jax.enable_x64(True):
        model = Tensor(
            num_parity1=1, max_degree1=1, num_parity2=1, max_degree2=1, features=2, key=K(0)
        )
        assert model.kernel.dtype == jnp.float64
        x = jr.normal(K(1), (3, 1, 4, 2), jnp.float32)
        assert _apply(model, x, x).dtype == jnp.float32
        x64 = x.astype(jnp.float64)
        assert _apply(model, x64, x64).dtype == jnp.float64


def test_bad_inputs_raise_clear_errors():
    dense = Dense(num_parity=2, max_degree=2, in_features=3, features=4, key=K(0))
    with pytest.raises(
        ValueError,
        match=r"^Dense: expected an input of shape \(\.\.\., 2, 9, 3\).*got \(5, 2, 9, 4\)",
    ):
        dense(jnp.ones((5, 2, 9, 4)))
    with pytest.raises(
        ValueError,
        match=r"^Dense: expected an input of shape \(\.\.\., 2, 9, 3\).*got \(5, 1, 9, 3\)",
    ):
        dense(jnp.ones((5, 1, 9, 3)))
    tensor = Tensor(
        num_parity1=2, max_degree1=1, num_parity2=1, max_degree2=2, features=3, key=K(0)
    )
    x1, x2 = jnp.ones((4, 2, 4, 3)), jnp.ones((4, 1, 9, 3))
    with pytest.raises(
        ValueError,
        match=r"^Tensor: expected inputs2 of shape \(\.\.\., 1, 9, 3\).*got \(4, 1, 9, 4\)",
    ):
        tensor(x1, jnp.ones((4, 1, 9, 4)))  # feature mismatch
    with pytest.raises(
        ValueError,
        match=r"^Tensor: expected inputs1 of shape \(\.\.\., 2, 4, 3\).*got \(4, 2, 9, 3\)",
    ):
        tensor(jnp.ones((4, 2, 9, 3)), x2)
    with pytest.raises(TypeError, match="same dtype"):
        with jax.enable_x64(True):
            tensor(x1, x2.astype(jnp.float64))
    fused = FusedTensor(
        num_parity1=2, max_degree1=1, num_parity2=1, max_degree2=2, features=3, key=K(0)
    )
    with pytest.raises(
        ValueError,
        match=r"^FusedTensor: expected inputs2 of shape \(\.\.\., 1, 9, 3\).*got \(4, 2, 9, 3\)",
    ):
        fused(x1, jnp.ones((4, 2, 9, 3)))


@pytest.mark.parametrize("cls", [Tensor, FusedTensor])
def test_bad_construction_raises_clear_errors(cls):
    name = cls.__name__
    base = dict(num_parity1=1, max_degree1=0, num_parity2=1, max_degree2=1, features=2, key=K(0))
    with pytest.raises(
        ValueError, match=rf"^{name}: max_degree .* can be at most 1, got max_degree=2"
    ):
        cls(**{**base, "max_degree": 2})
    with pytest.raises(ValueError, match=rf"^{name}: num_parity must be 1 or 2, got 3"):
        cls(**{**base, "num_parity2": 3})
    with pytest.raises(ValueError, match=rf"^{name}: max_degree must be a non-negative int"):
        cls(**{**base, "max_degree1": -1})


def test_output_shape_rules():
    """e3x's rules: L3 defaults to max(L1, L2); two P=1 inputs with a degree 0 give P3=1."""

    def tensor(**kw):  # the structure only: no initialiser runs
        return eqx.filter_eval_shape(lambda: Tensor(features=2, key=K(0), **kw))

    assert (
        tensor(num_parity1=1, max_degree1=2, num_parity2=1, max_degree2=1).num_parity,
        tensor(num_parity1=1, max_degree1=2, num_parity2=1, max_degree2=1).max_degree,
    ) == (2, 2)
    assert tensor(num_parity1=1, max_degree1=0, num_parity2=1, max_degree2=2).num_parity == 1
    assert (
        tensor(num_parity1=1, max_degree1=2, num_parity2=1, max_degree2=2, max_degree=0).num_parity
        == 1
    )
    assert tensor(num_parity1=2, max_degree1=0, num_parity2=1, max_degree2=0).num_parity == 2
    assert (
        tensor(
            num_parity1=2, max_degree1=1, num_parity2=2, max_degree2=1, include_pseudotensors=False
        ).num_parity
        == 1
    )
    assert tensor(
        num_parity1=1, max_degree1=1, num_parity2=1, max_degree2=2, max_degree=3
    ).kernel.shape == (1, 2, 1, 3, 2, 4, 2)


# ------------------------------------------------------------------------------------------
# Leading batch axes: every e3x-family module, jitted against eager and against its rows

# No batch axis, one, and the two or more with which XLA's shape verifier rejected the jitted
# contractions of FusedTensor (e3x's own FusedTensor still fails there).
BATCH_SHAPES = [(), (3,), (2, 2), (2, 3, 2)]
# One configuration of each e3x-family class; the fused ones take P=1 inputs, as the failing
# case did, and the graph ones feed batched edges to both kinds of tensor product.
FAMILY = [
    "dense-P2",
    "tensor-P21",
    "fused-P11-pseudo-below",
    "message-fused-no-pseudo",
    "self-attention-fused",
    "cross-attention",
]
# Eager calls compile every operation once per shape (tens of seconds per shape for the
# graph modules), so those run eagerly on the failing case's batch shape only; every shape
# is still checked against the rows computed one at a time.
EAGER_SHAPES = {name: BATCH_SHAPES if name in MODULES else [(2, 2)] for name in FAMILY}


def _family_module(name):
    return _module(name, False) if name in MODULES else graph._module(name, False)


def _batched_arguments(name, batch):
    """Positional and keyword arguments of module `name` with leading batch axes `batch`."""
    rng = np.random.default_rng(len(name) + len(batch))

    def draw(*shape):
        return jnp.asarray(rng.standard_normal((*batch, *shape)), jnp.float32)

    if name in MODULES:
        _, _, shapes = MODULES[name]
        return tuple(draw(p, (lmax + 1) ** 2, f) for p, lmax, f in shapes), {}
    cls, _, shapes, form = graph.MODULES[name]
    model = _family_module(name)
    features = tuple(draw(graph.N, p, (lmax + 1) ** 2, f) for p, lmax, f in shapes)
    if form == "dense":
        plain = dict(adj_idx=graph.ADJ)
    else:
        plain = dict(dst_idx=graph.DST, src_idx=graph.SRC)
    indices = {
        key: jnp.asarray(np.broadcast_to(value, (*batch, *value.shape)), jnp.int32)
        for key, value in plain.items()
    }
    index_shape = next(iter(plain.values())).shape
    basis = draw(*index_shape, 1, (model.filter.max_degree + 1) ** 2, graph.NUM_BASIS)
    if cls is MessagePass:
        return (*features, basis), indices
    cutoff = jnp.asarray(rng.uniform(0.0, 1.0, (*batch, *index_shape)), jnp.float32)
    return (*features, basis, cutoff), indices


@eqx.filter_jit
def _apply_with(model, args, kwargs):
    return model(*args, **kwargs)


@pytest.mark.parametrize("name", FAMILY)
def test_batch_axes_jitted_equals_eager_and_rows(name):
    """Jitted, the modules take 0 to 3 leading batch axes; the output equals the eager one
    (see `EAGER_SHAPES`) and each batch row equals the module applied to that row alone."""
    model = _family_module(name)
    for batch in BATCH_SHAPES:
        args, kwargs = _batched_arguments(name, batch)
        jitted = _apply_with(model, args, kwargs)
        assert jitted.shape[: len(batch)] == batch
        if batch in EAGER_SHAPES[name]:
            _assert_close(jitted, model(*args, **kwargs), jnp.float32)
        # Rows are cut on the host: indexing a JAX array eagerly compiles per index.
        host = jax.tree.map(np.asarray, (jitted, args, kwargs))
        for row in np.ndindex(*batch):
            alone = _apply_with(model, *jax.tree.map(lambda a, r=row: jnp.asarray(a[r]), host[1:]))
            _assert_close(host[0][row], alone, jnp.float32)
