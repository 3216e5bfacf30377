"""NequIP's config, embedding block and layer: validation, symmetry, padding, determinism."""

import dataclasses
import enum
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
from eqmlip.models.nequip import NequipConfig, NequipEmbeddingBlock, NequipLayer
from eqmlip.ops import linear, nequip as ops

K = jr.PRNGKey
TARGET = "4x0e+4x0o+2x1o+2x1e+2x2e+2x2o"
CUTOFF = 2.5


# --- config ------------------------------------------------------------------------------------


def test_config_defaults():
    config = NequipConfig()
    assert config.target_irreps == "128x0e+128x0o+64x1o+64x1e+4x2e+4x2o"
    assert (config.num_layers, config.l_max, config.num_rbf) == (2, 3, 8)
    assert config.radial_envelope == "polynomial_envelope"
    assert config.radial_mlp_hidden == (64, 64)
    assert (config.radial_mlp_activation, config.radial_mlp_variance_scale) == ("swish", 4.0)
    assert dict(config.gate_nonlinearities) == {"e": "swish", "o": "tanh"}
    assert config.embed_activation == "silu"
    assert config.num_readout_heads == 1 and config.use_residual_connection
    assert config.avg_num_neighbors is None and config.num_species is None
    assert not (config.predict_partial_charges or config.use_coulomb_term)
    assert not (config.use_total_charge_embedding or config.deterministic_scatter_ops)
    assert config.add_atomic_energies


def test_config_is_hashable_and_normalised():
    a = NequipConfig(
        target_irreps="4x0e + 2x1o",
        radial_mlp_hidden=[8],
        gate_nonlinearities={"o": "tanh", "e": "silu"},
    )
    b = NequipConfig(
        target_irreps="4x0e+2x1o",
        radial_mlp_hidden=(8,),
        gate_nonlinearities={"e": "silu", "o": "tanh"},
    )
    assert a == b and hash(a) == hash(b)
    assert a.radial_mlp_hidden == (8,) and a.irreps == e3nn.Irreps("4x0e+2x1o")
    assert NequipConfig(use_coulomb_term=True).predict_partial_charges
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.l_max = 2  # type: ignore[misc]


class _Option(enum.Enum):
    """Stands for mlip's option enums, which carry their string in `.value`."""

    SILU = "silu"
    SOFT = "soft_envelope"


