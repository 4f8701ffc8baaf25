"""Evaluation: metrics (scikit-learn), calibration, operating points, per-split scoring, plots and the HTML report.

Names load lazily (the config's checks read `thresholds` without importing the rest).
"""

from medkeras.utils import lazy_getattr

_LAZY = {
    "evaluate": "medkeras.evaluation.evaluate",
    "auroc": "medkeras.evaluation.metrics",
    "classification_metrics": "medkeras.evaluation.metrics",
    "softmax": "medkeras.evaluation.metrics",
}

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
