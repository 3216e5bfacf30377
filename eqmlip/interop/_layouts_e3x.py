"""Flax parameter layouts of the e3x family, registered with `flax_slots`."""

from ..nn import Dense, FusedTensor, Tensor
from ._flax import ParamSlot, StateSlot, flax_slots


@flax_slots.register
def _dense(module: Dense) -> tuple[list[ParamSlot], list[StateSlot]]:
    # One flax.linen.Dense per degree and parity, named "{l}+" / "{l}-"; the bias lives on "0+".
    slots = [
        ParamSlot(("params", name, "kernel"), lambda m, k=k: m.kernels[k])
        for k, name in enumerate(module.parameter_names)
    ]
    if module.bias is not None:
        slots.append(ParamSlot(("params", "0+", "bias"), lambda m: m.bias))
    return slots, []


@flax_slots.register
def _tensor(module: Tensor) -> tuple[list[ParamSlot], list[StateSlot]]:
    return [ParamSlot(("params", "kernel"), lambda m: m.kernel)], []


@flax_slots.register
def _fused_tensor(module: FusedTensor) -> tuple[list[ParamSlot], list[StateSlot]]:
    names = ("e1", "o1", "e2", "o2", "eee", "ooe", "eoo", "oeo")
    return [
        ParamSlot(("params", f"kernel_{name}"), lambda m, name=name: getattr(m, f"kernel_{name}"))
        for name in names
    ], []
