"""Evaluation: metrics (scikit-learn), calibration, operating points, per-split scoring, plots and the HTML report.

Names load lazily (the config's checks read `thresholds` without importing the rest).
"""

import importlib

_LAZY = {
    "evaluate": "medkeras.evaluate.evaluate",
    "auroc": "medkeras.evaluate.metrics",
    "classification_metrics": "medkeras.evaluate.metrics",
    "softmax": "medkeras.evaluate.metrics",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medkeras.evaluate' has no attribute '{name}'")


__all__ = sorted(_LAZY)
