"""Masked, weighted losses and error sums on a padded [`eqmlip.data.Batch`][]."""

import dataclasses
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..data import Batch
from ..potential import Prediction, predict


def _safe_ratio(num: Array, den: Array) -> Array:
    """`num / den`, and 0 where `den` is 0 (no target of that kind in the batch)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _masks(batch: Batch) -> tuple[Array, Array, Array, Array]:
    """Per-graph energy/stress masks, per-node force mask, and atoms per graph (>= 1)."""
    graph = batch.graph
    real = graph.graph_mask
    node_graph = graph.node_graph_index()
    force_mask = batch.has_forces[node_graph] & graph.node_mask
    atoms = jnp.maximum(graph.n_node, 1)
    return (
        batch.has_energy & real,
        force_mask,
        batch.has_stress & real,
        atoms,
    )


def _cast_targets(batch: Batch, dtype: Any) -> tuple[Array, Array, Array, Array]:
    return (
        batch.energy.astype(dtype),
        batch.forces.astype(dtype),
        batch.stress.astype(dtype),
        batch.weight.astype(dtype),
    )


@dataclasses.dataclass(frozen=True)
class Loss:
    """Weighted mean squared errors of energies, forces and stresses over a padded batch.

    With structure weights `w_g` (times `head_weights[dataset_idx_g]`) and the masks of the
    batch (a structure without a target, and all padding, contributes nothing to that term):

    $$L = \\lambda_E \\frac{\\sum_g w_g m^E_g (\\hat E_g - E_g)^2 / n_g^2}{\\sum_g w_g m^E_g}
        + \\lambda_F \\frac{\\sum_i w_{g(i)} m^F_i |\\hat F_i - F_i|^2}{3 \\sum_i w_{g(i)} m^F_i}
        + \\lambda_S \\frac{\\sum_g w_g m^S_g |\\hat\\sigma_g - \\sigma_g|^2}{9 \\sum_g w_g m^S_g}$$

    (`n_g` is the number of atoms when `per_atom_energy`, else 1). A term whose denominator is
    0 (no such target in the batch) is 0. Hashable, so it can be a static argument of a jitted
    function.

    **Fields:** `energy_weight`, `forces_weight`, `stress_weight`, `per_atom_energy`,
    `head_weights` as in [`eqmlip.training.TrainConfig`][].
    """

    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 1.0
    per_atom_energy: bool = True
    head_weights: tuple[float, ...] | None = None

    @property
    def needs_stress(self) -> bool:
        return self.stress_weight != 0.0

    def structure_weights(self, batch: Batch, dtype: Any) -> Float[Array, " graphs"]:
        """The weight of each graph: its `weight` times its head's weight (0 on padding)."""
        weight = batch.weight.astype(dtype)
        if self.head_weights is None:
            return weight
        idx = batch.graph.dataset_idx
        n = len(self.head_weights)
        real = batch.graph.graph_mask
        idx = eqx.error_if(
            idx,
            real & ((idx < 0) | (idx >= n)),
            f"Loss: a structure has a dataset_idx outside 0..{n - 1}, the heads of head_weights.",
        )
        return weight * jnp.asarray(self.head_weights, dtype)[jnp.clip(idx, 0, n - 1)]

    def error_sums(self, prediction: Prediction, batch: Batch) -> dict[str, Float[Array, ""]]:
        """Numerators and denominators (`"energy_num"`, `"energy_den"`, ...) of the three
        mean squared errors of a prediction against the batch's targets."""
        dtype = prediction.energy.dtype
        energy, forces, stress, _ = _cast_targets(batch, dtype)
        has_e, has_f, has_s, atoms = _masks(batch)
        w = self.structure_weights(batch, dtype)
        de = prediction.energy - energy
        if self.per_atom_energy:
            de = de / atoms.astype(dtype)
        we = jnp.where(has_e, w, 0.0)
        assert prediction.forces is not None
        w_node = jnp.where(has_f, w[batch.graph.node_graph_index()], 0.0)
        df2 = jnp.sum((prediction.forces - forces) ** 2, axis=-1)
        out = {
            "energy_num": jnp.sum(we * de**2),
            "energy_den": jnp.sum(we),
            "forces_num": jnp.sum(w_node * df2),
            "forces_den": 3.0 * jnp.sum(w_node),
        }
        if prediction.stress is not None:
            ws = jnp.where(has_s, w, 0.0)
            ds2 = jnp.sum((prediction.stress - stress) ** 2, axis=(-1, -2))
            out["stress_num"] = jnp.sum(ws * ds2)
            out["stress_den"] = 9.0 * jnp.sum(ws)
        else:
            out["stress_num"] = out["stress_den"] = jnp.zeros((), dtype)
        return out

    @staticmethod
    def terms_of_sums(sums: dict[str, Array]) -> dict[str, Float[Array, ""]]:
        """The mean squared errors `{"energy", "forces", "stress"}` of error sums (0 where no
        structure has the target)."""
        return {
            kind: _safe_ratio(sums[f"{kind}_num"], sums[f"{kind}_den"])
            for kind in ("energy", "forces", "stress")
        }

    def terms(self, prediction: Prediction, batch: Batch) -> dict[str, Float[Array, ""]]:
        """The three unweighted (by lambda) mean squared errors `{"energy", "forces",
        "stress"}` of a prediction against the batch's targets."""
        return self.terms_of_sums(self.error_sums(prediction, batch))

    def total(self, terms: dict[str, Array]) -> Float[Array, ""]:
        """`lambda_E L_E + lambda_F L_F + lambda_S L_S`."""
        return (
            self.energy_weight * terms["energy"]
            + self.forces_weight * terms["forces"]
            + self.stress_weight * terms["stress"]
        )

    def __call__(self, model: Any, batch: Batch) -> tuple[Float[Array, ""], dict[str, Array]]:
        """The loss of `model` on `batch`, and its terms.

        **Returns:** `(loss, {"energy": ..., "forces": ..., "stress": ...})`, scalars.
        """
        prediction = predict(model, batch.graph, forces=True, stress=self.needs_stress)
        terms = self.terms(prediction, batch)
        return self.total(terms), terms


