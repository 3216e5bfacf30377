"""Flax parameter layouts of the e3nn-jax family, registered with `flax_slots`."""

from ..nn import BatchNorm, Linear, MultiLayerPerceptron
from ._flax import ParamSlot, StateSlot, flax_slots


@flax_slots.register
def _linear(module: Linear) -> tuple[list[ParamSlot], list[StateSlot]]:
    # e3nn names each parameter after its path and the (regrouped, channel-folded) irreps.
    irreps_in, irreps_out = module.internal_irreps_in, module.internal_irreps_out
    slots = [
        ParamSlot(
            ("params", f"w[{p.i_in},{p.i_out}] {irreps_in[p.i_in]},{irreps_out[p.i_out]}"),
            lambda m, k=k: m.weights[k],
        )
        for k, p in enumerate(module.paths)
    ]
    slots += [
        ParamSlot(("params", f"b[{i}] {irreps_out[i]}"), lambda m, k=k: m.biases[k])
        for k, i in enumerate(module.bias_indices)
    ]
    return slots, []


@flax_slots.register
def _mlp(module: MultiLayerPerceptron) -> tuple[list[ParamSlot], list[StateSlot]]:
    # One flax.linen.Dense per layer, auto-named Dense_{i}.
    slots = [
        ParamSlot(("params", f"Dense_{i}", "kernel"), lambda m, i=i: m.kernels[i])
        for i in range(len(module.kernels))
    ]
    if module.biases is not None:
        slots += [
            ParamSlot(("params", f"Dense_{i}", "bias"), lambda m, i=i: m.biases[i])
            for i in range(len(module.biases))
        ]
    return slots, []


@flax_slots.register
def _batch_norm(module: BatchNorm) -> tuple[list[ParamSlot], list[StateSlot]]:
    # Flax names: params/{weights,biases} (when affine), batch_stats/{mean,var} (unless instance);
    # the state holds the pair (mean, var).
    params = []
    if module.affine:
        params = [
            ParamSlot(("params", "weights"), lambda m: m.weights),
            ParamSlot(("params", "biases"), lambda m: m.biases),
        ]
    states = []
    if module.state_index is not None:
        states = [
            StateSlot(("batch_stats", "mean"), module.state_index, 0),
            StateSlot(("batch_stats", "var"), module.state_index, 1),
        ]
    return params, states
