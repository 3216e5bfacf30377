"""Host and device arrays: what the graph constructors accept, and reading values back."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array

# What the constructor (and `edge_vectors`) accept: host arrays are converted once there.
# Containers are hinted as `Collection[...]`, which the runtime checker does not sample with
# `random` (it does for `Sequence[...]`), so these helpers can run while Hypothesis draws.
_Arr = Array | np.ndarray


def _host_value(x: _Arr) -> np.ndarray | None:
    """`x` as a NumPy array when its values are known here; `None` under tracing (jit, grad,
    vmap) or for arrays sharded over other processes."""
    if isinstance(x, Tracer):
        return None
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return np.asarray(x)


def _to_device(x: _Arr) -> Array:
    # A JAX array (a tracer under jit, or sharded) is kept as it is; host arrays are
    # converted once, to JAX's default precision (float32 unless jax_enable_x64 is on).
    return x if isinstance(x, jax.Array) else jnp.asarray(x)
