"""Per-node readouts of mlip (`mlip.models.readout`): linear maps or MLPs, one set per head."""

from collections.abc import Callable, Sequence
from typing import Any, cast

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .. import _random
from .._misc import default_floating_dtype, resolve_dtype
from ..ops.activation import activation_scale
from ..ops.gate import GateSpec, ScaledActivation, e3nn_gate_spec, gate, gate_irreps
from ._linear import E3jLinear

Activation = Callable[[jax.Array], jax.Array]
Initializer = Callable[[PRNGKeyArray, tuple[int, ...], Any], Array]
_IntArray = Array | np.ndarray


# --- mlip's MLP (`mlip.models.blocks.MLP` with biases, no layer norm) -------------------------


class _Dense(eqx.Module):
    """One `flax.linen.Dense` with mlip's runtime scale: `y = scale * (x @ kernel + bias)`."""

    kernel: Array
    bias: Array
    scale: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "nodes _"]) -> Float[Array, "nodes _"]:
        y = jax.lax.dot_general(
            x, self.kernel.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ()))
        ) + self.bias.astype(x.dtype)
        if self.scale != 1.0:
            y = y * self.scale
        return y


def _unit_normal(key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any) -> Array:
    return _random.normal(key, shape, dtype)


def _kernel_init(mlp_kernel_init: Any) -> tuple[Initializer, bool]:
    """`(initializer, gradient_scaled)` from a jax initializer or mlip's "fan_in_normal"."""
    value = getattr(mlp_kernel_init, "value", mlp_kernel_init)  # mlip's GradientScaledKernelInit
    if isinstance(value, str):
        if value != "fan_in_normal":
            raise ValueError(
                "ReadoutBlock: mlp_kernel_init must be a jax initializer or 'fan_in_normal' "
                f"(mlip's GradientScaledKernelInit.FAN_IN_NORMAL), got {mlp_kernel_init!r}."
            )
        return _unit_normal, True
    if callable(mlp_kernel_init):
        return cast(Initializer, mlp_kernel_init), False
    raise TypeError(
        "ReadoutBlock: mlp_kernel_init must be a jax initializer (key, shape, dtype) -> array or "
        f"'fan_in_normal', got {mlp_kernel_init!r}."
    )


# --- the gate between equivariant layers (`e3nn.gate(x, even_act=act, even_gate_act=None)`) ---


def _gate_spec(irreps: e3nn.Irreps, act: Activation) -> GateSpec:
    """`e3nn.gate(x, even_act=act, even_gate_act=None)` with normalised activations (`soft_odd`
    on odd scalars, `tanh` on odd gates), the constants computed once at construction."""
    dtype = default_floating_dtype()

    def normalised(fn: Activation) -> ScaledActivation:
        return ScaledActivation(fn, activation_scale(fn, dtype))

    return e3nn_gate_spec(
        irreps,
        even=normalised(act),
        odd=normalised(e3nn.soft_odd),
        even_gate=None,
        odd_gate=normalised(jnp.tanh),
    )


# --- readouts ----------------------------------------------------------------------------------


def _as_irreps(feature: Any) -> e3nn.Irreps:
    if isinstance(feature, bool):
        raise TypeError(f"ReadoutBlock: features must be ints or irreps, got {feature!r}.")
    if isinstance(feature, int | np.integer):
        return e3nn.Irreps(f"{int(feature)}x0e")
    return e3nn.Irreps(feature)


