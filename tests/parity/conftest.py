import jax
import pytest


@pytest.fixture(autouse=True)
def _standard_promotion():
    """The Flax originals rely on implicit int/float promotion, which strict mode rejects.

    eqmlip's own tests (outside tests/parity) keep strict promotion.
    """
    with jax.numpy_dtype_promotion("standard"):
        yield
