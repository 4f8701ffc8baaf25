"""Training: losses, optimizers and schedules from the config, callbacks, phases, and `fit` that writes a run.

`fit` loads lazily, so importing a piece of training does not import the whole of it.
"""

from medkeras.utils import lazy_getattr

__getattr__ = lazy_getattr(__name__, {"fit": "medkeras.train.fit"})

__all__ = ["fit"]
