"""A whole training run as one library call: the typed run configuration (`data`, `model`,
`train`) and [`eqmlip.training.run`][], which `eqmlip train` only parses its command line for."""

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.random as jr

from .._errors import ConfigError as ConfigError
from ..data import (
    DataConfig,
    DatasetStatistics,
    GraphLoader,
    Structure,
    check_known_species,
    load_datasets,
    statistics,
    structure_graph,
)
from ..io import save_model
from ..models._potential import AbstractPotential, potential_class, potential_name
from ._config import TrainConfig
from ._loop import evaluate, train
from ._step import loss_from_config

# The keys of the `model` section that every potential shares; the rest are the fields of the
# potential's `config_class`.
_MODEL_KEYS = ("name", "cutoff", "seed", "dtype", "energy_scale")

# The embedded default: small enough to train in a few minutes on 2 CPU cores.
_DEFAULT_MODEL = {
    "name": "nequip",
    "cutoff": 4.5,
    "seed": 0,
    "dtype": "float32",
    "energy_scale": "auto",
    "num_layers": 2,
    "target_irreps": "32x0e + 16x1o + 8x2e",
    "l_max": 2,
    "num_rbf": 8,
    "radial_mlp_hidden": [32],
}
_DEFAULT_TRAIN = {
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
}


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