def test_config_accepts_enum_options():
    config = NequipConfig(radial_mlp_activation=_Option.SILU, radial_envelope=_Option.SOFT)
    assert (config.radial_mlp_activation, config.radial_envelope) == ("silu", "soft_envelope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_irreps="2x1o+4x0e"), r"did you mean 4x0e\+2x1o"),
        (dict(target_irreps="4x0e+2x0e"), "repeats an irrep"),
        (dict(target_irreps="2x1o"), "no 0e entry"),
        (dict(target_irreps="4x0e+0x1o"), "multiplicity"),
        (dict(target_irreps="4y0e"), "not a valid irreps"),
        (dict(num_layers=0), "num_layers must be > 0"),
        (dict(l_max=-1), "l_max"),
        (dict(num_rbf=0), "num_rbf"),
        (dict(radial_mlp_hidden=[8, 0]), "radial_mlp_hidden"),
        (dict(radial_mlp_activation="gelu"), "radial_mlp_activation must be one of"),
        (dict(radial_envelope="cosine"), "radial_envelope"),
        (dict(radial_mlp_variance_scale=0.0), "radial_mlp_variance_scale"),
        (dict(num_readout_heads=0), "num_readout_heads"),
        (dict(avg_num_neighbors=-1.0), "avg_num_neighbors"),
        (dict(gate_nonlinearities={"e": "swish"}), "keys 'e' and 'o'"),
        (dict(gate_nonlinearities={"e": "swish", "o": "foo"}), r"gate_nonlinearities\['o'\]"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NequipConfig(**kwargs)


def test_config_type_errors_and_deprecation():
    # (Under the test suite's runtime type checking the annotations reject these first.)
    with pytest.raises(TypeError, match="num_layers"):
        NequipConfig(num_layers=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use_coulomb_term"):
        NequipConfig(use_coulomb_term=1)  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning, match="num_species is deprecated"):
        config = NequipConfig(num_species=3)
    assert config.num_species == 3


# --- blocks ------------------------------------------------------------------------------------


def _graph(n: int, seed: int):
    """Random positions and all ordered pairs `i != j` (some beyond the cutoff)."""
    positions = jr.uniform(K(seed), (n, 3), minval=-1.5, maxval=1.5)
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    species = jnp.asarray(np.arange(n) % 3, dtype=jnp.int32)
    return positions, species, jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)


def _model(key, num_layers=3, deterministic=False, dtype=None):
    keys = jr.split(key, num_layers + 1)
    embed = NequipEmbeddingBlock(
        3, TARGET, l_max=2, num_rbf=6, cutoff=CUTOFF, dtype=dtype, key=keys[0]
    )
    layers = []
    source = embed.irreps_out
    for i in range(num_layers):
        layer = NequipLayer(
            source, TARGET, l_max=2, num_species=3, num_rbf=6, avg_num_neighbors=3.0,
            radial_mlp_hidden=(8,), deterministic_scatter_ops=deterministic, dtype=dtype, key=keys[i + 1],
        )  # fmt: skip
        layers.append(layer)
        source = layer.irreps_out
    return embed, tuple(layers)


def _forward(model, positions, species, senders, receivers, edge_mask=None):
    embed, layers = model
    pos = positions.array if isinstance(positions, e3nn.IrrepsArray) else positions
    vectors = pos[receivers] - pos[senders]
    x, radial, sh = embed(species, vectors, edge_mask=edge_mask)
    for layer in layers:
        x = layer(x, species, radial, sh, senders, receivers)
    return x


_apply = eqx.filter_jit(_forward)


def test_three_layers_reach_odd_scalars():
    _, layers = _model(K(0))
    assert [str(layer.irreps_out) for layer in layers] == [
        "4x0e+2x1o+2x2e",
        "4x0e+2x1o+2x1e+2x2e+2x2o",
        "4x0e+4x0o+2x1o+2x1e+2x2e+2x2o",
    ]
    assert layers[0].radial_mlp_sizes == (6, 8, 12)  # 4 copies into 0e, 1o and 2e each


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.settings(max_examples=4)
@hypothesis.given(matrix=testing.o3_matrices(), seed=st.integers(0, 2**16))
def test_layers_are_equivariant(x64, matrix, seed):
    with jax.enable_x64(x64):
        model = _model(K(1))
        positions, species, senders, receivers = _graph(5, seed)
        pos = e3nn.IrrepsArray("1o", positions)
        tol = 1e-4 if not x64 else 1e-10
        testing.assert_equivariant(
            lambda p: _apply(model, p, species, senders, receivers),
            pos,
            matrix=matrix,
            atol=tol,
            rtol=tol,
        )


def test_padding_edges_contribute_nothing_and_stay_finite():
    model = _model(K(2), num_layers=2)
    positions, species, senders, receivers = _graph(5, 3)
    # One padding node (index 5, at the origin) and three zero-length padding edges on it, plus
    # a masked edge between two real atoms (as after masking an edge out).
    pad_pos = jnp.concatenate([positions, jnp.zeros((1, 3))])
    pad_species = jnp.concatenate([species, jnp.zeros((1,), jnp.int32)])
    pad_senders = jnp.concatenate([senders, jnp.asarray([5, 5, 5, 0], jnp.int32)])
    pad_receivers = jnp.concatenate([receivers, jnp.asarray([5, 5, 5, 1], jnp.int32)])
    mask = jnp.concatenate([jnp.ones(senders.shape, bool), jnp.zeros((4,), bool)])

    def energy(pos, s, r, z, m):
        return jnp.sum(_forward(model, pos, z, s, r, m).array[:5] ** 2)

    expected, grad = jax.jit(jax.value_and_grad(energy))(
        positions, senders, receivers, species, None
    )
    actual, pad_grad = jax.jit(jax.value_and_grad(energy))(
        pad_pos, pad_senders, pad_receivers, pad_species, mask
    )
    assert np.allclose(actual, expected, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(pad_grad)))
    assert np.allclose(pad_grad[:5], grad, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(pad_grad[5]) == 0.0)
    assert float(jnp.max(jnp.abs(grad))) > 1e-3


