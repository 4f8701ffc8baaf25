"""Evaluation: metrics (scikit-learn), calibration, operating points, per-split scoring, plots and the HTML report.

Names load lazily (the config's checks read `thresholds` without importing the rest).
"""

from medkeras.utils import lazy_getattr

_LAZY = {
    "evaluate": "medkeras.evaluate.evaluate",
    "auroc": "medkeras.evaluate.metrics",
    "classification_metrics": "medkeras.evaluate.metrics",
    "softmax": "medkeras.evaluate.metrics",
}

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
