"""How eqmlip's few-ms NequIP step spreads within one process, and how much of it is dispatch.

The default NequIP config on 1-hexanol (21 atoms), energy+forces, built as
`benchmarks/nequip.py` builds it (mlip's `ForceField`, converted by `from_mlip`) and checked
against mlip first. Then `--steps` single jitted steps, each timed on its own (as nequip.py
times them): median, min, 10th/90th percentile, and the medians of the first, middle and
last third (a drift within the process shows there). With `--loop K`, also K steps inside one
jitted `lax.fori_loop` (each step's positions moved by 1e-6 times the forces summed so far,
so that XLA cannot hoist the step out of the loop), timed over `--loop-repeats` calls: its
time per step is the step without the per-call dispatch and host synchronisation, so
the single step's median less it is what one call costs around the computation.

    python benchmarks/step_spread.py [--steps 1000] [--loop 200] [--loop-repeats 5]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from mlip.models.nequip.config import NequipConfig as MlipNequipConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.nequip import (  # noqa: E402
    _INFO,
    DEFAULT_TARGET,
    checked_steps,
    hexanol,
    mlip_force_field,
)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def single_steps(jitted: Any, args: tuple, steps: int) -> dict[str, Any]:
    for _ in range(10):  # the first steps after compiling are slow
        jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    deciles = statistics.quantiles(times, n=10, method="inclusive")
    third = len(times) // 3
    return {
        "median_ms": _ms(statistics.median(times)),
        "min_ms": _ms(min(times)),
        "p10_ms": _ms(deciles[0]),
        "p90_ms": _ms(deciles[-1]),
        "thirds_median_ms": [
            _ms(statistics.median(part))
            for part in (times[:third], times[third : 2 * third], times[2 * third :])
        ],
    }


def looped_steps(step: Any, args: tuple, k: int, repeats: int) -> dict[str, Any]:
    params, graph = args

    def loop(params, graph, k):
        def body(_, carry):
            positions, total = carry
            _, forces = step(params, eqx.tree_at(lambda g: g.positions, graph, positions))
            total = total + forces
            return positions + 1e-6 * total, total

        start = (graph.positions, jnp.zeros_like(graph.positions))
        return jax.lax.fori_loop(0, k, body, start)  # k traced: one while loop, not unrolled

    jitted = jax.jit(loop)
    start = time.perf_counter()
    jitted.lower(params, graph, k).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(jitted(params, graph, k))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        positions, total = jax.block_until_ready(jitted(params, graph, k))
        times.append(time.perf_counter() - start)
    if not bool(jnp.all(jnp.isfinite(positions)) & jnp.all(jnp.isfinite(total))):
        raise SystemExit("looped steps: positions or summed forces are not finite")
    return {
        "loop_steps": k,
        "loop_repeats": repeats,
        "loop_compile_s": round(compile_s, 3),
        "loop_per_step_median_ms": _ms(statistics.median(times) / k),
        "loop_per_step_min_ms": _ms(min(times) / k),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="eqmlip's NequIP step: spread and dispatch.")
    parser.add_argument("--steps", type=int, default=1000, help="single steps timed")
    parser.add_argument("--loop", type=int, default=0, help="steps in one fori_loop (0: skip)")
    parser.add_argument("--loop-repeats", type=int, default=5, help="timed loop calls")
    args = parser.parse_args()
    if args.steps < 3 or args.loop < 0 or args.loop_repeats < 1:
        parser.error("expected --steps >= 3, --loop >= 0 and --loop-repeats >= 1")

    load_start = os.getloadavg()[0]
    force_field = mlip_force_field(MlipNequipConfig(target_irreps=DEFAULT_TARGET), _INFO)
    atoms = hexanol()
    built = checked_steps("molecule", atoms, force_field)  # correctness first
    step, step_args = built["eqmlip_step"], built["eqmlip_args"]
    jax.clear_caches()  # or the correctness check's executable is served from the cache
    jitted = jax.jit(step)
    start = time.perf_counter()
    jitted.lower(*step_args).compile()
    compile_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "benchmark": "nequip_step_spread",
        "config": "default (" + DEFAULT_TARGET.replace(" ", "") + ", l_max 3, 2 layers)",
        "atoms": len(atoms),
        "edges": int(step_args[1].n_edge[0]),
        "energy_relative_error_vs_mlip": built["energy_relative_error"],
        "force_max_abs_error_vs_mlip": built["force_max_abs_error"],
        "compile_s": round(compile_s, 3),
        "steps": args.steps,
        **single_steps(jitted, step_args, args.steps),
    }
    if args.loop:
        result |= looped_steps(step, step_args, args.loop, args.loop_repeats)
        result["per_call_overhead_ms"] = round(
            result["median_ms"] - result["loop_per_step_median_ms"], 3
        )
    result |= {
        "dtype": str(jnp.zeros(()).dtype),
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
