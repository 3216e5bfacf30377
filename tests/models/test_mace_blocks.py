"""MACE's symmetric contraction and product-basis block: symmetry, initialisation,
serialisation, errors. (Their numbers against mlip's are in tests/parity.)"""

import io

import e3nn_jax as e3nn
import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import testing
from eqmlip.models.mace import EquivariantProductBasisBlock, SymmetricContraction
from eqmlip.ops.mace import contraction_plan, reachable_irreps

K = jr.PRNGKey
SOURCE = "0e+1o+2e"
SPECIES = jnp.asarray([0, 1, 1, 0, 1], jnp.int32)


def _block(target="0e+1o+2e", correlation=3, source=SOURCE, channels=3, seed=0):
    return SymmetricContraction(
        source, target, correlation=correlation, num_species=2, num_channels=channels, key=K(seed)
    )


_apply = eqx.filter_jit(lambda block, x, species: block(x, species))


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.settings(max_examples=4)
@hypothesis.given(matrix=testing.o3_matrices(), seed=st.integers(0, 2**16))
def test_equivariant_under_rotations_and_inversions(x64, matrix, seed):
    with jax.enable_x64(x64):
        block = _block(target="0e+1o+2e", source="0e+0o+1o+1e+2e")
        x = jr.normal(K(seed), (5, 3, e3nn.Irreps("0e+0o+1o+1e+2e").dim))
        tol = 1e-10 if x64 else 1e-4
        testing.assert_equivariant(
            lambda x: _apply(block, x, SPECIES),
            x,
            matrix=matrix,
            in_actions=("0e+0o+1o+1e+2e",),
            out_actions="0e+1o+2e",
            atol=tol,
            rtol=tol,
        )


def test_is_a_polynomial_of_degree_correlation_per_channel():
    """Scaling the input by `s` scales the power-`nu` part by `s**nu`; channels and nodes do not
    mix (the contraction is per node and per channel)."""
    block = _block(target="0e+1o", correlation=3)
    x = jr.normal(K(1), (5, 3, e3nn.Irreps(SOURCE).dim))
    y = _apply(block, x, SPECIES)
    # A polynomial of degree 3 with no constant term: four scales determine it, a fifth checks.
    scales = [0.5, 1.0, 1.5, 2.0]
    outs = np.stack([np.asarray(_apply(block, s * x, SPECIES)) for s in scales])
    vander = np.stack([np.asarray(scales) ** k for k in (1, 2, 3)], axis=1)
    coef, *_ = np.linalg.lstsq(vander, outs.reshape(4, -1), rcond=None)
    predicted = (np.asarray([2.5, 2.5**2, 2.5**3]) @ coef).reshape(y.shape)
    np.testing.assert_allclose(_apply(block, 2.5 * x, SPECIES), predicted, rtol=1e-3, atol=1e-3)
    # Changing one channel of one node changes only that channel of that node.
    x2 = x.at[2, 1].set(0.3)
    diff = np.abs(np.asarray(_apply(block, x2, SPECIES) - y)).max(axis=-1)
    assert diff[2, 1] > 0 and np.all(np.delete(diff.ravel(), 2 * 3 + 1) == 0)


def test_species_select_the_weights():
    block = _block(target="0e", correlation=2)
    x = jnp.broadcast_to(jr.normal(K(2), (1, 3, 9)), (5, 3, 9))
    y = np.asarray(_apply(block, x, SPECIES))
    np.testing.assert_array_equal(y[0], y[3])
    assert np.abs(y[0] - y[1]).max() > 1e-3


def test_init_variance_and_shapes():
    block = _block(target="0e+1o+2e", correlation=3, channels=64, seed=3)
    plan = contraction_plan(e3nn.Irreps(SOURCE), 3, e3nn.Irreps("0e+1o+2e"))
    assert [w.shape for w in block.weights] == [(2, 64, m) for m in plan.mul_in]
    for w, m in zip(block.weights, plan.mul_in, strict=True):
        w = np.asarray(w)
        assert abs(w.mean()) < 4 / np.sqrt(w.size) / np.sqrt(m)
        assert abs(w.std() * np.sqrt(m) - 1.0) < 0.1  # FAN_IN: N(0, 1/mul_in)


