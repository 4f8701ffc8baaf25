"""Training: losses, optimizers and schedules from the config, callbacks, phases, and `fit` that writes a run.

`fit` loads lazily, so importing a piece of training does not import the whole of it.
"""


def __getattr__(name):
    if name == "fit":
        from medkeras.train.fit import fit

        return fit
    raise AttributeError(f"module 'medkeras.train' has no attribute '{name}'")


__all__ = ["fit"]