# Error sums of one batch, accumulated over a loader on the host by `evaluate`.
ERROR_SUMS = (
    "energy_abs",
    "energy_sq",
    "energy_count",
    "forces_abs",
    "forces_sq",
    "forces_count",
    "stress_abs",
    "stress_sq",
    "stress_count",
)


@eqx.filter_jit
def batch_error_sums(model: Any, batch: Batch) -> dict[str, Float[Array, ""]]:
    """Sums of absolute and squared errors (energy per atom, force components, stress
    components) over the real targets of a batch, and their counts (see `ERROR_SUMS`)."""
    prediction = predict(model, batch.graph, forces=True, stress=True)
    dtype = prediction.energy.dtype
    energy, forces, stress, _ = _cast_targets(batch, dtype)
    has_e, has_f, has_s, atoms = _masks(batch)
    de = (prediction.energy - energy) / atoms.astype(dtype)
    assert prediction.forces is not None and prediction.stress is not None
    df = prediction.forces - forces
    ds = prediction.stress - stress

    def sums(err: Array, mask: Bool[Array, "..."], per_item: int) -> tuple[Array, Array, Array]:
        shaped = mask.reshape(mask.shape + (1,) * (err.ndim - mask.ndim))
        return (
            jnp.sum(jnp.where(shaped, jnp.abs(err), 0.0)),
            jnp.sum(jnp.where(shaped, err**2, 0.0)),
            jnp.sum(mask).astype(dtype) * per_item,
        )

    values = (*sums(de, has_e, 1), *sums(df, has_f, 3), *sums(ds, has_s, 9))
    return dict(zip(ERROR_SUMS, values, strict=True))