def test_pruning_keeps_only_what_reaches_the_output():
    source = e3nn.Irreps("0e+1o+2e+3o")
    assert reachable_irreps(source, e3nn.Irreps("0e"), 0) == {(0, 1)}
    assert reachable_irreps(source, e3nn.Irreps("0e"), 1) == {
        (0, 1), (1, -1), (2, 1), (3, -1)
    }  # fmt: skip
    plan = contraction_plan(source, 2, e3nn.Irreps("0e"))
    assert plan.powers[1] == e3nn.Irreps("4x0e") and plan.mul_in == (5,)
    # An output no power reaches gets zeros (and a zero-size weight), as in mlip.
    block = _block(target="0e+1o", correlation=1, source="1o")
    assert [w.shape for w in block.weights] == [(2, 3, 0), (2, 3, 1)]
    y = _apply(block, jr.normal(K(4), (5, 3, 3)), SPECIES)
    assert np.all(np.asarray(y[..., :1]) == 0) and np.abs(np.asarray(y[..., 1:])).max() > 0


def test_grad_and_dtypes():
    block = _block(target="0e+1o", correlation=2)
    x = jr.normal(K(5), (5, 3, 9))

    @eqx.filter_jit
    def grads(block, x):
        return eqx.filter_grad(lambda b, x: jnp.sum(b(x, SPECIES) ** 2))(block, x)

    g = grads(block, x)
    assert all(bool(jnp.all(jnp.isfinite(w))) for w in g.weights)
    assert all(bool(jnp.any(w != 0)) for w in g.weights)
    with jax.enable_x64(True):
        block64 = _block(target="0e+1o", correlation=2)
        assert block64.weights[0].dtype == jnp.float64
        y64 = _apply(block64, jnp.asarray(np.asarray(x), jnp.float64), SPECIES)
        assert y64.dtype == jnp.float64 and y64.shape == (5, 3, 4)


def test_serialise_round_trip():
    block = _block(target="0e+1o", correlation=2, seed=6)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, block)
    buffer.seek(0)
    loaded = eqx.tree_deserialise_leaves(buffer, _block(target="0e+1o", correlation=2, seed=7))
    for a, b in zip(jax.tree.leaves(block), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "source, target, kwargs, match",
    [
        ("2x0e+1o", "0e", {}, "source_irreps .* every multiplicity 1"),
        ("", "0e", {}, "source_irreps .* non-empty"),
        ("0e+1o", "2x0e", {}, "keep_irrep_out .* multiplicity 1"),
        ("0e+1o", "1o+0e", {}, "keep_irrep_out .* sorted"),
        ("0e+1o", "0e", dict(correlation=0), "correlation must be an int >= 1"),
        ("0e+1o", "0e", dict(num_species=0), "num_species must be an int >= 1"),
    ],
)
def test_invalid_arguments(source, target, kwargs, match):
    args = dict(correlation=2, num_species=2, num_channels=3) | kwargs
    with pytest.raises(ValueError, match=f"SymmetricContraction: {match}"):
        SymmetricContraction(source, target, key=K(0), **args)


# --- product basis block ------------------------------------------------------------------------


def _product_basis(gate_nodes=True, seed=0):
    return EquivariantProductBasisBlock(
        "2x0e+2x1o+2x2e",
        "2x0e+2x1o",
        correlation=2,
        num_species=2,
        num_channels=2,
        gate_nodes=gate_nodes,
        key=K(seed),
    )


@hypothesis.settings(max_examples=4)
@hypothesis.given(matrix=testing.o3_matrices(), seed=st.integers(0, 2**16))
def test_product_basis_is_equivariant(matrix, seed):
    block = _product_basis()
    x = e3nn.IrrepsArray("2x0e+2x1o+2x2e", jr.normal(K(seed), (5, 18)))
    testing.assert_equivariant(
        lambda x: _apply(block, x, SPECIES), x, matrix=matrix, atol=1e-4, rtol=1e-4
    )


