"""NequIP energy+forces time per edge against system size, in one process.

eqmlip's default NequIP (target irreps "128x0e + 128x0o + 64x1o + 64x1e + 4x2e + 4x2o",
l_max 3, 2 layers, radial MLP [64, 64], cutoff 5 Å, float32) on rattled diamond Si
supercells of 2^3 to 8^3 cubic cells (64, 216, 512, 1,728 and 4,096 atoms, 28 edges per
atom). Each size is checked first (energy and forces finite; the forces of a periodic crystal
sum to zero), compiled (timed separately) and its memory estimated by XLA
(`memory_analysis`: arguments, outputs, temporaries); a size whose estimate exceeds
`--max-gib` is skipped with the reason printed. The timed steps then run in `--rounds`
interleaved rounds over the sizes (each round runs every size `--repeats` times), so a change
of load moves all sizes alike. Reports the median step and time per edge of each size and the
max/min ratio of the time per edge (the goal: flat within 1.3x), with the process's minor page
faults per edge during a step (the cost of glibc's default malloc).

The glibc allocator changes the large sizes most (see docs/benchmarks.md); its tunables are
read at process start, so each setting needs its own process. `--malloc both` runs this script
once under each (`default`: GLIBC_TUNABLES unset, `tuned`: eqmlip's `TUNED_MALLOC`) and
prints one JSON line with both; otherwise the script measures the process it is in and says
which setting that is. `--profile` adds the time per op family (the method of
`benchmarks/profile_ops.py`) at the smallest and largest size run. `--mallopt` applies the
tuned settings from inside the process with `eqmlip.tune_malloc()` (glibc's `mallopt`, before
JAX starts), to compare with the tunables read at start; `--malloc all` runs one process
each for default, `tune_malloc` and tuned, `--alternations` times over.

    python benchmarks/per_edge.py [--cells 2,3,4,6,8] [--rounds 3] [--repeats 2]
        [--max-gib 6] [--malloc both|all|here] [--alternations 1] [--profile] [--mallopt]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

if "--mallopt" in sys.argv:
    # `import eqmlip` does not import JAX, so this runs before JAX's first allocation.
    import eqmlip  # noqa: E402

    eqmlip.tune_malloc()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

from eqmlip import Graph, pad_graph  # noqa: E402
from eqmlip._allocator import TUNED_MALLOC  # noqa: E402
from eqmlip.models.nequip import Nequip, NequipConfig  # noqa: E402
from eqmlip.potential import predict  # noqa: E402

CUTOFF = 5.0
AVG_NEIGHBOURS = 28.0  # diamond Si at 5 Å: 4 + 12 + 12 neighbours


def silicon(repeat: int) -> Any:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=repeat)
    return atoms


def _malloc_setting() -> str:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "--mallopt" in sys.argv:
        return "tune_malloc" + (f" over {tunables}" if tunables else "")
    if not tunables:
        return "default"
    return "tuned" if tunables == TUNED_MALLOC else f"custom ({tunables})"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = Nequip(
        NequipConfig(),
        (14,),
        cutoff=CUTOFF,
        avg_num_neighbors=AVG_NEIGHBOURS,
        key=jax.random.key(0),
    )
    params, static = eqx.partition(model, eqx.is_array)

    def step(params, graph):
        out = predict(eqx.combine(params, static), graph, stress=False)
        return out.energy, out.forces

    jitted = jax.jit(step)
    sizes: dict[str, dict[str, Any]] = {}
    runnable: dict[str, tuple] = {}
    for repeat in [int(c) for c in args.cells.split(",") if c]:
        atoms = silicon(repeat)
        n = len(atoms)
        graph = Graph.from_atoms(atoms, CUTOFF)
        graph = jax.device_put(pad_graph(graph, graph.num_nodes + 1, graph.num_edges + 1, 2))
        edges = int(graph.n_edge[0])
        start = time.perf_counter()
        compiled = jitted.lower(params, graph).compile()
        compile_s = time.perf_counter() - start
        stats = compiled.memory_analysis()
        peak = (
            None
            if stats is None
            else int(
                stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            )
        )
        entry: dict[str, Any] = {
            "atoms": n,
            "edges": edges,
            "compile_s": round(compile_s, 2),
            "peak_mib": None if peak is None else round(peak / 2**20, 1),
        }
        sizes[str(n)] = entry
        if peak is not None and peak > args.max_gib * 2**30:
            entry["skipped"] = (
                f"XLA estimates {peak / 2**30:.2f} GiB, above --max-gib {args.max_gib}"
            )
            print(f"per_edge: skipping {n} atoms: {entry['skipped']}", file=sys.stderr)
            continue
        # Correctness first: finite, and the forces of a periodic crystal sum to zero.
        energy, forces = jax.block_until_ready(compiled(params, graph))
        forces = np.asarray(forces)[:n]
        if not (np.all(np.isfinite(np.asarray(energy))) and np.all(np.isfinite(forces))):
            raise SystemExit(f"per_edge: {n} atoms: non-finite energy or forces")
        net = float(np.max(np.abs(forces.sum(axis=0)))) / float(np.max(np.abs(forces)))
        if net > 1e-3 * np.sqrt(n):  # float32 sums of n terms: ~1e-7 sqrt(n) relative
            raise SystemExit(f"per_edge: {n} atoms: forces do not sum to zero ({net:.2e})")
        entry["net_force_rel"] = float(f"{net:.3g}")
        jax.block_until_ready(compiled(params, graph))  # warm-up (the first run allocates)
        runnable[str(n)] = (compiled, graph)
        entry["steps_s"], entry["faults"] = [], []

    for _ in range(args.rounds):
        for name, (compiled, graph) in runnable.items():
            for _ in range(args.repeats):
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                jax.block_until_ready(compiled(params, graph))
                sizes[name]["steps_s"].append(time.perf_counter() - start)
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                sizes[name]["faults"].append(faults)

    per_edge = {}
    for name, entry in sizes.items():
        steps, faults = entry.pop("steps_s", None), entry.pop("faults", None)
        if not steps or not faults:
            continue
        # Page faults of the process during a step: what the allocator costs (see the docs).
        entry["page_faults_per_edge"] = round(statistics.median(faults) / entry["edges"], 2)
        median = statistics.median(steps)
        entry["median_ms"] = round(median * 1e3, 2)
        entry["us_per_edge"] = round(median / entry["edges"] * 1e6, 3)
        per_edge[name] = entry["us_per_edge"]
    result: dict[str, Any] = {"malloc": _malloc_setting(), "sizes": sizes}
    if per_edge:
        smallest, largest = min(per_edge, key=int), max(per_edge, key=int)
        result |= {
            "us_per_edge_max_over_min": round(max(per_edge.values()) / min(per_edge.values()), 3),
            "us_per_edge_largest_over_smallest": round(per_edge[largest] / per_edge[smallest], 3),
        }
        if args.profile:
            sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
            from profile_ops import profile  # noqa: PLC0415

            result["profile"] = {
                name: profile("eqmlip", step, (params, runnable[name][1]), args.profile_repeats)
                for name in dict.fromkeys([smallest, largest])
            }
            for name, found in result["profile"].items():
                calls = sizes[name]["edges"]
                found["families_ns_per_edge"] = {
                    k: round(v * 1e6 / calls, 1) for k, v in found.pop("families_ms").items()
                }
                found["kinds_ns_per_edge"] = {
                    k: round(v * 1e6 / calls, 1) for k, v in found.pop("kinds_ms").items()
                }
                found["functions_ms"] = dict(list(found["functions_ms"].items())[:8])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="NequIP time per edge against system size.")
    parser.add_argument("--cells", default="2,3,4,6,8", help="cubic cells per side (8 atoms)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=2, help="steps per size per round")
    parser.add_argument("--max-gib", type=float, default=6.0, help="skip sizes above this")
    parser.add_argument(
        "--malloc",
        default="here",
        choices=("here", "both", "all"),
        help="here: this process as it is; both: one process per glibc malloc setting; "
        "all: also one with tune_malloc",
    )
    parser.add_argument(
        "--alternations", type=int, default=1, help="--malloc both/all: cycles of processes"
    )
    parser.add_argument(
        "--mallopt", action="store_true", help="apply the tuned settings with mallopt (test)"
    )
    parser.add_argument("--profile", action="store_true", help="per op family, ends")
    parser.add_argument("--profile-repeats", type=int, default=3)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    if args.malloc in ("both", "all"):
        settings = (
            ("default", "tune_malloc", "tuned") if args.malloc == "all" else ("default", "tuned")
        )
        results = []
        for _ in range(args.alternations):
            for setting in settings:
                environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
                if setting == "tuned":
                    environment["GLIBC_TUNABLES"] = TUNED_MALLOC
                command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
                command += ["--malloc", "here"] + (
                    ["--mallopt"] if setting == "tune_malloc" else []
                )
                done = subprocess.run(command, env=environment, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"per_edge ({setting} malloc) failed:\n{done.stderr[-2000:]}")
                run = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(run["runs"][0] | {"load_average": run["load_average"]})
    else:
        results = [measure(args)]
    print(
        json.dumps(
            {
                "benchmark": "nequip_time_per_edge",
                "config": "default NequIP, Si, cutoff 5 Å",
                "runs": results,
                "rounds": args.rounds,
                "repeats": args.repeats,
                "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                "jax": jax.__version__,
                "dtype": str(jax.numpy.zeros(()).dtype),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
