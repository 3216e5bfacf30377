"""Small helpers shared across the package."""

import jax.numpy as jnp
import numpy as np


def default_floating_dtype() -> np.dtype:
    """float64 when `jax_enable_x64` is on, else float32 (Equinox's default parameter dtype)."""
    return np.dtype(jnp.result_type(float))


def resolve_dtype(dtype: object | None) -> np.dtype:
    """`None` means the default floating dtype; anything else must be a real floating dtype."""
    resolved = default_floating_dtype() if dtype is None else np.dtype(dtype)  # type: ignore[arg-type]
    if resolved.kind != "f":
        raise TypeError(f"dtype must be a real floating dtype, got {resolved}.")
    return resolved
