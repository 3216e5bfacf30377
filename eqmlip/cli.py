"""The `eqmlip` command: `train`, `evaluate`, `md` and `relax`.

```bash
eqmlip train                        # the embedded default: EMT Cu-Au data, a small NequIP
eqmlip train run.yaml --train.epochs=50 --model.l_max=2
eqmlip evaluate runs/default/model.eqx test.xyz --json
eqmlip md runs/default/model.eqx structure.xyz --steps 200 --ensemble nvt
eqmlip relax runs/default/model.eqx structure.xyz --fmax 0.02 --output relaxed.xyz
```
"""

import argparse
import difflib
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ._allocator import reexec_with_tuned_malloc
from ._errors import ConfigError as ConfigError, InputError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that `1e-3` is a float (PyYAML wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def valid_keys(model_name: str = "nequip") -> dict[str, tuple[str, ...]]:
    """The keys of each section of a training config (see
    [`eqmlip.training.valid_keys`][])."""
    from .training import valid_keys as keys

    return keys(model_name)


def default_config() -> dict[str, Any]:
    """The embedded default training config, as nested dicts (what `eqmlip train` runs with no
    arguments)."""
    from .training import RunConfig

    return RunConfig.default_dict()


_TARGET_KEYS = ("energy_key", "forces_key", "stress_key", "virial_key", "charge_key", "weight_key")


def _config_error(message: str, command: str = "train") -> Exception:
    return ConfigError(f"eqmlip {command}: {message}")


def _model_name(config: Mapping[str, Any]) -> str:
    model = config.get("model")
    name = model.get("name", "nequip") if isinstance(model, Mapping) else "nequip"
    return name if isinstance(name, str) else "nequip"


def _check_keys(config: Mapping[str, Any], where: str) -> None:
    try:
        keys = valid_keys(_model_name(config))
    except ValueError as error:
        raise _config_error(f"model.name in {where}: {error}") from None
    for section, value in config.items():
        if section not in keys:
            raise _config_error(
                f"unknown key {section!r} in {where}; valid top-level keys are {sorted(keys)}."
            )
        if keys[section]:
            if not isinstance(value, Mapping):
                raise _config_error(
                    f"{section!r} in {where} must be a mapping of {list(keys[section])}, got "
                    f"{value!r}."
                )
            for key in value:
                if key not in keys[section]:
                    close = difflib.get_close_matches(str(key), keys[section], n=1)
                    hint = f"did you mean {section}.{close[0]}? " if close else ""
                    raise _config_error(
                        f"unknown key {section}.{key} in {where}; {hint}valid keys of "
                        f"{section!r} are {sorted(keys[section])}."
                    )


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`["--train.epochs=5", "--model.l_max", "2"]` to `{"train": {"epochs": 5}, "model":
    {"l_max": 2}}`; values are parsed as YAML scalars (`5`, `1e-3`, `true`, `null`, `[8, 8]`)."""
    out: dict[str, Any] = {}
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise _config_error(
                f"expected an override --key=value, got {arg!r} (only one config "
                "file may be given, first)."
            )
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, text = arg[2:], args[i + 1]
            i += 1
        else:
            raise _config_error(f"the override {arg!r} has no value (--key=value).")
        i += 1
        try:
            value = _yaml(text)
        except yaml.YAMLError as error:
            raise _config_error(f"cannot parse the value {text!r} of --{key}: {error}") from error
        parts = key.split(".")
        keys = valid_keys()
        if parts[0] not in keys:
            raise _config_error(f"unknown key {key!r}; valid top-level keys are {sorted(keys)}.")
        if keys[parts[0]] and len(parts) != 2:
            raise _config_error(
                f"{key!r} must name a key of the {parts[0]!r} section, e.g. "
                f"--{parts[0]}.{keys[parts[0]][0]}=...; valid keys are {sorted(keys[parts[0]])}."
            )
        if not keys[parts[0]] and len(parts) != 1:
            raise _config_error(f"{parts[0]!r} has no sub-keys, got --{key}.")
        if len(parts) == 1:
            out[parts[0]] = value
        else:
            out.setdefault(parts[0], {})[parts[1]] = value
    _check_keys(out, "the command-line overrides")
    return out


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The default config, updated by a YAML file and then by `--section.key=value` overrides."""
    config = default_config()
    layers: list[tuple[dict[str, Any], str]] = []
    if path is not None:
        with open(path) as f:
            loaded = _yaml(f.read()) or {}
        if not isinstance(loaded, dict):
            raise _config_error(
                f"{path!r} must hold a mapping of sections, got {type(loaded).__name__}."
            )
        _check_keys(loaded, repr(path))
        layers.append((loaded, repr(path)))
    layers.append((parse_overrides(overrides), "overrides"))
    for layer, _ in layers:
        for section, value in layer.items():
            if isinstance(value, Mapping):
                if section == "model" and value.get("name", _model_name(config)) != _model_name(
                    config
                ):
                    # Another potential: the options so far are the previous one's (the
                    # default's are NequIP's); keep the shared keys, as RunConfig.from_dict.
                    from .training._run import _MODEL_KEYS

                    config["model"] = {k: v for k, v in config["model"].items() if k in _MODEL_KEYS}
                config[section].update(value)
            else:
                config[section] = value
    return config


def run_train(config: Mapping[str, Any]) -> Any:
    """Run `eqmlip train` with a config of nested dicts (see [`eqmlip.cli.load_config`][]):
    [`eqmlip.training.run`][] of [`eqmlip.training.RunConfig.from_dict`][]`(config)`.

    **Returns:** the [`eqmlip.training.RunResult`][].
    """
    from .training import RunConfig, run

    try:
        run_config = RunConfig.from_dict(config)
    except ConfigError as error:
        raise _config_error(str(error)) from None
    return run(run_config)


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """`eqmlip evaluate MODEL DATA`: metrics of a model file on a data file."""
    from .data import DataConfig, GraphLoader, check_known_species
    from .io import load_model
    from .training import evaluate, print_metrics

    if args.batch_size < 1:
        raise _config_error(f"--batch-size must be >= 1, got {args.batch_size}.", "evaluate")
    model = load_model(args.model)
    data = DataConfig(
        energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key
    )
    structures = data.read(args.data)
    check_known_species(structures, model.species, what=args.data, known=f"the model {args.model}")
    loader = GraphLoader(
        structures, model.cutoff, batch_size=args.batch_size, shuffle=False, num_buckets=2
    )
    metrics = evaluate(model, loader)
    if args.json:
        print(json.dumps(metrics))
    else:
        print_metrics(f"{args.data}: {metrics['num_structures']} structures", metrics)
    return metrics


def _read_md_structure(args: argparse.Namespace, command: str) -> Any:
    """The frame `args.index` of `args.structure`, checked as training data is (finite, a
    proper cell, no coinciding atoms), with the file and frame named, before the model is
    read."""
    from .data import Structure
    from .data._structure import _read_file

    frames = _read_file(args.structure, ":", None)
    if not -len(frames) <= args.index < len(frames):
        raise _config_error(
            f"--index {args.index} is past the end of {args.structure} ({len(frames)} "
            f"frame(s): valid indices are {-len(frames)}..{len(frames) - 1}).",
            command,
        )
    atoms = frames[args.index]
    frame = args.index % len(frames)
    try:
        Structure.from_atoms(atoms, frame=frame, **dict.fromkeys(_TARGET_KEYS))
    except (TypeError, ValueError) as error:
        raise _config_error(f"{args.structure}, {error}", command) from None
    return atoms


def _check_options(command: str, checks: Sequence[tuple[str, float | int, bool, str]]) -> None:
    for name, value, ok, expected in checks:
        if not (ok and math.isfinite(value)):
            raise _config_error(f"{name} must be {expected}, got {value}.", command)


def run_md(args: argparse.Namespace) -> dict[str, Any]:
    """`eqmlip md MODEL STRUCTURE`: MD with the jitted engine (`--engine jax`, the default) or
    with the model as the ASE calculator (`--engine ase`)."""
    ensemble = args.ensemble
    if args.thermostat is not None:  # the option of earlier versions
        ensemble = {"nve": "nve", "langevin": "nvt"}[args.thermostat]
    args.ensemble = ensemble
    # Refuse bad options before reading the model or compiling anything.
    _check_options(
        "md",
        [
            ("--timestep", args.timestep, args.timestep > 0, "> 0 fs"),
            ("--temperature", args.temperature, args.temperature >= 0, ">= 0 K"),
            ("--steps", args.steps, args.steps >= 1, ">= 1"),
            ("--friction", args.friction, args.friction >= 0, ">= 0 (1/fs)"),
            ("--pressure", args.pressure, True, "finite (GPa)"),
            ("--replicas", args.replicas, args.replicas >= 1, ">= 1"),
            ("--every", args.every, args.every >= 1, ">= 1"),
        ],
    )
    if args.engine == "ase" and (ensemble == "npt" or args.replicas > 1):
        raise _config_error(
            f"--engine ase runs nve or nvt with one replica; got --ensemble {ensemble} and "
            f"--replicas {args.replicas} (use --engine jax).",
            "md",
        )
    atoms = _read_md_structure(args, "md")
    if ensemble == "npt" and not all(atoms.pbc):
        raise _config_error(
            f"--ensemble npt needs a fully periodic cell; {args.structure} has pbc "
            f"{atoms.pbc.tolist()}.",
            "md",
        )
    out = _md_jax(args, atoms) if args.engine == "jax" else _md_ase(args, atoms)
    if args.json:
        print(json.dumps(out))
    else:
        pressure = (
            f", pressure mean {out['mean_pressure_gpa']:.3f} GPa"
            if out.get("mean_pressure_gpa") is not None
            else ""
        )
        print(
            f"md ({args.engine}): {args.steps} steps of {args.timestep} fs ({ensemble}) on "
            f"{len(atoms)} atoms x {args.replicas} replica(s), {out['steps_per_second']:.1f} "
            f"steps/s after {out['compile_time_s']:.1f} s of compilation "
            f"({out['compilations']} compilation(s))\n"
            f"  total energy drift {out['energy_drift_per_atom']:.3e} eV/atom "
            f"(max deviation {out['max_energy_deviation_per_atom']:.3e} eV/atom)\n"
            f"  temperature mean {out['mean_temperature_k']:.1f} K, final "
            f"{out['final_temperature_k']:.1f} K{pressure}"
        )
    return out


def _md_jax(args: argparse.Namespace, atoms: Any) -> dict[str, Any]:
    import numpy as np

    from .io import load_model
    from .md import _engine

    model = load_model(args.model)
    before = _engine._TRACES[0]
    result = _engine.simulate(
        model,
        [atoms.copy() for _ in range(args.replicas)],
        steps=args.steps,
        ensemble=args.ensemble,
        timestep=args.timestep,
        temperature=args.temperature,
        friction=args.friction,
        pressure=args.pressure,
        seed=args.seed,
        trajectory=args.trajectory,
        every=args.every,
        progress=args.progress,
    )
    total = result.total / len(atoms)
    pressure = result.pressure
    return {
        "engine": "jax",
        "steps": args.steps,
        "ensemble": args.ensemble,
        "replicas": args.replicas,
        "energy_drift_per_atom": float(np.mean(total[-1] - total[0])),
        "max_energy_deviation_per_atom": float(np.max(np.abs(total - total[0]))),
        "mean_temperature_k": float(np.mean(result.temperature)),
        "final_temperature_k": float(np.mean(result.temperature[-1])),
        "mean_pressure_gpa": None if np.isnan(pressure).all() else float(np.mean(pressure)),
        "steps_per_second": result.steps_per_second,
        "compile_time_s": result.compile_seconds,
        "compilations": _engine._TRACES[0] - before,
        "reallocations": result.reallocations,
    }


def _md_ase(args: argparse.Namespace, atoms: Any) -> dict[str, Any]:
    import ase.io
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from .calculator import EqmlipCalculator
    from .md import maxwell_boltzmann

    calc = EqmlipCalculator(args.model)
    atoms.calc = calc
    atoms.set_momenta(maxwell_boltzmann(atoms.get_masses(), args.temperature, args.seed))
    if args.ensemble == "nvt":
        dynamics = Langevin(
            atoms,
            args.timestep * units.fs,
            temperature_K=args.temperature,
            friction=args.friction / units.fs,  # ASE's Langevin takes 1/(ASE time unit)
            fixcm=False,
            rng=np.random.default_rng(args.seed),
        )
    else:
        dynamics = VelocityVerlet(atoms, args.timestep * units.fs)
    energies, temperatures = [], []

    def record() -> None:
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        temperatures.append(atoms.get_temperature())

    dynamics.attach(record, interval=1)
    writer = None
    if args.trajectory:
        writer = open(args.trajectory, "w")
        dynamics.attach(lambda: ase.io.write(writer, atoms, format="extxyz"), interval=args.every)
    # The first force evaluation compiles the model: timed apart from the steps.
    start = time.perf_counter()
    atoms.get_forces()
    compile_time = time.perf_counter() - start
    start = time.perf_counter()
    try:
        dynamics.run(args.steps)
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - start
    e = np.array(energies) / len(atoms)
    return {
        "engine": "ase",
        "steps": args.steps,
        "ensemble": args.ensemble,
        "replicas": 1,
        "energy_drift_per_atom": float(e[-1] - e[0]),
        "max_energy_deviation_per_atom": float(np.max(np.abs(e - e[0]))),
        "mean_temperature_k": float(np.mean(temperatures)),
        "final_temperature_k": float(temperatures[-1]),
        "mean_pressure_gpa": None,
        "steps_per_second": args.steps / elapsed if elapsed > 0 else math.inf,
        "compile_time_s": compile_time,
        "compilations": calc.num_compilations,
    }


def run_relax(args: argparse.Namespace) -> dict[str, Any]:
    """`eqmlip relax MODEL STRUCTURE`: FIRE relaxation of the positions (and with `--cell`
    the cell) on the device."""
    import ase.io

    from .io import load_model
    from .md import relax

    _check_options(
        "relax",
        [
            ("--fmax", args.fmax, args.fmax > 0, "> 0 eV/Å"),
            ("--steps", args.steps, args.steps >= 1, ">= 1"),
            ("--pressure", args.pressure, True, "finite (GPa)"),
        ],
    )
    atoms = _read_md_structure(args, "relax")
    if args.cell and not all(atoms.pbc):
        raise _config_error(
            f"--cell needs a fully periodic cell; {args.structure} has pbc {atoms.pbc.tolist()}.",
            "relax",
        )
    start = time.perf_counter()
    result = relax(
        load_model(args.model),
        atoms,
        fmax=args.fmax,
        steps=args.steps,
        relax_cell=args.cell,
        pressure=args.pressure,
    )
    elapsed = time.perf_counter() - start
    if args.output:
        ase.io.write(args.output, result.atoms, format="extxyz")
    out = {
        "converged": result.converged,
        "steps": result.steps,
        "energy": result.energy,
        "fmax": result.fmax,
        "seconds": elapsed,
        "output": args.output,
    }
    if args.json:
        print(json.dumps(out))
    else:
        state = "converged" if result.converged else "NOT converged"
        print(
            f"relax: {state} after {result.steps} FIRE steps ({elapsed:.1f} s): energy "
            f"{result.energy:.6f} eV, largest force {result.fmax:.4f} eV/Å"
            + (f"; wrote {args.output}" if args.output else "")
        )
    return out


_TRAIN_HELP = """usage: eqmlip train [CONFIG.yaml] [--section.key=value ...]

Train a NequIP potential. With no arguments, trains the embedded default (a generated EMT Cu-Au
dataset) and saves runs/default/model.eqx. A YAML config has the sections data, model, train
and the keys output_dir, resume; overrides use dotted keys (--train.epochs=5,
--model.target_irreps='16x0e+8x1o', --data.train=data.xyz), values parsed as YAML.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqmlip", description="eqmlip: train and use potentials.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "train", help="train a potential (see `eqmlip train --help`)", add_help=False
    )
    ev = commands.add_parser("evaluate", help="metrics of a model on a data file")
    ev.add_argument("model", help="model file (.eqx) written by eqmlip train")
    ev.add_argument("data", help="extxyz (or any ASE-readable) file with targets")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    ev.add_argument("--energy-key", default=None)
    ev.add_argument("--forces-key", default=None)
    ev.add_argument("--stress-key", default=None)
    md = commands.add_parser("md", help="molecular dynamics (jitted engine, or ASE)")
    md.add_argument("model", help="model file (.eqx)")
    md.add_argument("structure", help="ASE-readable structure file")
    md.add_argument("--index", default=-1, type=int, help="frame of the structure file")
    md.add_argument("--engine", choices=("jax", "ase"), default="jax")
    md.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default="nve")
    md.add_argument(
        "--thermostat", choices=("nve", "langevin"), default=None, help=argparse.SUPPRESS
    )
    md.add_argument("--steps", type=int, default=100)
    md.add_argument("--timestep", type=float, default=2.0, help="fs")
    md.add_argument("--temperature", type=float, default=300.0, help="initial / bath K")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    md.add_argument("--pressure", type=float, default=0.0, help="npt target (GPa)")
    md.add_argument("--replicas", type=int, default=1, help="independent copies (seeds)")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--trajectory", default=None, help="extxyz file of frames")
    md.add_argument("--every", type=int, default=10, help="steps between trajectory frames")
    md.add_argument("--progress", action="store_true", help="progress bar (jax engine)")
    md.add_argument("--json", action="store_true")
    rx = commands.add_parser("relax", help="FIRE relaxation of positions (and cell) on the device")
    rx.add_argument("model", help="model file (.eqx)")
    rx.add_argument("structure", help="ASE-readable structure file")
    rx.add_argument("--index", default=-1, type=int, help="frame of the structure file")
    rx.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    rx.add_argument("--steps", type=int, default=1000)
    rx.add_argument("--cell", action="store_true", help="relax the cell too (periodic)")
    rx.add_argument("--pressure", type=float, default=0.0, help="target with --cell (GPa)")
    rx.add_argument("--output", default=None, help="write the relaxed structure (extxyz)")
    rx.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `eqmlip` command (also `python -m eqmlip`).

    Run as the command (`argv` None), it first re-executes itself with glibc malloc tunables
    that keep XLA:CPU's scratch pages between calls (faster, same numbers; opt out with
    `EQMLIP_MALLOC=default`). Called from Python with `argv`, it runs in the calling process.

    **Returns:** the exit status (0 on success; 2 for a bad command line or config).
    """
    if argv is None:  # the command itself, not a call from Python: tune the allocator first
        try:
            reexec_with_tuned_malloc(["-m", "eqmlip", *sys.argv[1:]])
        except InputError as error:
            print(f"error: eqmlip: {error}", file=sys.stderr)
            return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        rest = argv[1:]
        if "-h" in rest or "--help" in rest:
            print(_TRAIN_HELP)
            print("valid keys:")
            for section, keys in valid_keys().items():
                print(f"  {section}: {', '.join(keys)}" if keys else f"  {section}")
            return 0
        path = rest[0] if rest and not rest[0].startswith("--") else None
        config: Mapping[str, Any] = default_config()
        try:
            config = load_config(path, rest[1:] if path is not None else rest)
            run_train(config)
        except InputError as error:
            _print_error(error, "train")
            return 2
        except KeyboardInterrupt:
            checkpoint = os.path.join(str(config["output_dir"]), "checkpoint.eqx")
            command = " ".join(["eqmlip", *argv, "--resume=true"])
            print(
                f"\ninterrupted: the checkpoint is {checkpoint}; resume with: {command}",
                file=sys.stderr,
            )
            return 130
        return 0
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            run_evaluate(args)
        elif args.command == "md":
            run_md(args)
        elif args.command == "relax":
            run_relax(args)
    except InputError as error:
        _print_error(error, args.command)
        return 2
    return 0


def _print_error(error: InputError, command: str) -> None:
    """One line on stderr, starting with the command, for a user error."""
    message = " ".join(str(error).split())  # one line, whatever the message's layout
    prefix = f"eqmlip {command}: "
    print(f"error: {message if message.startswith(prefix) else prefix + message}", file=sys.stderr)
