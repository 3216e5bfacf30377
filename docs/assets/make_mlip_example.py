"""Writes `mlip-nequip-example.zip`, the small mlip 0.2.5 NequIP model used by the porting guide.

Random weights (not a trained model), saved with mlip's own `save_model_to_zip`; run with the
`parity` extra installed: `python docs/assets/make_mlip_example.py`.
"""

from pathlib import Path

import jax
from mlip.data.dataset_info import DatasetInfo
from mlip.models import ForceField, Nequip
from mlip.models.model_io import save_model_to_zip
from mlip.models.nequip.config import NequipConfig

info = DatasetInfo(
    atomic_energies_map={1: -13.6, 6: -1029.8, 8: -2041.3},
    graph_cutoff_angstrom=4.0,
    avg_num_neighbors=6.0,
)
config = NequipConfig(target_irreps="8x0e + 4x1o", l_max=1, radial_mlp_hidden=[8])
force_field = ForceField.from_mlip_network(Nequip(config, info), seed=0)
# Move every weight off its initial value (some start at exactly 0 or 1).
leaves, treedef = jax.tree.flatten(force_field.params)
keys = jax.random.split(jax.random.key(1), len(leaves))
leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
force_field = ForceField(force_field.predictor, jax.tree.unflatten(treedef, leaves))
save_model_to_zip(Path(__file__).with_name("mlip-nequip-example.zip"), force_field)
