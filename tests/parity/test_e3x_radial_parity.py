"""The Chebyshev bases, window functions, smooth_switch and basis(...)'s options side by side
with e3x 1.0.2: values and derivatives."""

import functools
from typing import Any

import e3x
import jax
import jax.numpy as jnp
import pytest

from eqmlip import ops
from eqmlip.ops import cutoffs, radial

from ..helpers import relative_error, tolerance
from .test_e3x_parity import _vectors

pytestmark = pytest.mark.parity

CASES = [
    ("basic_chebyshev", {"limit": 4.0}),
    ("reciprocal_chebyshev", {}),
    ("reciprocal_chebyshev", {"kind": "damped", "use_reciprocal_weighting": True}),
    ("reciprocal_chebyshev", {"kind": "cuspless"}),
    ("exponential_chebyshev", {"gamma": 0.7, "cuspless": True}),
    ("exponential_chebyshev", {"use_exponential_weighting": True}),
    ("rectangular_window", {"limit": 4.0}),
    ("triangular_window", {"limit": 4.0}),
    ("smooth_window", {"limit": 4.0}),
]


@functools.cache
def _evaluate(x64: bool):
    """Values and Jacobians of every case, ours and e3x's, in one compilation each."""
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        # Inside, at and beyond the ends; points off the window boundaries (where the
        # rectangles jump and the hats have kinks) for the derivatives.
        x = jnp.concatenate(
            [jnp.linspace(-0.45, 5.45, 60, dtype=dtype), jnp.asarray([0.0, 1e-9, 4.0], dtype)]
        )

        def run(module, x):
            out = {}
            for i, (name, kwargs) in enumerate(CASES):
                fn = functools.partial(getattr(module, name), num=6, **kwargs)
                out[i] = (fn(x), jax.vmap(jax.jacfwd(fn))(x))
            return out

        ours = jax.device_get(jax.jit(functools.partial(run, radial))(x))
        theirs = jax.device_get(jax.jit(functools.partial(run, e3x.nn))(x))
        return ours, theirs, dtype


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_radial_functions_match_e3x(x64, index):
    ours, theirs, dtype = _evaluate(x64)
    (value, jacobian), (expected, expected_jacobian) = ours[index], theirs[index]
    assert value.shape == expected.shape == (63, 6)
    assert value.dtype == expected.dtype == dtype
    assert relative_error(value, expected) <= tolerance(dtype)
    assert relative_error(jacobian, expected_jacobian) <= 10 * tolerance(dtype)


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
def test_smooth_switch_matches_e3x_to_second_derivatives(x64):
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        x = jnp.linspace(-0.5, 3.5, 81, dtype=dtype)

        def derivatives(fn, x):
            first = jax.vmap(jax.grad(fn))
            second = jax.vmap(jax.grad(jax.grad(fn)))
            return fn(x), first(x), second(x)

        for x0, x1 in [(0.0, 1.0), (0.5, 3.0)]:
            ours = jax.jit(
                functools.partial(
                    derivatives, functools.partial(cutoffs.smooth_switch, x0=x0, x1=x1)
                )
            )(x)
            theirs = jax.jit(
                functools.partial(
                    derivatives, functools.partial(e3x.nn.smooth_switch, x0=x0, x1=x1)
                )
            )(x)
            for order, (a, e) in enumerate(zip(ours, theirs, strict=True)):
                assert a.dtype == dtype
                assert jnp.all(jnp.isfinite(a))
                assert relative_error(a, e) <= 10**order * tolerance(dtype), (x0, x1, order)
    with pytest.raises(ValueError, match="x1 must be larger than x0, got x0=1.0 and x1=1.0"):
        cutoffs.smooth_switch(jnp.zeros(2), 1.0, 1.0)


def _angular(r: Any, max_degree: int, cartesian_order: bool) -> Any:
    """A non-default angular part: 4pi-normalised spherical harmonics."""
    return e3x.so3.spherical_harmonics(
        r, max_degree, r_is_normalized=True, cartesian_order=cartesian_order, normalization="4pi"
    )


@pytest.mark.parametrize(
    "options",
    [
        {"return_cutoff": True},
        {"return_norm": True},
        {"return_cutoff": True, "return_norm": True, "cartesian_order": False},
        {"angular_fn": _angular, "return_norm": True},
    ],
    ids=["cutoff", "norm", "both-standard", "angular_fn"],
)
def test_basis_options_match_e3x(x64, options):
    r = _vectors()
    dtype = r.dtype
    kwargs: dict[str, Any] = dict(max_degree=2, num=5, **options)
    ours = functools.partial(
        ops.basis,
        radial_fn=ops.radial.reciprocal_chebyshev,
        cutoff_fn=functools.partial(ops.smooth_cutoff, cutoff=5.0),
        **kwargs,
    )
    theirs = functools.partial(
        e3x.nn.basis,
        radial_fn=e3x.nn.reciprocal_chebyshev,
        cutoff_fn=functools.partial(e3x.nn.smooth_cutoff, cutoff=5.0),
        **kwargs,
    )
    actual, expected = jax.jit(ours)(r), jax.jit(theirs)(r)
    assert isinstance(actual, tuple) and isinstance(expected, tuple)
    assert (
        len(actual)
        == len(expected)
        == 1 + sum(bool(options.get(k)) for k in ("return_cutoff", "return_norm"))
    )
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == dtype
        assert relative_error(a, e) <= tolerance(dtype)
    assert actual[0].shape == (r.shape[0], 1, 9, 5)
    with pytest.raises(ValueError, match="return_cutoff=True needs a cutoff_fn"):
        ops.basis(r, max_degree=1, num=2, radial_fn=ops.radial.sinc, return_cutoff=True)
