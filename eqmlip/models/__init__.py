"""Interatomic potentials: the interface every potential implements, the registry of potentials
by name, and the potentials eqmlip ships."""

from ._potential import (
    AbstractPotential as AbstractPotential,
    PotentialOutputs as PotentialOutputs,
    parameter_dtype as parameter_dtype,
    potential_class as potential_class,
    potential_name as potential_name,
    register_potential as register_potential,
    registered_potentials as registered_potentials,
)

# Importing the shipped potentials registers them.
from . import nequip as nequip  # noqa: E402  isort: skip
from . import mace as mace  # noqa: E402  isort: skip