class ReadoutBlock(eqx.Module):
    """Per-node readout: Equinox counterpart of `mlip.models.readout.ReadoutBlock`.

    With `use_equiv=True`, a chain of e3j equivariant linears ([`eqmlip.nn.E3jLinear`][]),

    $$h_{k+1} = \\mathrm{gate}(L_k h_k)\\ (k < K-1), \\qquad y = L_{K-1} h_{K-1},$$

    where the gate is `e3nn.gate(even_act=activation, even_gate_act=None)` (normalised
    activations; no gate without `activation`). With `use_equiv=False`, mlip's MLP with biases:
    `h <- s_k (h K_k + b_k)`, then the raw `activation` between layers (not after the last),
    with `s_k = 1/sqrt(fan_in)` for `mlp_kernel_init="fan_in_normal"` and 1 otherwise.

    Built eagerly: the input irreps (or feature count) is a constructor argument. Given the
    same weights, the output equals mlip's (`graph.nodes.features["outputs"]`).

    **Arguments:**

    - `in_features`: input irreps (`use_equiv=True`) or input feature count (`use_equiv=False`);
        mlip reads it from `graph.nodes.features["latent"]`.
    - `features`: the output of each layer (mlip: `features`): irreps or ints (`n` means
        `nx0e` when `use_equiv=True`); ints when `use_equiv=False`.
    - `activation`: activation between layers, or `None` (mlip: `activation`).
    - `mlp_kernel_init`: kernel initialiser of the MLP (`use_equiv=False`, required there as in
        mlip): a jax initializer `(key, shape, dtype) -> array`, or `"fan_in_normal"` (or
        mlip's `GradientScaledKernelInit.FAN_IN_NORMAL`) for N(0, 1) weights scaled by
        `1/sqrt(fan_in)` at run time.
    - `use_equiv`: equivariant linears on irreps (mlip: `use_equiv`, default False).
    - `dtype`: parameter dtype; `None` is the default floating dtype. Calls compute in the
        input's dtype.
    - `key`: a `jax.random.PRNGKey`.

    **Differences from mlip:**

    - The equivariant output is labelled with the regrouped irreps of `features[-1]`, which is
        its actual layout (mlip labels it with `features[-1]` as given, wrong when unsorted).
    - After a gate, the next linear reads the gate's output irreps. mlip reads them as the
        pre-gate `features[k]`, which silently mixes vector components into scalars when a
        hidden layer has non-scalars; such mlip weights are refused by `from_flax` (shapes).
    - Inputs whose irreps are unsorted are regrouped (e3j raises).
    """

    layers: tuple[Any, ...]
    in_features: int | e3nn.Irreps = eqx.field(static=True)
    features: tuple[int | e3nn.Irreps, ...] = eqx.field(static=True)
    activation: Activation | None = eqx.field(static=True)
    use_equiv: bool = eqx.field(static=True)
    out_features: int | e3nn.Irreps = eqx.field(static=True)
    gates: tuple[GateSpec, ...] = eqx.field(static=True)

    def __init__(
        self,
        in_features: int | e3nn.Irreps | str,
        features: Sequence[int | e3nn.Irreps | str],
        *,
        activation: Activation | None = None,
        mlp_kernel_init: Any = None,
        use_equiv: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        dtype = resolve_dtype(dtype)
        features = tuple(features)
        if not features:
            raise ValueError("ReadoutBlock: features is empty; give at least one layer.")
        if activation is not None and not callable(activation):
            raise TypeError(
                f"ReadoutBlock: activation must be callable or None, got {activation!r}."
            )
        keys = _random.split(key, len(features))
        self.activation = activation
        self.use_equiv = use_equiv
        if use_equiv:
            irreps_in = _as_irreps(in_features)
            targets = tuple(_as_irreps(f) for f in features)
            layers, gates = [], []
            source = irreps_in
            for k, (target, layer_key) in enumerate(zip(targets, keys, strict=True)):
                layer = E3jLinear(source, target, dtype=dtype, key=layer_key)
                layers.append(layer)
                source = layer.irreps_out
                if activation is not None and k < len(targets) - 1:
                    try:
                        gates.append(_gate_spec(source, activation))
                    except ValueError as error:
                        raise ValueError(
                            f"ReadoutBlock: cannot gate the output {source} of layer {k}: {error}"
                        ) from error
                    source = gate_irreps(gates[-1])
            self.layers = tuple(layers)
            self.gates = tuple(gates)
            self.in_features = irreps_in
            self.features = targets
            self.out_features = source
        else:
            if isinstance(in_features, bool) or not isinstance(in_features, int | np.integer):
                raise TypeError(
                    "ReadoutBlock: with use_equiv=False, in_features must be the int size of the "
                    f"input's last axis, got {in_features!r}."
                )
            sizes = []
            for f in features:
                if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 1:
                    raise ValueError(
                        "ReadoutBlock: with use_equiv=False, features must be positive ints, "
                        f"got {features}."
                    )
                sizes.append(int(f))
            if mlp_kernel_init is None:
                raise ValueError(
                    "ReadoutBlock: use_equiv=False needs mlp_kernel_init (a jax initializer or "
                    "'fan_in_normal'), as in mlip."
                )
            init, gradient_scaled = _kernel_init(mlp_kernel_init)
            fan_ins = (int(in_features), *sizes[:-1])
            self.layers = tuple(
                _Dense(
                    kernel=jnp.asarray(init(k, (n_in, n_out), dtype), dtype),
                    bias=jnp.zeros((n_out,), dtype),
                    scale=float(np.sqrt(1.0 / n_in)) if gradient_scaled else 1.0,
                )
                for k, n_in, n_out in zip(keys, fan_ins, sizes, strict=True)
            )
            self.gates = ()
            self.in_features = int(in_features)
            self.features = tuple(sizes)
            self.out_features = sizes[-1]

    def __check_init__(self):
        if self.use_equiv:
            return
        fan_ins = (self.in_features, *self.features[:-1])
        for i, (layer, n_in, n_out) in enumerate(
            zip(self.layers, fan_ins, self.features, strict=True)
        ):
            if layer.kernel.shape != (n_in, n_out) or layer.bias.shape != (n_out,):
                raise ValueError(
                    f"ReadoutBlock: layer {i} has kernel {layer.kernel.shape} and bias "
                    f"{layer.bias.shape}, expected {(n_in, n_out)} and {(n_out,)}."
                )

    @property
    def in_dim(self) -> int:
        """Size of the input's last axis."""
        return (
            self.in_features.dim if isinstance(self.in_features, e3nn.Irreps) else self.in_features
        )

    @property
    def out_dim(self) -> int:
        """Size of the output's last axis."""
        return (
            self.out_features.dim
            if isinstance(self.out_features, e3nn.Irreps)
            else self.out_features
        )

    def __call__(
        self, x: e3nn.IrrepsArray | Float[Array, "nodes {self.in_dim}"]
    ) -> e3nn.IrrepsArray | Float[Array, "nodes {self.out_dim}"]:
        """Read out every node.

        **Arguments:**

        - `x`: `[nodes, in_dim]` node features: an `IrrepsArray` with irreps `in_features`
            (`use_equiv=True`; a plain array is read as scalars when `in_features` is all `0e`),
            or a floating array (`use_equiv=False`; an all-scalar `IrrepsArray` also works).

        **Returns:** `[nodes, out_dim]`: an `IrrepsArray` with irreps `out_features` when
        `use_equiv`, else a plain array.
        """
        if self.use_equiv:
            return self._equivariant(x)
        return self._mlp(x)

    def _equivariant(self, x: e3nn.IrrepsArray | Array) -> e3nn.IrrepsArray:
        assert isinstance(self.in_features, e3nn.Irreps)
        if not isinstance(x, e3nn.IrrepsArray):
            if not self.in_features.is_scalar():
                raise TypeError(
                    "ReadoutBlock: expected an e3nn.IrrepsArray with irreps "
                    f"{self.in_features}, got a plain array of shape {x.shape}."
                )
            x = e3nn.IrrepsArray(self.in_features, x)
        if x.irreps.regroup() != self.in_features.regroup():
            raise ValueError(
                f"ReadoutBlock: input irreps {x.irreps} do not match in_features "
                f"{self.in_features} (compared after regroup)."
            )
        self._check_shape(x.shape, x.dtype)
        h: e3nn.IrrepsArray = x
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.gates):
                spec = self.gates[k]
                h = e3nn.IrrepsArray(gate_irreps(spec), gate(h.array, spec))
        return h

    def _mlp(self, x: e3nn.IrrepsArray | Array) -> Array:
        if isinstance(x, e3nn.IrrepsArray):
            if not x.irreps.is_scalar():
                raise ValueError(
                    f"ReadoutBlock: use_equiv=False reads plain features; got irreps {x.irreps}. "
                    "Pass x.array to read non-scalars as plain numbers."
                )
            x = x.array
        self._check_shape(x.shape, x.dtype)
        h: Array = x
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if self.activation is not None and k < len(self.layers) - 1:
                h = self.activation(h)
        return h

    def _check_shape(self, shape: tuple[int, ...], dtype: Any) -> None:
        if len(shape) != 2 or shape[1] != self.in_dim:
            raise ValueError(
                f"ReadoutBlock: expected node features of shape [nodes, {self.in_dim}], "
                f"got {shape}."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"ReadoutBlock: node features must be floating, got dtype {dtype}.")


