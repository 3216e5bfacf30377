"""`TrainConfig`: the hyperparameters of a training run."""

import dataclasses
import math
from typing import Any, Literal

_OPTIMIZERS = ("amsgrad", "adam")
_SCHEDULES = ("cosine", "exponential", "constant")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of [`eqmlip.training.train`][]. Frozen and hashable; invalid values raise
    a `ValueError` (a `TypeError` for wrong kinds) naming the field.

    **Loss** (see [`eqmlip.training.Loss`][]):

    - `energy_weight`, `forces_weight`, `stress_weight`: weights of the mean squared errors of
        the energy (per atom when `per_atom_energy`), the force components and the stress
        components.
    - `per_atom_energy`: compare energies divided by the number of atoms.
    - `head_weights`: one weight per readout head (`dataset_idx`), multiplying the structure
        weights; `None` weighs every head 1.

    **Optimizer:** `optax.chain(clip_by_global_norm(grad_clip), amsgrad or adam,
    add_decayed_weights(weight_decay), scale by -schedule)`, the schedule a linear warmup from
    `learning_rate * warmup_init_factor` to `learning_rate` over `warmup_steps`, then a decay
    to `learning_rate * final_lr_factor` at the last step (`"cosine"`, `"exponential"`) or
    none (`"constant"`).

    - `optimizer`: `"amsgrad"` (default) or `"adam"`.
    - `learning_rate`, `warmup_steps`, `warmup_init_factor`, `schedule`, `final_lr_factor`.
    - `beta1`, `beta2`, `eps`: the moment decays and the denominator epsilon.
    - `grad_clip`: maximum global gradient norm (`None`: no clipping).
    - `weight_decay`: decoupled weight decay (0: none).

    **Loop:**

    - `epochs`: maximum number of passes over the training set.
    - `batch_size`: structures per batch; `num_buckets`: padded shapes per loader (each
        compiles once).
    - `ema_decay`: decay of the exponential moving average of the parameters, used for
        evaluation and saved as the final model (`0` disables it); the effective decay is
        `min(ema_decay, (1 + step) / (10 + step))`, so early averages are not dominated by
        the initial parameters.
    - `eval_every`: evaluate on the validation set every this many epochs (and after the
        last).
    - `patience`: stop after this many evaluations without a better validation loss (`None`:
        never stop early).
    - `seed`: seed of the batch shuffling (the model's initial key is the caller's).
    - `log_dir`: directory of the logs (`log.csv`, `log.jsonl`), the checkpoint
        (`checkpoint.eqx`) and the best model (`best_model.eqx`); `None` writes nothing.
    - `checkpoint_every`: also write the checkpoint every this many steps (`None`: at the end
        of each epoch only).
    - `quiet`: no progress bar and no printed summary lines.
    - `progress_every`: when stderr is not a terminal (a log file, a batch job), print a
        progress line every this many steps, instead of the progress bar. Either way a line
        says when a training step starts and ends compiling (once per batch shape).

    **Devices:**

    - `num_devices`: local devices to train on, data-parallel (one padded batch per device
        per step; see [`eqmlip.training.data_parallel_step`][]): `1` (default), a larger
        int, or `-1` / `"all"` for every local device. In a multi-host run
        ([`eqmlip.training.distributed`][]) it counts each process's devices. A step then
        takes `num_devices` batches, so `batch_size` is per device.
    """

    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 1.0
    per_atom_energy: bool = True
    head_weights: tuple[float, ...] | None = None

    optimizer: Literal["amsgrad", "adam"] = "amsgrad"
    learning_rate: float = 5e-3
    warmup_steps: int = 50
    warmup_init_factor: float = 0.01
    schedule: Literal["cosine", "exponential", "constant"] = "cosine"
    final_lr_factor: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 10.0
    weight_decay: float = 0.0

    epochs: int = 100
    batch_size: int = 8
    num_buckets: int = 4
    ema_decay: float = 0.99
    eval_every: int = 1
    patience: int | None = 20
    seed: int = 0
    log_dir: str | None = None
    checkpoint_every: int | None = None
    quiet: bool = False
    progress_every: int = 50
    num_devices: int | str = 1

    def __post_init__(self):
        set_ = object.__setattr__
        for name in (
            "energy_weight",
            "forces_weight",
            "stress_weight",
            "learning_rate",
            "warmup_init_factor",
            "final_lr_factor",
            "beta1",
            "beta2",
            "eps",
            "weight_decay",
            "ema_decay",
        ):
            value = getattr(self, name)
            if not _is_real(value):
                raise TypeError(f"TrainConfig: {name} must be a number, got {value!r}.")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainConfig: {name} must be finite and >= 0, got {value}.")
            set_(self, name, float(value))
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig: learning_rate must be > 0, got {self.learning_rate}.")
        for name in ("beta1", "beta2", "ema_decay"):
            if not getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be < 1, got {getattr(self, name)}.")
        if self.grad_clip is not None:
            if not _is_real(self.grad_clip) or not self.grad_clip > 0:
                raise ValueError(
                    f"TrainConfig: grad_clip must be a number > 0 or None, got {self.grad_clip!r}."
                )
            set_(self, "grad_clip", float(self.grad_clip))
        if self.energy_weight == self.forces_weight == self.stress_weight == 0:
            raise ValueError(
                "TrainConfig: energy_weight, forces_weight and stress_weight are all 0."
            )
        if self.head_weights is not None:
            try:
                weights = tuple(float(w) for w in self.head_weights)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"TrainConfig: head_weights must be a sequence of numbers or None, got "
                    f"{self.head_weights!r}."
                ) from error
            if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
                raise ValueError(
                    f"TrainConfig: head_weights must be non-empty, finite and >= 0, got {weights}."
                )
            set_(self, "head_weights", weights)
        for name in ("per_atom_energy", "quiet"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainConfig: {name} must be a bool, got {getattr(self, name)!r}.")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"TrainConfig: optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}."
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"TrainConfig: schedule must be one of {_SCHEDULES}, got {self.schedule!r}."
            )
        for name, minimum in (
            ("warmup_steps", 0),
            ("epochs", 1),
            ("batch_size", 1),
            ("num_buckets", 1),
            ("eval_every", 1),
            ("seed", 0),
            ("progress_every", 1),
        ):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"TrainConfig: {name} must be an int, got {value!r}.")
            if value < minimum:
                raise ValueError(f"TrainConfig: {name} must be >= {minimum}, got {value}.")
        for name in ("patience", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"TrainConfig: {name} must be an int >= 1 or None, got {value!r}.")
        devices = self.num_devices
        if devices != "all" and not (_is_int(devices) and (devices == -1 or int(devices) >= 1)):
            raise ValueError(
                "TrainConfig: num_devices must be an int >= 1, -1 or 'all', got "
                f"{self.num_devices!r}."
            )
        if self.log_dir is not None and not isinstance(self.log_dir, str):
            raise TypeError(f"TrainConfig: log_dir must be a string or None, got {self.log_dir!r}.")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)
