"""Where the time of a compiled step goes, per op family: NequIP energy+forces (hexanol, Si-512)
and the training step of `benchmarks/train.py`, eqmlip and mlip.

Method, the same for every step profiled: compile the step, run it `--repeats` times under
`jax.profiler.trace` (XLA:CPU records one event per executed op, named after the op of the
compiled HLO module), and charge each op's time to the Python function that emitted it. The
compiled module keeps the full Python call stack of every op (its `StackFrames` table), so
an op is charged to the innermost frame in the library being profiled (eqmlip, or mlip and
e3nn-jax), and that frame's file and function decide the family. Scatters and gathers are
charged by opcode, whoever emitted them. The backward pass is charged to the forward
function it differentiates (its ops carry the same frames), so each family is forward plus
backward. Times are per call, in ms: `ops_ms` is the time inside XLA's ops (the profiler's
own overhead and the dispatch between ops are in `wall_ms_under_profiler` only), and
`kinds_ms` splits the same time by what the ops do (matmuls, scatters, gathers, copies and
transposes, everything else).

    python benchmarks/profile_ops.py [--systems molecule,crystal,train] [--repeats 20] \
        [--crystal-repeats 5] [--mlip] [--top 8]

Prints one JSON line; `--top N` adds the N most expensive functions of each step.
"""

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import time
from typing import Any

import equinox as eqx
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlip.models.nequip.config import NequipConfig as MlipNequipConfig  # noqa: E402

from benchmarks.nequip import (  # noqa: E402
    _INFO,
    DEFAULT_TARGET,
    eqmlip_graph,
    hexanol,
    mlip_force_field,
    mlip_graph,
    silicon,
)
from eqmlip.interop.mlip import from_mlip  # noqa: E402
from eqmlip.potential import predict  # noqa: E402


def load_benchmark(name: str) -> Any:
    """A sibling script as a module (benchmarks/ is not a package)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (pattern on "file:function", family): tried on the library frames from the innermost
# outwards, the first frame that matches a pattern decides; within a frame, the first pattern.
FAMILIES = [
    (r"radial\.py|cutoffs\.py|radial_embedding|bessel|envelope|polynomial_cutoff", "radial basis"),
    (r"radial_mlp|MultiLayerPerceptron|_mlp\.py|MLP", "radial MLP"),
    (r"so3\.py|spherical_harmonics", "spherical harmonics"),
    (r"tensor_product|convolution|interaction|message_passing|MessagePassing", "tensor products"),
    (r"linear|Linear", "linear layers"),
    (r"gate|Gate|activation", "gates, activations"),
    (r"safe_norm|edge_vectors|strain|node_graph_index|edge_graph_index", "geometry"),
    (r"readout|Readout|species|embedding|Embedding|scale|shift", "embedding, readout, E0"),
]
# Charged only when it is the innermost library frame: every op of a training step has the
# step and the loss among its outer frames.
TRAINING = (r"optax/|training/|force_field\.py:.*loss|ema", "loss, optimizer, EMA")
LIBRARY_FILES = {
    "eqmlip": re.compile(r"/(eqmlip|optax)/(?!_misc|_arrays)"),
    "mlip": re.compile(r"/(mlip|e3nn_jax|optax)/"),
}


def _sections(hlo_text: str) -> dict[str, dict[int, str]]:
    """The numbered tables (FileNames, FunctionNames, FileLocations, StackFrames) at the top
    of a compiled module's text."""
    tables: dict[str, dict[int, str]] = {}
    current: dict[int, str] | None = None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
            continue
        match = re.match(r"^(\d+) (.*)$", line)
        if current is not None and match:
            current[int(match.group(1))] = match.group(2)
        elif current is not None and line.strip():
            current = None
    return tables


def _frames(tables: dict[str, dict[int, str]]) -> dict[int, list[tuple[str, str]]]:
    """stack_frame_id -> [(file, function)], innermost frame first."""
    files = {k: v.strip('"') for k, v in tables["FileNames"].items()}
    functions = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}
    locations = {}
    for k, v in tables["FileLocations"].items():
        file_id = int(re.search(r"file_name_id=(\d+)", v).group(1))  # type: ignore[union-attr]
        function_id = int(re.search(r"function_name_id=(\d+)", v).group(1))  # type: ignore[union-attr]
        locations[k] = (files[file_id], functions[function_id])
    parents = {}
    frame_locations = {}
    for k, v in tables["StackFrames"].items():
        frame_locations[k] = locations[int(re.search(r"file_location_id=(\d+)", v).group(1))]  # type: ignore[union-attr]
        # Measured on XLA 0.10's text: an instruction's stack_frame_id is the frame's printed
        # number, while parent_frame_id is the parent's printed number + 1 (0 or 1: none).
        parents[k] = int(re.search(r"parent_frame_id=(\d+)", v).group(1)) - 1  # type: ignore[union-attr]
    stacks: dict[int, list[tuple[str, str]]] = {}
    for k in frame_locations:
        stack, frame = [], k
        while frame in frame_locations and len(stack) < 200:
            stack.append(frame_locations[frame])
            frame = parents[frame]
        stacks[k] = stack
    return stacks


