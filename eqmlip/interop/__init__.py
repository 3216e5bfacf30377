"""Move weights from the Flax originals into eqmlip modules. Imports no Flax."""

from . import (
    _layouts as _layouts,  # registers the layouts
    _layouts_e3x as _layouts_e3x,  # registers the e3x layouts
    _layouts_mlip as _layouts_mlip,  # registers the mlip (and e3j) layouts
)
from ._flax import from_flax as from_flax
from .mlip import from_mlip as from_mlip
