"""Linear forward+backward: eqmlip.nn.Linear against e3nn_jax.flax.Linear, in the same process.

Checks that both give the same outputs and gradients from the same weights, then times the
compile and the steady-state step of `value_and_grad` (with respect to the parameters and the
input) in interleaved rounds (the order alternating), and prints one JSON line: medians over
the rounds and the median of the per-round ratios (flax / eqmlip, > 1 means eqmlip is faster).

    python benchmarks/linear.py [--rows 10000] [--irreps "128x0e+64x1o+32x2e"] \
        [--repeats 30] [--rounds 7]
"""

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from e3nn_jax import flax as e3nn_flax

import eqmlip
from eqmlip.interop import from_flax


def _compile(loss, *args) -> tuple[float, Any]:
    """(compile seconds, executable) of `value_and_grad(loss)`, from a fresh `jax.jit`."""
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    jax.clear_caches()  # or the correctness check's executable is served from the cache
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # warm-up
    return compile_s, compiled


def _interleaved(steps: dict[str, Any], rounds: int, calls: int) -> dict[str, list[float]]:
    """Per round, the median of `calls` timed calls of each step; the order alternates between
    rounds, so that a change in the machine's load falls on both."""
    medians: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(steps[name]())
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description="Linear forward+backward, eqmlip vs Flax.")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--irreps", default="128x0e+64x1o+32x2e")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    args = parser.parse_args()

    irreps = e3nn.Irreps(args.irreps)
    key = jax.random.PRNGKey(0)
    x = e3nn.normal(irreps, key, (args.rows,))

    flax_module = e3nn_flax.Linear(irreps, biases=True)
    variables = flax_module.init(jax.random.PRNGKey(1), x)
    # Non-zero biases so both paths do the same work.
    variables = jax.tree.map(lambda p: p + 0.1, variables)
    module = from_flax(eqmlip.nn.Linear(irreps, irreps, biases=True, key=key), variables)
    params, static = eqx.partition(module, eqx.is_array)

    def flax_loss(variables, x_array):
        y: Any = flax_module.apply(variables, e3nn.IrrepsArray(irreps, x_array))
        return jnp.sum(y.array**2)

    def eqmlip_loss(params, x_array):
        y = eqx.combine(params, static)(e3nn.IrrepsArray(irreps, x_array))
        return jnp.sum(y.array**2)

    flax_step = jax.jit(jax.value_and_grad(flax_loss, argnums=(0, 1)))
    eqmlip_step = jax.jit(jax.value_and_grad(eqmlip_loss, argnums=(0, 1)))

    # Correctness first: same loss, same input gradient, same parameter gradients.
    (loss_f, (grad_vf, grad_xf)) = flax_step(variables, x.array)
    (loss_e, (grad_pe, grad_xe)) = eqmlip_step(params, x.array)
    grads_e = from_flax(eqmlip.nn.Linear(irreps, irreps, biases=True, key=key), grad_vf)
    relative = {
        "loss": float(abs(loss_e - loss_f) / abs(loss_f)),
        "grad_input": float(jnp.max(jnp.abs(grad_xe - grad_xf)) / jnp.max(jnp.abs(grad_xf))),
        "grad_params": max(
            float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            for a, b in zip(
                jax.tree.leaves(grad_pe),
                jax.tree.leaves(eqx.filter(grads_e, eqx.is_array)),
                strict=True,
            )
        ),
    }
    if max(relative.values()) > 1e-5:
        raise SystemExit(f"eqmlip and Flax disagree: {relative}")

    # Timing uses fresh jit wrappers so that compile times are not served from the cache.
    eqmlip_compile, eqmlip_fn = _compile(eqmlip_loss, params, x.array)
    flax_compile, flax_fn = _compile(flax_loss, variables, x.array)
    medians = _interleaved(
        {"eqmlip": lambda: eqmlip_fn(params, x.array), "flax": lambda: flax_fn(variables, x.array)},
        args.rounds,
        args.repeats,
    )
    eqmlip_median = statistics.median(medians["eqmlip"])
    flax_median = statistics.median(medians["flax"])
    ratios = [f / e for f, e in zip(medians["flax"], medians["eqmlip"], strict=True)]
    print(
        json.dumps(
            {
                "benchmark": "linear_forward_backward",
                "rows": args.rows,
                "irreps": str(irreps),
                "dtype": str(x.dtype),
                "max_relative_error": max(relative.values()),
                "eqmlip_median_ms": round(eqmlip_median * 1e3, 3),
                "flax_median_ms": round(flax_median * 1e3, 3),
                "speedup_vs_flax": round(statistics.median(ratios), 3),
                "speedup_per_round": [round(r, 3) for r in ratios],
                "eqmlip_compile_s": round(eqmlip_compile, 3),
                "flax_compile_s": round(flax_compile, 3),
                "compile_speedup_vs_flax": round(flax_compile / eqmlip_compile, 3),
                "repeats": args.repeats,
                "rounds": args.rounds,
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "jax": jax.__version__,
                "device": jax.devices()[0].device_kind,
                "machine": f"{platform.machine()}, {len(np.atleast_1d(jax.devices()))} device(s)",
            }
        )
    )


if __name__ == "__main__":
    main()
