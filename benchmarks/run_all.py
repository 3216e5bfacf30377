"""Every benchmark in sequence, under both glibc malloc settings, into one JSON file.

Each benchmark runs in its own process (a fresh allocator and JAX), once with glibc's default
malloc and once with the tunables the `eqmlip` command sets (`eqmlip._allocator.TUNED_MALLOC`):
the allocator changes XLA:CPU's speed by up to 3x on large systems, so a figure means little
without its setting. Each script checks correctness itself and prints one JSON line; this
collects the last line of each, with the wall time, into `--out`. `plot_scaling.py` redraws
the step-time figures of docs/benchmarks.md (one per setting).

A few-ms step's median can move more from one fresh process to the next than within one
process: `--processes N` runs each script N times, each in a fresh process. Then
`results[name][malloc]` holds `"status"` (failed if any process failed), `"processes"`, the N
runs (each as a single run's entry), and `"summary"`: for every numeric key of the script's
JSON whose name starts with `speedup` (nested keys joined by dots, e.g.
`molecule.speedup_vs_mlip`), the median, min and max over the processes that succeeded and
their count `n`. With N = 1 (the default) the entry is the single run's, as before.

    python benchmarks/run_all.py [--only nequip,train] [--malloc default,tuned] [--quick]
        [--processes 1] [--out benchmarks/results.json] [--model runs/default/model.eqx]

`--quick` runs every script at small sizes and few repeats: a check that they all still run,
not figures to quote. `md_conservation` needs a trained Cu-Au model (`--model`), and `nequix`
the nequix package (`pip install --no-deps nequix==0.4.5`: its declared dependencies pull
CUDA); without them they are skipped, and the JSON says so.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from eqmlip._allocator import TUNED_MALLOC  # noqa: E402

# name -> (full-size arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "linear": ([], ["--rows", "500", "--repeats", "3"]),
    "message_pass": ([], ["--nodes", "100", "--edges", "1000", "--repeats", "3"]),
    "nequip": ([], ["--systems", "molecule", "--rounds", "2", "--repeats", "3"]),
    "train": ([], ["--rounds", "2", "--repeats", "3"]),
    "mace": ([], ["--systems", "molecule", "--repeats", "3"]),
    "e3x_model": ([], ["--systems", "molecule", "--repeats", "3"]),
    "md": ([], ["--systems", "molecule", "--steps", "20", "--ase-steps", "5", "--repeats", "1"]),
    "md_conservation": ([], []),
    "scaling": ([], ["--repeats", "1", "--supercell", "2"]),
    "profile_ops": (["--mlip"], ["--systems", "molecule", "--repeats", "3"]),
    "nequix": ([], ["--systems", "molecule", "--rounds", "2", "--repeats", "3"]),
    "per_edge": ([], ["--cells", "2,3", "--rounds", "1", "--repeats", "1"]),
    "plot_scaling": (
        ["--cells", "1,2,4,8", "--mlip-max-atoms", "512"],
        ["--cells", "1,2", "--repeats", "1"],
    ),
}


def _nequix_installed() -> bool:
    """Whether nequix imports, asked of a fresh interpreter in the repository root (here,
    benchmarks/nequix.py would shadow the package)."""
    command = [sys.executable, "-c", "import nequix.model"]
    return subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0


def _environment(malloc: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if malloc == "tuned":
        environment["GLIBC_TUNABLES"] = TUNED_MALLOC
    return environment


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def _run(name: str, arguments: list[str], malloc: str) -> dict[str, Any]:
    command = [sys.executable, str(HERE / f"{name}.py"), *arguments]
    print(f"[{malloc}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=_environment(malloc), capture_output=True, text=True
    )
    wall_s = round(time.perf_counter() - start, 1)
    result = _last_json_line(done.stdout)
    if done.returncode != 0 or result is None:
        # A failed correctness check is a result too: keep its message, go on with the rest.
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"status": "failed", "returncode": done.returncode, "error": tail, "wall_s": wall_s}
    return {"status": "ok", "wall_s": wall_s, "result": result}


def _speedups(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric value of `result` (nested dicts included) whose key starts with
    `speedup`, by its dotted path."""
    found: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            found |= _speedups(value, f"{prefix}{key}.")
        elif (
            key.startswith("speedup")
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            found[prefix + key] = value
    return found


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One setting's N processes: the runs, and median/min/max over the successful ones of each
    `speedup*` key (see the module docstring); failed when any process failed."""
    values: dict[str, list[float]] = {}
    for run in runs:
        if run["status"] == "ok":
            for key, value in _speedups(run["result"]).items():
                values.setdefault(key, []).append(value)
    summary = {
        key: {
            "median": round(statistics.median(v), 3),
            "min": min(v),
            "max": max(v),
            "n": len(v),
        }
        for key, v in values.items()
    }
    failed = any(run["status"] != "ok" for run in runs)
    return {"status": "failed" if failed else "ok", "processes": runs, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Every benchmark, both malloc settings, one JSON file."
    )
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--malloc", default="default,tuned", help="default, tuned or both")
    parser.add_argument("--quick", action="store_true", help="small sizes: does it all run?")
    parser.add_argument(
        "--processes", type=int, default=1, help="fresh processes per script and setting"
    )
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--model", default=None, help="trained Cu-Au model, md_conservation")
    args = parser.parse_args()

    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {sorted(BENCHMARKS)}")
    settings = [m for m in args.malloc.split(",") if m]
    if not settings or set(settings) - {"default", "tuned"}:
        parser.error(f"--malloc {args.malloc!r}: expected 'default', 'tuned' or both")
    if args.processes < 1:
        parser.error(f"--processes {args.processes}: expected at least 1")

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        full, quick = BENCHMARKS[name]
        arguments = list(quick if args.quick else full)
        if name == "md_conservation":
            if args.model is None:
                results[name] = {"status": "skipped", "reason": "needs --model (a Cu-Au model)"}
                continue
            arguments = [args.model, *arguments]
        if name == "nequix" and not _nequix_installed():
            results[name] = {
                "status": "skipped",
                "reason": "needs nequix 0.4.5: pip install --no-deps nequix==0.4.5",
            }
            continue
        results[name] = {}
        for malloc in settings:
            extra = []
            if name == "plot_scaling":
                suffix = "" if malloc == "default" else f"-{malloc}-malloc"
                extra = ["--out", f"docs/assets/nequip-step-time{suffix}.png"]
            runs = []
            for _ in range(args.processes):
                runs.append(_run(name, arguments + extra, malloc))
                print(json.dumps({name: {malloc: runs[-1]}}), flush=True)
            results[name][malloc] = runs[0] if args.processes == 1 else summarise(runs)
            if args.processes > 1:
                summary = results[name][malloc]["summary"]
                print(json.dumps({name: {malloc: {"summary": summary}}}), flush=True)

    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "quick": args.quick,
        "processes": args.processes,
        "tuned_malloc": TUNED_MALLOC,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    failed = [
        f"{name} ({malloc})"
        for name, runs in results.items()
        if "status" not in runs  # a skipped benchmark has no per-setting runs
        for malloc, run in runs.items()
        if run["status"] == "failed"
    ]
    print(json.dumps({"benchmark": "run_all", "out": args.out, "failed": failed}))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
