"""eqmlip.nn.MultiHeadAttention and SelfAttention (helpers in `_e3x_graph`)."""

import equinox as eqx
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from eqmlip import testing
from eqmlip.nn import MessagePass, SelfAttention

from ._e3x_graph import (
    DST,
    MODULES,
    NUM_BASIS,
    PAD,
    K,
    N,
    _cutoffs,
    _graph_inputs,
    _inputs_for,
    _isolated_node_fn,
    _module,
    check_equivariance,
    check_padding,
)


@pytest.mark.parametrize("name", [n for n in MODULES if MODULES[n][0] is not MessagePass])
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@hypothesis.given(data=st.data(), matrix=testing.o3_matrices())
def test_equivariance(x64, name, data, matrix):
    check_equivariance(x64, name, data, matrix)


@pytest.mark.parametrize("name", ["self-attention-tensor"])
@hypothesis.given(
    data=st.data(),
    pad_src=hnp.arrays(np.int32, (PAD,), elements=st.integers(0, N)),
    pad_cutoff=hnp.arrays(np.float64, (PAD,), elements=_cutoffs),
)
def test_padding_changes_nothing_and_never_gives_nan(name, data, pad_src, pad_cutoff):
    """Padding edges leave the real outputs and gradients unchanged and finite."""
    check_padding(name, data, pad_src, pad_cutoff)


@hypothesis.given(data=st.data())
def test_all_zero_cutoff_node_is_finite_with_zero_attention(data):
    """Every edge into node 1 has cutoff 0: its attention is 0 (output = output bias) and
    values and gradients are finite (e3x gives NaN here)."""
    name = "self-attention-tensor"
    pos, features, cutoff = data.draw(_graph_inputs(name))
    cutoff = np.where(DST == 1, 0.0, cutoff)
    model = _module(name, False)
    (grads, grad_cutoff), out = _isolated_node_fn()(
        model,
        jnp.asarray(pos, jnp.float32),
        tuple(jnp.asarray(x, jnp.float32) for x in features),
        jnp.asarray(cutoff, jnp.float32),
    )
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    assert np.all(np.isfinite(np.asarray(grads[0]))) and np.all(
        np.isfinite(np.asarray(grad_cutoff))
    )
    bias_only = np.zeros_like(out[1])
    bias_only[0, 0] = np.asarray(model.out.bias)
    np.testing.assert_array_equal(out[1], bias_only)


def test_attention_bad_inputs_raise_clear_errors():
    model = _module("self-attention-tensor", False)
    pos, (x,), cutoff, idx = _inputs_for("self-attention-tensor")
    basis = jnp.ones((DST.size, 1, 4, NUM_BASIS))
    with pytest.raises(
        TypeError,
        match=r"^SelfAttention: relative positional encodings are on, so basis is required",
    ):
        model(x, None, cutoff, **idx)
    with pytest.raises(
        ValueError,
        match=r"^SelfAttention: cutoff_value must have the shape of the index list \(8,\), got \(8, 1\)",
    ):
        model(x, basis, cutoff[:, None], **idx)
    with pytest.raises(
        ValueError,
        match=r"^SelfAttention: expected basis of shape \(\.\.\., 1, 4, 3\).*got \(8, 1, 9, 3\)",
    ):
        model(x, jnp.ones((DST.size, 1, 9, NUM_BASIS)), cutoff, **idx)
    with pytest.raises(
        ValueError,
        match=r"^SelfAttention: expected inputs_q of shape \(\.\.\., 2, 4, 2\).*got \(4, 2, 4, 3\)",
    ):
        model(jnp.ones((N, 2, 4, 3)), basis, cutoff, **idx)
    cross = _module("cross-attention", False)
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention: expected inputs_kv of shape \(\.\.\., 1, 4, 3\).*got \(4, 2, 9, 2\)",
    ):
        cross(jnp.ones((N, 2, 9, 2)), jnp.ones((N, 2, 9, 2)), basis, cutoff, **idx)


def test_bad_construction_raises_clear_errors():
    base = dict(
        in_num_parity=2, in_max_degree=1, in_features=4, basis_max_degree=1, num_basis=3, key=K(0)
    )
    with pytest.raises(
        ValueError, match=r"^SelfAttention: qkv_features \(4\) must be divisible by num_heads \(3\)"
    ):
        eqx.filter_eval_shape(lambda: SelfAttention(**{**base, "num_heads": 3}))
    with pytest.raises(
        ValueError,
        match=r"^SelfAttention: relative positional encodings need the basis description",
    ):
        eqx.filter_eval_shape(
            lambda: SelfAttention(
                **{**base, "num_basis": None, "use_relative_positional_encoding_v": False}
            )
        )
    with pytest.raises(
        ValueError, match=r"^SelfAttention: num_heads must be a positive int, got 0"
    ):
        eqx.filter_eval_shape(lambda: SelfAttention(**{**base, "num_heads": 0}))
    # Attention without any relative positional encoding needs no basis at all.
    plain = eqx.filter_eval_shape(
        lambda: SelfAttention(
            **{
                **base,
                "basis_max_degree": None,
                "num_basis": None,
                "use_relative_positional_encoding_qk": False,
                "use_relative_positional_encoding_v": False,
            }
        )
    )
    assert plain.filter is None and plain.relative_positional_encoding_kernel is None
    assert (plain.num_parity, plain.max_degree, plain.out_features) == (2, 1, 4)
