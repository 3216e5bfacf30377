"""eqmlip's `MaceConfig` has every field of mlip 0.2.5's, with the same defaults, and takes
mlip's own config (enums included)."""

import dataclasses

import pytest
from mlip.models.mace.config import MaceConfig as MlipMaceConfig
from mlip.models.options import Activation, RadialEnvelope

from eqmlip.models.mace import MaceConfig

pytestmark = pytest.mark.parity


def _plain(value):
    value = getattr(value, "value", value)
    return tuple(value) if isinstance(value, list | tuple) else value


def test_fields_and_defaults_match_mlip():
    ours = {f.name: getattr(MaceConfig(), f.name) for f in dataclasses.fields(MaceConfig)}
    theirs = MlipMaceConfig()
    assert set(ours) == set(type(theirs).model_fields)
    for name, value in ours.items():
        assert _plain(value) == _plain(getattr(theirs, name)), name


def test_accepts_mlip_configs_and_normalises_like_mlip():
    mlip = MlipMaceConfig(
        l_max=2,
        node_symmetry=1,
        correlation=2,
        activation=Activation.TANH,
        radial_envelope=RadialEnvelope.SOFT,
        radial_mlp_hidden=[8, 8],
        use_coulomb_term=True,
    )
    values = {f.name: getattr(mlip, f.name) for f in dataclasses.fields(MaceConfig)}
    ours = MaceConfig(**values)
    for name in values:
        assert _plain(getattr(ours, name)) == _plain(getattr(mlip, name)), name
    # mlip fills node_symmetry with l_max and forces partial charges with the Coulomb term.
    assert MaceConfig(l_max=2).node_symmetry == MlipMaceConfig(l_max=2).node_symmetry == 2
    assert ours.predict_partial_charges and mlip.predict_partial_charges
