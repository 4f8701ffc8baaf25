"""The metrics a fit logs every epoch and which way each is better: the one table that `train.monitor` is checked
against (config validation) and that the best checkpoint, early stopping and the plateau schedule read.

`val_*` come from `callbacks.ValidationMetrics` (one predict pass over validation, as `eval` scores it); `loss` and
`accuracy` from the training steps. Losses are minimised, everything else maximised.
"""

LOGGED = {"val_auroc": "max", "val_accuracy": "max", "val_loss": "min", "accuracy": "max", "loss": "min"}


def monitor_mode(name: str) -> str:
    """"min" or "max": how `name` (one of `LOGGED`) improves."""
    return LOGGED[name]
