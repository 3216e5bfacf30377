"""Flax parameter layouts of the e3x family, registered with `flax_slots`."""

from typing import Any

from ..nn import (
    Dense,
    Embed,
    ExponentialBasis,
    FusedTensor,
    MessagePass,
    MultiHeadAttention,
    SelfAttention,
    Tensor,
    TensorDense,
)
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


def _nested(prefix: str, get_child: Any, child: Any) -> list[ParamSlot]:
    """The slots of a submodule, under the Flax scope `prefix`."""
    return [
        ParamSlot(
            ("params", prefix, *slot.path[1:]),
            lambda m, get=slot.get: get(get_child(m)),
        )
        for slot in flax_slots(child)[0]
    ]


def _tensor_scope(tensor: Tensor | FusedTensor) -> str:
    # e3x's `_Conv` names its product layer after its class.
    return "fused_tensor" if isinstance(tensor, FusedTensor) else "tensor"


@flax_slots.register
def _message_pass(module: MessagePass) -> tuple[list[ParamSlot], list[StateSlot]]:
    return [
        *_nested("filter", lambda m: m.filter, module.filter),
        *_nested(_tensor_scope(module.tensor), lambda m: m.tensor, module.tensor),
    ], []


@flax_slots.register
def _embed(module: Embed) -> tuple[list[ParamSlot], list[StateSlot]]:
    return [ParamSlot(("params", "embedding"), lambda m: m.embedding)], []


@flax_slots.register
def _exponential_basis(module: ExponentialBasis) -> tuple[list[ParamSlot], list[StateSlot]]:
    return [ParamSlot(("params", "gamma"), lambda m: m.gamma)], []


@flax_slots.register
def _tensor_dense(module: TensorDense) -> tuple[list[ParamSlot], list[StateSlot]]:
    return [
        *_nested("dense", lambda m: m.dense, module.dense),
        *_nested(_tensor_scope(module.tensor), lambda m: m.tensor, module.tensor),
    ], []


def _attention(
    module: MultiHeadAttention | SelfAttention,
) -> tuple[list[ParamSlot], list[StateSlot]]:
    slots = [
        *_nested("query", lambda m: m.query, module.query),
        *_nested("key", lambda m: m.key, module.key),
        *_nested("value", lambda m: m.value, module.value),
    ]
    if module.relative_positional_encoding_kernel is not None:
        slots.append(
            ParamSlot(
                ("params", "relative_positional_encoding", "kernel"),
                lambda m: m.relative_positional_encoding_kernel,
            )
        )
    if module.relative_positional_encoding_bias is not None:
        slots.append(
            ParamSlot(
                ("params", "relative_positional_encoding", "bias"),
                lambda m: m.relative_positional_encoding_bias,
            )
        )
    if module.filter is not None and module.tensor is not None:
        slots += _nested("filter", lambda m: m.filter, module.filter)
        slots += _nested(_tensor_scope(module.tensor), lambda m: m.tensor, module.tensor)
    slots += _nested("out", lambda m: m.out, module.out)
    return slots, []


flax_slots.register(MultiHeadAttention, _attention)
flax_slots.register(SelfAttention, _attention)
