"""MessagePass forward+backward: eqmlip.nn.MessagePass against e3x.nn.MessagePass, same process.

For the Tensor and the FusedTensor variant: checks that both give the same loss and gradients
from the same weights, then times the compile and the steady-state step of `value_and_grad`
(with respect to the parameters and the node features; the two libraries' steps alternate,
so that a change of load on a shared machine reaches both) and prints one JSON line: medians,
ratios (e3x / eqmlip, > 1 means eqmlip is faster or smaller) and memory.

Memory is XLA's own accounting of each compiled step (`compiled.memory_analysis()`): `temp`
is the scratch buffer XLA allocates for intermediates, `peak` adds arguments and outputs. It
is exact for the compiled program and independent of the allocator and of other processes.

    python benchmarks/message_pass.py [--nodes 1000] [--edges 20000] [--features 32]
        [--max-degree 2] [--num-basis 16] [--repeats 20]
"""

import argparse
import functools
import json
import platform
import statistics
import time
from typing import Any

import e3x
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqmlip
from eqmlip.interop import from_flax


def _compile(fn, *args) -> tuple[Any, float, dict[str, int]]:
    """(compiled `fn`, compile seconds, memory)."""
    jitted = jax.jit(lambda *a: fn(*a))  # a fresh function: no compile-cache hit
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    analysis: Any = compiled.memory_analysis()
    memory = {
        "temp": int(analysis.temp_size_in_bytes),
        "peak": int(
            analysis.temp_size_in_bytes
            + analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes
        ),
    }
    return compiled, compile_s, memory


