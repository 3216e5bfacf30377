"""eqmlip.nn.Dense, Tensor, FusedTensor and the e3x-layout ops side by side with e3x 1.0.2."""

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
from eqmlip.nn import Dense, FusedTensor, Tensor
from eqmlip.nn._e3x import _fused_tensor_normal, _tensor_lecun_normal

from ..helpers import relative_error, tolerance

pytestmark = pytest.mark.parity

K = jax.random.PRNGKey


@eqx.filter_jit
def _call(module, *args):
    """eqmlip modules run jitted (eagerly, each small op would compile on its own)."""
    return module(*args)


def _apply(flax_module, variables, *args) -> Any:
    """`flax_module.apply`, typed loosely (Flax's overloads return a union with a tuple)."""
    return flax_module.apply(variables, *args)


def _random_variables(module, seed):
    """Flax variables in the layout that `from_flax` expects for `module`, filled with N(0, 1).

    Flax's `apply` checks every parameter's name and shape against the e3x module (a missing,
    extra or mis-shaped one raises), so this also checks the layout. Random values exercise
    the entries that e3x initialises to zero. (NumPy draws: no compilation per shape.)
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


def _skeleton(make):
    """The module's structure without running its initialiser; `from_flax` fills it in."""
    return eqx.filter_eval_shape(make)


def _features(seed, num_parity, max_degree, features, batch=(5,), dtype=None):
    dtype = jnp.result_type(float) if dtype is None else dtype
    shape = (*batch, num_parity, (max_degree + 1) ** 2, features)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


# ------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("num_parity", [1, 2], ids=["P1", "P2"])
def test_dense_matches_e3x(x64, num_parity, use_bias):
    dtype = jnp.result_type(float)
    x = _features(1, num_parity, 2, 3, batch=(4, 2))
    flax_module = e3x.nn.Dense(5, use_bias=use_bias, param_dtype=dtype)

    module = _skeleton(
        lambda: Dense(
            num_parity=num_parity,
            max_degree=2,
            in_features=3,
            features=5,
            use_bias=use_bias,
            key=K(3),
        )
    )
    variables = _random_variables(module, 7)
    expected = _apply(flax_module, variables, x)
    actual = _call(from_flax(module, variables), x)
    assert actual.shape == expected.shape == (4, 2, num_parity, 9, 5)
    assert actual.dtype == expected.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)
    assert np.max(np.abs(np.asarray(expected))) > 0.1


# (id, P1, L1, P2, L2, max_degree, include_pseudotensors, cartesian_order)
TENSOR_CASES = [
    ("P22-default", 2, 1, 2, 1, None, True, True),
    ("P11-pseudo", 1, 1, 1, 2, None, True, True),
    ("P12-above", 1, 1, 2, 1, 2, True, True),
    ("P21-below", 2, 2, 1, 2, 1, True, True),
    ("P21-equal-no-pseudo", 2, 2, 1, 1, 2, False, True),
    ("P11-forced-scalar-input", 1, 0, 1, 2, None, True, True),
    ("P11-forced-scalar-output", 1, 2, 1, 1, 0, True, True),
    ("scalars-only-P1", 1, 0, 1, 0, None, True, True),
    ("scalars-only-P2", 2, 0, 2, 0, None, True, True),
    ("P22-l3-zero", 2, 2, 2, 2, 0, True, True),
    ("P22-top-degree", 2, 1, 2, 2, 3, True, True),
    ("standard-order", 2, 2, 1, 1, 3, True, False),
    ("standard-order-P11", 1, 2, 1, 2, 2, False, False),
]


