"""Evaluation: metrics (scikit-learn), the per-split scoring, plots and the HTML report."""

from medkeras.evaluate.evaluate import evaluate
from medkeras.evaluate.metrics import auroc, classification_metrics, softmax

__all__ = ["auroc", "classification_metrics", "evaluate", "softmax"]
