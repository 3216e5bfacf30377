"""Equinox modules, one for each Flax class that eqmlip replaces."""

from ._linear import Linear as Linear