@pytest.mark.parametrize(
    "p1, l1, p2, l2, max_degree, pseudo, cartesian",
    [case[1:] for case in TENSOR_CASES],
    ids=[case[0] for case in TENSOR_CASES],
)
@pytest.mark.parametrize(
    "ours, theirs",
    [(Tensor, e3x.nn.Tensor), (FusedTensor, e3x.nn.FusedTensor)],
    ids=["tensor", "fused"],
)
def test_tensor_matches_e3x(x64, ours, theirs, p1, l1, p2, l2, max_degree, pseudo, cartesian):
    dtype = jnp.result_type(float)
    x1 = _features(1, p1, l1, 3)
    x2 = _features(2, p2, l2, 3)
    flax_module = theirs(
        max_degree=max_degree,
        include_pseudotensors=pseudo,
        cartesian_order=cartesian,
        param_dtype=dtype,
    )

    module = _skeleton(
        lambda: ours(
            num_parity1=p1,
            max_degree1=l1,
            num_parity2=p2,
            max_degree2=l2,
            features=3,
            max_degree=max_degree,
            include_pseudotensors=pseudo,
            cartesian_order=cartesian,
            key=K(3),
        )
    )
    variables = _random_variables(module, 11)
    expected = _apply(flax_module, variables, x1, x2)
    loaded = from_flax(module, variables)
    actual = _call(loaded, x1, x2)
    assert actual.shape == expected.shape
    assert actual.shape[-3:-1] == (module.num_parity, (module.max_degree + 1) ** 2)
    assert actual.dtype == expected.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)
    assert np.max(np.abs(np.asarray(expected))) > 0.1
    # The parameter tree mirrors e3x's one-for-one (e3x's apply accepted it).
    assert jax.tree.map(jnp.shape, {"params": _params_of(loaded)}) == jax.tree.map(
        jnp.shape, variables
    )


LAYOUT_CASES = [
    ("dense-P1-no-bias", lambda: e3x.nn.Dense(4, use_bias=False), lambda k: Dense(num_parity=1, max_degree=2, in_features=3, features=4, use_bias=False, key=k), [(1, 2)]),
    ("dense-P2", lambda: e3x.nn.Dense(4), lambda k: Dense(num_parity=2, max_degree=1, in_features=3, features=4, key=k), [(2, 1)]),
    ("tensor", lambda: e3x.nn.Tensor(max_degree=2), lambda k: Tensor(num_parity1=1, max_degree1=1, num_parity2=2, max_degree2=1, features=3, max_degree=2, key=k), [(1, 1), (2, 1)]),
    ("fused", lambda: e3x.nn.FusedTensor(), lambda k: FusedTensor(num_parity1=1, max_degree1=2, num_parity2=1, max_degree2=1, features=3, key=k), [(1, 2), (1, 1)]),
]  # fmt: skip


@pytest.mark.parametrize(
    "make_flax, make, inputs", [c[1:] for c in LAYOUT_CASES], ids=[c[0] for c in LAYOUT_CASES]
)
def test_parameter_trees_equal_e3x_init(make_flax, make, inputs):
    """Names and shapes of the parameters are e3x's, no more and no fewer."""
    args = [_features(i, p, lmax, 3) for i, (p, lmax) in enumerate(inputs)]
    expected = jax.tree.map(jnp.shape, jax.eval_shape(make_flax().init, K(0), *args))
    module = _skeleton(lambda: make(K(0)))
    assert jax.tree.map(jnp.shape, _random_variables(module, 0)) == expected


def _params_of(module):
    if isinstance(module, Tensor):
        return {"kernel": module.kernel}
    names = ("e1", "o1", "e2", "o2", "eee", "ooe", "eoo", "oeo")
    return {f"kernel_{n}": getattr(module, f"kernel_{n}") for n in names}


@pytest.mark.parametrize(
    "ours, theirs",
    [(Tensor, e3x.nn.Tensor), (FusedTensor, e3x.nn.FusedTensor)],
    ids=["tensor", "fused"],
)
def test_float32_stays_float32_under_x64(ours, theirs):
    """e3x's float64 Clebsch-Gordan constant promotes float32 products to float64; ours not."""
    with jax.enable_x64(True):
        x1 = _features(1, 2, 1, 3, dtype=jnp.float32)
        x2 = _features(2, 1, 2, 3, dtype=jnp.float32)
        flax_module = theirs(param_dtype=jnp.float32)
        module = _skeleton(
            lambda: ours(
                num_parity1=2,
                max_degree1=1,
                num_parity2=1,
                max_degree2=2,
                features=3,
                dtype=jnp.float32,
                key=K(1),
            )
        )
        variables = _random_variables(module, 5)
        expected = _apply(flax_module, variables, x1, x2)
        actual = _call(from_flax(module, variables), x1, x2)
        assert expected.dtype == jnp.float64  # e3x's promotion (a known e3x issue)
        assert actual.dtype == jnp.float32
        assert relative_error(actual, expected) <= tolerance(jnp.float32)