def test_product_basis_gate_and_shapes():
    gated, plain = _product_basis(True), _product_basis(False)
    assert gated.gate_weights is not None and gated.gate_weights.shape == (2, 2, 4)
    assert gated.gate_bias is not None and gated.gate_bias.shape == (2, 4)
    assert plain.gate_weights is None and plain.gate_bias is None
    x = jr.normal(K(1), (5, 18))
    y = _apply(gated, x, SPECIES)
    assert y.irreps == e3nn.Irreps("2x0e+2x1o") and y.shape == (5, 8)
    # With a zero gate, the gated block outputs zeros; the plain one does not.
    zero = eqx.tree_at(
        lambda b: (b.gate_weights, b.gate_bias),
        gated,
        (jnp.zeros((2, 2, 4)), jnp.zeros((2, 4))),
    )
    assert np.all(np.asarray(_apply(zero, x, SPECIES).array) == 0)
    assert np.abs(np.asarray(_apply(plain, x, SPECIES).array)).max() > 1e-3


@pytest.mark.parametrize(
    "source, target, kwargs, match",
    [
        ("2x0e+3x1o", "2x0e", {}, "every multiplicity of source_irreps"),
        ("2x0e+2x1o", "2x1o+2x0e", {}, "target_irreps 2x1o\\+2x0e must be sorted"),
        ("2x0e+2x1o", "2x1o", dict(gate_nodes=True), "gate_nodes needs 0e"),
    ],
)
def test_product_basis_invalid_arguments(source, target, kwargs, match):
    args = dict(correlation=2, num_species=2, num_channels=2) | kwargs
    with pytest.raises(ValueError, match=f"EquivariantProductBasisBlock: {match}"):
        EquivariantProductBasisBlock(source, target, key=K(0), **args)


def _dense_reference(x, species, weights, source, target, correlation):
    """The module docstring's definition, in float64 NumPy: every power built in full, path
    by path (`einsum` with the Clebsch-Gordan coefficients), then `W` mixes the copies."""
    from eqmlip.ops.mace import _cg

    source, target = e3nn.Irreps(source), e3nn.Irreps(target)
    plan = contraction_plan(source, correlation, target)
    n, c, dim = x.shape
    powers = [np.asarray(x, np.float64).reshape(n * c, dim)]
    for step in plan.steps:
        lhs_s, out_s, src_s = (i.slices() for i in (step.irreps_lhs, step.irreps_out, source))
        out = np.zeros((n * c, step.irreps_out.dim))
        for p in step.paths:
            d0, d1, d2 = 2 * p.l0 + 1, 2 * p.l1 + 1, 2 * p.l2 + 1
            xl = powers[-1][:, lhs_s[p.i_lhs]].reshape(-1, p.mul_lhs, d1)
            yr = powers[0][:, src_s[p.i_rhs]].reshape(-1, p.mul_rhs, d2)
            z = np.einsum("abc,nub,nvc->nuva", _cg(p.l0, p.l1, p.l2), xl, yr)
            start = out_s[p.block].start + p.start * d0
            out[:, start : start + z[0].size] = z.reshape(n * c, -1)
        powers.append(out)
    outs = []
    for (_, ir), feeds, w in zip(target, plan.kept, weights, strict=True):
        copies = [
            powers[nu][:, plan.powers[nu].slices()[i]].reshape(n * c, -1, ir.dim) for nu, i in feeds
        ]
        if not copies:
            outs.append(np.zeros((n * c, ir.dim)))
            continue
        w_rows = np.asarray(w, np.float64)[np.asarray(species)].reshape(n * c, -1)
        outs.append(np.einsum("nu,nua->na", w_rows, np.concatenate(copies, axis=1)))
    return np.concatenate(outs, axis=1).reshape(n, c, -1)


@pytest.mark.parametrize(
    "source, target, correlation",
    [
        # correlation 4: powers below the last with many copies per chunk
        ("0e+1o", "0e+1o", 4),
        ("0e+1o+2e", "0e", 4),
        ("0e+0o+1o+1e", "0e+1e", 3),
    ],
    ids=["corr4-l1", "corr4-l2-scalar", "corr3-pseudotensors"],
)
def test_contraction_matches_its_definition(source, target, correlation):
    """Beyond the correlations mlip is compared at (tests/parity): the batched, folded
    contraction against the powers built in full (x64)."""
    with jax.enable_x64(True):
        block = _block(target=target, correlation=correlation, source=source, seed=7)
        x = jr.normal(K(8), (5, 3, e3nn.Irreps(source).dim), jnp.float64)
        y = np.asarray(_apply(block, x, SPECIES))
    expected = _dense_reference(x, SPECIES, block.weights, source, target, correlation)
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
