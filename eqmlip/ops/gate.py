"""The gate nonlinearity of equivariant networks (`e3nn.gate`), on arrays with a static layout.

Scalars are activated by parity; every nonscalar copy is multiplied by its own activated scalar
gate:

$$y = \\big(\\sigma_{p(s)}(s)\\big)_{s \\in \\text{scalars}} \\oplus
      \\big(\\sigma^{g}_{p(g_i)}(g_i)\\, v_i\\big)_{i}$$

A [`eqmlip.ops.gate.GateSpec`][] says where the scalars, gates and nonscalars lie in the input
and which (normalised) activation each parity gets; it is built once, from irreps, by
[`eqmlip.ops.gate.gate_spec`][] (NequIP's layout) or [`eqmlip.ops.gate.e3nn_gate_spec`][]
(`e3nn.gate`'s split), so no irreps are handled at run time.
"""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, cast

import e3nn_jax as e3nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._misc import irreps_entry
from .columns import split_columns

Role = Literal["scalar", "gate", "nonscalar"]


class ScaledActivation(NamedTuple):
    """`fn(x) / scale`, or `fn(x)` when `scale` is `None` (e.g. an activation normalised by
    [`eqmlip.ops.activation.activation_scale`][])."""

    fn: Callable[[Array], Array]
    scale: float | None = None

    def __call__(self, x: Array) -> Array:
        y = self.fn(x)
        return y if self.scale is None else y / self.scale


class GateEntry(NamedTuple):
    """`mul` copies of the irrep `(l, p)` at columns `start : start + mul (2l+1)` of the input,
    with their `role` in the gate."""

    start: int
    mul: int
    l: int  # noqa: E741
    p: int
    role: Role


class GateSpec(NamedTuple):
    """The static description of a gate.

    Entries are in output order: scalars (activated, in this order), then nonscalars (gated,
    in this order); gate entries are consumed in their order, one scalar per nonscalar copy.
    An activation of `None` leaves its values unchanged.
    """

    entries: tuple[GateEntry, ...]
    even: ScaledActivation | None  # even scalars (0e)
    odd: ScaledActivation | None  # odd scalars (0o)
    even_gate: ScaledActivation | None  # even gates
    odd_gate: ScaledActivation | None  # odd gates


def gate_spec(
    scalars: e3nn.Irreps,
    gates: e3nn.Irreps,
    nonscalars: e3nn.Irreps,
    *,
    even: ScaledActivation | None,
    odd: ScaledActivation | None,
    even_gate: ScaledActivation | None,
    odd_gate: ScaledActivation | None,
) -> GateSpec:
    """The gate of an input laid out as `(scalars + gates + nonscalars).regroup()` (NequIP's
    convolution output); the output is `scalars + gated nonscalars`, un-regrouped."""
    irreps = scalars + gates + nonscalars
    parts: tuple[tuple[Role, e3nn.Irreps], ...] = (
        ("scalar", scalars),
        ("gate", gates),
        ("nonscalar", nonscalars),
    )
    roles: list[Role] = [role for role, part in parts for _ in range(len(part))]
    order = sorted(range(len(irreps)), key=lambda i: irreps_entry(irreps, i).ir)
    starts = {}
    offset = 0
    for i in order:
        starts[i] = offset
        offset += irreps_entry(irreps, i).dim
    entries = tuple(
        GateEntry(starts[i], mul, ir.l, ir.p, roles[i]) for i, (mul, ir) in enumerate(irreps)
    )
    return GateSpec(entries, even, odd, even_gate, odd_gate)