def test_dense_init_equals_e3x_default_initialiser():
    """The default kernel initialiser is e3x's (Flax's) `lecun_normal`, bit for bit."""
    module = Dense(num_parity=2, max_degree=1, in_features=4, features=6, key=K(0))
    keys = jax.random.split(jax.random.split(K(0))[0], 4)
    expected = [e3x.nn.modules.default_kernel_init(k, (4, 6), jnp.float32) for k in keys]
    for ours, theirs in zip(module.kernels, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert module.bias is not None and not np.any(module.bias)


@pytest.mark.parametrize(
    "shape", [(2, 2, 2, 2, 2, 2, 3), (1, 3, 1, 2, 2, 2, 5), (1, 1, 2, 3, 1, 1, 2)]
)
def test_tensor_initialiser_equals_e3x(x64, shape):
    dtype = jnp.result_type(float)
    expected = e3x.nn.initializers.tensor_lecun_normal()(K(4), shape, dtype)
    actual = _tensor_lecun_normal(K(4), shape, dtype)
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def test_fused_tensor_initialiser_equals_e3x():
    scale = jnp.asarray([[1.0], [2.0], [2.0]], jnp.float32)
    mask = np.array([[False], [True], [True]])
    for s, m in [(0.5, True), (scale, mask), (1.7, mask)]:
        expected = e3x.nn.initializers.fused_tensor_normal(s, m)(K(2), (3, 4), jnp.float32)
        actual = _fused_tensor_normal(s, m)(K(2), (3, 4), jnp.float32)
        np.testing.assert_array_equal(actual, expected)


def _scale_pattern(scale: Any = 1.0, mask: Any = True, dtype: Any = None) -> Any:
    """A deterministic e3x-style factory: each kernel shows the scale and mask it was given."""
    del dtype  # part of e3x's protocol; the initializer receives the dtype

    def init(key, shape, dtype):
        del key
        return jnp.where(mask, jnp.broadcast_to(jnp.asarray(scale, dtype), shape), 0.0).astype(
            dtype
        )

    return init


@pytest.mark.parametrize(
    "p1, l1, p2, l2, max_degree",
    [(2, 2, 2, 2, None), (1, 2, 1, 2, None), (1, 0, 1, 2, None), (1, 2, 2, 1, 3), (2, 1, 1, 1, 0)],
)
def test_fused_tensor_initialiser_scales_and_masks_match_e3x(p1, l1, p2, l2, max_degree):
    """`kernel_init` follows e3x's protocol `(scale, mask) -> initializer`, with e3x's values."""
    x1 = _features(1, p1, l1, 4)
    x2 = _features(2, p2, l2, 4)
    flax_module = e3x.nn.FusedTensor(max_degree=max_degree, kernel_init=_scale_pattern)
    expected: Any = flax_module.init(K(0), x1, x2)["params"]
    module = FusedTensor(
        num_parity1=p1,
        max_degree1=l1,
        num_parity2=p2,
        max_degree2=l2,
        features=4,
        max_degree=max_degree,
        kernel_init=_scale_pattern,
        key=K(0),
    )
    assert set(expected) == set(_params_of(module))
    for name, theirs in expected.items():
        np.testing.assert_allclose(getattr(module, name), theirs, rtol=1e-7, atol=0)


# ------------------------------------------------------------------------------------------
# Functions
# ------------------------------------------------------------------------------------------


def _vectors(n=12, seed=0):
    dtype = jnp.result_type(float)
    r = 1.7 * jax.random.normal(K(seed), (n, 3), dtype)
    return jnp.concatenate([r, jnp.zeros((1, 3), dtype), jnp.asarray([[0.0, 0.0, 2.5]], dtype)])


@pytest.mark.parametrize("cartesian", [True, False], ids=["cartesian", "standard"])
@pytest.mark.parametrize(
    "degrees", [(0, 0, 0), (1, 1, 1), (2, 1, 3), (2, 2, 2), (3, 2, 4), (1, 3, 2)]
)
def test_clebsch_gordan_matches_e3x(degrees, cartesian):
    with jax.enable_x64(True):
        expected = np.asarray(e3x.so3.clebsch_gordan(*degrees, cartesian_order=cartesian))
    actual = ops.clebsch_gordan(*degrees, cartesian_order=cartesian)
    assert actual.dtype == np.float64 and actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= 1e-15
    assert not actual.flags.writeable


@pytest.mark.parametrize("cartesian", [True, False], ids=["cartesian", "standard"])
@pytest.mark.parametrize("normalization", ["racah", "4pi", "orthonormal"])
def test_spherical_harmonics_match_e3x(x64, normalization, cartesian):
    r = _vectors()
    for normalized in (False, True):
        inputs = (
            r if not normalized else r / jnp.maximum(jnp.linalg.norm(r, axis=-1), 1e-30)[:, None]
        )
        kwargs: dict[str, Any] = dict(
            r_is_normalized=normalized, normalization=normalization, cartesian_order=cartesian
        )
        expected = jax.jit(functools.partial(e3x.so3.spherical_harmonics, max_degree=3, **kwargs))(
            inputs
        )
        actual = jax.jit(functools.partial(ops.spherical_harmonics, max_degree=3, **kwargs))(inputs)
        assert actual.dtype == expected.dtype == r.dtype
        assert relative_error(actual, expected) <= tolerance(r.dtype)

    # Gradients agree too, including at r = 0.
    def grad(f):
        return jax.jit(jax.grad(lambda x: jnp.sum(f(x, 3, normalization=normalization) ** 3)))(r)

    expected_grad = grad(e3x.so3.spherical_harmonics)
    actual_grad = grad(ops.spherical_harmonics)
    assert relative_error(actual_grad, expected_grad) <= 10 * tolerance(r.dtype)


@pytest.mark.parametrize("cartesian", [True, False], ids=["cartesian", "standard"])
def test_wigner_d_matches_e3x(x64, cartesian):
    dtype = jnp.result_type(float)
    rotations = e3x.so3.random_rotation(K(1), num=4).astype(dtype)
    for matrix in (rotations, -rotations):  # rotations and rotoinversions
        expected = e3x.so3.wigner_d(matrix, 3, cartesian_order=cartesian)
        actual = jax.jit(functools.partial(ops.wigner_d, max_degree=3, cartesian_order=cartesian))(
            matrix
        )
        assert actual.dtype == expected.dtype == dtype
        assert relative_error(actual, expected) <= tolerance(dtype)


def test_rotate_and_reflect_match_e3x(x64):
    dtype = jnp.result_type(float)
    rotation = e3x.so3.random_rotation(K(1)).astype(dtype)
    for num_parity in (1, 2):
        x = _features(3, num_parity, 2, 4)
        wigner = ops.wigner_d(rotation, 2)
        assert relative_error(ops.rotate(x, wigner), e3x.nn.rotate(x, wigner)) <= tolerance(dtype)
        batched = jnp.broadcast_to(wigner, (5, 9, 9))
        assert relative_error(ops.rotate(x, batched), e3x.nn.rotate(x, batched)) <= tolerance(dtype)
        np.testing.assert_array_equal(ops.reflect(x), e3x.nn.reflect(x))


# (name, eqmlip function, e3x function, kwargs)
RADIAL_CASES = [
    ("reciprocal_bernstein", {}),
    ("reciprocal_bernstein", {"kind": "damped", "use_reciprocal_weighting": True}),
    ("reciprocal_bernstein", {"kind": "cuspless"}),
    ("exponential_bernstein", {"gamma": 0.7, "cuspless": True}),
    ("exponential_bernstein", {"use_exponential_weighting": True}),
    ("basic_bernstein", {"limit": 4.0}),
    ("basic_gaussian", {"limit": 4.0}),
    ("reciprocal_gaussian", {"kind": "damped"}),
    ("exponential_gaussian", {"gamma": 0.5}),
    ("basic_fourier", {"limit": 4.0}),
    ("reciprocal_fourier", {}),
    ("exponential_fourier", {"use_exponential_weighting": True}),
    ("sinc", {"limit": 4.0}),
]


@pytest.mark.parametrize(
    "name, kwargs", RADIAL_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RADIAL_CASES)]
)
def test_radial_functions_match_e3x(x64, name, kwargs):
    dtype = jnp.result_type(float)
    x = jnp.concatenate([jnp.linspace(0.0, 5.0, 41, dtype=dtype), jnp.asarray([1e-9, 7.0], dtype)])
    ours = functools.partial(getattr(ops, name), num=7, **kwargs)
    theirs = functools.partial(getattr(e3x.nn, name), num=7, **kwargs)
    actual, expected = jax.jit(ours)(x), jax.jit(theirs)(x)
    assert actual.shape == expected.shape == (43, 7)
    assert actual.dtype == dtype
    assert relative_error(actual, expected) <= tolerance(dtype)
    jacobian = lambda f: jax.jit(jax.vmap(jax.jacfwd(f)))(x)  # noqa: E731
    assert relative_error(jacobian(ours), jacobian(theirs)) <= 10 * tolerance(dtype)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("smooth_cutoff", {"cutoff": 4.0}),
        ("cosine_cutoff", {"cutoff": 4.0}),
        ("smooth_damping", {"gamma": 2.0}),
    ],
)
def test_cutoffs_match_e3x(x64, name, kwargs):
    dtype = jnp.result_type(float)
    x = jnp.concatenate([jnp.linspace(0.0, 5.0, 41, dtype=dtype), jnp.asarray([1e-9], dtype)])
    ours = functools.partial(getattr(ops, name), **kwargs)
    theirs = functools.partial(getattr(e3x.nn, name), **kwargs)
    assert relative_error(ours(x), theirs(x)) <= tolerance(dtype)
    assert relative_error(
        jax.vmap(jax.grad(ours))(x), jax.vmap(jax.grad(theirs))(x)
    ) <= 10 * tolerance(dtype)


