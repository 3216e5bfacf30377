"""Shared test utilities."""

import equinox as eqx
import numpy as np


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.max(np.abs(expected), initial=0.0)
    diff = np.max(np.abs(actual - expected), initial=0.0)
    if scale == 0.0:
        return diff
    return float(diff / scale)


def tolerance(dtype) -> float:
    """Parity tolerance: 1e-6 relative in float32, 1e-12 in float64."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 1e-6


class CountingApply:
    """`eqx.filter_jit(lambda model, *args: model(*args))` that counts how often it traces."""

    def __init__(self):
        self.traces = 0

        @eqx.filter_jit
        def apply(model, *args):
            self.traces += 1
            return model(*args)

        self._apply = apply

    def __call__(self, model, *args):
        return self._apply(model, *args)
