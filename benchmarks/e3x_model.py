"""The worked e3x force field of docs/porting-e3x.md: energy+forces, eqmlip against e3x 1.0.2.

The model is the one on that page (an `Embed`, three `MessagePass`/`Dense`/`silu`/`TensorDense`
iterations, a per-atom readout), defined once there and executed from there, so the page, its
parity test and this benchmark run the same code. The Flax model is initialised, its weights are
moved into the eqmlip model with the page's `from_e3x` (`from_flax` per layer), and on each
system the script compiles both steps (timed), checks that they give the same energy and
forces, then times the steady-state step of `value_and_grad` with respect to the positions (the
two libraries' steps alternate, so that a change of load on a shared machine reaches both), and
prints one JSON line: medians, compile times, ratios (e3x / eqmlip: > 1 means eqmlip is faster
or smaller) and memory.

Systems: the pyrazine dimer of ASE's S22 set (20 atoms) and a random cluster of `--atoms` atoms
(H, C, N, O) at a liquid's number density (0.1 atoms/Å^3, as water), no two atoms closer than
`--min-distance`. Pairs are all ordered pairs within the model's cutoff (sparse indices).

Memory is XLA's own accounting of each compiled step (`compiled.memory_analysis()`): `temp` is
the scratch buffer XLA allocates for intermediates, `peak` adds arguments and outputs.

    python benchmarks/e3x_model.py [--atoms 1000] [--repeats 20] [--molecule-repeats 200]
        [--systems molecule,cluster]
"""

import argparse
import json
import pathlib
import platform
import re
import statistics
import time
from collections.abc import Sequence
from typing import Any

import e3x
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.collections import s22

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "porting-e3x.md"
# The page's force-field block defines the models, then runs them on a molecule from here on.
_USAGE_MARKER = "\n# A small molecule"


def worked_model() -> dict[str, Any]:
    """The namespace of the page's definitions: `E3xForceField`, `ForceField`, `from_e3x`, ..."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    sources = [b for b in blocks if "class E3xForceField" in b]
    if len(sources) != 1 or sources[0].count(_USAGE_MARKER) != 1:
        raise SystemExit(
            f"{PAGE} should have one Python block defining E3xForceField, with its usage after "
            f"{_USAGE_MARKER.strip()!r}; found {len(sources)} such blocks"
        )
    namespace: dict[str, Any] = {}
    definitions = sources[0].split(_USAGE_MARKER)[0]
    exec(compile(definitions, str(PAGE), "exec"), namespace)
    return namespace


def random_cluster(
    atoms: int, density: float, min_distance: float, rng: np.random.Generator
) -> np.ndarray:
    """`atoms` positions uniform in a ball of `atoms / density` volume, at least `min_distance`
    apart (random sequential addition: at liquid densities the excluded volume is a few %)."""
    radius = (3 * atoms / (4 * np.pi * density)) ** (1 / 3)
    positions = np.empty((atoms, 3))
    placed = 0
    while placed < atoms:
        candidate = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(candidate) > radius:
            continue
        if placed and np.min(np.linalg.norm(positions[:placed] - candidate, axis=1)) < min_distance:
            continue
        positions[placed] = candidate
        placed += 1
    return positions


def radius_pairs(positions: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Ordered pairs (dst, src), dst != src, closer than `cutoff`; sorted by dst."""
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    dst, src = np.nonzero(distances < cutoff)
    return dst.astype(np.int32), src.astype(np.int32)


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


