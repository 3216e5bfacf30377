"""eqmlip.data.statistics against mlip 0.2.5's own dataset statistics on the same structures:
`avg_r_min` is mlip's `avg_r_min_angstrom` (`compute_avg_min_neighbor_distance`)."""

import numpy as np
import pytest
from ase.build import molecule
from mlip.data.chemical_system import ChemicalSystem
from mlip.data.helpers.neighbor_analysis import compute_avg_min_neighbor_distance
from mlip.graph import Graph as MlipGraph

from eqmlip.data import Structure, statistics

from ..data.conftest import cu_au_alloys

pytestmark = pytest.mark.parity

CUTOFF = 3.0


def test_avg_r_min_is_mlips():
    # Periodic, strained cells (shortest edges across the boundary too) and molecules.
    atoms_list = cu_au_alloys(6, seed=3) + [molecule(name) for name in ("H2O", "CH4", "C6H6")]
    graphs = [
        MlipGraph.from_chemical_system(
            ChemicalSystem(
                atomic_numbers=atoms.numbers,
                positions=atoms.positions,
                cell=atoms.cell.array if atoms.pbc.any() else None,
                pbc=(bool(atoms.pbc[0]), bool(atoms.pbc[1]), bool(atoms.pbc[2])),
            ),
            CUTOFF,
        )
        for atoms in atoms_list
    ]
    expected = compute_avg_min_neighbor_distance(graphs)
    structures = [Structure.from_atoms(atoms) for atoms in atoms_list]
    stats = statistics(
        structures, cutoff=CUTOFF, atomic_energies=dict.fromkeys((1, 6, 8, 29, 79), 0.0)
    )
    assert stats.avg_r_min is not None
    # Both in float64; the edge vectors are summed in another order (an ulp apart).
    np.testing.assert_allclose(stats.avg_r_min, expected, rtol=1e-13)
    assert 1.0 < expected < CUTOFF
