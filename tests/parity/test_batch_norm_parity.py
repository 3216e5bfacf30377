"""eqmlip.nn.BatchNorm side by side with e3nn_jax.flax.BatchNorm, from the same variables."""

import e3nn_jax as e3nn
import e3nn_jax.flax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqmlip
from eqmlip.interop import from_flax

from ..helpers import relative_error, tolerance

pytestmark = pytest.mark.parity

# A repeated 0e entry, a pseudoscalar 0o (neither centred nor biased) and both parities of l=1.
IRREPS = e3nn.Irreps("2x0e + 1x1o + 0o + 3x0e + 1x1e + 1x2e")

CASES = {
    "default": ({}, False),
    "norm_max": ({"normalization": "norm", "reduce": "max"}, False),
    "mask": ({}, True),
    "mask_norm_max": ({"normalization": "norm", "reduce": "max"}, True),
    "no_affine": ({"affine": False}, False),
    "eps_momentum": ({"eps": 0.05, "momentum": 0.3}, False),
    "instance": ({"instance": True}, False),
    "instance_mask": ({"instance": True}, True),
}
PARAMS = [
    pytest.param(name, mode, id=f"{name}-{mode}")
    for name, (kwargs, _) in CASES.items()
    for mode in ("train", "eval")
    if not (kwargs.get("instance") and mode == "eval")
]


def _flax_apply(module, variables, x, **kwargs):
    # e3nn-jax divides by an integer mask count (and multiplies by a bool mask), which strict
    # dtype promotion rejects: run the reference under JAX's standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        return module.apply(variables, x, mutable=["batch_stats"], **kwargs)


def _randomised_variables(module, x, key):
    """Flax variables with random weights, biases and running statistics (var > 0)."""
    variables = module.init(jr.PRNGKey(0), x)
    out = {}
    for collection, leaves in variables.items():
        out[collection] = {}
        for name, leaf in leaves.items():
            key, sub = jr.split(key)
            if name == "var":
                value = jr.uniform(sub, leaf.shape, leaf.dtype, 0.5, 2.0)
            else:
                value = jr.normal(sub, leaf.shape, leaf.dtype)
            out[collection][name] = value
    return out


def _input(key, shape, dtype):
    # An offset so that the 0e means are far from zero.
    return e3nn.IrrepsArray(IRREPS, 2.0 * jr.normal(key, shape, dtype) + 0.5)


def _load(kwargs, variables, dtype):
    module = eqmlip.nn.BatchNorm(IRREPS, dtype=dtype, **kwargs)
    loaded = from_flax(module, variables)
    if kwargs.get("instance"):
        assert isinstance(loaded, eqmlip.nn.BatchNorm)
        return loaded, eqx.nn.State(loaded)
    return loaded


@pytest.mark.parametrize("name, mode", PARAMS)
def test_parity(name, mode, x64, getkey):
    kwargs, masked = CASES[name]
    dtype = jnp.float64 if x64 else jnp.float32
    tol = tolerance(dtype)
    use_ra = mode == "eval"
    x = _input(getkey(), (5, 3, IRREPS.dim), dtype)
    mask = jnp.array([True, True, False, True, False]) if masked else None

    flax_bn = e3nn_jax.flax.BatchNorm(**kwargs)
    variables = _randomised_variables(flax_bn, x, getkey())
    y_ref, updated = _flax_apply(flax_bn, variables, x, use_running_average=use_ra, mask=mask)

    bn, state = _load(kwargs, variables, dtype)
    if bn.affine:
        assert bn.weights is not None and bn.biases is not None
        np.testing.assert_array_equal(bn.weights, variables["params"]["weights"])
        np.testing.assert_array_equal(bn.biases, variables["params"]["biases"])
    y, new_state = bn(x, state, use_running_average=use_ra, mask=mask)

    assert y.irreps == y_ref.irreps
    assert y.shape == y_ref.shape
    assert y.dtype == y_ref.dtype == dtype
    assert relative_error(y.array, y_ref.array) <= tol

    if bn.instance:
        assert bn.state_index is None
        assert "batch_stats" not in variables
        assert not updated.get("batch_stats")
        return
    assert bn.state_index is not None
    mean, var = new_state.get(bn.state_index)
    assert mean.dtype == var.dtype == dtype
    flax_mean = updated["batch_stats"]["mean"]
    flax_var = updated["batch_stats"]["var"]
    if mode == "train":
        assert relative_error(mean, flax_mean) <= tol
        assert relative_error(var, flax_var) <= tol
    else:
        # eqmlip keeps the running statistics in eval mode ...
        np.testing.assert_array_equal(mean, variables["batch_stats"]["mean"])
        np.testing.assert_array_equal(var, variables["batch_stats"]["var"])
        # ... whereas Flax rewrites them (e3x-e3nn reference §12.1).
        assert relative_error(flax_mean, variables["batch_stats"]["mean"]) > 1e-3
        assert relative_error(flax_var, variables["batch_stats"]["var"]) > 1e-3
        # The functional core still returns what Flax writes, for whoever wants it.
        _, ops_mean, ops_var = eqmlip.ops.batch_norm(
            x.array,
            IRREPS,
            variables["batch_stats"]["mean"],
            variables["batch_stats"]["var"],
            variables["params"]["weights"] if bn.affine else None,
            variables["params"]["biases"] if bn.affine else None,
            normalization=bn.normalization,
            reduce=bn.reduce,
            use_running_average=True,
            momentum=bn.momentum,
            eps=bn.eps,
            mask=mask,
        )
        assert relative_error(ops_mean, flax_mean) <= tol
        assert relative_error(ops_var, flax_var) <= tol


