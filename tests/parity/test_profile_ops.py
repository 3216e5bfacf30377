"""benchmarks/profile_ops.py charges each executed op to the function that emitted it.

The script reads the compiled module's stack-frame tables, whose numbering rule was measured,
not documented: this checks it on a step whose ops' sources are known, so a JAX upgrade that
changes the rule fails here rather than skewing the benchmarks page.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip.ops.nequip import radial_mlp
from eqmlip.ops.segment import segment_sum

from ..helpers import load_benchmark

# The script imports mlip (for its NequIP steps).
pytestmark = pytest.mark.parity


def _load_script():
    return load_benchmark("profile_ops")


def test_ops_are_charged_to_the_functions_that_emitted_them():
    profile_ops = _load_script()
    rng = np.random.default_rng(0)
    radial = jnp.asarray(rng.normal(size=(4000, 8)), jnp.float32)
    kernels = (
        jnp.asarray(rng.normal(size=(8, 64)), jnp.float32),
        jnp.asarray(rng.normal(size=(64, 256)), jnp.float32),
    )
    receivers = jnp.asarray(rng.integers(0, 50, size=4000), jnp.int32)

    def step(kernels, radial, receivers):
        weights = radial_mlp(radial, kernels, jnp.tanh)
        return segment_sum(weights, receivers, 50).sum()

    result = profile_ops.profile("eqmlip", jax.grad(step), (kernels, radial, receivers), 3)
    functions = result["functions_ms"]
    families = result["families_ms"]
    # The MLP's matmuls, forward and backward, dominate and are the radial MLP's.
    assert max(functions, key=functions.get) == "ops/nequip.py:radial_mlp", functions
    assert max(families, key=families.get) == "radial MLP", families
    assert families["radial MLP"] > 0.5 * result["ops_ms"], result
    # The gradient of the segment sum is a gather, charged by opcode.
    assert families.get("gathers", 0.0) > 0.0, families
    assert result["kinds_ms"].get("matmul", 0.0) > 0.0, result
    assert result["ops_executed_per_call"] > 0


def _inner_product(x, w):
    return x @ w


def _outer_step(x, w):
    return _inner_product(jnp.sin(x), w)


def test_stack_frames_are_read_with_their_numbering_rule():
    profile_ops = _load_script()
    x, w = jnp.ones((16, 8)), jnp.ones((8, 4))
    text = jax.jit(_outer_step).lower(x, w).compile().as_text()
    assert text is not None
    stacks = profile_ops._frames(profile_ops._sections(text))
    ops = [op for body in profile_ops._computations(text).values() for op in body]
    functions = {
        opcode: [function for _, function in stacks[frame][:2]]
        for opcode, frame in ops
        if opcode in ("dot", "sine") and frame is not None
    }
    assert functions["dot"] == ["_inner_product", "_outer_step"], functions
    assert functions["sine"][0] == "_outer_step", functions
