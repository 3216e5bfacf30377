"""`MaceConfig`: defaults, normalisation, and errors that name the field."""

import dataclasses
import warnings

import e3nn_jax as e3nn
import pytest

from eqmlip.models.mace import MaceConfig


def test_defaults_normalised_and_hashable():
    config = MaceConfig()
    assert config.node_symmetry == config.l_max == 3
    assert config.readout_irreps == ("16x0e", "0e")
    assert config.radial_mlp_hidden == (64, 64, 64)
    assert config.interaction_irreps == e3nn.Irreps("0e+1o+2e+3o")
    assert config.node_irreps == e3nn.Irreps("0e+1o+2e+3o")
    assert hash(config) == hash(MaceConfig(radial_mlp_hidden=[64, 64, 64]))
    assert MaceConfig(readout_irreps=["16x0e", "0e"]) == config
    assert MaceConfig(readout_irreps=(e3nn.Irreps("8x0e"), "0e")).readout_irreps == ("8x0e", "0e")


def test_options_and_derived_irreps():
    config = MaceConfig(l_max=2, node_symmetry=1, include_pseudotensors=True, use_coulomb_term=True)
    assert config.interaction_irreps == e3nn.Irreps("0e+0o+1o+1e+2e+2o")
    assert config.node_irreps == e3nn.Irreps("0e+1o")
    assert config.predict_partial_charges
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.l_max = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_layers=0), ValueError, "num_layers must be > 0"),
        (dict(num_channels=2.0), TypeError, "num_channels must be an int"),
        (dict(num_rbf=True), TypeError, "num_rbf must be an int"),
        (dict(num_readout_heads=0), ValueError, "num_readout_heads must be > 0"),
        (dict(l_max=-1), ValueError, "l_max must be >= 0"),
        (dict(l_max=2, node_symmetry=3), ValueError, "node_symmetry must be between 0 and l_max=2"),
        (dict(node_symmetry=1.0), TypeError, "node_symmetry must be an int or None"),
        (dict(correlation=5), ValueError, "correlation must be between 1 and 4"),
        (dict(correlation=0), ValueError, "correlation must be between 1 and 4"),
        (dict(readout_irreps=("16x0e",)), ValueError, "readout_irreps must have exactly two"),
        (dict(readout_irreps="16x0e"), TypeError, "readout_irreps must be a pair"),
        (dict(readout_irreps=("16x0e", "bad")), ValueError, r"readout_irreps\[1\] 'bad'"),
        (dict(readout_irreps=("16x0e", 3)), TypeError, r"readout_irreps\[1\] must be an irreps"),
        (dict(activation="gelu"), ValueError, "activation must be one of"),
        (dict(radial_mlp_activation="x"), ValueError, "radial_mlp_activation must be one of"),
        (dict(embed_activation="x"), ValueError, "embed_activation must be one of"),
        (dict(radial_envelope="hard"), ValueError, "radial_envelope must be one of"),
        (dict(radial_mlp_hidden=[8, 0]), ValueError, "radial_mlp_hidden must hold ints > 0"),
        (dict(radial_mlp_hidden="64"), TypeError, "radial_mlp_hidden must be a sequence"),
        (dict(avg_num_neighbors=0.0), ValueError, "avg_num_neighbors must be positive"),
        (dict(avg_r_min=float("nan")), ValueError, "avg_r_min must be positive"),
        (dict(soft_normalization="1"), TypeError, "soft_normalization must be a float or None"),
        (dict(gate_nodes=1), TypeError, "gate_nodes must be a bool"),
        (dict(include_pseudotensors=None), TypeError, "include_pseudotensors must be a bool"),
        (dict(symmetric_contraction_backend="cuda"), ValueError, "must be one of"),
        (dict(symmetric_contraction_backend="e3nn"), ValueError, "does not implement"),
        (dict(use_gaunt_tp_message_passing=True), ValueError, "use_gaunt_tp_message_passing"),
        (dict(num_species=0), ValueError, "num_species must be an int > 0 or None"),
    ],
)
def test_invalid_values_name_the_field(kwargs, error, match):
    # Wrong kinds may be caught first by the run-time type checker of the test suite, whose
    # message names the parameter too.
    pattern = f"MaceConfig: .*{match}" if error is ValueError else f"{next(iter(kwargs))}"
    with pytest.raises(error, match=pattern):
        MaceConfig(**kwargs)


def test_num_species_is_deprecated():
    with pytest.warns(DeprecationWarning, match="num_species is deprecated"):
        config = MaceConfig(num_species=3)
    assert config.num_species == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaceConfig()
