"""`DataConfig` and the datasets of a training run: read, generated and split."""

import dataclasses
import math
from typing import Any

from .._errors import InputError
from ._generated import emt_alloy_dataset
from ._statistics import split
from ._structure import Structure, read_structures


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the structures of a training run come from (the `data` section of a run
    configuration, [`eqmlip.training.RunConfig`][]).

    - `train`, `valid`, `test`: data files (extxyz or anything `ase.io.read` reads). With no
        `train` file, the embedded default dataset is generated (see
        [`eqmlip.data.emt_alloy_dataset`][]). Missing `valid`/`test` sets are split off the
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

    def __post_init__(self):
        for name in ("train", "valid", "test", "energy_key", "forces_key", "stress_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"DataConfig: {name} must be a string or None, got {value!r}.")
        try:
            fractions = tuple(float(f) for f in self.split)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"DataConfig: split must be three numbers, got {self.split!r}."
            ) from error
        if len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions):
            raise ValueError(
                f"DataConfig: split must be three finite fractions >= 0, got {self.split!r}."
            )
        object.__setattr__(self, "split", fractions)
        for name, minimum in (("split_seed", 0), ("num_generated", 1), ("generated_seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ValueError(f"DataConfig: {name} must be an int >= {minimum}, got {value!r}.")

    def read(self, path: str) -> list[Structure]:
        """The structures of one file, with this config's target names."""
        # Forward only the names the user set: a set name must then exist in every frame.
        keys = {
            name: getattr(self, name)
            for name in ("energy_key", "forces_key", "stress_key")
            if getattr(self, name) is not None
        }
        return read_structures(path, **keys)


def load_datasets(
    config: DataConfig,
) -> tuple[list[Structure], list[Structure], list[Structure]]:
    """The training, validation and test structures a [`eqmlip.data.DataConfig`][] describes.

    Files given for `valid` or `test` are read; the sets not given are split off the training
    data (read, or generated when `train` is `None`) by `config.split`, renormalised over the
    sets that are split.

    **Returns:** `(train, valid, test)` lists of [`eqmlip.data.Structure`][]; `valid` and `test`
    may be empty, `train` never is.
    """
    if not isinstance(config, DataConfig):
        raise TypeError(f"load_datasets: expected a DataConfig, got {type(config).__name__}.")

    def read(key: str, path: str) -> list[Structure]:
        try:
            return config.read(path)
        except InputError as error:  # name the config key too: the same file may serve two
            raise InputError(f"data.{key}: {error}") from None

    if config.train is None:
        structures = emt_alloy_dataset(config.num_generated, seed=config.generated_seed)
    else:
        structures = read("train", config.train)
    given_valid = read("valid", config.valid) if config.valid else None
    given_test = read("test", config.test) if config.test else None
    fractions = list(config.split)
    if given_valid is not None:
        fractions[1] = 0.0
    if given_test is not None:
        fractions[2] = 0.0
    total = sum(fractions)
    if total <= 0:
        raise ValueError(f"load_datasets: data.split {config.split} leaves no training data.")
    train_set, valid_set, test_set = split(
        structures, [f / total for f in fractions], seed=config.split_seed
    )
    valid_set = given_valid if given_valid is not None else valid_set
    test_set = given_test if given_test is not None else test_set
    if not train_set:
        raise ValueError(
            f"load_datasets: the training set is empty ({len(structures)} structures, split "
            f"{config.split})."
        )
    return list(train_set), list(valid_set), list(test_set)