def test_deterministic_scatter_gives_the_same_layer():
    positions, species, senders, receivers = _graph(6, 4)
    plain = _apply(_model(K(3), num_layers=2), positions, species, senders, receivers)
    deterministic = _apply(
        _model(K(3), num_layers=2, deterministic=True), positions, species, senders, receivers
    )
    assert np.allclose(plain.array, deterministic.array, rtol=1e-5, atol=1e-6)


def test_interaction_equals_convolution_then_linear_out():
    """The fused form (linear_out on the edges for scalar-input paths) equals the plain one."""
    with jax.enable_x64(True):
        embed, layers = _model(K(7), num_layers=3, dtype=jnp.float64)
        positions, species, senders, receivers = _graph(6, 5)
        positions = positions.astype(jnp.float64)
        x, radial, sh = embed(species, positions[receivers] - positions[senders])
        mixed_blocks = 0
        for layer in layers:
            premixed = [ops.premixes(p, layer.linear_out_blocks[p.block]) for p in layer.paths]
            mixed_blocks += sum(
                any(premixed[i] for i, p in enumerate(layer.paths) if p.block == b)
                and not all(premixed[i] for i, p in enumerate(layer.paths) if p.block == b)
                for b in range(len(layer.linear_out_blocks))
            )
            weights = ops.radial_mlp(radial, layer.radial_kernels, jax.nn.swish)
            h = linear.block_linear(x.array, layer.linear_in_weights, layer.linear_in_blocks)
            messages = ops.convolution(
                h, sh, weights, senders, receivers,
                irreps_in=layer.irreps_in, paths=layer.paths, avg_num_neighbors=3.0,
            )  # fmt: skip
            plain = linear.block_linear(messages, layer.linear_out_weights, layer.linear_out_blocks)
            fused = ops.interaction(
                h, sh, weights, senders, receivers, layer.linear_out_weights,
                irreps_in=layer.irreps_in, paths=layer.paths,
                linear_out_blocks=layer.linear_out_blocks, avg_num_neighbors=3.0,
            )  # fmt: skip
            assert fused.shape == plain.shape
            assert float(jnp.max(jnp.abs(plain))) > 1e-2
            np.testing.assert_allclose(fused, plain, rtol=1e-12, atol=1e-12)
            x = layer(x, species, radial, sh, senders, receivers)
        assert any(ops.premixes(p, layers[0].linear_out_blocks[p.block]) for p in layers[0].paths)
        assert mixed_blocks > 0  # some block sums premixed and node-mixed paths
        layer = layers[0]
        with pytest.raises(ValueError, match=r"message blocks have \[\d+, \d+, \d+\]"):
            ops.interaction(
                x.array, sh, radial, senders, receivers, layer.linear_out_weights[:-1],
                irreps_in=layer.irreps_in, paths=layer.paths,
                linear_out_blocks=layer.linear_out_blocks[:-1], avg_num_neighbors=3.0,
            )  # fmt: skip


