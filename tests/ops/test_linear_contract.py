"""Derivatives of `linear_contract`, whose weight gradient has its own JVP rule, against a
plain einsum of the same map: forward mode, reverse mode, second order and vmap."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqmlip._misc import irreps_entry
from eqmlip.ops.linear import bias_outputs, linear_contract, linear_paths

TOL = 1e-12  # float64; the rule and the einsum differ only in summation order

CASES = [
    ("3x0e+2x1o+2x2e", "2x0e+3x1o+1x2e", (5,)),
    ("2x0e+1x0e+2x1o", "3x0e+1x1o", (2, 3)),  # two paths into one output, two batch axes
    ("2x1o", "3x1o", (0,)),  # no rows
]


def _setup(irreps_in, irreps_out, batch):
    irreps_in, irreps_out = e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_out)
    paths = linear_paths(irreps_in, irreps_out, None, 1.0, 1.0)
    bias_indices = bias_outputs(irreps_out, True)
    keys = jr.split(jr.PRNGKey(3), len(paths) + 2)
    weights = tuple(
        jr.normal(
            k,
            (irreps_entry(irreps_in, p.i_in).mul, irreps_entry(irreps_out, p.i_out).mul),
            jnp.float64,
        )
        for k, p in zip(keys, paths, strict=False)
    )
    biases = tuple(
        jr.normal(keys[-2], (irreps_entry(irreps_out, i).mul,), jnp.float64) for i in bias_indices
    )
    x = jr.normal(keys[-1], (*batch, irreps_in.dim), jnp.float64)

    def contract(x, weights, biases):
        return linear_contract(
            x,
            weights,
            biases,
            irreps_in=irreps_in,
            irreps_out=irreps_out,
            paths=paths,
            bias_indices=bias_indices,
        )

    def reference(x, weights, biases):
        outs = []
        for i_out, (mul_out, ir_out) in enumerate(irreps_out):
            total = jnp.zeros((*x.shape[:-1], mul_out, ir_out.dim), x.dtype)
            for p, w in zip(paths, weights, strict=True):
                if p.i_out == i_out:
                    mul_in = irreps_entry(irreps_in, p.i_in).mul
                    chunk = x[..., irreps_in.slices()[p.i_in]].reshape(
                        *x.shape[:-1], mul_in, ir_out.dim
                    )
                    total = total + p.path_weight * jnp.einsum("...ui,uw->...wi", chunk, w)
            for i_bias, b in zip(bias_indices, biases, strict=True):
                if i_bias == i_out:
                    total = total + b[:, None]
            outs.append(total.reshape(*x.shape[:-1], mul_out * ir_out.dim))
        return jnp.concatenate(outs, axis=-1)

    return contract, reference, (x, weights, biases)


@pytest.mark.parametrize("irreps_in, irreps_out, batch", CASES, ids=["l012", "2paths", "empty"])
def test_linear_contract_derivatives_match_einsum(irreps_in, irreps_out, batch):
    with jax.enable_x64(True):
        contract, reference, args = _setup(irreps_in, irreps_out, batch)
        tangents = jax.tree.map(lambda a: jr.normal(jr.PRNGKey(7), a.shape, a.dtype), args)

        # Forward mode, with every input and with the weights alone.
        for f in (contract, reference):
            assert f(*args).shape == (*batch, e3nn.Irreps(irreps_out).dim)
        y, dy = jax.jvp(contract, args, tangents)
        y_ref, dy_ref = jax.jvp(reference, args, tangents)
        np.testing.assert_allclose(y, y_ref, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(dy, dy_ref, rtol=TOL, atol=TOL)
        only_w = lambda f: lambda w: f(args[0], w, args[2])  # noqa: E731
        _, dy_w = jax.jvp(only_w(contract), (args[1],), (tangents[1],))
        _, dy_w_ref = jax.jvp(only_w(reference), (args[1],), (tangents[1],))
        np.testing.assert_allclose(dy_w, dy_w_ref, rtol=TOL, atol=TOL)

        # Reverse mode with respect to everything, then to the input alone.
        def loss(f):
            return lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)))

        grads = jax.grad(loss(contract), argnums=(0, 1, 2))(*args)
        grads_ref = jax.grad(loss(reference), argnums=(0, 1, 2))(*args)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
            np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(
            jax.grad(loss(contract))(*args), jax.grad(loss(reference))(*args), rtol=TOL, atol=TOL
        )

        # Second order: forward over reverse (Hessian-vector product) and reverse over reverse
        # (a force-matching loss differentiated with respect to the weights).
        def hvp(f):
            return jax.jvp(lambda *a: jax.grad(loss(f), argnums=(0, 1))(*a), args, tangents)[1]

        for g, r in zip(
            jax.tree.leaves(hvp(contract)), jax.tree.leaves(hvp(reference)), strict=True
        ):
            np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)

        def force_loss(f):
            return lambda w: jnp.sum(jax.grad(loss(f))(args[0], w, args[2]) ** 2)

        for g, r in zip(
            jax.tree.leaves(jax.grad(force_loss(contract))(args[1])),
            jax.tree.leaves(jax.grad(force_loss(reference))(args[1])),
            strict=True,
        ):
            np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)

        # vmap over a leading axis of the input and over stacked weights.
        xs = jnp.stack([args[0], 2 * args[0]])
        ws = jax.tree.map(lambda w: jnp.stack([w, -w]), args[1])
        mapped = jax.vmap(contract, in_axes=(0, 0, None))(xs, ws, args[2])
        mapped_ref = jax.vmap(reference, in_axes=(0, 0, None))(xs, ws, args[2])
        np.testing.assert_allclose(mapped, mapped_ref, rtol=TOL, atol=TOL)
        g_mapped = jax.vmap(jax.grad(loss(contract), argnums=1), in_axes=(0, 0, None))(
            xs, ws, args[2]
        )
        g_mapped_ref = jax.vmap(jax.grad(loss(reference), argnums=1), in_axes=(0, 0, None))(
            xs, ws, args[2]
        )
        for g, r in zip(jax.tree.leaves(g_mapped), jax.tree.leaves(g_mapped_ref), strict=True):
            np.testing.assert_allclose(g, r, rtol=TOL, atol=TOL)
