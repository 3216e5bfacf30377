from collections.abc import Callable, Sequence
from typing import Any, Literal

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import _random
from .._misc import irreps_entry, resolve_dtype
from ..ops.linear import (
    LinearBlock,
    LinearPath,
    Normalization,
    bias_outputs,
    block_linear,
    e3j_blocks,
    fold_channels,
    linear_contract,
    linear_paths,
    normalization_exponent,
    per_channel_irreps,
    regroup_columns,
    unfold_channels,
)

Initializer = Callable[[PRNGKeyArray, tuple[int, ...], Any], Array]
WeightsMode = Literal["plain", "indexed", "mixed", "mixed_per_channel"]


class Linear(eqx.Module):
    """Equivariant linear layer: Equinox counterpart of `e3nn_jax.flax.Linear`.

    Each input chunk `mul_in x ir` is mapped to every output chunk of the same irrep by a learned
    `(mul_in, mul_out)` matrix on the multiplicity index, scaled by e3nn's path weight
    (see `eqmlip.ops.linear.linear_paths`); `0e` outputs may add a bias. Irreps that the input
    cannot reach are dropped from the output unless `force_irreps_out`.

    Built eagerly: the input irreps (and, where the Flax module reads them off its first input,
    the channel count and mixing dimension) are constructor arguments, so parameters and output
    irreps are fixed at `__init__`. Given the same weights, the output equals the Flax module's.

    **Arguments:**

    - `irreps_in`: input irreps (Flax: `irreps_in`, optional there). With
        `simplify_irreps_internally` an input whose irreps regroup to the same irreps is accepted.
    - `irreps_out`: requested output irreps (Flax: `irreps_out`).
    - `channel_in`: size of the channel axis `-2` of the input; required with `channel_out` or
        `weights_per_channel` (Flax reads it from the input).
    - `channel_out`: fold the input channel axis into the multiplicities and produce this many
        output channels (Flax: `channel_out`).
    - `gradient_normalization`, `path_normalization`: `"element"` (0), `"path"` (1) or a float.
        `None` gives e3nn's defaults, `"path"` and `"element"` respectively; e3nn's global
        `config` is not read.
    - `biases`: a bool, or one bool per (simplified, filtered) output entry; only `0e` entries.
    - `parameter_initializer`: zero-argument callable returning an initializer
        `(key, shape, dtype) -> array` used for every parameter, biases included (as in Flax);
        by default weights are normal with e3nn's `weight_std` and biases are zero.
    - `instructions`: explicit `(i_in, i_out)` paths; needs `simplify_irreps_internally=False`
        and no `channel_out`, and the input irreps must then equal `irreps_in` exactly.
    - `num_indexed_weights`: number of weight sets selected per row by an integer index.
    - `weights_dim`: size `d` of the float weights that mix `d` weight sets per row (Flax reads
        it from the weights).
    - `weights_per_channel`: one mixed weight set per input channel (needs `weights_dim`).
    - `force_irreps_out`: keep unreachable output irreps (as zeros).
    - `simplify_irreps_internally`: regroup input irreps and simplify output irreps first.
    - `dtype`: parameter dtype; `None` is the default floating dtype. Calls compute in the input's
        dtype.
    - `key`: a `jax.random.PRNGKey`.
    """

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    irreps_in: e3nn.Irreps = eqx.field(static=True)
    irreps_out: e3nn.Irreps = eqx.field(static=True)
    channel_in: int | None = eqx.field(static=True)
    channel_out: int | None = eqx.field(static=True)
    num_indexed_weights: int | None = eqx.field(static=True)
    weights_dim: int | None = eqx.field(static=True)
    weights_mode: WeightsMode = eqx.field(static=True)
    gradient_normalization: float = eqx.field(static=True)
    path_normalization: float = eqx.field(static=True)
    simplify_irreps_internally: bool = eqx.field(static=True)
    exact_irreps_in: bool = eqx.field(static=True)
    internal_irreps_in: e3nn.Irreps = eqx.field(static=True)
    internal_irreps_out: e3nn.Irreps = eqx.field(static=True)
    paths: tuple[LinearPath, ...] = eqx.field(static=True)
    bias_indices: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        irreps_in: e3nn.Irreps | str,
        irreps_out: e3nn.Irreps | str,
        *,
        channel_in: int | None = None,
        channel_out: int | None = None,
        gradient_normalization: Normalization | None = None,
        path_normalization: Normalization | None = None,
        biases: bool | Sequence[bool] = False,
        parameter_initializer: Callable[[], Initializer] | None = None,
        instructions: Sequence[tuple[int, int]] | None = None,
        num_indexed_weights: int | None = None,
        weights_dim: int | None = None,
        weights_per_channel: bool = False,
        force_irreps_out: bool = False,
        simplify_irreps_internally: bool = True,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        irreps_in = e3nn.Irreps(irreps_in)
        requested_out = e3nn.Irreps(irreps_out)
        dtype = resolve_dtype(dtype)
        gn = normalization_exponent(gradient_normalization, "gradient_normalization", 1.0)
        pn = normalization_exponent(path_normalization, "path_normalization", 0.0)

        if num_indexed_weights is not None and weights_dim is not None:
            raise ValueError(
                "Linear: num_indexed_weights and weights_dim are exclusive: indexed weights are "
                "selected by an integer, mixed weights are combined from floats."
            )
        if num_indexed_weights is not None and num_indexed_weights < 1:
            raise ValueError(
                f"Linear: num_indexed_weights must be >= 1, got {num_indexed_weights}."
            )
        if weights_dim is not None and weights_dim < 1:
            raise ValueError(f"Linear: weights_dim must be >= 1, got {weights_dim}.")
        if weights_per_channel and weights_dim is None:
            raise ValueError(
                "Linear: weights_per_channel needs float mixing weights; pass weights_dim "
                "(as in e3nn, it is not available for plain or indexed weights)."
            )
        if weights_per_channel and channel_out is not None:
            raise ValueError("Linear: weights_per_channel cannot be combined with channel_out.")
        if (channel_out is not None or weights_per_channel) and channel_in is None:
            raise ValueError(
                "Linear: channel_in (size of input axis -2) is required with channel_out or "
                "weights_per_channel, since the parameter shapes depend on it."
            )
        if channel_in is not None and channel_out is None and not weights_per_channel:
            raise ValueError(
                "Linear: channel_in is only meaningful with channel_out or weights_per_channel."
            )
        if instructions is not None:
            if simplify_irreps_internally:
                raise ValueError(
                    "Linear: explicit instructions need simplify_irreps_internally=False, since "
                    "they index the irreps as given."
                )
            if channel_out is not None:
                raise ValueError(
                    "Linear: explicit instructions cannot be combined with channel_out."
                )

        if simplify_irreps_internally:
            internal_in = irreps_in.regroup()
            internal_out = requested_out.simplify()
        else:
            internal_in = irreps_in
            internal_out = requested_out
        if not force_irreps_out:
            internal_out = internal_out.filter(keep=internal_in)
        public_out = requested_out if force_irreps_out else internal_out
        if channel_out is not None:
            assert channel_in is not None
            internal_in = channel_in * internal_in
            internal_out = channel_out * internal_out

        paths = linear_paths(
            internal_in,
            internal_out,
            None if instructions is None else tuple(instructions),
            pn,
            gn,
        )
        bias_indices = bias_outputs(internal_out, biases)

        if num_indexed_weights is not None:
            mode: WeightsMode = "indexed"
            prefix: tuple[int, ...] = (num_indexed_weights,)
            std_scale = 1.0
        elif weights_dim is not None:
            mode = "mixed_per_channel" if weights_per_channel else "mixed"
            assert not weights_per_channel or channel_in is not None
            prefix = (weights_dim, channel_in) if weights_per_channel else (weights_dim,)  # type: ignore[assignment]
            std_scale = float(np.sqrt(1.0 / weights_dim) ** (1.0 - gn))
        else:
            mode = "plain"
            prefix = ()
            std_scale = 1.0

        wkey, bkey = _random.split(key)
        wkeys = _random.split(wkey, max(len(paths), 1))
        bkeys = _random.split(bkey, max(len(bias_indices), 1))

        def init(k: PRNGKeyArray, shape: tuple[int, ...], std: float) -> Array:
            if parameter_initializer is not None:
                return jnp.asarray(parameter_initializer()(k, shape, dtype), dtype)
            return _random.normal(k, shape, dtype, std)

        self.weights = tuple(
            init(
                k,
                prefix
                + (irreps_entry(internal_in, p.i_in).mul, irreps_entry(internal_out, p.i_out).mul),
                std_scale * p.weight_std,
            )
            for k, p in zip(wkeys, paths, strict=False)
        )
        self.biases = tuple(
            init(k, prefix + (irreps_entry(internal_out, i).mul,), 0.0)
            for k, i in zip(bkeys, bias_indices, strict=False)
        )
        self.irreps_in = irreps_in
        self.irreps_out = public_out
        self.channel_in = channel_in
        self.channel_out = channel_out
        self.num_indexed_weights = num_indexed_weights
        self.weights_dim = weights_dim
        self.weights_mode = mode
        self.gradient_normalization = gn
        self.path_normalization = pn
        self.simplify_irreps_internally = simplify_irreps_internally
        self.exact_irreps_in = instructions is not None or not simplify_irreps_internally
        self.internal_irreps_in = internal_in
        self.internal_irreps_out = internal_out
        self.paths = paths
        self.bias_indices = bias_indices

    def __check_init__(self):
        prefix = self._param_prefix()
        for path, w in zip(self.paths, self.weights, strict=True):
            expected = prefix + (
                irreps_entry(self.internal_irreps_in, path.i_in).mul,
                irreps_entry(self.internal_irreps_out, path.i_out).mul,
            )
            if w.shape != expected:
                raise ValueError(
                    f"Linear: weight of path {path.i_in}->{path.i_out} has shape {w.shape}, "
                    f"expected {expected}."
                )
        for i, b in zip(self.bias_indices, self.biases, strict=True):
            expected = prefix + (irreps_entry(self.internal_irreps_out, i).mul,)
            if b.shape != expected:
                raise ValueError(
                    f"Linear: bias of output {i} has shape {b.shape}, expected {expected}."
                )

    def _param_prefix(self) -> tuple[int, ...]:
        if self.weights_mode == "indexed":
            assert self.num_indexed_weights is not None
            return (self.num_indexed_weights,)
        if self.weights_mode == "mixed":
            assert self.weights_dim is not None
            return (self.weights_dim,)
        if self.weights_mode == "mixed_per_channel":
            assert self.weights_dim is not None and self.channel_in is not None
            return (self.weights_dim, self.channel_in)
        return ()

    def __call__(
        self,
        weights_or_input: e3nn.IrrepsArray | Float[Array, "..."] | Int[Array, "..."],
        input: e3nn.IrrepsArray | Float[Array, "..."] | None = None,
    ) -> e3nn.IrrepsArray:
        """Apply the layer, as `Linear.apply(variables, [weights,] input)` in Flax.

        **Arguments:**

        - `weights_or_input`: the input, or (for indexed and mixed layers) the weights:
            integers of shape `(...)` selecting one of `num_indexed_weights` weight sets, or
            floats of shape `(..., weights_dim)` mixing them. They broadcast with the input's
            leading axes.
        - `input`: the input when weights are given first. An `IrrepsArray` of shape
            `(..., [channel_in,] dim)` whose irreps match `irreps_in`, or a plain floating array
            read as `dim x 0e`.

        **Returns:** an `IrrepsArray` with irreps `self.irreps_out` and shape
        `(..., [channel_out,] irreps_out.dim)`.
        """
        if input is None:
            weights, x = None, weights_or_input
        else:
            weights, x = weights_or_input, input
        array = self._prepare_input(x)
        dtype = array.dtype
        if self.channel_out is not None:
            assert self.channel_in is not None
            array = fold_channels(
                array, per_channel_irreps(self.internal_irreps_in, self.channel_in)
            )
        ws, bs = self._effective_parameters(weights, array, dtype)
        out = linear_contract(
            array,
            ws,
            bs,
            irreps_in=self.internal_irreps_in,
            irreps_out=self.internal_irreps_out,
            paths=self.paths,
            bias_indices=self.bias_indices,
        )
        if self.channel_out is not None:
            out = unfold_channels(
                out,
                per_channel_irreps(self.internal_irreps_out, self.channel_out),
                self.channel_out,
            )
        return e3nn.IrrepsArray(self.irreps_out, out)

    def _prepare_input(self, x: Any) -> Array:
        """Check the input against `irreps_in` and return its array in the internal order."""
        if isinstance(x, e3nn.IrrepsArray):
            irreps, array = x.irreps, x.array
        elif isinstance(x, jax.Array | np.ndarray):
            array = jnp.asarray(x)
            if array.ndim == 0:
                raise ValueError("Linear: the input must have at least one axis (the irreps axis).")
            irreps = e3nn.Irreps(f"{array.shape[-1]}x0e")
        else:
            raise TypeError(
                f"Linear: the input must be an e3nn.IrrepsArray or a jax array, got {type(x)}."
            )
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise TypeError(f"Linear: the input must be floating point, got dtype {array.dtype}.")
        if self.exact_irreps_in:
            if tuple(irreps) != tuple(self.irreps_in):
                raise ValueError(
                    f"Linear: input irreps {irreps} do not equal the expected irreps "
                    f"{self.irreps_in} (required exactly with explicit instructions or "
                    "simplify_irreps_internally=False)."
                )
        elif irreps.regroup() != self.irreps_in.regroup():
            raise ValueError(
                f"Linear: input irreps {irreps} do not match the expected irreps "
                f"{self.irreps_in} (compared after regroup)."
            )
        if self.channel_in is not None and (array.ndim < 2 or array.shape[-2] != self.channel_in):
            raise ValueError(
                f"Linear: expected an input of shape (..., {self.channel_in}, {irreps.dim}) "
                f"with channel_in={self.channel_in} channels on axis -2, got {array.shape}."
            )
        if self.simplify_irreps_internally:
            array = regroup_columns(array, irreps)
        return array

    def _effective_parameters(
        self, weights: Any, array: Array, dtype: Any
    ) -> tuple[list[Array], list[Array]]:
        """Per-path weights and biases for this call, in the input's dtype."""
        ws = [w.astype(dtype) for w in self.weights]
        bs = [b.astype(dtype) for b in self.biases]
        if self.weights_mode == "plain":
            if weights is not None:
                raise ValueError(
                    "Linear: this layer has plain weights and takes only the input; build it "
                    "with num_indexed_weights or weights_dim to pass weights at call time."
                )
            return ws, bs
        if weights is None:
            raise ValueError(
                f"Linear: this layer has {self.weights_mode} weights; call it as "
                "layer(weights, input)."
            )
        if isinstance(weights, e3nn.IrrepsArray):
            if not weights.irreps.is_scalar():
                raise ValueError(f"Linear: weights must be scalars (0e), got {weights.irreps}.")
            weights = weights.array
        weights = jnp.asarray(weights)
        if self.weights_mode == "indexed":
            if not jnp.issubdtype(weights.dtype, jnp.integer):
                raise TypeError(
                    f"Linear: indexed weights must be integers, got dtype {weights.dtype}."
                )
            return [w[weights] for w in ws], [b[weights] for b in bs]
        if not jnp.issubdtype(weights.dtype, jnp.floating):
            raise TypeError(f"Linear: mixing weights must be floats, got dtype {weights.dtype}.")
        if weights.ndim == 0 or weights.shape[-1] != self.weights_dim:
            raise ValueError(
                f"Linear: mixing weights must have shape (..., {self.weights_dim}), "
                f"got {weights.shape}."
            )
        assert self.weights_dim is not None
        weights = weights.astype(dtype)
        scale = np.sqrt(1.0 / self.weights_dim) ** self.gradient_normalization

        # Contract the last axis of (..., d) with the first of (d, [C,] ...): for per-channel
        # weights this gives (..., C, ...), one weight set per input channel.
        def mix(p: Array) -> Array:
            return scale * jax.lax.dot_general(weights, p, (((weights.ndim - 1,), (0,)), ((), ())))

        return [mix(w) for w in ws], [mix(b) for b in bs]


