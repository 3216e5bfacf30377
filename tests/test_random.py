"""eqmlip._random: parameter draws cut from a few compiled samplers give the bits of the direct
`jax.random` computation, and models built with them equal models built without."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip import _random
from eqmlip.models.mace import Mace, MaceConfig
from eqmlip.models.nequip import Nequip, NequipConfig

# Empty, scalar, small, and longer than the smallest bucket (4096): two samplers in all.
SHAPES = [(0, 3), (), (2, 3, 5), (4100,)]
KEYS = {"typed": lambda: jr.key(3), "raw": lambda: jr.PRNGKey(3)}


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _key_bits(key) -> np.ndarray:
    return np.asarray(jr.key_data(key) if _random._is_typed(key) else key)


def test_normal_is_jax_normal(x64):
    key = jr.key(3)
    dtype = jnp.result_type(float)
    for shape in SHAPES:
        x = jr.normal(key, shape, dtype)
        assert _same(_random.normal(key, shape, dtype), x), shape
        assert _same(_random.normal(key, shape, dtype, 0.37), x * jnp.asarray(0.37, dtype)), shape
    # Division by a Python float: XLA divides by a constant its own way; the bits must follow.
    shape = SHAPES[2]
    expected = jr.normal(key, shape, dtype) / math.sqrt(3)
    assert _same(_random.normal(key, shape, dtype, divisor=math.sqrt(3)), expected)
    # A raw uint32 key (jr.PRNGKey) draws the same way.
    raw = jr.PRNGKey(3)
    assert _same(_random.normal(raw, shape, dtype), jr.normal(raw, shape, dtype))
    with pytest.raises(ValueError, match="std or divisor"):
        _random.normal(key, shape, dtype, 1.0, divisor=2.0)


def test_normal_pieces_is_one_jitted_program(x64):
    """The pieces equal the former single jitted program, including the piece spanning the
    whole draw (where XLA folds `sqrt(2) * std`) and an empty piece beside it."""
    key = jr.key(11)
    dtype = np.dtype(jnp.result_type(float))
    cases = [
        [(3, 2, 7)],
        [(3, 2, 7), (4,), (5, 1)],
        [(3, 2, 0), (4, 5)],
        [(4100,), (3,)],
    ]
    for shapes in cases:
        stds = [1 / math.sqrt(7), 0.3, 1.0][: len(shapes)]
        got = _random.normal_pieces(key, shapes, stds, dtype)
        expected = _random._normal_pieces_jit(key, tuple(shapes), tuple(stds), dtype)
        assert len(got) == len(shapes)
        for g, e in zip(got, expected, strict=True):
            assert _same(g, e), shapes
    with pytest.raises(ValueError, match="2 shapes and 1 stds"):
        _random.normal_pieces(key, [(1,), (2,)], [1.0], dtype)


@pytest.mark.parametrize("kind", list(KEYS))
def test_split_is_jax_split(kind):
    key = KEYS[kind]()
    for num in (1, 2, 5, 70):
        got = _random.split(key, num)
        expected = jr.split(key, num)
        assert isinstance(got, tuple) and len(got) == num
        assert all(g.dtype == key.dtype and g.shape == key.shape for g in got)
        assert np.array_equal(np.stack([_key_bits(g) for g in got]), _key_bits(expected))


def test_traced_keys_draw_directly():
    """Under `jax.jit` the key is abstract: the draws fall back to `jax.random`, same bits."""

    @jax.jit
    def draws(key):
        a, b = _random.split(key, 2)
        return _random.normal(a, (3, 2), jnp.float32, 0.5), _random.normal_pieces(
            b, [(2,), (3,)], [1.0, 2.0], jnp.float32
        )

    key = jr.key(4)
    traced, (p, q) = draws(key)
    a, b = _random.split(key, 2)
    assert _same(traced, _random.normal(a, (3, 2), jnp.float32, 0.5))
    expected = _random.normal_pieces(b, [(2,), (3,)], [1.0, 2.0], jnp.float32)
    assert _same(p, expected[0]) and _same(q, expected[1])


# Small, but with every drawing part: Linear, e3j Linear, MLP, gate weights (a division),
# symmetric contraction (normal pieces), readouts, a species embedding.
MACE = MaceConfig(
    num_layers=2,
    num_channels=2,
    l_max=1,
    correlation=2,
    radial_mlp_hidden=(4,),
    gate_nodes=True,
    num_readout_heads=2,
    readout_irreps=("4x0e", "0e"),
)
NEQUIP = NequipConfig(num_layers=2, target_irreps="2x0e + 2x1o", l_max=1, radial_mlp_hidden=(4,))


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_models_equal_the_direct_draws(name, monkeypatch):
    """A model built with the bucketed draws equals, leaf for leaf and bit for bit, the model
    built with every draw made directly by `jax.random` (as construction did before). float32
    only: the direct build compiles every draw anew, and the draws are checked under x64
    above."""

    def build():
        if name == "mace":
            return Mace(MACE, (1, 8), cutoff=3.0, avg_num_neighbors=2.0, key=jr.key(7))
        return Nequip(NEQUIP, (1, 8), cutoff=3.0, avg_num_neighbors=2.0, key=jr.key(7))

    fast = build()
    monkeypatch.setattr(_random, "_prefix_draws", lambda key: False)
    direct = build()
    leaves, tree = jax.tree.flatten(eqx.filter(fast, eqx.is_array))
    direct_leaves, direct_tree = jax.tree.flatten(eqx.filter(direct, eqx.is_array))
    assert tree == direct_tree
    assert len(leaves) > 10
    for i, (a, b) in enumerate(zip(leaves, direct_leaves, strict=True)):
        assert _same(a, b), i
