"""Classification metrics from probabilities, computed by scikit-learn; undefined values are said, not faked.

Binary tasks score the positive class (the clinically interesting one, e.g. "malignant"), whatever its index; the
decision rule itself (positive class, threshold, softmax) is `models.outputs`', shared with predict and serving.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from medkeras.models.outputs import positive_index, predict_labels, softmax

__all__ = ["auroc", "classification_metrics", "positive_index", "predict_labels", "softmax"]


def _safe(fn, *args, **kwargs):
    """A metric that is undefined on this data (e.g. AUROC with one class) is None, with the reason."""
    try:
        value = fn(*args, **kwargs)
    except ValueError as exc:
        return None, str(exc).splitlines()[0]
    value = float(value)
    return (value, None) if np.isfinite(value) else (None, "undefined on this data")


def auroc(labels, probs, pos: int | None = None):
    """Binary AUROC of p(pos), or macro one-vs-rest AUROC for K > 2. None where undefined."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if probs.shape[1] == 2:
        pos = probs.shape[1] - 1 if pos is None else pos
        return _safe(skm.roc_auc_score, labels == pos, probs[:, pos])[0]
    if len(np.unique(labels)) != probs.shape[1]:
        return None
    return _safe(skm.roc_auc_score, labels, probs, multi_class="ovr", average="macro")[0]


def classification_metrics(labels, probs, class_names, positive_class=None, threshold: float = 0.5) -> dict:
    """All headline metrics for one split. Values are floats or None (undefined), with `notes` saying why."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    notes = []
    out: dict = {"n": int(len(labels)), "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(class_names)}}
    if len(labels) == 0:
        out["notes"] = ["empty split: no metric is defined"]
        return out
    binary = k == 2
    pos = positive_index(class_names, positive_class)
    pred = predict_labels(probs, pos, threshold)
    out["accuracy"] = float(skm.accuracy_score(labels, pred))
    out["balanced_accuracy"] = float(skm.balanced_accuracy_score(labels, pred)) if len(np.unique(labels)) > 1 else None
    clipped = np.clip(probs, 1e-7, 1.0)
    out["log_loss"] = float(skm.log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=list(range(k))))
    out["auroc"] = auroc(labels, probs, pos)
    if out["auroc"] is None:
        notes.append("AUROC undefined: the split does not contain every class")
    cm = skm.confusion_matrix(labels, pred, labels=list(range(k)))
    out["confusion_matrix"] = cm.tolist()
    if binary:
        y = labels == pos
        out["positive_class"] = class_names[pos]
        out["threshold"] = float(threshold)
        out["auprc"] = _safe(skm.average_precision_score, y, probs[:, pos])[0] if y.any() else None
        tp = int(((pred == pos) & y).sum())
        fn = int(((pred != pos) & y).sum())
        tn = int(((pred != pos) & ~y).sum())
        fp = int(((pred == pos) & ~y).sum())
        out["sensitivity"] = tp / (tp + fn) if tp + fn else None
        out["specificity"] = tn / (tn + fp) if tn + fp else None
        out["ppv"] = tp / (tp + fp) if tp + fp else None
        out["npv"] = tn / (tn + fn) if tn + fn else None
        out["f1"] = float(skm.f1_score(y, pred == pos, zero_division=0))
    else:
        out["f1_macro"] = float(skm.f1_score(labels, pred, average="macro", zero_division=0))
        onehot = np.eye(k)[labels]
        out["auroc_micro"] = _safe(skm.roc_auc_score, onehot, probs, average="micro")[0]
        out["per_class"] = skm.classification_report(
            labels, pred, labels=list(range(k)), target_names=list(class_names), output_dict=True, zero_division=0
        )
    if notes:
        out["notes"] = notes
    return out


def summary_lines(run_dir) -> list[str]:
    """The few lines `medkeras fit` prints at the end: AUROC and accuracy per split, best epoch, where the run is."""
    import json
    from pathlib import Path

    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    lines = []
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            auroc = "undefined" if m.get("auroc") is None else f"{m['auroc']:.3f}"
            lines.append(f"{split}: AUROC {auroc}  accuracy {m['accuracy']:.3f}  (n={m['n']})")
    if metrics.get("tta_flips"):  # the epochs' val_auroc in train_log.csv is of the image alone
        lines.append(f"val and test scored with test-time flips ({', '.join(metrics['tta_flips'])}), as served")
    lines.append(f"best epoch {metrics.get('best_epoch')} by {metrics.get('monitor')}")
    lines.append(f"run directory: {run_dir}")
    return lines