@pytest.mark.parametrize("with_damping", [False, True], ids=["plain", "damped"])
def test_basis_matches_e3x(x64, with_damping):
    r = _vectors()
    kwargs: dict[str, Any] = dict(max_degree=2, num=6)
    ours = functools.partial(
        ops.basis,
        radial_fn=ops.reciprocal_bernstein,
        cutoff_fn=functools.partial(ops.smooth_cutoff, cutoff=5.0),
        damping_fn=ops.smooth_damping if with_damping else None,
        **kwargs,
    )
    theirs = functools.partial(
        e3x.nn.basis,
        radial_fn=e3x.nn.reciprocal_bernstein,
        cutoff_fn=functools.partial(e3x.nn.smooth_cutoff, cutoff=5.0),
        damping_fn=e3x.nn.smooth_damping if with_damping else None,
        **kwargs,
    )
    actual, expected = jax.jit(ours)(r), jax.jit(theirs)(r)
    assert isinstance(expected, jax.Array)
    assert actual.shape == expected.shape == (r.shape[0], 1, 9, 6)
    assert actual.dtype == r.dtype
    assert relative_error(actual, expected) <= tolerance(r.dtype)
    loss = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(f(x)))))(r)  # noqa: E731
    actual_grad, expected_grad = loss(ours), loss(theirs)
    assert np.all(np.isfinite(np.asarray(actual_grad)))
    assert relative_error(actual_grad, expected_grad) <= 10 * tolerance(r.dtype)
