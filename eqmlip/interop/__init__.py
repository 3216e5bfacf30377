"""Move weights from the Flax originals into eqmlip modules. Imports no Flax."""

from . import _layouts as _layouts  # registers the layouts
from ._flax import from_flax as from_flax