def _tuple_lists(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _fields(cls: type | None) -> tuple[str, ...]:
    return () if cls is None else tuple(f.name for f in dataclasses.fields(cls))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The `model` section of a run configuration: which registered potential to build, and
    how.

    - `name`: the registry name of the potential ([`eqmlip.models.register_potential`][]),
        e.g. `"nequip"`.
    - `cutoff`: the graph cutoff (Å).
    - `seed`: the seed of the initial parameters.
    - `dtype`: `"float32"` or `"float64"` (which switches on `jax_enable_x64`).
    - `energy_scale`: the scale of the per-atom energies, or `"auto"`: the training set's
        force RMS (mlip's default scaling), else its energy-per-atom spread.
    - `options`: an instance of the potential's `config_class` (e.g.
        [`eqmlip.models.nequip.NequipConfig`][]); `None` for its defaults. In YAML its fields
        sit in the `model` section beside the keys above.
    """

    name: str = "nequip"
    cutoff: float = 4.5
    seed: int = 0
    dtype: str = "float32"
    energy_scale: float | str = "auto"
    options: Any = None

    def __post_init__(self):
        cls = potential_class(self.name)
        if isinstance(self.cutoff, bool) or not isinstance(self.cutoff, int | float):
            raise TypeError(f"ModelConfig: cutoff must be a number, got {self.cutoff!r}.")
        if not (math.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"ModelConfig: cutoff must be positive and finite, got {self.cutoff}.")
        object.__setattr__(self, "cutoff", float(self.cutoff))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ModelConfig: seed must be an int >= 0, got {self.seed!r}.")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"ModelConfig: dtype must be float32 or float64, got {self.dtype!r}.")
        scale = self.energy_scale
        if scale != "auto" and (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not (math.isfinite(scale) and scale > 0)
        ):
            raise ValueError(
                f"ModelConfig: energy_scale must be 'auto' or a positive number, got {scale!r}."
            )
        if self.options is None and cls.config_class is not None:
            object.__setattr__(self, "options", cls.config_class())
        if cls.config_class is not None and not isinstance(self.options, cls.config_class):
            raise TypeError(
                f"ModelConfig: options of a {self.name!r} model must be a "
                f"{cls.config_class.__name__}, got {type(self.options).__name__}."
            )

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> "ModelConfig":
        """From the flat `model` section: the shared keys, and the potential's options."""
        values = dict(section)
        name = values.get("name", "nequip")
        try:
            potential = potential_class(name)
        except ValueError as error:
            raise ConfigError(f"model.name: {error}") from None
        option_keys = _fields(potential.config_class)
        unknown = sorted(k for k in values if k not in _MODEL_KEYS and k not in option_keys)
        if unknown:
            raise ConfigError(
                f"unknown key model.{unknown[0]}; valid keys of 'model' for a {name!r} model are "
                f"{sorted((*_MODEL_KEYS, *option_keys))}."
            )
        # The kinds of the shared keys, named as the user wrote them (model.cutoff, ...).
        for key, kinds, expected in (
            ("cutoff", (int, float), "a number (Å)"),
            ("seed", (int,), "an integer"),
            ("dtype", (str,), "float32 or float64"),
            ("energy_scale", (int, float, str), "'auto' or a positive number"),
        ):
            value = values.get(key)
            if key in values and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise ConfigError(f"model.{key} must be {expected}, got {value!r}.")
            if key in ("cutoff", "energy_scale") and isinstance(value, int):
                values[key] = float(value)  # YAML reads 5 as an int
        options = {k: _tuple_lists(values.pop(k)) for k in option_keys if k in values}
        try:
            built = potential.config_class(**options) if potential.config_class else None
            return cls(**values, options=built)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"invalid model section: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """The flat `model` section, every option included (JSON values)."""
        out = {k: getattr(self, k) for k in _MODEL_KEYS}
        if self.options is not None:
            out.update(
                {
                    f.name: _json_value(getattr(self.options, f.name))
                    for f in dataclasses.fields(self.options)
                }
            )
        return out


def _data_dict(config: DataConfig) -> dict[str, Any]:
    return _json_value(dataclasses.asdict(config))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything `eqmlip train` runs: data, model and training settings, and where the run
    goes. Build it from nested dicts (a parsed YAML file) with
    [`eqmlip.training.RunConfig.from_dict`][], which starts from the embedded default; write
    it back, fully resolved, with `to_dict`.

    - `data`: a [`eqmlip.data.DataConfig`][].
    - `model`: a [`eqmlip.training.ModelConfig`][].
    - `train`: a [`eqmlip.training.TrainConfig`][]; its `log_dir` is `output_dir` when unset.
    - `output_dir`: where the logs, checkpoints, `model.eqx`, `config.yaml` and
        `summary.json` go.
    - `resume`: continue from the checkpoint in `output_dir`.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    output_dir: str = os.path.join("runs", "default")
    resume: bool = False

    def __post_init__(self):
        for name, kind in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"RunConfig: {name} must be a {kind.__name__}, got "
                    f"{type(getattr(self, name)).__name__}."
                )
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise TypeError(f"RunConfig: output_dir must be a path, got {self.output_dir!r}.")
        if not isinstance(self.resume, bool):
            raise TypeError(f"RunConfig: resume must be true or false, got {self.resume!r}.")
        if self.train.log_dir is None:
            object.__setattr__(self, "train", self.train.replace(log_dir=self.output_dir))

    @staticmethod
    def default_dict() -> dict[str, Any]:
        """The embedded default as nested dicts (what `eqmlip train` runs with no arguments)."""
        return {
            "output_dir": os.path.join("runs", "default"),
            "resume": False,
            "data": _data_dict(DataConfig()),
            "model": dict(_DEFAULT_MODEL),
            "train": {**_DEFAULT_TRAIN, "log_dir": None},
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "RunConfig":
        """The embedded default updated by `config` (nested dicts: sections `data`, `model`,
        `train`, keys `output_dir`, `resume`). Unknown keys and bad values raise a
        [`eqmlip.training.ConfigError`][] naming the key."""
        merged = cls.default_dict()
        model = config.get("model")
        if isinstance(model, Mapping) and model.get("name", "nequip") != merged["model"]["name"]:
            # Another potential: the default's options are NequIP's, keep only the shared keys.
            merged["model"] = {k: v for k, v in merged["model"].items() if k in _MODEL_KEYS}
        for section, value in config.items():
            if section not in merged:
                raise ConfigError(
                    f"unknown key {section!r}; valid top-level keys are {sorted(merged)}."
                )
            if isinstance(merged[section], dict):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{section!r} must be a mapping of its keys, got {value!r}.")
                merged[section].update(value)
            else:
                merged[section] = value
        for section, kind in (("data", DataConfig), ("train", TrainConfig)):
            valid = _fields(kind)
            unknown = sorted(k for k in merged[section] if k not in valid)
            if unknown:
                raise ConfigError(
                    f"unknown key {section}.{unknown[0]}; valid keys of {section!r} are "
                    f"{sorted(valid)}."
                )
        model_config = ModelConfig.from_dict(merged["model"])
        try:
            data = DataConfig(**{k: _tuple_lists(v) for k, v in merged["data"].items()})
            train = TrainConfig(**{k: _tuple_lists(v) for k, v in merged["train"].items()})
            return cls(
                data=data,
                model=model_config,
                train=train,
                output_dir=merged["output_dir"],
                resume=merged["resume"],
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"invalid config: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """Nested dicts of JSON values with every field of every section: the run can be
        repeated from this alone."""
        return {
            "output_dir": self.output_dir,
            "resume": self.resume,
            "data": _data_dict(self.data),
            "model": self.model.to_dict(),
            "train": _json_value(dataclasses.asdict(self.train)),
        }


def valid_keys(model_name: str = "nequip") -> dict[str, tuple[str, ...]]:
    """The keys of each section of a run configuration (empty for top-level scalars), for a
    model section naming `model_name`."""
    return {
        "data": _fields(DataConfig),
        "model": (*_MODEL_KEYS, *_fields(potential_class(model_name).config_class)),
        "train": _fields(TrainConfig),
        "output_dir": (),
        "resume": (),
    }


def resolve_energy_scale(config: ModelConfig, stats: DatasetStatistics) -> ModelConfig:
    """`config` with `energy_scale: "auto"` replaced by the number it stands for: the training
    set's force RMS (mlip's default scaling), else its energy-per-atom spread."""
    if config.energy_scale != "auto":
        return config
    scale = stats.force_rms or stats.energy_per_atom_std
    if not scale:
        raise ConfigError(
            "model.energy_scale 'auto' needs forces or energies in the data; set "
            "model.energy_scale to a number."
        )
    return dataclasses.replace(config, energy_scale=float(scale))


def build_model(config: ModelConfig, stats: DatasetStatistics) -> AbstractPotential:
    """A new model for a dataset: the potential `config.name` names, built by its
    `from_statistics` with the config's options, cutoff, energy scale, dtype and seed."""
    scale = resolve_energy_scale(config, stats).energy_scale
    if config.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    return potential_class(config.name).from_statistics(
        config.options,
        stats,
        cutoff=config.cutoff,
        energy_scale=float(scale),
        dtype=config.dtype,
        key=jr.key(config.seed),
    )