def _interleaved(calls: list[tuple[Any, tuple]], repeats: int) -> list[list[float]]:
    """Step seconds of each compiled call, timed in alternation: on a shared machine a change
    of load then reaches both, not only whichever ran second."""
    for compiled, args in calls:
        jax.block_until_ready(compiled(*args))  # warm-up
    steps: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for times, (compiled, args) in zip(steps, calls, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
    return steps


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _case(fused: bool, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    x, basis, dst, src = data["x"], data["basis"], data["dst"], data["src"]
    kwargs = dict(dst_idx=dst, src_idx=src, num_segments=args.nodes)
    flax_module = e3x.nn.MessagePass(use_fused_tensor=fused)
    variables = flax_module.init(jax.random.PRNGKey(1), x, basis, **kwargs)

    def make():
        return eqmlip.nn.MessagePass(
            in_num_parity=2,
            in_max_degree=args.max_degree,
            features=args.features,
            basis_max_degree=args.max_degree,
            num_basis=args.num_basis,
            use_fused_tensor=fused,
            key=jax.random.PRNGKey(0),
        )

    skeleton = eqx.filter_eval_shape(make)
    module = from_flax(skeleton, variables)
    params, static = eqx.partition(module, eqx.is_array)

    def e3x_loss(variables, x):
        y: Any = flax_module.apply(variables, x, basis, **kwargs)
        return jnp.sum(y**2)

    def eqmlip_loss(params, x):
        return jnp.sum(eqx.combine(params, static)(x, basis, **kwargs) ** 2)

    e3x_step = jax.value_and_grad(e3x_loss, argnums=(0, 1))
    eqmlip_step = jax.value_and_grad(eqmlip_loss, argnums=(0, 1))

    # Correctness first: same loss, input gradient and parameter gradients.
    loss_f, (grad_vf, grad_xf) = jax.jit(e3x_step)(variables, x)
    loss_e, (grad_pe, grad_xe) = jax.jit(eqmlip_step)(params, x)
    grads_as_module = from_flax(skeleton, grad_vf)
    relative = {
        "loss": _relative(loss_e, loss_f),
        "grad_input": _relative(grad_xe, grad_xf),
        "grad_params": max(
            _relative(a, b)
            for a, b in zip(
                jax.tree.leaves(grad_pe),
                jax.tree.leaves(eqx.filter(grads_as_module, eqx.is_array)),
                strict=True,
            )
        ),
    }
    if max(relative.values()) > 1e-4:
        raise SystemExit(f"eqmlip and e3x disagree ({'fused' if fused else 'tensor'}): {relative}")

    eqmlip_compiled, eqmlip_compile, eqmlip_memory = _compile(eqmlip_step, params, x)
    e3x_compiled, e3x_compile, e3x_memory = _compile(e3x_step, variables, x)
    eqmlip_steps, e3x_steps = _interleaved(
        [(eqmlip_compiled, (params, x)), (e3x_compiled, (variables, x))], args.repeats
    )
    eqmlip_median, e3x_median = map(statistics.median, (eqmlip_steps, e3x_steps))
    # Per round: the two steps of one round ran back to back, under about the same load.
    round_ratios = [f / e for e, f in zip(eqmlip_steps, e3x_steps, strict=True)]
    return {
        "max_relative_error": max(relative.values()),
        "eqmlip_median_ms": round(eqmlip_median * 1e3, 3),
        "e3x_median_ms": round(e3x_median * 1e3, 3),
        "speedup_vs_e3x": round(e3x_median / eqmlip_median, 3),
        "speedup_per_round_median": round(statistics.median(round_ratios), 3),
        "speedup_per_round_min_max": [round(min(round_ratios), 3), round(max(round_ratios), 3)],
        "eqmlip_compile_s": round(eqmlip_compile, 3),
        "e3x_compile_s": round(e3x_compile, 3),
        "eqmlip_temp_mib": round(eqmlip_memory["temp"] / 2**20, 2),
        "e3x_temp_mib": round(e3x_memory["temp"] / 2**20, 2),
        "eqmlip_peak_mib": round(eqmlip_memory["peak"] / 2**20, 2),
        "e3x_peak_mib": round(e3x_memory["peak"] / 2**20, 2),
        "peak_memory_ratio_e3x_over_eqmlip": round(e3x_memory["peak"] / eqmlip_memory["peak"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="MessagePass forward+backward, eqmlip vs e3x.")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--edges", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--max-degree", type=int, default=2)
    parser.add_argument("--num-basis", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variants", default="tensor,fused", help="tensor and/or fused")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - {"tensor", "fused"}:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; expected tensor and/or fused")

    rng = np.random.default_rng(0)
    positions = 5.0 * rng.standard_normal((args.nodes, 3))
    dst = np.sort(rng.integers(0, args.nodes, args.edges))
    src = (dst + rng.integers(1, args.nodes, args.edges)) % args.nodes  # no self-pairs
    basis_fn = functools.partial(
        eqmlip.ops.basis,
        max_degree=args.max_degree,
        num=args.num_basis,
        radial_fn=eqmlip.ops.reciprocal_bernstein,
        cutoff_fn=functools.partial(eqmlip.ops.smooth_cutoff, cutoff=20.0),
    )
    vectors = jnp.asarray(positions[src] - positions[dst], jnp.float32)
    shape = (args.nodes, 2, (args.max_degree + 1) ** 2, args.features)
    data = {
        "x": jnp.asarray(rng.standard_normal(shape), jnp.float32),
        "basis": jax.jit(basis_fn)(vectors),
        "dst": jnp.asarray(dst, jnp.int32),
        "src": jnp.asarray(src, jnp.int32),
    }
    results = {name: _case(name == "fused", args, data) for name in variants}
    print(
        json.dumps(
            {
                "benchmark": "message_pass_forward_backward",
                "nodes": args.nodes,
                "edges": args.edges,
                "features": args.features,
                "max_degree": args.max_degree,
                "num_basis": args.num_basis,
                "num_parity": 2,
                "dtype": "float32",
                **results,
                "memory": "XLA compiled.memory_analysis(): temp = scratch, peak = temp + "
                "arguments + outputs - aliased",
                "repeats": args.repeats,
                "jax": jax.__version__,
                "e3x": e3x.__version__,
                "device": jax.devices()[0].device_kind,
                "machine": f"{platform.machine()}, {len(jax.devices())} device(s)",
            }
        )
    )


if __name__ == "__main__":
    main()