def _instructions(hlo_text: str) -> dict[str, tuple[str, int | None, str]]:
    """Entry (and called) instruction name -> (opcode, stack_frame_id, called computation)."""
    out = {}
    for line in hlo_text.splitlines():
        match = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(", line)
        if not match:
            continue
        frame = re.search(r"stack_frame_id=(\d+)", line)
        calls = re.search(r"calls=%([\w.\-]+)", line)
        out[match.group(1)] = (
            match.group(2),
            int(frame.group(1)) if frame else None,
            calls.group(1) if calls else "",
        )
    return out


def _computations(hlo_text: str) -> dict[str, list[tuple[str, int | None]]]:
    """Computation name -> (opcode, stack_frame_id) of each instruction inside it."""
    out: dict[str, list[tuple[str, int | None]]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
        if header:
            current = out.setdefault(header.group(1), [])
            continue
        match = re.match(r"^\s*(?:ROOT )?%[\w.\-]+ = .*?\s([a-z][\w\-]*)\(", line)
        if current is not None and match:
            frame = re.search(r"stack_frame_id=(\d+)", line)
            current.append((match.group(1), int(frame.group(1)) if frame else None))
    return out


def _family(library: str, stack: list[tuple[str, str]]) -> tuple[str, str]:
    """(family, innermost library function) of a stack."""
    # The innermost library frame names the op; the innermost one with a family decides it
    # (e3nn-jax's IrrepsArray arithmetic sits inside the tensor product that called it).
    files = LIBRARY_FILES[library]
    frames = [(file, function) for file, function in stack if files.search(file)]
    if not frames:
        return "other", "(outside the library)"
    file, function = frames[0]
    where = f"{file.rsplit('/', 2)[-2]}/{file.rsplit('/', 1)[-1]}:{function}"
    # (`where` keeps two path components, which drops optax's package name for its
    # `tree_utils/` and `_src/` files: those are matched on the full path.)
    if re.search(TRAINING[0], where) or "/optax/" in file:
        return TRAINING[1], where
    for file, function in frames:
        for pattern, family in FAMILIES:
            if re.search(pattern, f"{file.rsplit('/', 1)[-1]}:{function}"):
                return family, where
    return "other", where


def _kind(inside: set[str]) -> str:
    """Coarse kind of an executed op from the opcodes it runs."""
    if "scatter" in inside:
        return "scatter"
    if "gather" in inside:
        return "gather"
    if inside & {"dot", "convolution"}:
        return "matmul"
    if inside & {"copy", "transpose"} and not inside - {"copy", "transpose", "bitcast", "fusion"}:
        return "copy, transpose"
    return "elementwise, reduce, other"


def profile(library: str, step: Any, args: tuple, repeats: int) -> dict[str, Any]:
    jitted = jax.jit(step)
    compiled = jitted.lower(*args).compile()
    text = compiled.as_text()
    if text is None:
        raise SystemExit("profile_ops: this JAX cannot print the compiled module")
    stacks = _frames(_sections(text))
    instructions = _instructions(text)
    computations = _computations(text)
    for _ in range(3):
        jax.block_until_ready(jitted(*args))
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(jitted(*args))
            wall_s = time.perf_counter() - start
        (trace,) = glob.glob(f"{logdir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(trace) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_family: collections.defaultdict[str, float] = collections.defaultdict(float)
    by_function: collections.defaultdict[str, float] = collections.defaultdict(float)
    by_kind: collections.defaultdict[str, float] = collections.defaultdict(float)
    ops_us = 0.0
    for event in events:
        if event.get("ph") != "X":
            continue
        name, duration = event["name"], float(event.get("dur", 0.0))
        if name not in instructions:
            continue
        ops_us += duration
        opcode, frame, called = instructions[name]
        body = computations.get(called, [])
        inside = {op for op, _ in body} | {opcode}
        # A fusion's own frame is its root's, often a pad or add around the real work: a
        # matmul is charged to the frame of its dot.
        dots = [f for op, f in body if op in ("dot", "convolution") and f]
        frame = dots[0] if dots else frame
        family, where = _family(library, stacks.get(frame, []) if frame else [])
        if "scatter" in inside:
            family = "scatters"
        elif "gather" in inside and family in ("other", "geometry"):
            family = "gathers"
        by_family[family] += duration
        by_kind[_kind(inside)] += duration
        by_function[where] += duration
    per_call = 1e-3 / repeats

    def largest_first(times: dict[str, float]) -> list[tuple[str, float]]:
        return sorted(times.items(), key=lambda item: -item[1])

    return {
        "wall_ms_under_profiler": round(wall_s * 1e3 / repeats, 3),
        "ops_ms": round(ops_us * per_call, 3),
        "families_ms": {k: round(v * per_call, 3) for k, v in largest_first(by_family)},
        "families_share": {k: round(v / ops_us, 3) for k, v in largest_first(by_family)},
        "kinds_ms": {k: round(v * per_call, 3) for k, v in largest_first(by_kind)},
        "functions_ms": {k: round(v * per_call, 3) for k, v in largest_first(by_function)},
        "ops_executed_per_call": sum(
            1 for e in events if e.get("ph") == "X" and e["name"] in instructions
        )
        // repeats,
    }


def _on_arrays(step: Any, state: Any) -> tuple[Any, tuple]:
    """`step(state) -> state` as a function of the state's arrays only (for `jax.jit`)."""
    arrays, static = eqx.partition(state, eqx.is_array)
    return (lambda a: eqx.filter(step(eqx.combine(a, static)), eqx.is_array)), (arrays,)


def main() -> None:
    parser = argparse.ArgumentParser(description="Time per op family of NequIP's steps.")
    parser.add_argument("--systems", default="molecule,crystal,train")
    parser.add_argument("--repeats", type=int, default=20, help="profiled calls, molecule, train")
    parser.add_argument("--crystal-repeats", type=int, default=5, help="profiled calls, crystal")
    parser.add_argument("--mlip", action="store_true", help="profile mlip's steps too")
    parser.add_argument("--top", type=int, default=8, help="functions listed per step")
    args = parser.parse_args()

    force_field = mlip_force_field(MlipNequipConfig(target_irreps=DEFAULT_TARGET), _INFO)
    model = from_mlip(force_field.params, force_field.predictor.mlip_network.config, _INFO)
    params, static = eqx.partition(model, eqx.is_array)

    def eqmlip_step(params, graph):
        out = predict(eqx.combine(params, static), graph, stress=False)
        return out.energy, out.forces

    def mlip_step(params, graph):
        out: Any = force_field.predictor.apply(params, graph)
        return out.globals.energy, out.nodes.forces

    systems = {"molecule": hexanol, "crystal": silicon}
    results: dict[str, Any] = {}
    for name in args.systems.split(","):
        if name == "train":
            # benchmarks/train.py's steps (8 g2 molecules of 9 atoms), checked there.
            built = load_benchmark("train").build(9, 8, 1e-3)
            steps = {
                "eqmlip": _on_arrays(built["eqmlip_step"], built["eqmlip_state"]),
                "mlip": _on_arrays(built["mlip_step"], built["mlip_state"]),
            }
            repeats = args.repeats
        else:
            atoms = systems[name]()
            steps = {
                "eqmlip": (eqmlip_step, (params, eqmlip_graph(atoms))),
                "mlip": (mlip_step, (force_field.params, mlip_graph(atoms))),
            }
            repeats = args.crystal_repeats if name == "crystal" else args.repeats
        for library in ("eqmlip", "mlip") if args.mlip else ("eqmlip",):
            step, step_args = steps[library]
            result = profile(library, step, step_args, repeats)
            result["functions_ms"] = dict(list(result["functions_ms"].items())[: args.top])
            results[f"{library}_{name}"] = result
    print(
        json.dumps(
            {
                "benchmark": "nequip_profile_by_op_family",
                "config": "default (" + DEFAULT_TARGET.replace(" ", "") + ", l_max 3, 2 layers)",
                "repeats": {"molecule": args.repeats, "crystal": args.crystal_repeats},
                **results,
                "jax": jax.__version__,
                "load_average": os.getloadavg()[0],
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
