"""eqmlip's MACE symmetric contraction on its own, side by side with mlip 0.2.5's
(`SymmetricContraction`, e3j backend, `TRAILING_CHANNELS`), from the same weights."""

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from e3j.utils.options import Layout
from mlip.models.mace.symmetric_contraction import SymmetricContraction as MlipContraction

from eqmlip.interop.mlip import symmetric_contraction_from_mlip
from eqmlip.models.mace import SymmetricContraction
from eqmlip.ops.mace import contraction_plan

from ..helpers import relative_error

pytestmark = pytest.mark.parity

K = jax.random.key
NUM_SPECIES = 3
CHANNELS = 3
NODES = 7
SPECIES = np.array([0, 1, 2, 0, 1, 2, 2], np.int32)

# (id, x64, source irreps of one channel, kept output irreps, correlation). The sources are
# MACE's interaction irreps (with or without pseudotensors); the outputs its node irreps
# (node_symmetry = l_max, node_symmetry < l_max, or the last layer's "0e"). Tracing mlip's
# block builds e3j's coefficients (about 15 s at l_max 3, correlation 3), so each case runs in
# one precision. No two cases share irreps across precisions: e3j caches its index arrays
# with the dtype of the first trace, and mlip then fails (int32 + int64) under the other.
CASES = [
    ("corr3-l3-default-f32", False, "0e+1o+2e+3o", "0e+1o+2e+3o", 3),
    ("corr3-l3-node-symmetry-2-x64", True, "0e+1o+2e+3o", "0e+1o+2e", 3),
    ("corr1-l2-f32", False, "0e+1o+2e", "0e+1o+2e", 1),
    ("corr2-l2-last-layer-x64", True, "0e+1o+2e", "0e", 2),
    ("corr3-l1-pseudotensors-node-symmetry-0-x64", True, "0e+0o+1o+1e", "0e", 3),
    ("corr1-unreached-output-x64", True, "1o", "0e+1o", 1),
]


def _tolerance(dtype) -> float:
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-6


def _params(source: str, target: str, correlation: int, dtype) -> dict:
    """Random parameters in mlip's tree (`LinearIndexwise_0/weight{i}_{l}_{p}`)."""
    plan = contraction_plan(e3nn.Irreps(source), correlation, e3nn.Irreps(target))
    keys = jax.random.split(K(2), len(plan.mul_in))
    weights = {
        f"weight{i}_{ir.l}_{ir.p}": jax.random.normal(k, (NUM_SPECIES, CHANNELS, 1, m), dtype)
        for i, ((_, ir), m, k) in enumerate(
            zip(e3nn.Irreps(target), plan.mul_in, keys, strict=True)
        )
    }
    return {"params": {"LinearIndexwise_0": weights}}


def _mlip(source: str, target: str, correlation: int, dtype):
    """mlip's block, random parameters, its output and the input it was fed.

    The parameter tree is written from eqmlip's plan rather than taken from mlip's `init`
    (tracing mlip's block is what costs here, and `init` would trace it once more); Flax's
    `apply` refuses parameters whose shapes differ from those its `init` would create.
    """
    block = MlipContraction(
        source_irreps=source,
        correlation=correlation,
        keep_irrep_out=target,
        num_species=NUM_SPECIES,
        num_channels=CHANNELS,
        layout=Layout.TRAILING_CHANNELS,
    )
    x = jax.random.normal(K(0), (NODES, CHANNELS, e3nn.Irreps(source).dim), dtype)
    x = e3nn.IrrepsArray(source, x)
    species = jnp.asarray(SPECIES)
    params = _params(source, target, correlation, dtype)
    expected = jax.jit(block.apply)(params, x, species)
    return params, x.array, species, expected


@pytest.mark.parametrize(
    "x64, source, target, correlation", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_symmetric_contraction_matches_mlip(x64, source, target, correlation):
    with jax.enable_x64(x64):
        dtype = jnp.result_type(float)
        params, x, species, expected = _mlip(source, target, correlation, dtype)
        assert expected.irreps == e3nn.Irreps(target)
        block = eqx.filter_eval_shape(
            SymmetricContraction,
            source,
            target,
            correlation=correlation,
            num_species=NUM_SPECIES,
            num_channels=CHANNELS,
            key=K(3),
        )
        block = symmetric_contraction_from_mlip(block, params["params"])
        out = eqx.filter_jit(block)(x, species)
        assert out.dtype == dtype
        assert out.shape == expected.array.shape == (NODES, CHANNELS, e3nn.Irreps(target).dim)
        assert relative_error(out, expected.array) <= _tolerance(dtype)
        # Every output irrep that some power reaches is nonzero (the comparison is not vacuous).
        plan = contraction_plan(e3nn.Irreps(source), correlation, e3nn.Irreps(target))
        for s, m in zip(e3nn.Irreps(target).slices(), plan.mul_in, strict=True):
            assert (np.max(np.abs(np.asarray(expected.array[..., s]))) > 1e-3) == (m > 0)


def test_weight_counts_match_mlip_default():
    """The copies mixed per output irrep for MACE's default (l_max 3, correlation 3): the
    numbers of mlip's `LinearIndexwise` weights (1 + 4 + 23 scalars, ...)."""
    plan = contraction_plan(e3nn.Irreps("0e+1o+2e+3o"), 3, e3nn.Irreps("0e+1o+2e+3o"))
    assert plan.mul_in == (28, 58, 73, 72)
    assert [str(p) for p in plan.powers] == [
        "1x0e+1x1o+1x2e+1x3o",
        "4x0e+6x1o+3x1e+7x2e+4x2o+6x3o+4x3e+4x4e+2x4o+2x5o+1x5e+1x6e",
        "23x0e+51x1o+65x2e+65x3o",
    ]


def test_loader_refuses_mismatched_parameters():
    params = jax.tree.map(np.asarray, _params("0e+1o+2e", "0e+1o", 2, jnp.float32)["params"])
    block = SymmetricContraction(
        "0e+1o+2e", "0e+1o", correlation=2, num_species=NUM_SPECIES, num_channels=CHANNELS,
        key=K(0),
    )  # fmt: skip
    loaded = symmetric_contraction_from_mlip(block, params)
    np.testing.assert_array_equal(
        np.asarray(loaded.weights[1]), params["LinearIndexwise_0"]["weight1_1_-1"][:, :, 0]
    )

    with pytest.raises(ValueError, match="missing: LinearIndexwise_0/weight1_1_-1"):
        symmetric_contraction_from_mlip(
            block,
            {"LinearIndexwise_0": {"weight0_0_1": params["LinearIndexwise_0"]["weight0_0_1"]}},
        )
    with pytest.raises(ValueError, match="unexpected: extra/w"):
        symmetric_contraction_from_mlip(block, {**params, "extra": {"w": np.zeros(3)}})
    wrong = {
        "LinearIndexwise_0": {**params["LinearIndexwise_0"], "weight0_0_1": np.zeros((3, 3, 1, 9))}
    }
    with pytest.raises(ValueError, match=r"weight0_0_1 has shape \(3, 3, 1, 9\), expected"):
        symmetric_contraction_from_mlip(block, wrong)
    # Built for correlation 3, the block expects more copies than the correlation-2 weights.
    deeper = SymmetricContraction(
        "0e+1o+2e", "0e+1o", correlation=3, num_species=NUM_SPECIES, num_channels=CHANNELS,
        key=K(0),
    )  # fmt: skip
    with pytest.raises(ValueError, match="same source_irreps, keep_irrep_out, correlation"):
        symmetric_contraction_from_mlip(deeper, params)
