"""Equivariant batch normalisation, as a pure function.

Each chunk `mul x ir` of the input is normalised by the mean squared norm of its irreps, a quantity
that rotations and inversions leave unchanged. With `c` the chunk, of shape
`(batch, sample, mul, 2l+1)`:

$$\\mu = \\mathbb{E}_{b,s}[c] \\quad (\\text{only for } 0e), \\qquad
  n^2 = \\mathbb{E}_{b}\\, \\mathrm{R}_{s}\\, \\| c - \\mu \\|^2, \\qquad
  y = \\frac{c - \\mu}{\\sqrt{(1 - \\varepsilon)\\, n^2 + \\varepsilon}}\\, w + b\\,[ir = 0e]$$

where $\\|\\cdot\\|^2$ sums (`"norm"`) or averages (`"component"`) over the `2l+1` components and
$\\mathrm{R}_s$ is a mean or max over the sample axes. The running statistics follow PyTorch's
convention, `new = (1 - momentum) * old + momentum * batch`. This is the maths of
`e3nn_jax.flax.BatchNorm`.
"""

import math
from typing import Literal

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

Reduce = Literal["mean", "max"]
IrrepNormalization = Literal["component", "norm"]

_SCALAR = e3nn.Irrep(0, 1)


def batch_norm(
    x: Float[Array, "batch *sample dim"],
    irreps: e3nn.Irreps,
    running_mean: Float[Array, " num_scalars"] | None,
    running_var: Float[Array, " num_irreps"] | None,
    weights: Float[Array, " num_irreps"] | None,
    biases: Float[Array, " num_scalars"] | None,
    *,
    normalization: IrrepNormalization = "component",
    reduce: Reduce = "mean",
    instance: bool = False,
    use_running_average: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-4,
    mask: Bool[Array, " batch"] | None = None,
) -> tuple[
    Float[Array, "batch *sample dim"],
    Float[Array, " num_scalars"] | None,
    Float[Array, " num_irreps"] | None,
]:
    """Normalise `x` chunk by chunk, as `e3nn_jax.flax.BatchNorm` does.

    For each chunk `(mul, ir)` of `irreps`, with `c` of shape `(batch, sample, mul, 2l+1)` (the
    sample axes flattened into one):

    1. `0e` chunks only: `mu` is the mean of `c` over batch and sample (with `mask`: the mean over
        sample, then the mask-weighted mean over batch; with `instance`: the mean over sample, one
        per batch entry). The new running mean is `(1 - momentum) * running_mean +
        momentum * stop_gradient(mu)`. In eval mode `mu` is the running mean. Then `c -= mu`.
    2. `n2` is the squared norm of each irrep, `sum_m c**2` (`"norm"`) or `mean_m c**2`
        (`"component"`), reduced over sample by `reduce` (`"mean"` or `"max"`), then averaged over
        batch (mask-weighted) unless `instance`. The new running variance is
        `(1 - momentum) * running_var + momentum * stop_gradient(n2)`. In eval mode `n2` is the
        running variance.
    3. `y = c * rsqrt((1 - eps) * n2 + eps) * weights [+ biases for 0e]`.

    Only `0e` is a scalar here: `0o` chunks are not centred and get no bias, which keeps
    the map parity-equivariant. The variance is the biased mean squared norm (no Bessel
    correction). Statistics and parameters are indexed in the order of `irreps` as given (not
    regrouped): `running_var` and `weights` have one entry per irrep (`irreps.num_irreps`),
    `running_mean` and `biases` one per `0e` irrep.

    Computation runs in the input's dtype, or float32 for lower precision inputs; the output has
    the input's dtype.

    **Arguments:**

    - `x`: the input, of shape `(batch, *sample, irreps.dim)`.
    - `irreps`: the irreps of the last axis of `x`.
    - `running_mean`, `running_var`: the running statistics; required unless `instance` (where
        they are ignored).
    - `weights`, `biases`: the affine parameters, or `None` for none.
    - `normalization`: `"component"` or `"norm"`, how the squared norm of an irrep is taken.
    - `reduce`: `"mean"` or `"max"`, how the squared norms are reduced over the sample axes.
    - `instance`: normalise each batch entry by its own statistics; there are no running
        statistics then.
    - `use_running_average`: eval mode, normalise with the running statistics.
    - `momentum`: the rate of the running statistics' update.
    - `eps`: in `[0, 1]`, the squared norm is replaced by `(1 - eps) * n2 + eps`.
    - `mask`: a boolean `(batch,)` array; entries that are `False` do not contribute to the
        batch statistics (they are still normalised). Ignored with `instance`. An all-`False`
        mask leaves the running statistics unchanged and the output finite (Flax gives NaN).

    **Returns:** `(y, new_running_mean, new_running_var)`: `y` of the shape and dtype of `x`, and
    the running statistics updated as Flax computes them, or `None, None` with `instance`. In eval
    mode these are still computed as Flax does (from the batch mean, and from the squared norms
    around the running mean); `eqmlip.nn.BatchNorm` does not keep them.
    """
    if normalization not in ("component", "norm"):
        raise ValueError(
            f"batch_norm: normalization must be 'component' or 'norm', got {normalization!r}."
        )
    if reduce not in ("mean", "max"):
        raise ValueError(f"batch_norm: reduce must be 'mean' or 'max', got {reduce!r}.")
    if x.shape[-1] != irreps.dim:
        raise ValueError(
            f"batch_norm: the last axis of x has size {x.shape[-1]}, expected irreps.dim = "
            f"{irreps.dim} for irreps {irreps}."
        )
    if instance and use_running_average:
        raise ValueError(
            "batch_norm: instance normalisation has no running statistics; use "
            "use_running_average=False."
        )
    if not instance and (running_mean is None or running_var is None):
        raise ValueError(
            "batch_norm: running_mean and running_var are required unless instance=True."
        )
    if (weights is None) != (biases is None):
        raise ValueError("batch_norm: pass both weights and biases, or neither.")
    num_scalars = irreps.count(_SCALAR)
    expected = [("weights", weights, irreps.num_irreps), ("biases", biases, num_scalars)]
    if not instance:
        expected += [
            ("running_mean", running_mean, num_scalars),
            ("running_var", running_var, irreps.num_irreps),
        ]
    for name, array, size in expected:
        if array is not None and array.shape != (size,):
            raise ValueError(
                f"batch_norm: {name} has shape {array.shape}, expected ({size},) for irreps "
                f"{irreps}."
            )

    out_dtype = x.dtype
    dtype = np.promote_types(out_dtype, np.float32)
    batch, *sample = x.shape[:-1]
    num_samples = math.prod(sample)
    x = x.astype(dtype).reshape(batch, num_samples, irreps.dim)
    count = None if mask is None else jnp.sum(mask.astype(dtype))

    def cast(a: Array | None) -> Array | None:
        return None if a is None else a.astype(dtype)

    running_mean, running_var = cast(running_mean), cast(running_var)
    weights, biases = cast(weights), cast(biases)

    def batch_average(v: Array) -> Array:
        # v: [batch, mul] -> [mul]
        if mask is None or count is None:
            return v.mean(0)
        # An all-padding batch averages to 0 instead of 0/0 = NaN.
        return jnp.where(mask[:, None], v, jnp.zeros((), dtype)).sum(0) / jnp.maximum(count, 1)

    def roll(old: Array, new: Array) -> Array:
        rolled = (1 - momentum) * old + momentum * jax.lax.stop_gradient(new)
        if count is None:
            return rolled
        # A batch with no real entry carries no statistics: keep the running ones.
        return jnp.where(count > 0, rolled, old)

    new_means: list[Array] = []
    new_vars: list[Array] = []
    outputs: list[Array] = []
    i_irrep = 0  # index into running_var and weights
    i_scalar = 0  # index into running_mean and biases
    for (mul, ir), sl in zip(irreps, irreps.slices(), strict=True):
        if mul == 0:
            continue
        c = x[:, :, sl].reshape(batch, num_samples, mul, ir.dim)
        scalars = slice(i_scalar, i_scalar + mul)
        irreps_sl = slice(i_irrep, i_irrep + mul)

        if ir == _SCALAR:
            if instance:
                mean = c.mean(1).reshape(batch, mul)
            else:
                assert running_mean is not None
                if mask is None:
                    mean = c.mean((0, 1)).reshape(mul)
                else:
                    mean = batch_average(c.mean(1).reshape(batch, mul))
                new_means.append(roll(running_mean[scalars], mean))
                if use_running_average:
                    mean = running_mean[scalars]
            c = c - mean.reshape(-1, 1, mul, 1)

        if normalization == "norm":
            n2 = jnp.square(c).sum(3)  # [batch, sample, mul]
        else:
            n2 = jnp.square(c).mean(3)
        n2 = n2.mean(1) if reduce == "mean" else n2.max(1)  # [batch, mul]

        if not instance:
            assert running_var is not None
            n2 = batch_average(n2)  # [mul]
            new_vars.append(roll(running_var[irreps_sl], n2))
            if use_running_average:
                n2 = running_var[irreps_sl]

        scale = jax.lax.rsqrt((1 - eps) * n2 + eps)  # [(batch,) mul]
        if weights is not None:
            scale = scale * weights[irreps_sl]
        c = c * scale[..., None, :, None]
        if biases is not None and ir == _SCALAR:
            c = c + biases[scalars].reshape(mul, 1)
        outputs.append(c.reshape(batch, num_samples, mul * ir.dim))

        i_irrep += mul
        if ir == _SCALAR:
            i_scalar += mul

    if outputs:
        y = jnp.concatenate(outputs, axis=-1)
    else:
        y = x
    y = y.reshape(batch, *sample, irreps.dim).astype(out_dtype)
    if instance:
        return y, None, None

    def join(parts: list[Array]) -> Array:
        return jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)

    return y, join(new_means), join(new_vars)