# --- e3j's equivariant linear (`e3j.linen.Linear`, layout "E3NN", FAN_IN, rescaled gradients) ---


class E3jLinear(eqx.Module):
    """Equivariant linear layer of e3j: Equinox counterpart of `e3j.linen.Linear` with
    `layout="E3NN"`, `kernel_init="FAN_IN"`, `rescale_gradients=True` (as mlip uses it).

    $$y_{lp}[w] = \\sum_u W_{lp}[w, u]\\, x_{lp}[u] / \\sqrt{m^{in}_{lp}}$$

    with `W` stored `(mul_out, mul_in)` (transposed relative to e3nn-jax) and initialised
    N(0, 1). Blocks are enumerated as [`eqmlip.ops.linear.e3j_blocks`][] describes for the
    regrouped irreps: an output `(l, p)` that the input
    lacks gives zeros, an input `(l, p)` that the output lacks is dropped, and both keep their
    zero-size weights, as Flax does (`weight{i}_{l}_{p}`).

    **Arguments:**

    - `irreps_in`: input irreps; inputs may list them in any order (they are regrouped; e3j
        requires them sorted).
    - `irreps_out`: output irreps; the output is `irreps_out.regroup()`.
    - `dtype`: parameter dtype; `None` is the default floating dtype.
    - `key`: a `jax.random.PRNGKey`.
    """

    weights: tuple[Array, ...]
    irreps_in: e3nn.Irreps = eqx.field(static=True)
    irreps_out: e3nn.Irreps = eqx.field(static=True)
    blocks: tuple[LinearBlock, ...] = eqx.field(static=True)

    def __init__(
        self,
        irreps_in: e3nn.Irreps | str,
        irreps_out: e3nn.Irreps | str,
        *,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        dtype = resolve_dtype(dtype)
        self.irreps_in = e3nn.Irreps(irreps_in)
        self.irreps_out = e3nn.Irreps(irreps_out).regroup()
        self.blocks = e3j_blocks(self.irreps_in.regroup(), self.irreps_out)
        keys = _random.split(key, max(len(self.blocks), 1))
        self.weights = tuple(
            _random.normal(k, (b.mul_out, b.mul_in), dtype)
            for k, b in zip(keys, self.blocks, strict=False)
        )

    def __check_init__(self):
        for i, (b, w) in enumerate(zip(self.blocks, self.weights, strict=True)):
            if w.shape != (b.mul_out, b.mul_in):
                raise ValueError(
                    f"E3jLinear: weight{i}_{b.l}_{b.p} has shape {w.shape}, expected "
                    f"{(b.mul_out, b.mul_in)}."
                )

    def __call__(self, x: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
        """**Arguments:** `x`, an `IrrepsArray` of shape `[nodes, dim]` whose irreps regroup to
        `irreps_in.regroup()`.

        **Returns:** an `IrrepsArray` with irreps `irreps_out` (regrouped), `[nodes, dim]`.
        """
        if x.irreps.regroup() != self.irreps_in.regroup():
            raise ValueError(
                f"E3jLinear: input irreps {x.irreps} do not match the expected irreps "
                f"{self.irreps_in} (compared after regroup)."
            )
        if x.ndim != 2:
            raise ValueError(f"E3jLinear: expected an input of shape [nodes, dim], got {x.shape}.")
        array = regroup_columns(x.array, x.irreps)
        return e3nn.IrrepsArray(
            self.irreps_out, block_linear(array, self.weights, self.blocks, e3j_order=True)
        )
