"""Training: losses, the optimizer, one jitted step, the loop with EMA evaluation,
logs, checkpoints, early stopping and exact resume.

```
GraphLoader -> Batch -> train_step(state, batch) -> TrainState -> evaluate(ema model) -> logs
```

Data parallelism (`num_devices` > 1): `group_batches` stacks one padded batch per device,
`shard_batch` shards it over a `make_mesh` mesh, and `data_parallel_step` runs the same
jitted step with the global masked-mean loss; `eqmlip.training.distributed` spans hosts.
"""

from ..data import emt_alloy_dataset as emt_alloy_dataset
from . import distributed as distributed
from ._config import TrainConfig as TrainConfig
from ._loop import (
    METRICS as METRICS,
    Progress as Progress,
    TrainResult as TrainResult,
    evaluate as evaluate,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
    train as train,
)
from ._loss import Loss as Loss, batch_error_sums as batch_error_sums
from ._parallel import (
    StackedLoss as StackedLoss,
    StepPlan as StepPlan,
    data_parallel_step as data_parallel_step,
    empty_batch as empty_batch,
    group_batches as group_batches,
    make_mesh as make_mesh,
    plan_batch as plan_batch,
    plan_epoch as plan_epoch,
    replicate as replicate,
    resolve_num_devices as resolve_num_devices,
    shard_batch as shard_batch,
    stack_batches as stack_batches,
    to_host as to_host,
)
from ._run import (
    ConfigError as ConfigError,
    ModelConfig as ModelConfig,
    RunConfig as RunConfig,
    RunResult as RunResult,
    build_model as build_model,
    make_loaders as make_loaders,
    print_metrics as print_metrics,
    resolve_energy_scale as resolve_energy_scale,
    run as run,
    valid_keys as valid_keys,
)
from ._step import (
    TrainState as TrainState,
    cast_batch as cast_batch,
    flat_parameters as flat_parameters,
    init_state as init_state,
    loss_from_config as loss_from_config,
    make_optimizer as make_optimizer,
    make_schedule as make_schedule,
    train_step as train_step,
    trainable as trainable,
)