def _interleaved_medians(calls: list[tuple[Any, tuple]], repeats: int) -> list[float]:
    """Median step seconds of each compiled call, timed in alternation: on a shared machine a
    change of load then reaches both, not only whichever ran second."""
    for compiled, args in calls:
        jax.block_until_ready(compiled(*args))  # warm-up
    steps: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for times, (compiled, args) in zip(steps, calls, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in steps]


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _system(
    name: str,
    numbers: np.ndarray,
    positions: np.ndarray,
    models: dict[str, Any],
    repeats: int,
) -> dict[str, Any]:
    flax_model, variables, params, static = (
        models[k] for k in ("flax_model", "variables", "params", "static")
    )
    dst, src = radius_pairs(positions, models["cutoff"])
    args = jax.device_put(
        (jnp.asarray(numbers, jnp.int32), jnp.asarray(positions, jnp.float32), dst, src)
    )

    def e3x_step(variables, z, r, dst, src):
        energy, gradient = jax.value_and_grad(
            lambda r: flax_model.apply(variables, z, r, dst, src)
        )(r)
        return energy, -gradient

    def eqmlip_step(params, z, r, dst, src):
        model = eqx.combine(params, static)
        energy, gradient = jax.value_and_grad(lambda r: model(z, r, dst, src))(r)
        return energy, -gradient

    eqmlip_compiled, eqmlip_compile, eqmlip_memory = _compile(eqmlip_step, params, *args)
    e3x_compiled, e3x_compile, e3x_memory = _compile(e3x_step, variables, *args)
    # Correctness before any timing: same energy and forces from the same weights, from the
    # programs that are timed.
    e_ref, f_ref = e3x_compiled(variables, *args)
    e_ours, f_ours = eqmlip_compiled(params, *args)
    relative = {"energy": _relative(e_ours, e_ref), "forces": _relative(f_ours, f_ref)}
    if max(relative.values()) > 1e-4:
        raise SystemExit(f"{name}: eqmlip and e3x disagree: {relative}")
    eqmlip_median, e3x_median = _interleaved_medians(
        [(eqmlip_compiled, (params, *args)), (e3x_compiled, (variables, *args))], repeats
    )
    return {
        "atoms": len(numbers),
        "edges": len(dst),
        "energy_relative_error": relative["energy"],
        "forces_relative_error": relative["forces"],
        "eqmlip_median_ms": round(eqmlip_median * 1e3, 3),
        "e3x_median_ms": round(e3x_median * 1e3, 3),
        "speedup_vs_e3x": round(e3x_median / eqmlip_median, 3),
        "eqmlip_compile_s": round(eqmlip_compile, 3),
        "e3x_compile_s": round(e3x_compile, 3),
        "eqmlip_temp_mib": round(eqmlip_memory["temp"] / 2**20, 3),
        "e3x_temp_mib": round(e3x_memory["temp"] / 2**20, 3),
        "eqmlip_peak_mib": round(eqmlip_memory["peak"] / 2**20, 3),
        "e3x_peak_mib": round(e3x_memory["peak"] / 2**20, 3),
        "peak_memory_ratio_e3x_over_eqmlip": round(e3x_memory["peak"] / eqmlip_memory["peak"], 3),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="The e3x worked force field, eqmlip vs e3x.")
    parser.add_argument("--atoms", type=int, default=1000, help="atoms of the random cluster")
    parser.add_argument("--density", type=float, default=0.1, help="atoms per cubic Ångström")
    parser.add_argument("--min-distance", type=float, default=1.0, help="Ångström")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps on the cluster")
    parser.add_argument(
        "--molecule-repeats",
        type=int,
        default=200,
        help="timed steps on the molecule (about 1 ms each: many, for a stable median)",
    )
    parser.add_argument("--systems", default="molecule,cluster")
    args = parser.parse_args(argv)
    if jax.config.read("jax_enable_x64"):
        raise SystemExit("run without JAX_ENABLE_X64: the benchmark compares float32 models")
    names = args.systems.split(",")
    if unknown := set(names) - {"molecule", "cluster"}:
        raise SystemExit(f"--systems: unknown {sorted(unknown)}; expected molecule and/or cluster")

    page = worked_model()
    rng = np.random.default_rng(0)
    molecule = s22["Pyrazine_dimer"]
    systems = {
        "molecule": (molecule.numbers, molecule.positions),
        "cluster": (
            rng.choice([1, 6, 7, 8], args.atoms),
            random_cluster(args.atoms, args.density, args.min_distance, rng),
        ),
    }

    # One set of weights for every system: the Flax model's, moved into the eqmlip model.
    numbers, positions = systems["molecule"]
    dst, src = radius_pairs(positions, page["CUTOFF"])
    flax_model = page["E3xForceField"]()
    variables = jax.jit(flax_model.init)(
        jax.random.key(1), jnp.asarray(numbers), jnp.asarray(positions, jnp.float32), dst, src
    )
    skeleton = eqx.filter_eval_shape(page["ForceField"], key=jax.random.key(0))
    params, static = eqx.partition(page["from_e3x"](skeleton, variables), eqx.is_array)
    models = {
        "flax_model": flax_model,
        "variables": variables,
        "params": params,
        "static": static,
        "cutoff": page["CUTOFF"],
    }
    results = {
        name: _system(
            name,
            systems[name][0],
            systems[name][1],
            models,
            args.molecule_repeats if name == "molecule" else args.repeats,
        )
        for name in names
    }
    record = {
        "benchmark": "e3x_force_field_energy_forces",
        "model": "docs/porting-e3x.md worked force field",
        "features": page["FEATURES"],
        "max_degree": page["MAX_DEGREE"],
        "iterations": page["NUM_ITERATIONS"],
        "num_basis": page["NUM_BASIS"],
        "cutoff": page["CUTOFF"],
        "dtype": "float32",
        **results,
        "cluster_density": args.density,
        "cluster_min_distance": args.min_distance,
        "memory": "XLA compiled.memory_analysis(): temp = scratch, peak = temp + "
        "arguments + outputs - aliased",
        "repeats": {"molecule": args.molecule_repeats, "cluster": args.repeats},
        "jax": jax.__version__,
        "e3x": e3x.__version__,
        "device": jax.devices()[0].device_kind,
        "machine": f"{platform.machine()}, {len(jax.devices())} device(s)",
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
