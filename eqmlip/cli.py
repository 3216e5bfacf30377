"""The `eqmlip` command: `train`, `evaluate` and `md`.

```bash
eqmlip train                        # the embedded default: EMT Cu-Au data, a small NequIP
eqmlip train run.yaml --train.epochs=50 --model.l_max=2
eqmlip evaluate runs/default/model.eqx test.xyz --json
eqmlip md runs/default/model.eqx structure.xyz --steps 200
```
"""

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that `1e-3` is a float (PyYAML wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


# Sections of a training config and the keys each accepts beside the dataclass fields.
_MODEL_EXTRA = {
    "cutoff": 4.5,
    "seed": 0,
    "dtype": "float32",
    "energy_scale": "auto",
}
# The embedded default's model: small enough to train in a few minutes on 2 CPU cores.
_MODEL_DEFAULTS = {
    "num_layers": 2,
    "target_irreps": "32x0e + 16x1o + 8x2e",
    "l_max": 2,
    "num_rbf": 8,
    "radial_mlp_hidden": [32],
}
_TRAIN_DEFAULTS = {
    "epochs": 20,
    "batch_size": 4,
    "num_buckets": 1,
    "learning_rate": 1e-2,
    "warmup_steps": 50,
    # Per-atom energy and stress errors are ~100x smaller than force errors (eV/atom and
    # eV/Å³ against eV/Å), hence the larger weights.
    "energy_weight": 100.0,
    "forces_weight": 10.0,
    "stress_weight": 100.0,
    "patience": 10,
    "log_dir": None,
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The `data` section of a training config.

    - `train`, `valid`, `test`: data files (extxyz or anything `ase.io.read` reads). With no
        `train` file, the embedded default dataset is generated (see
        [`eqmlip.training.emt_alloy_dataset`][]). Missing `valid`/`test` sets are split off the
        training data by `split`.
    - `split`: train/validation/test fractions for the sets not given as files.
    - `split_seed`: seed of that split.
    - `energy_key`, `forces_key`, `stress_key`: target names in the files; `None` uses ASE's
        standard names, where a structure may lack a target. A name that is set must be
        present in every frame.
    - `num_generated`, `generated_seed`: size and seed of the embedded default dataset.
    """

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    num_generated: int = 200
    generated_seed: int = 0


def _nequip_fields() -> tuple[str, ...]:
    from .models.nequip import NequipConfig

    return tuple(f.name for f in dataclasses.fields(NequipConfig))


def _train_fields() -> tuple[str, ...]:
    from .training import TrainConfig

    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def valid_keys() -> dict[str, tuple[str, ...]]:
    """The keys of each section of a training config (`None` for top-level scalars)."""
    return {
        "data": tuple(f.name for f in dataclasses.fields(DataConfig)),
        "model": (*_MODEL_EXTRA, *_nequip_fields()),
        "train": _train_fields(),
        "output_dir": (),
        "resume": (),
    }


def default_config() -> dict[str, Any]:
    """The embedded default training config, as nested dicts (what `eqmlip train` runs with no
    arguments)."""
    data = dataclasses.asdict(DataConfig())
    data["split"] = list(data["split"])
    return {
        "output_dir": os.path.join("runs", "default"),
        "resume": False,
        "data": data,
        "model": {**_MODEL_EXTRA, **_MODEL_DEFAULTS},
        "train": dict(_TRAIN_DEFAULTS),
    }


class ConfigError(ValueError):
    """A training config with an unknown key or a bad value."""


def _check_keys(config: Mapping[str, Any], where: str) -> None:
    keys = valid_keys()
    for section, value in config.items():
        if section not in keys:
            raise ConfigError(
                f"eqmlip train: unknown key {section!r} in {where}; valid top-level keys are "
                f"{sorted(keys)}."
            )
        if keys[section]:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"eqmlip train: {section!r} in {where} must be a mapping of "
                    f"{list(keys[section])}, got {value!r}."
                )
            for key in value:
                if key not in keys[section]:
                    raise ConfigError(
                        f"eqmlip train: unknown key {section}.{key} in {where}; valid keys of "
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
            raise ConfigError(
                f"eqmlip train: expected an override --key=value, got {arg!r} (only one config "
                "file may be given, first)."
            )
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, text = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"eqmlip train: the override {arg!r} has no value (--key=value).")
        i += 1
        try:
            value = _yaml(text)
        except yaml.YAMLError as error:
            raise ConfigError(
                f"eqmlip train: cannot parse the value {text!r} of --{key}: {error}"
            ) from error
        parts = key.split(".")
        keys = valid_keys()
        if parts[0] not in keys:
            raise ConfigError(
                f"eqmlip train: unknown key {key!r}; valid top-level keys are {sorted(keys)}."
            )
        if keys[parts[0]] and len(parts) != 2:
            raise ConfigError(
                f"eqmlip train: {key!r} must name a key of the {parts[0]!r} section, e.g. "
                f"--{parts[0]}.{keys[parts[0]][0]}=...; valid keys are {sorted(keys[parts[0]])}."
            )
        if not keys[parts[0]] and len(parts) != 1:
            raise ConfigError(f"eqmlip train: {parts[0]!r} has no sub-keys, got --{key}.")
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
            raise ConfigError(
                f"eqmlip train: {path!r} must hold a mapping of sections, got "
                f"{type(loaded).__name__}."
            )
        _check_keys(loaded, repr(path))
        layers.append((loaded, repr(path)))
    layers.append((parse_overrides(overrides), "overrides"))
    for layer, _ in layers:
        for section, value in layer.items():
            if isinstance(value, Mapping):
                config[section].update(value)
            else:
                config[section] = value
    return config


def _tuple_lists(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _build_sections(config: Mapping[str, Any]) -> tuple[DataConfig, dict[str, Any], Any]:
    from .training import TrainConfig

    try:
        data = DataConfig(**{k: _tuple_lists(v) for k, v in config["data"].items()})
        train_fields = {k: _tuple_lists(v) for k, v in config["train"].items()}
        if train_fields.get("log_dir") is None:
            train_fields["log_dir"] = str(config["output_dir"])
        train = TrainConfig(**train_fields)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"eqmlip train: invalid config: {error}") from error
    return data, dict(config["model"]), train


def _print_metrics(title: str, metrics: Mapping[str, Any]) -> None:
    units = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}
    print(title)
    for kind, unit in units.items():
        mae, rmse = metrics.get(f"{kind}_mae"), metrics.get(f"{kind}_rmse")
        if mae is None:
            print(f"  {kind:7s} (no targets)")
        else:
            print(f"  {kind:7s} MAE {mae:.5f}  RMSE {rmse:.5f}  {unit}")


def _read(path: str, data: DataConfig) -> list:
    from .data import read_structures

    # Forward only the key names the user set: a set name must then exist in every frame.
    keys = {
        name: getattr(data, name)
        for name in ("energy_key", "forces_key", "stress_key")
        if getattr(data, name) is not None
    }
    return read_structures(path, **keys)


def run_train(config: Mapping[str, Any]) -> dict[str, Any]:
    """Run `eqmlip train` with a resolved config (see [`eqmlip.cli.load_config`][]).

    **Returns:** `{"model_path", "test_metrics", "force_std", "statistics", "wall_time_s"}`.
    """
    import jax
    import jax.random as jr

    from .data import split, statistics
    from .io import save_model
    from .models.nequip import Nequip, NequipConfig
    from .training import emt_alloy_dataset, evaluate, loss_from_config, train

    start = time.perf_counter()
    data, model_section, train_config = _build_sections(config)
    output_dir = str(config["output_dir"])
    os.makedirs(output_dir, exist_ok=True)
    cutoff = float(model_section["cutoff"])

    if data.train is None:
        print(
            f"eqmlip train: generating the embedded default dataset ({data.num_generated} Cu-Au "
            "fcc alloy cells of 32 atoms, EMT Langevin snapshots at 300-1500 K)...",
            flush=True,
        )
        structures = emt_alloy_dataset(data.num_generated, seed=data.generated_seed)
    else:
        structures = _read(data.train, data)
    given_valid = _read(data.valid, data) if data.valid else None
    given_test = _read(data.test, data) if data.test else None
    fractions = list(data.split)
    if given_valid is not None:
        fractions[1] = 0.0
    if given_test is not None:
        fractions[2] = 0.0
    total = sum(fractions)
    if total <= 0:
        raise ConfigError(f"eqmlip train: data.split {data.split} leaves no training data.")
    train_set, valid_set, test_set = split(
        structures, [f / total for f in fractions], seed=data.split_seed
    )
    valid_set = given_valid if given_valid is not None else valid_set
    test_set = given_test if given_test is not None else test_set
    if not train_set:
        raise ConfigError("eqmlip train: the training set is empty.")

    stats = statistics(train_set, cutoff=cutoff)
    print(
        f"data: {len(train_set)} train / {len(valid_set)} valid / {len(test_set)} test "
        f"structures; species {list(stats.species)}; {stats.avg_num_neighbors:.2f} neighbours "
        f"per atom within {cutoff} Å; force std {_num(stats.force_std)} eV/Å; energy/atom std "
        f"{_num(stats.energy_per_atom_std)} eV/atom",
        flush=True,
    )

    extra = set(_MODEL_EXTRA)
    try:
        nequip_config = NequipConfig(
            **{k: _tuple_lists(v) for k, v in model_section.items() if k not in extra}
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"eqmlip train: invalid model section: {error}") from error
    scale = model_section["energy_scale"]
    if scale == "auto":  # the force RMS (mlip's default scaling), else the energy spread
        scale = stats.force_rms or stats.energy_per_atom_std
        if not scale:
            raise ConfigError(
                "eqmlip train: model.energy_scale 'auto' needs forces or energies in the data; "
                "set model.energy_scale to a number."
            )
    dtype = model_section["dtype"]
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    elif dtype != "float32":
        raise ConfigError(f"eqmlip train: model.dtype must be float32 or float64, got {dtype!r}.")
    model = Nequip(
        nequip_config,
        stats.species,
        cutoff=cutoff,
        avg_num_neighbors=stats.avg_num_neighbors,
        atomic_energies=stats.atomic_energies,
        energy_scale=float(scale),
        dtype=dtype,
        key=jr.key(int(model_section["seed"])),
    )
    num_params = sum(x.size for x in jax.tree.leaves(model) if hasattr(x, "size"))
    print(f"model: NequIP {nequip_config.target_irreps}, {num_params} parameters", flush=True)

    loaders = _loaders(train_set, valid_set, test_set, cutoff, train_config)
    result = train(
        model,
        loaders[0],
        loaders[1],
        train_config,
        resume=bool(config["resume"]),
    )
    loss = loss_from_config(train_config)
    test_metrics = evaluate(result.model, loaders[2], loss=loss) if loaders[2] else None
    if test_metrics is not None:
        _print_metrics(f"test metrics ({len(test_set)} structures, EMA model):", test_metrics)
    print(
        f"data force std {_num(stats.force_std)} eV/Å, energy/atom std "
        f"{_num(stats.energy_per_atom_std)} eV/atom"
    )
    model_path = os.path.join(output_dir, "model.eqx")
    summary = {
        "test_metrics": test_metrics,
        "force_std": stats.force_std,
        "energy_per_atom_std": stats.energy_per_atom_std,
        "best_epoch": result.progress.best_epoch,
        "epochs": result.progress.epoch,
        "steps": result.progress.step,
    }
    save_model(model_path, result.model, metadata=summary)
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(json.loads(json.dumps(config)), f, sort_keys=False)
    wall = time.perf_counter() - start
    summary["wall_time_s"] = wall
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"saved {model_path} ({wall:.0f} s)")
    return {"model_path": model_path, **summary}


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _loaders(train_set, valid_set, test_set, cutoff, config) -> list:
    """Loaders sharing node/edge limits, so that with one bucket every loader pads to the same
    shape and the evaluation compiles once for all of them."""
    from .data import GraphLoader, structure_graph

    sets = [train_set, valid_set, test_set]
    graphs = [[structure_graph(s, cutoff) for s in part] for part in sets]
    k = config.batch_size
    max_nodes = max(sum(sorted(g.num_nodes for g in part)[-k:]) for part in graphs if part)
    max_edges = max(sum(sorted(g.num_edges for g in part)[-k:]) for part in graphs if part)
    out = []
    for i, (part, part_graphs) in enumerate(zip(sets, graphs, strict=True)):
        if not part:
            out.append(None)
            continue
        out.append(
            GraphLoader(
                part,
                cutoff,
                batch_size=k,
                shuffle=i == 0,
                seed=config.seed,
                num_buckets=config.num_buckets,
                max_nodes=max_nodes,
                max_edges=max_edges,
                graphs=part_graphs,
            )
        )
    return out


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """`eqmlip evaluate MODEL DATA`: metrics of a model file on a data file."""
    from .data import GraphLoader
    from .io import load_model
    from .training import evaluate

    model = load_model(args.model)
    data = DataConfig(
        energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key
    )
    structures = _read(args.data, data)
    loader = GraphLoader(
        structures, model.cutoff, batch_size=args.batch_size, shuffle=False, num_buckets=2
    )
    metrics = evaluate(model, loader)
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(f"{args.data}: {metrics['num_structures']} structures", metrics)
    return metrics


def run_md(args: argparse.Namespace) -> dict[str, Any]:
    """`eqmlip md MODEL STRUCTURE`: a short MD run with the model as the ASE calculator."""
    import ase.io
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from .calculator import EqmlipCalculator

    atoms = ase.io.read(args.structure, index=args.index)
    if isinstance(atoms, list):
        raise ConfigError(f"eqmlip md: --index must select one frame, got {args.index!r}.")
    calc = EqmlipCalculator(args.model)
    atoms.calc = calc
    rng = np.random.default_rng(args.seed)
    masses = atoms.get_masses()[:, None]
    momenta = np.sqrt(masses * units.kB * args.temperature) * rng.standard_normal((len(atoms), 3))
    atoms.set_momenta(momenta - momenta.sum(axis=0) / len(atoms))
    if args.thermostat == "langevin":
        dynamics = Langevin(
            atoms,
            args.timestep * units.fs,
            temperature_K=args.temperature,
            friction=args.friction,
            fixcm=False,
            rng=rng,
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
        dynamics.attach(lambda: ase.io.write(writer, atoms, format="extxyz"), interval=10)
    start = time.perf_counter()
    try:
        dynamics.run(args.steps)
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - start
    e = np.array(energies)
    out = {
        "steps": args.steps,
        "thermostat": args.thermostat,
        "energy_drift_per_atom": float(e[-1] - e[0]) / len(atoms),
        "max_energy_deviation_per_atom": float(np.max(np.abs(e - e[0]))) / len(atoms),
        "mean_temperature_k": float(np.mean(temperatures)),
        "final_temperature_k": float(temperatures[-1]),
        "steps_per_second": args.steps / elapsed if elapsed > 0 else math.inf,
        "compilations": calc.num_compilations,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"md: {args.steps} steps of {args.timestep} fs ({args.thermostat}) on "
            f"{len(atoms)} atoms, {out['steps_per_second']:.1f} steps/s, "
            f"{out['compilations']} compilation(s)\n"
            f"  total energy drift {out['energy_drift_per_atom']:.3e} eV/atom "
            f"(max deviation {out['max_energy_deviation_per_atom']:.3e} eV/atom)\n"
            f"  temperature mean {out['mean_temperature_k']:.1f} K, final "
            f"{out['final_temperature_k']:.1f} K"
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
    md = commands.add_parser("md", help="short MD with the model as the ASE calculator")
    md.add_argument("model", help="model file (.eqx)")
    md.add_argument("structure", help="ASE-readable structure file")
    md.add_argument("--index", default=-1, type=int, help="frame of the structure file")
    md.add_argument("--steps", type=int, default=100)
    md.add_argument("--timestep", type=float, default=2.0, help="fs")
    md.add_argument("--temperature", type=float, default=300.0, help="initial / bath K")
    md.add_argument("--thermostat", choices=("nve", "langevin"), default="nve")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--trajectory", default=None, help="write every 10th frame (extxyz)")
    md.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `eqmlip` command (also `python -m eqmlip`).

    **Returns:** the exit status (0 on success; 2 for a bad command line or config).
    """
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
        try:
            config = load_config(path, rest[1:] if path is not None else rest)
            run_train(config)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    args = _parser().parse_args(argv)
    if args.command == "evaluate":
        run_evaluate(args)
    elif args.command == "md":
        run_md(args)
    return 0
