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

from ._actions import E3xLayout as E3xLayout
from ._equivariance import (
    assert_equivariant as assert_equivariant,
    default_tolerance as default_tolerance,
    equivariance_error as equivariance_error,
)
from ._potential import (
    assert_potential_symmetries as assert_potential_symmetries,
    potential_function as potential_function,
)
from ._profile import hypothesis_settings as hypothesis_settings
from ._strategies import (
    irreps as irreps,
    irreps_arrays as irreps_arrays,
    o3_matrices as o3_matrices,
    rotations as rotations,
)
from ._structures import crystals as crystals, graphs as graphs, molecules as molecules
