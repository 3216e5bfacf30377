"""MACE's channels-last interaction (`eqmlip.ops.mace.interaction`) against the general one of
`eqmlip.ops.nequip`, which the parity tests check against mlip: values and gradients."""

from typing import Any

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import pytest

from eqmlip.ops import mace, nequip
from eqmlip.ops.linear import e3j_blocks
from eqmlip.ops.nequip import irreps_from

K = jax.random.key
NODES, EDGES = 6, 23


def _case(source: str, target: str, channels: int, l_max: int, dtype):
    src = channels * e3nn.Irreps(source)
    paths, messages = nequip.convolution_paths(src, l_max, channels * e3nn.Irreps(target))
    reached = irreps_from(
        [(m, ir) for m, ir in channels * e3nn.Irreps(target) if any(ir == i for _, i in messages)]
    )
    blocks = e3j_blocks(messages, reached)
    k = jax.random.split(K(3), 6)
    arrays = (
        jax.random.normal(k[0], (NODES, src.dim), dtype),
        jax.random.normal(k[1], (EDGES, (l_max + 1) ** 2), dtype),
        jax.random.normal(k[2], (EDGES, sum(p.mul for p in paths)), dtype),
        [
            jax.random.normal(jax.random.fold_in(k[3], i), (b.mul_out, b.mul_in), dtype)
            for i, b in enumerate(blocks)
        ],
    )
    senders = jax.random.randint(k[4], (EDGES,), 0, NODES)
    receivers = jax.random.randint(k[5], (EDGES,), 0, NODES + 1)  # NODES: a padding edge
    # Other receivers outside 0..NODES-1, which every sum drops too.
    receivers = receivers.at[0].set(-1).at[1].set(NODES + 7)
    static: dict[str, Any] = dict(
        irreps_in=src, paths=paths, linear_out_blocks=blocks, avg_num_neighbors=3.0
    )
    return paths, blocks, arrays, senders, receivers, static


# (id, source per channel, target per channel, channels, l_max): MACE's first layer (scalar
# input: only l1 = 0 paths) and its second (every kind of path, l_max 3).
CASES = [
    ("first-layer", "0e", "0e+1o+2e+3o", 3, 3),
    ("second-layer", "0e+1o+2e+3o", "0e+1o+2e+3o", 2, 3),
]


@pytest.mark.parametrize(
    ("source", "target", "channels", "l_max"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_channels_last_interaction_equals_nequip(source, target, channels, l_max):
    with jax.enable_x64(True):
        paths, blocks, arrays, senders, receivers, static = _case(
            source, target, channels, l_max, jnp.float64
        )
        assert mace._channels_last_applies(paths, blocks)  # the channels-last code runs

        def loss(fn):
            def f(x, sh, w, lw):
                return jnp.sum(jnp.sin(fn(x, sh, w, senders, receivers, lw, **static)))

            return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))

        expected, expected_grads = loss(nequip.interaction)(*arrays)
        value, grads = loss(mace.interaction)(*arrays)
        assert abs(float(value - expected)) <= 1e-12 * abs(float(expected))
        for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
            assert g.shape == e.shape
            assert float(jnp.max(jnp.abs(g - e))) <= 1e-12 * float(jnp.max(jnp.abs(e)))
        out = mace.interaction(*arrays[:3], senders, receivers, arrays[3], **static)
        assert out.shape == (NODES, sum(b.mul_out * b.dim for b in blocks))
        assert float(jnp.max(jnp.abs(out))) > 0.1  # not all zero


def test_other_cases_go_to_nequip():
    """Two copies per channel (not MACE's layout): the general interaction is used, and the
    result is its result exactly."""
    src = e3nn.Irreps("4x0e + 4x1o")  # channels 4 ...
    target = e3nn.Irreps("2x0e + 2x1o")  # ... and paths of mul 4 into blocks of 2: premixed
    paths, messages = nequip.convolution_paths(src, 1, target)
    blocks = e3j_blocks(messages, target)
    assert not mace._channels_last_applies(paths, blocks)
    k = jax.random.split(K(0), 5)
    x = jax.random.normal(k[0], (NODES, src.dim))
    sh = jax.random.normal(k[1], (EDGES, 4))
    w = jax.random.normal(k[2], (EDGES, sum(p.mul for p in paths)))
    lw = [
        jax.random.normal(jax.random.fold_in(k[3], i), (b.mul_out, b.mul_in))
        for i, b in enumerate(blocks)
    ]
    s = jax.random.randint(k[4], (EDGES,), 0, NODES)
    static: dict[str, Any] = dict(
        irreps_in=src, paths=paths, linear_out_blocks=blocks, avg_num_neighbors=2.0
    )
    a = nequip.interaction(x, sh, w, s, s, lw, **static)
    b = mace.interaction(x, sh, w, s, s, lw, **static)
    assert jnp.array_equal(a, b)