def test_call_on_species_equals_the_layer_on_gathered_features():
    """The first layer on one row per species (as the network calls it) equals the layer on
    the embedding's node features, values and gradients with respect to every parameter."""
    with jax.enable_x64(True):
        embed, layers = _model(K(11), num_layers=2, dtype=jnp.float64)
        positions, species, senders, receivers = _graph(7, 6)
        vectors = positions.astype(jnp.float64)[receivers] - positions.astype(jnp.float64)[senders]
        h0, radial, sh = embed(species, vectors)
        table = embed.species_features()
        np.testing.assert_array_equal(table[species], h0.array)
        layer = layers[0]
        cotangent = jr.normal(K(12), (7, layer.irreps_out.dim), jnp.float64)

        def on_nodes(layer, embed):
            x = embed(species, vectors)[0]
            return jnp.sum(layer(x, species, radial, sh, senders, receivers).array * cotangent)

        def on_species(layer, embed):
            out = layer.call_on_species(
                embed.species_features(), species, radial, sh, senders, receivers
            )
            return jnp.sum(out.array * cotangent)

        ours = layer.call_on_species(table, species, radial, sh, senders, receivers)
        theirs = layer(h0, species, radial, sh, senders, receivers)
        assert ours.irreps == theirs.irreps and float(jnp.max(jnp.abs(theirs.array))) > 1e-2
        np.testing.assert_allclose(ours.array, theirs.array, rtol=1e-12, atol=1e-12)
        grads = eqx.filter_grad(on_species)(layer, embed)
        expected = eqx.filter_grad(on_nodes)(layer, embed)
        leaves, expected_leaves = jax.tree.leaves(grads), jax.tree.leaves(expected)
        assert len(leaves) == len(expected_leaves) > 5
        assert float(jnp.max(jnp.abs(expected.residual_weights[0]))) > 1e-3
        for g, e in zip(leaves, expected_leaves, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
        charged = NequipEmbeddingBlock(
            3, TARGET, l_max=2, num_rbf=6, cutoff=CUTOFF, num_charges=2, key=K(13)
        )
        with pytest.raises(ValueError, match="not a function of the species alone"):
            charged.species_features()


def test_vmap_matches_a_loop_and_serialisation_round_trips():
    model = _model(K(6), num_layers=2)
    _, species, senders, receivers = _graph(4, 0)
    batch = jnp.stack([_graph(4, s)[0] for s in (1, 2)])
    batched = eqx.filter_jit(
        jax.vmap(lambda p: _forward(model, p, species, senders, receivers).array)
    )(batch)
    looped = jnp.stack([_apply(model, p, species, senders, receivers).array for p in batch])
    assert np.allclose(batched, looped, rtol=1e-5, atol=1e-6)

    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    buffer.seek(0)
    restored = eqx.tree_deserialise_leaves(buffer, _model(K(99), num_layers=2))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(restored), strict=True)
    )


def test_initialisation_matches_mlip_distributions():
    layer = NequipLayer(
        "32x0e+16x1o", "32x0e+16x1o+16x1e", l_max=2, num_species=4, num_rbf=8, avg_num_neighbors=5.0,
        radial_mlp_hidden=(64, 64), radial_mlp_variance_scale=4.0, key=K(7),
    )  # fmt: skip
    # Hidden kernels N(0, 4/fan_in), output kernel N(0, 1/fan_in), e3j weights N(0, 1).
    stds = [float(np.std(np.asarray(k))) for k in layer.radial_kernels]
    assert np.allclose(stds, [2 / np.sqrt(8), 2 / np.sqrt(64), 1 / np.sqrt(64)], rtol=0.1)
    for w in (*layer.linear_in_weights, *layer.linear_out_weights, *layer.residual_weights):
        if w.size > 200:
            assert abs(float(np.mean(np.asarray(w)))) < 0.1
            assert abs(float(np.std(np.asarray(w))) - 1.0) < 0.1
    embed = NequipEmbeddingBlock(4, "64x0e", l_max=1, num_rbf=8, cutoff=5.0, key=K(8))
    assert abs(float(np.std(np.asarray(embed.species_embedding))) - 1.0) < 0.15


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="irreps_in"):
        NequipLayer(
            "2x1o+4x0e", TARGET, l_max=2, num_species=3, num_rbf=6, avg_num_neighbors=3.0, key=K(0)
        )
    with pytest.raises(ValueError, match="avg_num_neighbors"):
        NequipLayer(
            "4x0e", TARGET, l_max=2, num_species=3, num_rbf=6, avg_num_neighbors=0.0, key=K(0)
        )
    with pytest.raises(ValueError, match="odd gate_odd"):
        NequipLayer(
            "4x0e+2x1o+2x1e",
            TARGET,
            l_max=1,
            num_species=3,
            num_rbf=6,
            avg_num_neighbors=3.0,
            gate_odd="swish",
            key=K(0),
        )
    layer = NequipLayer(
        "4x0e", TARGET, l_max=2, num_species=3, num_rbf=6, avg_num_neighbors=3.0, key=K(0)
    )
    with pytest.raises(ValueError, match="node_features have irreps"):
        layer(
            e3nn.zeros("4x0o", (2,)),
            jnp.zeros(2, jnp.int32),
            jnp.zeros((1, 6)),
            jnp.zeros((1, 9)),
            jnp.zeros(1, jnp.int32),
            jnp.zeros(1, jnp.int32),
        )