def make_loaders(
    sets: Sequence[Sequence[Structure]], cutoff: float, config: TrainConfig
) -> list[GraphLoader | None]:
    """One loader per set (shuffled for the first, `None` for an empty set), sharing node and
    edge limits so that with one bucket every loader pads to the same shape and evaluation
    compiles once for all of them."""
    graphs = [[structure_graph(s, cutoff) for s in part] for part in sets]
    k = config.batch_size
    max_nodes = max(sum(sorted(g.num_nodes for g in part)[-k:]) for part in graphs if part)
    max_edges = max(sum(sorted(g.num_edges for g in part)[-k:]) for part in graphs if part)
    return [
        None
        if not part
        else GraphLoader(
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
        for i, (part, part_graphs) in enumerate(zip(sets, graphs, strict=True))
    ]


@dataclasses.dataclass
class RunResult:
    """What [`eqmlip.training.run`][] returns.

    - `model`: the trained model (EMA, best validation loss), also saved as `model_path`.
    - `model_path`: `output_dir/model.eqx`.
    - `test_metrics`: [`eqmlip.training.evaluate`][] on the test set, or `None` without one.
    - `statistics`: the training set's [`eqmlip.data.DatasetStatistics`][].
    - `summary`: what `summary.json` holds (metrics, data spreads, epochs, steps, wall time).
    """

    model: AbstractPotential
    model_path: str
    test_metrics: dict[str, Any] | None
    statistics: DatasetStatistics
    summary: dict[str, Any]


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def print_metrics(title: str, metrics: Mapping[str, Any]) -> None:
    """Print MAE and RMSE of energy, forces and stress, one line each, with units."""
    units = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}
    print(title)
    for kind, unit in units.items():
        mae, rmse = metrics.get(f"{kind}_mae"), metrics.get(f"{kind}_rmse")
        if mae is None:
            print(f"  {kind:7s} (no targets)")
        else:
            print(f"  {kind:7s} MAE {mae:.5f}  RMSE {rmse:.5f}  {unit}")


