"""Small helpers shared across the package."""

from typing import cast

import e3nn_jax as e3nn
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


def irreps_entry(irreps: e3nn.Irreps, i: int) -> e3nn.MulIrrep:
    """`irreps[i]` with its real type (e3nn-jax annotates integer indexing as returning Irreps)."""
    return cast(e3nn.MulIrrep, irreps[i])
