"""Equinox modules, one for each Flax class that eqmlip replaces."""

from ._batch_norm import BatchNorm as BatchNorm
from ._linear import Linear as Linear
from ._mlp import MultiLayerPerceptron as MultiLayerPerceptron