def run(config: RunConfig | None = None, *, model: AbstractPotential | None = None) -> RunResult:
    """Everything `eqmlip train` does, as one call: load (or generate) and split the data,
    compute its statistics, build the model, train it with [`eqmlip.training.train`][],
    evaluate it on the test set, and save `model.eqx`, the resolved `config.yaml` and
    `summary.json` in `config.output_dir`.

    **Arguments:**

    - `config`: a [`eqmlip.training.RunConfig`][] (`None`: the embedded default,
        `RunConfig.from_dict({})`).
    - `model`: train this potential instead of building `config.model` (any
        [`eqmlip.models.AbstractPotential`][], e.g. your own; its cutoff builds the graphs).

    **Returns:** a [`eqmlip.training.RunResult`][].
    """
    import yaml

    start = time.perf_counter()
    config = RunConfig.from_dict({}) if config is None else config
    if not isinstance(config, RunConfig):
        raise TypeError(f"run: config must be a RunConfig, got {type(config).__name__}.")
    if model is not None and not isinstance(model, AbstractPotential):
        raise TypeError(
            f"run: model must be an eqmlip.models.AbstractPotential, got {type(model).__name__}."
        )
    os.makedirs(config.output_dir, exist_ok=True)
    if config.data.train is None:
        print(
            f"generating the embedded default dataset ({config.data.num_generated} Cu-Au fcc "
            "alloy cells of 32 atoms, EMT Langevin snapshots at 300-1500 K)...",
            flush=True,
        )
    try:
        train_set, valid_set, test_set = load_datasets(config.data)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    cutoff = config.model.cutoff if model is None else float(model.cutoff)
    # Unknown elements are refused here, naming the file and frame, before anything compiles.
    sets = {"data.train": train_set, "data.valid": valid_set, "data.test": test_set}
    files = {"data.train": config.data.train, "data.valid": config.data.valid}
    files["data.test"] = config.data.test
    where = {k: f"{k} ({files[k] or 'split off data.train'})" for k in sets}
    item = {k: "frame" if files[k] else "structure" for k in sets}
    if model is not None:
        for key, structures in sets.items():
            check_known_species(
                structures, model.species, what=where[key], known="the model", item=item[key]
            )
    stats = statistics(train_set, cutoff=cutoff)
    print(
        f"data: {len(train_set)} train / {len(valid_set)} valid / {len(test_set)} test "
        f"structures; species {list(stats.species)}; {stats.avg_num_neighbors:.2f} neighbours "
        f"per atom within {cutoff} Å; force std {_num(stats.force_std)} eV/Å; energy/atom std "
        f"{_num(stats.energy_per_atom_std)} eV/atom",
        flush=True,
    )
    if model is None:  # the model will have the training data's species
        for key in ("data.valid", "data.test"):
            check_known_species(
                sets[key], stats.species, what=where[key], known="the training data", item=item[key]
            )
    user_model = model is not None
    if model is None:
        # The written config.yaml records the scale used, so the run repeats from it alone.
        config = dataclasses.replace(config, model=resolve_energy_scale(config.model, stats))
        model = build_model(config.model, stats)
    num_params = sum(x.size for x in jax.tree.leaves(model) if hasattr(x, "size"))
    print(f"model: {potential_name(model)}, {num_params} parameters", flush=True)

    loaders = make_loaders([train_set, valid_set, test_set], cutoff, config.train)
    train_loader = loaders[0]
    assert train_loader is not None
    result = train(model, train_loader, loaders[1], config.train, resume=config.resume)
    loss = loss_from_config(config.train)
    test_metrics = evaluate(result.model, loaders[2], loss=loss) if loaders[2] else None
    if test_metrics is not None:
        print_metrics(f"test metrics ({len(test_set)} structures, EMA model):", test_metrics)
    else:
        print(
            "test metrics: none, the test set is empty (data.test is unset and data.split "
            f"{list(config.data.split)} leaves it no structure)."
        )
    print(
        f"data force std {_num(stats.force_std)} eV/Å, energy/atom std "
        f"{_num(stats.energy_per_atom_std)} eV/atom"
    )
    model_path = os.path.join(config.output_dir, "model.eqx")
    summary: dict[str, Any] = {
        "test_metrics": test_metrics,
        "force_std": stats.force_std,
        "energy_per_atom_std": stats.energy_per_atom_std,
        "best_epoch": result.progress.best_epoch,
        "epochs": result.progress.epoch,
        "steps": result.progress.step,
    }
    save_model(model_path, result.model, metadata=summary)
    written = json.loads(json.dumps(config.to_dict()))
    with open(os.path.join(config.output_dir, "config.yaml"), "w") as f:
        if user_model:  # config.model was not used: do not let the file claim it was
            del written["model"]
            f.write(
                f"# model: not built from a config; a {potential_name(model)!r} potential was "
                "passed to eqmlip.training.run (its hyperparameters are in model.eqx's header).\n"
            )
        yaml.safe_dump(written, f, sort_keys=False)
    summary["wall_time_s"] = time.perf_counter() - start
    with open(os.path.join(config.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"saved {model_path} ({summary['wall_time_s']:.0f} s)")
    return RunResult(result.model, model_path, test_metrics, stats, summary)
