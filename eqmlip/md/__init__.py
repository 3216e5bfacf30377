"""Molecular dynamics inside JAX: jitted integrators (NVE, Langevin NVT, Berendsen NPT), FIRE
relaxation and replicas, with neighbour lists built and updated on the device.

```python
from eqmlip.md import simulate
result = simulate(model, atoms, steps=1000, ensemble="nvt", timestep=1.0, temperature=300.0)
result.temperature, result.atoms[0]
```
"""

from ._engine import (
    ENSEMBLES as ENSEMBLES,
    MDResult as MDResult,
    MDState as MDState,
    kinetic_energy as kinetic_energy,
    maxwell_boltzmann as maxwell_boltzmann,
    simulate as simulate,
)
from ._jax_md import jax_md_energy_fn as jax_md_energy_fn
from ._neighbours import (
    NeighbourList as NeighbourList,
    NeighbourSpec as NeighbourSpec,
    allocate as allocate,
    build as build,
    edges as edges,
    needs_rebuild as needs_rebuild,
    update as update,
)
from ._relax import RelaxResult as RelaxResult, relax as relax
