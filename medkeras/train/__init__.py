"""Training: losses, optimizers and schedules from the config, callbacks, and `fit` that writes a run directory."""

from medkeras.train.fit import fit

__all__ = ["fit"]
