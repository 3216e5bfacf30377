import hypothesis
import jax
import jax.random as jr
import pytest

# Equinox's own test settings: no silent dtype promotion, NaNs raise.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_debug_nans", True)

hypothesis.settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
# CI and the README use the bounded profile; `pytest --hypothesis-profile=dev` runs more examples.
hypothesis.settings.load_profile("ci")


@pytest.fixture
def getkey():
    """A fresh PRNG key each call, deterministic per test."""
    key = jr.PRNGKey(5678)

    def _getkey():
        nonlocal key
        key, sub = jr.split(key)
        return sub

    return _getkey


@pytest.fixture(params=[False, True], ids=["f32", "x64"])
def x64(request):
    """Run the test body with `jax_enable_x64` off and on."""
    with jax.enable_x64(request.param):
        yield request.param
