"""Head bookkeeping of e3x's attention."""

import math

import jax.numpy as jnp
from jaxtyping import Array, Float


def head_split(x: Float[Array, "*batch f"], num_heads: int) -> Float[Array, "*batch fh h"]:
    """Split the last axis into `(F/H, H)`: feature `f` belongs to head `f % H` (e3x's
    query/key grouping)."""
    return jnp.reshape(x, (*x.shape[:-1], x.shape[-1] // num_heads, num_heads))


def head_broadcast(w: Float[Array, "*batch h"], features: int) -> Float[Array, "*batch f"]:
    """Repeat per-head weights to `features`: feature `f` gets head `f // (F/H)` (e3x's value
    grouping, which differs from `head_split`'s)."""
    return jnp.repeat(w, features // w.shape[-1], axis=-1)


def attention_scale(num_parity: int, max_degree: int, features_per_head: int) -> float:
    """`sqrt(P (L+1)^2 F/H)`: e3x divides queries by it."""
    return math.sqrt(num_parity * (max_degree + 1) ** 2 * features_per_head)