def e3nn_gate_spec(
    irreps: e3nn.Irreps,
    *,
    even: ScaledActivation | None,
    odd: ScaledActivation | None,
    even_gate: ScaledActivation | None,
    odd_gate: ScaledActivation | None,
) -> GateSpec:
    """The gate of `e3nn.gate` on an input laid out as `irreps`: the last `n` scalars (in input
    order) gate the `n` nonscalar copies, the other scalars are activated.

    **Raises:** `ValueError` when there are fewer scalars than nonscalar copies.
    """
    scalars, nonscalars = [], []
    offset = 0
    for mul, ir in irreps:
        (scalars if ir.l == 0 else nonscalars).append((offset, mul, ir))
        offset += mul * ir.dim
    num_gates = sum(mul for _, mul, _ in nonscalars)
    num_scalars = sum(mul for _, mul, _ in scalars)
    if num_scalars < num_gates:
        raise ValueError(
            f"the gate needs one scalar per non-scalar irrep: {irreps} has {num_scalars} "
            f"scalars for {num_gates} non-scalars."
        )
    activated, gates = [], []
    seen = 0
    for start, mul, ir in scalars:
        # Split an entry that straddles the boundary between activated scalars and gates.
        keep = min(max(num_scalars - num_gates - seen, 0), mul)
        if keep:
            activated.append(GateEntry(start, keep, 0, ir.p, "scalar"))
        if mul - keep:
            gates.append(GateEntry(start + keep, mul - keep, 0, ir.p, "gate"))
        seen += mul
    gated = [GateEntry(start, mul, ir.l, ir.p, "nonscalar") for start, mul, ir in nonscalars]
    return GateSpec(tuple(activated + gates + gated), even, odd, even_gate, odd_gate)


def gate_irreps(spec: GateSpec) -> e3nn.Irreps:
    """The irreps of [`eqmlip.ops.gate.gate`][]'s output: the scalars, then the nonscalars, each
    copy with its parity times its gate's; chunks split where a gate entry or a nonscalar entry
    ends, as `e3nn.gate` splits them."""
    items: list[tuple[int, e3nn.Irrep]] = [
        (e.mul, e3nn.Irrep(0, e.p)) for e in spec.entries if e.role == "scalar"
    ]
    gates = [e for e in spec.entries if e.role == "gate" and e.mul]
    k, left_in_gate = 0, gates[0].mul if gates else 0
    for entry in spec.entries:
        if entry.role != "nonscalar":
            continue
        left = entry.mul
        while left:
            assert left_in_gate, "a gate spec has one gate per nonscalar copy"
            take = min(left, left_in_gate)
            items.append((take, e3nn.Irrep(entry.l, entry.p * gates[k].p)))
            left -= take
            left_in_gate -= take
            if not left_in_gate and k + 1 < len(gates):
                k, left_in_gate = k + 1, gates[k + 1].mul
    return e3nn.Irreps(cast(Any, items))


def _activate(x: Array, parity: int, even: ScaledActivation | None, odd: ScaledActivation | None):
    act = even if parity == 1 else odd
    return x if act is None else act(x)


def gate(x: Float[Array, "*batch dim"], spec: GateSpec) -> Float[Array, "*batch dim_out"]:
    """Apply the gate described by `spec` to the last axis of `x`.

    Scalars are activated by parity (`spec.even`, `spec.odd`); each nonscalar copy `i` is
    multiplied by gate `i`, activated by its parity (`spec.even_gate`, `spec.odd_gate`).
    Output: the scalars, then the gated nonscalars, in the order of `spec.entries`
    (irreps [`eqmlip.ops.gate.gate_irreps`][]).
    """
    batch = x.shape[:-1]
    widths = [e.mul * (2 * e.l + 1) for e in spec.entries]
    pieces = split_columns(x, [(e.start, w) for e, w in zip(spec.entries, widths, strict=True)])
    gate_values = [
        _activate(piece, e.p, spec.even_gate, spec.odd_gate)
        for e, piece in zip(spec.entries, pieces, strict=True)
        if e.role == "gate"
    ]
    gated = [e for e in spec.entries if e.role == "nonscalar"]
    starts = [sum(e.mul for e in gated[:i]) for i in range(len(gated))]
    gates = jnp.concatenate(gate_values, axis=-1) if gate_values else None
    gate_pieces = (
        iter(split_columns(gates, [(a, e.mul) for a, e in zip(starts, gated, strict=True)]))
        if gates is not None
        else iter(())
    )
    outs = []
    for e, piece in zip(spec.entries, pieces, strict=True):
        if e.role == "scalar":
            outs.append(_activate(piece, e.p, spec.even, spec.odd))
        elif e.role == "nonscalar":
            d = 2 * e.l + 1
            v = piece.reshape(*batch, e.mul, d)
            outs.append((v * next(gate_pieces)[..., None]).reshape(*batch, e.mul * d))
    if not outs:
        return jnp.zeros((*batch, 0), x.dtype)
    return jnp.concatenate(outs, axis=-1)
