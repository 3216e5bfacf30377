"""A hand-written periodic pair potential `fn(positions, numbers, cell, pbc) -> (E, F, S)` for the
`assert_potential_symmetries` tests, with switches for the bugs they must catch."""

import jax
import jax.numpy as jnp
import numpy as np

from eqmlip import testing

CUTOFF = 1.4  # below half the shortest cell length: the minimum image is the only image in range
# Atoms close enough that most structures have pairs within the cutoff, hence a stress.
DENSE_CRYSTALS = testing.crystals(
    (1, 8), max_atoms=4, min_length=3.0, max_length=3.3, triclinic=False, min_distance=0.8
)


def _energy(positions, cell, numbers, minimum_image: bool, intensive: bool):
    d = positions[None, :] - positions[:, None]
    if minimum_image:  # exact for pair distances below half the cell heights
        s = d @ jnp.linalg.inv(cell)
        d = (s - jnp.round(s)) @ cell
    n = positions.shape[0]
    r2 = jnp.sum(d**2, axis=-1) + jnp.eye(n, dtype=positions.dtype)  # no self-pair
    phi = jnp.where(r2 < CUTOFF**2, (1.0 - r2 / CUTOFF**2) ** 3, 0.0)
    z = numbers.astype(positions.dtype)
    pair = (1 - jnp.eye(n, dtype=positions.dtype)) * (z[:, None] + z[None]) * phi
    energy = 0.5 * jnp.sum(pair)
    return energy / n if intensive else energy


def make(minimum_image: bool = True, intensive: bool = False, stress_bug: str | None = None):
    """The potential; `stress_bug` is `None`, `"sign"` (the virial's sign) or `"volume"` (the
    virial returned undivided)."""

    def strained(strain, positions, cell, numbers):
        deform = jnp.eye(3, dtype=positions.dtype) + strain
        return _energy(positions @ deform, cell @ deform, numbers, minimum_image, intensive)

    @jax.jit
    def core(positions, cell, numbers):
        zero = jnp.zeros((3, 3), positions.dtype)
        energy, (de_dstrain, de_dpos) = jax.value_and_grad(strained, argnums=(0, 1))(
            zero, positions, cell, numbers
        )
        volume = jnp.abs(jnp.linalg.det(cell))
        if stress_bug == "sign":
            return energy, -de_dpos, -de_dstrain / volume
        if stress_bug == "volume":
            return energy, -de_dpos, de_dstrain
        return energy, -de_dpos, de_dstrain / volume

    def fn(positions, numbers, cell, pbc):
        dtype = jax.dtypes.canonicalize_dtype(np.float64)  # float64 under x64, else float32
        return core(jnp.asarray(positions, dtype), jnp.asarray(cell, dtype), jnp.asarray(numbers))

    return fn
