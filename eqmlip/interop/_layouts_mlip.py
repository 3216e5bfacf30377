"""Flax parameter layouts of mlip's readouts and e3j's linear, registered with `flax_slots`.

Composite layouts reuse the layout of each submodule under the submodule's Flax name, so a
larger mlip model (e.g. NequIP) can nest these the same way with `nest_slots`.
"""

from collections.abc import Callable
from typing import Any

from ..nn import E3jLinear, MultiHeadReadoutBlock, ReadoutBlock
from ._flax import ParamSlot, StateSlot, flax_slots


def nest_slots(
    module: Any, prefix: tuple[str, ...], get_child: Callable[[Any], Any]
) -> list[ParamSlot]:
    """The parameter slots of a submodule, moved under `params/<prefix>` of its parent.

    `get_child(parent)` returns the submodule; `prefix` is its Flax path (e.g. `("Linear_0",)`).
    """
    params, states = flax_slots(module)
    assert not states, "nested stateful layouts are not supported"
    return [
        ParamSlot(
            (slot.path[0], *prefix, *slot.path[1:]),
            lambda parent, get=slot.get: get(get_child(parent)),
        )
        for slot in params
    ]


@flax_slots.register
def _e3j_linear(module: E3jLinear) -> tuple[list[ParamSlot], list[StateSlot]]:
    # e3j names each block weight{i}_{l}_{p}, zero-size blocks included.
    return [
        ParamSlot(("params", f"weight{i}_{b.l}_{b.p}"), lambda m, i=i: m.weights[i])
        for i, b in enumerate(module.blocks)
    ], []


@flax_slots.register
def _readout(module: ReadoutBlock) -> tuple[list[ParamSlot], list[StateSlot]]:
    if module.use_equiv:
        # One e3j.linen.Linear per layer, auto-named Linear_{k}.
        slots = []
        for k, layer in enumerate(module.layers):
            slots += nest_slots(layer, (f"Linear_{k}",), lambda m, k=k: m.layers[k])
        return slots, []
    # mlip.models.blocks.MLP (auto-named MLP_0) holds its Dense layers as `layers_{k}`.
    slots = []
    for k in range(len(module.layers)):
        slots.append(
            ParamSlot(
                ("params", "MLP_0", f"layers_{k}", "kernel"), lambda m, k=k: m.layers[k].kernel
            )
        )
        slots.append(
            ParamSlot(("params", "MLP_0", f"layers_{k}", "bias"), lambda m, k=k: m.layers[k].bias)
        )
    return slots, []


@flax_slots.register
def _multi_head_readout(module: MultiHeadReadoutBlock) -> tuple[list[ParamSlot], list[StateSlot]]:
    # One ReadoutBlock per head, auto-named ReadoutBlock_{h}.
    slots = []
    for h, head in enumerate(module.heads):
        slots += nest_slots(head, (f"ReadoutBlock_{h}",), lambda m, h=h: m.heads[h])
    return slots, []