class MultiHeadReadoutBlock(eqx.Module):
    """Independent readouts, one per head: Equinox counterpart of
    `mlip.models.readout.MultiHeadReadoutBlock`.

    Every head is a [`eqmlip.nn.ReadoutBlock`][] built with the same arguments and its own
    weights; outputs are stacked on axis 1. Pick one head per node with
    [`eqmlip.nn.select_head`][].

    **Arguments:**

    - `num_heads`: number of heads, >= 1 (mlip: `num_heads`).
    - `in_features`, `features`, `activation`, `mlp_kernel_init`, `use_equiv`, `dtype`: as for
        [`eqmlip.nn.ReadoutBlock`][].
    - `key`: a `jax.random.PRNGKey`.
    """

    heads: tuple[ReadoutBlock, ...]
    num_heads: int = eqx.field(static=True)
    use_equiv: bool = eqx.field(static=True)

    def __init__(
        self,
        num_heads: int,
        in_features: int | e3nn.Irreps | str,
        features: Sequence[int | e3nn.Irreps | str],
        *,
        activation: Activation | None = None,
        mlp_kernel_init: Any = None,
        use_equiv: bool = False,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(
                f"MultiHeadReadoutBlock: num_heads must be an int >= 1, got {num_heads!r}."
            )
        self.heads = tuple(
            ReadoutBlock(
                in_features,
                features,
                activation=activation,
                mlp_kernel_init=mlp_kernel_init,
                use_equiv=use_equiv,
                dtype=dtype,
                key=k,
            )
            for k in _random.split(key, num_heads)
        )
        self.num_heads = num_heads
        self.use_equiv = use_equiv

    @property
    def in_dim(self) -> int:
        """Size of the input's last axis."""
        return self.heads[0].in_dim

    @property
    def out_dim(self) -> int:
        """Size of the output's last axis."""
        return self.heads[0].out_dim

    @property
    def out_features(self) -> int | e3nn.Irreps:
        """The output irreps (`use_equiv`) or feature count of every head."""
        return self.heads[0].out_features

    def __call__(
        self, x: e3nn.IrrepsArray | Float[Array, "nodes {self.in_dim}"]
    ) -> e3nn.IrrepsArray | Float[Array, "nodes {self.num_heads} {self.out_dim}"]:
        """Read out every node with every head.

        **Arguments:** `x`, the `[nodes, in_dim]` node features, as for
        [`eqmlip.nn.ReadoutBlock`][].

        **Returns:** `[nodes, num_heads, out_dim]`: an `IrrepsArray` when `use_equiv`, else a
        plain array.
        """
        if self.use_equiv:
            outputs = [head._equivariant(x) for head in self.heads]
            stacked = jnp.stack([o.array for o in outputs], axis=1)
            return e3nn.IrrepsArray(outputs[0].irreps, stacked)
        return jnp.stack([head._mlp(x) for head in self.heads], axis=1)


def select_head(
    outputs: e3nn.IrrepsArray | Float[Array, "nodes heads features"],
    dataset_idx: Int[_IntArray, " graphs"] | None = None,
    n_node: Int[_IntArray, " graphs"] | None = None,
    *,
    node_graph_index: Int[_IntArray, " nodes"] | None = None,
) -> e3nn.IrrepsArray | Float[Array, "nodes features"]:
    """Pick one readout head per node: Equinox counterpart of `mlip.models.readout.select_head`.

    `out[n] = outputs[n, dataset_idx[graph(n)]]`, the graph of each node given by `n_node`
    (graph `g` owns the next `n_node[g]` nodes) or directly by `node_graph_index` (e.g.
    `graph.node_graph_index()`). Head 0 is used for every node when `dataset_idx` is `None` or
    there is a single head (as in mlip). A head index outside `0..heads-1` is an error
    (`equinox.error_if`, raised at run time under `jax.jit` too), never a silent clamp.

    **Arguments:**

    - `outputs`: `[nodes, heads, features]` readout outputs (`IrrepsArray` or array).
    - `dataset_idx`: `[graphs]` integer head of each graph, or `None`.
    - `n_node`: `[graphs]` integer node counts (`graph.n_node`); they must sum to `nodes`.
    - `node_graph_index`: `[nodes]` graph of each node, instead of `n_node`.

    **Returns:** `[nodes, features]`, of the same kind as `outputs`.
    """
    irreps = outputs.irreps if isinstance(outputs, e3nn.IrrepsArray) else None
    array = outputs.array if isinstance(outputs, e3nn.IrrepsArray) else outputs
    if array.ndim != 3:
        raise ValueError(
            f"select_head: outputs must have shape [nodes, heads, features], got {array.shape}."
        )
    nodes, heads = array.shape[0], array.shape[1]
    if dataset_idx is None or heads == 1:
        selected = array[:, 0]
    else:
        dataset_idx = jnp.asarray(dataset_idx)
        if not jnp.issubdtype(dataset_idx.dtype, jnp.integer):
            raise TypeError(f"select_head: dataset_idx must be integers, got {dataset_idx.dtype}.")
        if (n_node is None) == (node_graph_index is None):
            raise ValueError(
                "select_head: give exactly one of n_node and node_graph_index to broadcast the "
                "per-graph dataset_idx to nodes."
            )
        if node_graph_index is not None:
            head = dataset_idx[jnp.asarray(node_graph_index)]
        else:
            assert n_node is not None
            head = jnp.repeat(dataset_idx, jnp.asarray(n_node), total_repeat_length=nodes)
        head = eqx.error_if(
            head,
            (head < 0) | (head >= heads),
            f"select_head: a dataset_idx is outside 0..{heads - 1}, but the outputs have {heads} "
            "readout heads.",
        )
        selected = array[jnp.arange(nodes), head]
    if irreps is not None:
        return e3nn.IrrepsArray(irreps, selected)
    return selected