@pytest.mark.parametrize(
    "shape", [(6,), (4, 2, 3), (3, 1)], ids=["no_sample_axis", "two_sample_axes", "one_sample"]
)
def test_parity_sample_axes(shape, x64, getkey):
    dtype = jnp.float64 if x64 else jnp.float32
    x = _input(getkey(), (*shape, IRREPS.dim), dtype)
    flax_bn = e3nn_jax.flax.BatchNorm(reduce="max")
    variables = _randomised_variables(flax_bn, x, getkey())
    y_ref, updated = _flax_apply(flax_bn, variables, x)
    bn, state = _load({"reduce": "max"}, variables, dtype)
    y, state = bn(x, state)
    assert y.shape == x.shape
    assert relative_error(y.array, y_ref.array) <= tolerance(dtype)
    assert bn.state_index is not None
    mean, var = state.get(bn.state_index)
    assert relative_error(mean, updated["batch_stats"]["mean"]) <= tolerance(dtype)
    assert relative_error(var, updated["batch_stats"]["var"]) <= tolerance(dtype)


def test_parity_training_steps(getkey):
    """Several training steps then eval: the statistics stay in step with Flax's."""
    x = _input(getkey(), (5, 3, IRREPS.dim), jnp.float32)
    flax_bn = e3nn_jax.flax.BatchNorm(momentum=0.5)
    variables = _randomised_variables(flax_bn, x, getkey())
    bn, state = _load({"momentum": 0.5}, variables, jnp.float32)
    step = eqx.filter_jit(lambda bn, x, state: bn(x, state))
    for _ in range(3):
        x = _input(getkey(), (5, 3, IRREPS.dim), jnp.float32)
        _, updated = _flax_apply(flax_bn, variables, x)
        variables = {"params": variables["params"], **updated}
        _, state = step(bn, x, state)
    assert bn.state_index is not None
    mean, var = state.get(bn.state_index)
    assert relative_error(mean, variables["batch_stats"]["mean"]) <= 1e-6
    assert relative_error(var, variables["batch_stats"]["var"]) <= 1e-6
    x = _input(getkey(), (5, 3, IRREPS.dim), jnp.float32)
    y_ref, _ = _flax_apply(flax_bn, variables, x, use_running_average=True)
    y, _ = bn(x, state, use_running_average=True)
    assert relative_error(y.array, y_ref.array) <= 1e-6


def test_normalization_none_ignores_e3nn_config(getkey):
    """Flax reads e3nn's global config for normalization=None; eqmlip always uses component."""
    x = _input(getkey(), (5, 3, IRREPS.dim), jnp.float32)
    flax_bn = e3nn_jax.flax.BatchNorm()
    variables = _randomised_variables(flax_bn, x, getkey())
    bn, state = _load({}, variables, jnp.float32)
    y, _ = bn(x, state)
    y_component, _ = _flax_apply(e3nn_jax.flax.BatchNorm(normalization="component"), variables, x)
    assert relative_error(y.array, y_component.array) <= 1e-6
    old = e3nn.config("irrep_normalization")
    try:
        e3nn.config("irrep_normalization", "norm")
        y_flax, _ = _flax_apply(flax_bn, variables, x)
        bn2, state2 = _load({}, variables, jnp.float32)
        y2, _ = bn2(x, state2)
    finally:
        e3nn.config("irrep_normalization", old)
    assert relative_error(y2.array, y.array) == 0.0
    assert relative_error(y_flax.array, y.array) > 1e-3


def test_zero_flagged_chunks_are_ordinary_zeros():
    """Documented difference: Flax skips chunks flagged zero (`zero_flags`), eqmlip does not.

    Flax leaves such a chunk zero (no bias) and resets its running statistics to 0 / 1; eqmlip
    treats it as zeros: the bias is added and the statistics roll towards 0.
    """
    data = e3nn.IrrepsArray("2x0e", jnp.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 2.0]]))
    x = e3nn.concatenate([data, e3nn.zeros("1x0e + 1x1o", (3,))])
    assert x.zero_flags == (False, True, True)
    variables = {
        "params": {"weights": jnp.full((4,), 2.0), "biases": jnp.full((3,), 0.5)},
        "batch_stats": {"mean": jnp.full((3,), 0.3), "var": jnp.full((4,), 2.0)},
    }
    y_ref, updated = _flax_apply(e3nn_jax.flax.BatchNorm(), variables, x)
    bn, state = from_flax(eqmlip.nn.BatchNorm(x.irreps), variables)
    y, state = bn(x, state)
    # The ordinary chunk agrees ...
    assert relative_error(y.array[:, :2], y_ref.array[:, :2]) <= 1e-6
    # ... the zero-flagged ones differ as documented.
    np.testing.assert_array_equal(y_ref.array[:, 2:], 0.0)
    np.testing.assert_allclose(y.array[:, 2], 0.5)
    np.testing.assert_array_equal(y.array[:, 3:], 0.0)
    assert bn.state_index is not None
    mean, var = state.get(bn.state_index)
    flax_mean = np.asarray(updated["batch_stats"]["mean"])
    flax_var = np.asarray(updated["batch_stats"]["var"])
    np.testing.assert_array_equal(flax_mean[2], 0.0)
    np.testing.assert_array_equal(flax_var[2:], 1.0)
    np.testing.assert_allclose(mean[2], 0.9 * 0.3, rtol=1e-6)
    np.testing.assert_allclose(var[2:], 0.9 * 2.0, rtol=1e-6)
