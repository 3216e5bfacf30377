"""eqmlip.nn.MessagePass.

Modules are built once per test module with `eqx.filter_eval_shape` and filled with NumPy
draws (running the initialisers would compile once per parameter shape); every Hypothesis
example of a test reuses one compiled function (helpers in `_e3x_graph`).
"""

import io

import equinox as eqx
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import ops, testing
from eqmlip.nn import MessagePass, Tensor

from ._e3x_graph import (
    ADJ,
    DST,
    MODULES,
    NUM_BASIS,
    PAD,
    K,
    N,
    _apply,
    _cutoffs,
    _inputs_for,
    _module,
    check_equivariance,
    check_padding,
)


@pytest.mark.parametrize("name", [n for n in MODULES if MODULES[n][0] is MessagePass])
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(data=st.data(), matrix=testing.o3_matrices())
def test_equivariance(x64, name, data, matrix):
    check_equivariance(x64, name, data, matrix)


@pytest.mark.parametrize("name", ["message-tensor"])
@hypothesis.given(
    data=st.data(),
    pad_src=hnp.arrays(np.int32, (PAD,), elements=st.integers(0, N)),
    pad_cutoff=hnp.arrays(np.float64, (PAD,), elements=_cutoffs),
)
def test_padding_changes_nothing_and_never_gives_nan(name, data, pad_src, pad_cutoff):
    """Padding edges leave the real outputs and gradients unchanged and finite."""
    check_padding(name, data, pad_src, pad_cutoff)


def test_message_pass_bad_inputs_raise_clear_errors():
    model = _module("message-tensor", False)
    pos, (x,), _, idx = _inputs_for("message-tensor")
    basis = jnp.ones((DST.size, 1, 9, NUM_BASIS))
    with pytest.raises(
        ValueError,
        match=r"^MessagePass: expected inputs of shape \(\.\.\., 2, 4, 2\).*got \(4, 1, 4, 2\)",
    ):
        model(x[:, :1], basis, **idx)
    with pytest.raises(
        ValueError,
        match=r"^MessagePass: expected basis of shape \(\.\.\., 1, 9, 3\).*got \(8, 1, 4, 3\)",
    ):
        model(x, basis[:, :, :4], **idx)
    with pytest.raises(
        ValueError, match=r"^MessagePass: basis must have one entry per edge.*got \(7, 1, 9, 3\)"
    ):
        model(x, basis[:7], **idx)
    with pytest.raises(ValueError, match=r"^MessagePass: got both adj_idx"):
        model(x, basis, adj_idx=jnp.asarray(ADJ), **idx)
    with pytest.raises(ValueError, match=r"^MessagePass: no indices given"):
        model(x, basis)
    with pytest.raises(
        ValueError, match=r"^MessagePass: sparse indices need both.*src_idx is None"
    ):
        model(x, basis, dst_idx=idx["dst_idx"])
    with pytest.raises(TypeError, match=r"src_idx"):  # caught by jaxtyping in the tests
        model(x, basis, dst_idx=idx["dst_idx"], src_idx=idx["src_idx"].astype(jnp.float32))
    with pytest.raises(
        TypeError, match=r"^MessagePass: src_idx must have an integer dtype, got float32"
    ):
        ops.segment.check_indices(
            "MessagePass", adj_idx=None, dst_idx=idx["dst_idx"], src_idx=jnp.ones(8)
        )
    with pytest.raises(ValueError, match=r"^MessagePass: where is only used with dense indices"):
        model(x, basis, where=jnp.ones(ADJ.shape, bool), **idx)
    with pytest.raises(
        ValueError,
        match=r"^MessagePass: weights of shape \(8, 2\) do not broadcast.*\(8, 2, 4, 2\)",
    ):
        model(x, basis, jnp.ones((8, 2)), **idx)
    with pytest.raises(TypeError, match=r"^MessagePass: basis and inputs must have the same dtype"):
        with jax.enable_x64(True):
            model(x, basis.astype(jnp.float64), **idx)
    with pytest.raises(
        ValueError, match=r"^MessagePass: num_segments must be a non-negative int, got -1"
    ):
        model(x, basis, num_segments=-1, **idx)


def test_output_shapes_follow_e3x_rules():
    def message(**kw):
        return eqx.filter_eval_shape(lambda: MessagePass(features=2, num_basis=3, key=K(0), **kw))

    # L_out defaults to max(L_basis, L_in); scalar P=1 inputs always give P_out = 1.
    m = message(in_num_parity=2, in_max_degree=1, basis_max_degree=2)
    assert (m.num_parity, m.max_degree) == (2, 2)
    m = message(in_num_parity=1, in_max_degree=0, basis_max_degree=2, include_pseudotensors=True)
    assert (m.num_parity, m.max_degree) == (1, 2)
    m = message(in_num_parity=1, in_max_degree=1, basis_max_degree=1, include_pseudotensors=False)
    assert (m.num_parity, m.max_degree, m.use_fused_tensor) == (1, 1, False)


def test_real_initialisation_jit_grad_and_serialisation():
    """The constructors run (default initialisers), equal arguments give equal structures,
    gradients are finite, and a serialise round trip is exact."""
    kwargs = MODULES["message-tensor"][1]
    a = MessagePass(**kwargs, key=K(1))
    b = MessagePass(**kwargs, key=K(2))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert isinstance(a.tensor, Tensor) and a.tensor.kernel.dtype == jnp.float32
    assert np.any(a.filter.kernels[0])
    pos, features, _, idx = _inputs_for("message-tensor")

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(model):
        return jnp.sum(_apply(model, pos, features, None, idx) ** 2)

    grads = jax.tree.leaves(grad(a))
    assert grads and all(np.all(np.isfinite(g)) for g in grads)
    assert np.any(grads[0])
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, a)
    buffer.seek(0)
    loaded = eqx.tree_deserialise_leaves(buffer, b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(u, v)


def test_bad_construction_raises_clear_errors():
    with pytest.raises(
        ValueError,
        match=r"^MessagePass: max_degree of the tensor product .* can be at most 2, got max_degree=3",
    ):
        eqx.filter_eval_shape(
            lambda: MessagePass(
                in_num_parity=1,
                in_max_degree=1,
                features=2,
                basis_max_degree=1,
                num_basis=3,
                max_degree=3,
                key=K(0),
            )
        )
    with pytest.raises(ValueError, match=r"^MessagePass: num_parity must be 1 or 2, got 3"):
        eqx.filter_eval_shape(
            lambda: MessagePass(
                in_num_parity=3,
                in_max_degree=1,
                features=2,
                basis_max_degree=1,
                num_basis=3,
                key=K(0),
            )
        )
