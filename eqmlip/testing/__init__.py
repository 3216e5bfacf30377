"""Hypothesis strategies and equivariance assertions for testing equivariant code.

Draw irreps, `e3nn.IrrepsArray`s and O(3) matrices with Hypothesis, then check that a function
commutes with the group action:

```python
import e3nn_jax as e3nn
import hypothesis
from eqmlip import testing

@testing.hypothesis_settings()  # no deadline (the first example compiles), 20 examples
@hypothesis.given(testing.irreps_arrays("2x0e + 1o"), testing.o3_matrices())
def test_norm(x, matrix):
    testing.assert_equivariant(e3nn.norm, x, matrix=matrix)
```

Plain arrays are transformed only when declared (`in_actions="positions"`, `"vector"`, irreps,
`testing.E3xLayout()` for e3x features, ...), and a check that transforms nothing raises.
`assert_potential_symmetries` checks the other symmetries of an interatomic potential
(translations, permutations, periodic images, supercells). `molecules`, `crystals` and
`graphs` draw atomic structures (`ase.Atoms`, with a minimum
distance between atoms, periodic images included) and their `eqmlip.Graph`s.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Registers the "eqmlip" and "eqmlip-thorough" Hypothesis profiles on import.
from ._profile import hypothesis_settings as hypothesis_settings

if TYPE_CHECKING:
    from ._actions import E3xLayout as E3xLayout
    from ._checks import default_tolerance as default_tolerance
    from ._equivariance import (
        assert_equivariant as assert_equivariant,
        equivariance_error as equivariance_error,
    )
    from ._potential import (
        assert_potential_symmetries as assert_potential_symmetries,
        potential_function as potential_function,
    )
    from ._rotations import o3_matrices as o3_matrices, rotations as rotations
    from ._strategies import irreps as irreps, irreps_arrays as irreps_arrays
    from ._structures import crystals as crystals, graphs as graphs, molecules as molecules

# Imported on first use: the potential checks and structure strategies do not load e3nn-jax
# (with scipy.signal and its Flax bridges, most of the import time beyond JAX).
_WHERE = {
    "E3xLayout": "_actions",
    "default_tolerance": "_checks",
    "assert_equivariant": "_equivariance",
    "equivariance_error": "_equivariance",
    "assert_potential_symmetries": "_potential",
    "potential_function": "_potential",
    "o3_matrices": "_rotations",
    "rotations": "_rotations",
    "irreps": "_strategies",
    "irreps_arrays": "_strategies",
    "crystals": "_structures",
    "graphs": "_structures",
    "molecules": "_structures",
}

__all__ = [
    "E3xLayout",
    "assert_equivariant",
    "assert_potential_symmetries",
    "crystals",
    "default_tolerance",
    "equivariance_error",
    "graphs",
    "hypothesis_settings",
    "irreps",
    "irreps_arrays",
    "molecules",
    "o3_matrices",
    "potential_function",
    "rotations",
]
assert set(__all__) == {"hypothesis_settings", *_WHERE}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'eqmlip.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
