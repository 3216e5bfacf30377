from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._misc import resolve_dtype
from ..ops.batch_norm import IrrepNormalization, Reduce, batch_norm

_SCALAR = e3nn.Irrep(0, 1)


class BatchNorm(eqx.Module):
    """Equivariant batch normalisation: Equinox counterpart of `e3nn_jax.flax.BatchNorm`.

    Each chunk `mul x ir` is divided by the root mean squared norm of its irreps, which rotations
    and inversions leave unchanged; `0e` chunks are centred first. With `c` a chunk of shape
    `(batch, sample, mul, 2l+1)`:

    $$y = \\frac{c - \\mu}{\\sqrt{(1 - \\varepsilon)\\, n^2 + \\varepsilon}}\\, w + b,\\qquad
      \\mu = \\mathbb{E}_{b,s}[c]\\ (0e \\text{ only}),\\qquad
      n^2 = \\mathbb{E}_b\\, \\mathrm{R}_s\\, \\|c - \\mu\\|^2,$$

    where $\\mathrm{R}_s$ is `reduce` over the sample axes, the norm is taken per `normalization`,
    and the bias $b$ applies to `0e` only (`0o` is not a scalar: neither centred nor biased). In
    training mode the running statistics are updated as
    `new = (1 - momentum) * old + momentum * batch_statistic`; in eval mode (`use_running_average`)
    they replace $\\mu$ and $n^2$. See `eqmlip.ops.batch_norm` for the details. Given the same
    weights and statistics, outputs and updated statistics equal the Flax module's.

    Parameters are `weights` (ones, one per irrep, `irreps.num_irreps`) and `biases` (zeros,
    one per `0e` irrep), both `None` when not `affine`. The running statistics live in an
    `equinox.nn.State` as the pair `(mean, var)`: `mean` (zeros, one per `0e` irrep) and `var`
    (ones, one per irrep). All are indexed in the order of `irreps` as given (not regrouped), as
    in Flax. With `instance=True` there are no running statistics.

    ```python
    bn, state = eqx.nn.make_with_state(eqmlip.nn.BatchNorm)("4x0e + 2x1o")
    y, state = bn(x, state)                                 # training
    y, _ = bn(x, state, use_running_average=True)           # eval
    ```

    To load Flax variables, pass a layer built directly (not through `make_with_state`, which
    deletes the initial state that `from_flax` reads):
    `bn, state = eqmlip.interop.from_flax(BatchNorm(irreps), variables)`.

    **Differences from Flax:**

    - In eval mode the state is returned **unchanged**. Flax rewrites `batch_stats` in eval mode
        too (with a variance taken around the running mean), and raises unless
        `batch_stats` is mutable. Here eval mode never changes the statistics.
    - The irreps are a constructor argument (Flax reads them from the first input), and an input
        must have exactly these irreps.
    - `normalization=None` means `"component"` (e3nn's default) and does not read e3nn's global
        `config`.
    - A chunk that an `e3nn.IrrepsArray` flags as zero (`zero_flags`) is treated as ordinary
        zeros: it gets the bias, and the statistics are updated with zeros. Flax leaves such a
        chunk zero and resets its running statistics to 0 (mean) and 1 (var).

    **Arguments:**

    - `irreps`: the irreps of the input.
    - `eps`: in `[0, 1]`; the squared norm `n2` is replaced by `(1 - eps) * n2 + eps` (Flax:
        `eps`).
    - `momentum`: in `[0, 1]`, the rate of the running statistics' update (Flax: `momentum`).
    - `affine`: whether to learn `weights` and `biases` (Flax: `affine`).
    - `reduce`: `"mean"` or `"max"`, how squared norms are reduced over the sample axes (Flax:
        `reduce`).
    - `instance`: instance normalisation, each batch entry with its own statistics; no running
        statistics are kept (Flax: `instance`).
    - `normalization`: `"component"` (mean of the squared components of an irrep) or `"norm"`
        (their sum); `None` means `"component"` (Flax: `normalization`).
    - `use_running_average`: the default mode, eval (`True`) or training (`False`); the call
        argument of the same name overrides it (Flax: `use_running_average`, field and call
        argument).
    - `dtype`: dtype of the parameters and running statistics; `None` is the default floating
        dtype. Calls compute in the input's dtype (Flax: parameters follow the input dtype).
    """

    weights: Float[Array, " num_irreps"] | None
    biases: Float[Array, " num_scalars"] | None
    state_index: (
        eqx.nn.StateIndex[tuple[Float[Array, " num_scalars"], Float[Array, " num_irreps"]]] | None
    )
    use_running_average: bool
    irreps: e3nn.Irreps = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    momentum: float = eqx.field(static=True)
    affine: bool = eqx.field(static=True)
    reduce: Reduce = eqx.field(static=True)
    instance: bool = eqx.field(static=True)
    normalization: IrrepNormalization = eqx.field(static=True)

    def __init__(
        self,
        irreps: e3nn.Irreps | str,
        *,
        eps: float = 1e-4,
        momentum: float = 0.1,
        affine: bool = True,
        reduce: str = "mean",
        instance: bool = False,
        normalization: str | None = None,
        use_running_average: bool = False,
        dtype: Any = None,
    ):
        irreps = e3nn.Irreps(irreps)
        if reduce not in ("mean", "max"):
            raise ValueError(f"BatchNorm: reduce must be 'mean' or 'max', got {reduce!r}.")
        if normalization is None:
            normalization = "component"
        if normalization not in ("component", "norm"):
            raise ValueError(
                "BatchNorm: normalization must be 'component', 'norm' or None (meaning "
                f"'component'), got {normalization!r}."
            )
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"BatchNorm: eps must be in [0, 1], got {eps}.")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {momentum}.")
        if instance and use_running_average:
            raise ValueError(
                "BatchNorm: instance=True keeps no running statistics, so use_running_average "
                "must be False; got use_running_average=True."
            )
        dtype = resolve_dtype(dtype)
        num_irreps = irreps.num_irreps
        num_scalars = irreps.count(_SCALAR)

        if affine:
            self.weights = jnp.ones((num_irreps,), dtype)
            self.biases = jnp.zeros((num_scalars,), dtype)
        else:
            self.weights = None
            self.biases = None
        if instance:
            self.state_index = None
        else:
            self.state_index = eqx.nn.StateIndex(
                (jnp.zeros((num_scalars,), dtype), jnp.ones((num_irreps,), dtype))
            )
        self.use_running_average = use_running_average
        self.irreps = irreps
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = affine
        self.reduce = reduce  # type: ignore[assignment]
        self.instance = instance
        self.normalization = normalization  # type: ignore[assignment]

    def __check_init__(self):
        num_irreps = self.irreps.num_irreps
        num_scalars = self.irreps.count(_SCALAR)
        shapes = {"weights": (num_irreps,), "biases": (num_scalars,)}
        for name, expected in shapes.items():
            value = getattr(self, name)
            if (value is None) == self.affine:
                raise ValueError(
                    f"BatchNorm: {name} must be {'an array' if self.affine else 'None'} with "
                    f"affine={self.affine}."
                )
            if value is not None and value.shape != expected:
                raise ValueError(
                    f"BatchNorm: {name} has shape {value.shape}, expected {expected} for irreps "
                    f"{self.irreps}."
                )
        if (self.state_index is None) != self.instance:
            raise ValueError(
                "BatchNorm: there is a state index exactly when instance=False, got "
                f"instance={self.instance} and state_index={self.state_index}."
            )

    def __call__(
        self,
        x: e3nn.IrrepsArray,
        state: eqx.nn.State,
        *,
        use_running_average: bool | None = None,
        mask: Bool[Array, " batch"] | None = None,
    ) -> tuple[e3nn.IrrepsArray, eqx.nn.State]:
        """Normalise `x`, as `BatchNorm.apply(variables, x, use_running_average, mask,
        mutable=["batch_stats"])` in Flax.

        **Arguments:**

        - `x`: an `e3nn.IrrepsArray` with irreps `self.irreps`, of shape
            `(batch, *sample, irreps.dim)`; statistics are taken over `batch` and the sample
            axes.
        - `state`: the `equinox.nn.State` holding the running statistics.
        - `use_running_average`: eval mode (`True`) or training mode (`False`); `None` uses
            the field of the same name.
        - `mask`: a boolean array of shape `(batch,)`; `False` entries are left out of the batch
            statistics (they are still normalised). Ignored with `instance`.

        **Returns:** `(y, state)`: `y` an `e3nn.IrrepsArray` of the irreps, shape and dtype of
        `x`, and the state, holding the updated running statistics in training mode and
        unchanged in eval mode or with `instance`.
        """
        if not isinstance(x, e3nn.IrrepsArray):
            raise TypeError(
                f"BatchNorm: the input must be an e3nn.IrrepsArray with irreps {self.irreps}, "
                f"got {type(x).__name__}."
            )
        if tuple(x.irreps) != tuple(self.irreps):
            raise ValueError(
                f"BatchNorm: input irreps {x.irreps} do not equal the expected irreps "
                f"{self.irreps}; build the layer with the irreps of its input (the order "
                "matters, since statistics are indexed in it)."
            )
        if x.ndim < 2:
            raise ValueError(
                f"BatchNorm: the input must have shape (batch, *sample, {self.irreps.dim}), "
                f"got {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"BatchNorm: the input must be floating point, got dtype {x.dtype}.")
        if mask is not None and mask.shape != (x.shape[0],):
            raise ValueError(
                f"BatchNorm: mask must have shape (batch,) = ({x.shape[0]},), got {mask.shape}."
            )
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average and self.instance:
            raise ValueError(
                "BatchNorm: instance=True keeps no running statistics, so use_running_average "
                "must be False."
            )

        if self.state_index is None:
            mean = var = None
        else:
            mean, var = state.get(self.state_index)
        y, new_mean, new_var = batch_norm(
            jnp.asarray(x.array),
            self.irreps,
            mean,
            var,
            self.weights,
            self.biases,
            normalization=self.normalization,
            reduce=self.reduce,
            instance=self.instance,
            use_running_average=bool(use_running_average),
            momentum=self.momentum,
            eps=self.eps,
            mask=mask,
        )
        if self.state_index is not None and not use_running_average:
            assert mean is not None and var is not None
            assert new_mean is not None and new_var is not None
            state = state.set(
                self.state_index, (new_mean.astype(mean.dtype), new_var.astype(var.dtype))
            )
        return e3nn.IrrepsArray(self.irreps, y), state
