from collections.abc import Callable, Sequence
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .. import _random
from .._misc import default_floating_dtype, resolve_dtype
from ..ops.activation import activation_scale
from ..ops.linear import Normalization, normalization_exponent

Activation = Callable[[jax.Array], jax.Array]


class MultiLayerPerceptron(eqx.Module):
    """Scalar MLP with e3nn's normalisation: Equinox counterpart of
    `e3nn_jax.flax.MultiLayerPerceptron`.

    For each layer `i` with fan-in `n_i`:

    $$x \\leftarrow n_i^{-g/2}\\,(x K_i + b_i), \\qquad x \\leftarrow \\phi(x) / c_\\phi$$

    where `g` is the gradient normalisation and $c_\\phi = \\sqrt{E[\\phi(z)^2]}$,
    $z \\sim N(0, 1)$, makes every activation preserve the second moment (computed exactly as
    e3nn does, in the default floating dtype at construction). Hidden layers use `act`; the last
    layer uses `output_activation`.

    **Arguments:**

    - `in_features`: size of the input's last axis (Flax reads it from the first input).
    - `list_neurons`: output size of each layer (Flax: `list_neurons`).
    - `act`: activation of the hidden layers, or `None` (Flax: `act`).
    - `gradient_normalization`: `"element"` (0), `"path"` (1) or a float; `None` is `"path"`,
        e3nn's default (its global `config` is not read).
    - `output_activation`: `True` applies `act` after the last layer too (the default, as in
        Flax), `False` none, or a callable of its own.
    - `with_bias`: add a bias in every layer (initialised to zero).
    - `dtype`: parameter dtype; `None` is the default floating dtype. Calls compute in the
        input's dtype.
    - `key`: a `jax.random.PRNGKey`.
    """

    kernels: tuple[Array, ...]
    biases: tuple[Array, ...] | None
    in_features: int = eqx.field(static=True)
    list_neurons: tuple[int, ...] = eqx.field(static=True)
    act: Activation | None = eqx.field(static=True)
    output_activation: Activation | None = eqx.field(static=True)
    act_scale: float | None = eqx.field(static=True)
    output_activation_scale: float | None = eqx.field(static=True)
    gradient_normalization: float = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        list_neurons: Sequence[int],
        *,
        act: Activation | None = None,
        gradient_normalization: Normalization | None = None,
        output_activation: Activation | bool = True,
        with_bias: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        dtype = resolve_dtype(dtype)
        list_neurons = tuple(int(n) for n in list_neurons)
        if not list_neurons or in_features < 1 or any(n < 1 for n in list_neurons):
            raise ValueError(
                "MultiLayerPerceptron: needs at least one layer and sizes >= 1, got "
                f"in_features={in_features} and list_neurons={list_neurons}."
            )
        if act is not None and not callable(act):
            raise TypeError(f"MultiLayerPerceptron: act must be callable or None, got {act!r}.")
        if output_activation is True:
            last_act = act
        elif output_activation is False:
            last_act = None
        elif callable(output_activation):
            last_act = output_activation
        else:
            raise TypeError(
                "MultiLayerPerceptron: output_activation must be True, False or a callable, "
                f"got {output_activation!r}."
            )
        gn = normalization_exponent(gradient_normalization, "gradient_normalization", 1.0)

        # The constant follows the default dtype, as e3nn's normalize_function does.
        scale_dtype = default_floating_dtype()
        self.act = act
        self.output_activation = last_act
        self.act_scale = None if act is None else activation_scale(act, scale_dtype)
        self.output_activation_scale = (
            None if last_act is None else activation_scale(last_act, scale_dtype)
        )

        fan_ins = (in_features, *list_neurons[:-1])
        keys = _random.split(key, len(list_neurons))
        # Flax's normal(stddev) initializer: N(0, 1) * stddev, stddev = n_in**(-(1-g)/2).
        self.kernels = tuple(
            _random.normal(k, (n_in, n_out), dtype, np.sqrt(1.0 / n_in) ** (1.0 - gn))
            for k, n_in, n_out in zip(keys, fan_ins, list_neurons, strict=True)
        )
        self.biases = tuple(jnp.zeros((n,), dtype) for n in list_neurons) if with_bias else None
        self.in_features = in_features
        self.list_neurons = list_neurons
        self.gradient_normalization = gn

    def __check_init__(self):
        fan_ins = (self.in_features, *self.list_neurons[:-1])
        for i, (kernel, n_in, n_out) in enumerate(
            zip(self.kernels, fan_ins, self.list_neurons, strict=True)
        ):
            if kernel.shape != (n_in, n_out):
                raise ValueError(
                    f"MultiLayerPerceptron: kernel {i} has shape {kernel.shape}, "
                    f"expected {(n_in, n_out)}."
                )
        if self.biases is not None:
            for i, (bias, n_out) in enumerate(zip(self.biases, self.list_neurons, strict=True)):
                if bias.shape != (n_out,):
                    raise ValueError(
                        f"MultiLayerPerceptron: bias {i} has shape {bias.shape}, "
                        f"expected {(n_out,)}."
                    )

    def __call__(
        self, x: Float[Array, "*batch {self.in_features}"] | e3nn.IrrepsArray
    ) -> Float[Array, "*batch {self.list_neurons[-1]}"] | e3nn.IrrepsArray:
        """Evaluate the MLP.

        **Arguments:**

        - `x`: a floating array of shape `(..., in_features)`, or an `IrrepsArray` of
            `in_features` scalars (`0e` only).

        **Returns:** shape `(..., list_neurons[-1])`, as a plain array or, for an `IrrepsArray`
        input, an `IrrepsArray` with irreps `{n}x0e`.
        """
        if isinstance(x, e3nn.IrrepsArray):
            if not x.irreps.is_scalar():
                raise ValueError(
                    f"MultiLayerPerceptron: an IrrepsArray input must be all 0e scalars, got "
                    f"{x.irreps}."
                )
            return e3nn.IrrepsArray(f"{self.list_neurons[-1]}x0e", self._forward(x.array))
        return self._forward(x)

    def _forward(self, x: Array) -> Array:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"MultiLayerPerceptron: expected an input of shape (..., {self.in_features}), "
                f"got {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"MultiLayerPerceptron: the input must be floating, got {x.dtype}.")
        last = len(self.list_neurons) - 1
        for i, kernel in enumerate(self.kernels):
            # Same operation order as flax.linen.Dense followed by e3nn's scaling.
            scale = jnp.sqrt(1 / x.shape[-1]) ** self.gradient_normalization
            y = jax.lax.dot_general(x, kernel.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())))
            if self.biases is not None:
                y = y + self.biases[i].astype(x.dtype)
            x = scale * y
            if i < last:
                act, c = self.act, self.act_scale
            else:
                act, c = self.output_activation, self.output_activation_scale
            if act is not None:
                x = act(x) if c is None else act(x) / c
        return x
