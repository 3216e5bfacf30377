"""Data: structures and targets from ASE/extxyz, their graphs, dataset statistics, splits and
static-shape batches.

```
file / ase.Atoms -> read_structures -> [Structure] -> split, statistics
                                                    -> GraphLoader -> padded Batch -> model
```
"""

from ._batching import (
    Batch as Batch,
    Budget as Budget,
    GraphLoader as GraphLoader,
    make_batch as make_batch,
)
from ._config import DataConfig as DataConfig, load_datasets as load_datasets
from ._generated import emt_alloy_dataset as emt_alloy_dataset
from ._statistics import (
    DatasetStatistics as DatasetStatistics,
    split as split,
    statistics as statistics,
)
from ._structure import (
    Structure as Structure,
    check_known_species as check_known_species,
    read_structures as read_structures,
    structure_graph as structure_graph,
    write_structures as write_structures,
)
