"""Training: losses, the optimizer, one `eqx.filter_jit` step, the loop with EMA evaluation,
logs, checkpoints, early stopping and exact resume.

```
GraphLoader -> Batch -> train_step(state, batch) -> TrainState -> evaluate(ema model) -> logs
```
"""

from ._config import TrainConfig as TrainConfig
from ._default import emt_alloy_dataset as emt_alloy_dataset
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
from ._step import (
    TrainState as TrainState,
    cast_batch as cast_batch,
    init_state as init_state,
    loss_from_config as loss_from_config,
    make_optimizer as make_optimizer,
    make_schedule as make_schedule,
    train_step as train_step,
    trainable as trainable,
)
