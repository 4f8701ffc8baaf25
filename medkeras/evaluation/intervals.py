"""95% intervals for every figure reported: the headline metrics, calibration (ECE, MCE, Brier, log-loss) and each
class's one-vs-rest metrics, from one set of bootstrap resamples shared by everything computed on a split.

Resampling respects patients: with patient keys, whole patients are drawn (a cluster bootstrap: a patient's slices
are not independent cases), else images. A figure resting on too few cases gets no interval but a note saying so
(3 positives cannot bound a sensitivity: every resample gives 1.000).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from medkeras.evaluation.calibration import brier_score, expected_calibration_error, maximum_calibration_error
from medkeras.models.outputs import positive_index
from medkeras.progress import counted

MIN_CASES = 10  # fewer positives (or negatives, ...) than this and a figure gets a note instead of an interval


class Draws:
    """Bootstrap resamples of a split: index arrays into it, items drawn with replacement, or whole groups."""

    def __init__(self, n_items: int, n: int = 1000, seed: int = 0, groups=None, unit: str = "images"):
        rng = np.random.default_rng(seed)
        self.unit = unit  # what an item is: images, series, patients
        self.clustered = groups is not None and len(set(groups)) < n_items
        if n_items == 0 or n == 0:
            self.indices = []
        elif groups is None:
            self.indices = [rng.integers(0, n_items, n_items) for _ in range(n)]
        else:
            keys, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
            members = [np.flatnonzero(inverse == k) for k in range(len(keys))]
            self.indices = [np.concatenate([members[g] for g in rng.integers(0, len(keys), len(keys))])
                            for _ in range(n)]
        self.groups = len(set(groups)) if groups is not None else n_items

    @property
    def method(self) -> str:
        if not self.indices:
            return "none"
        return (f"cluster bootstrap over {counted(self.groups, ('patient', 'patients'))} ({len(self.indices)} resamples)"
                if self.clustered else f"bootstrap over {self.unit} ({len(self.indices)} resamples)")


def auroc(y, score) -> float | None:
    """Binary ROC AUC as the Mann-Whitney statistic with mid-ranks: equal to sklearn's `roc_auc_score` (ties count
    one half) at a fraction of its cost, which matters a thousand resamples at a time. None with one class only."""
    y = np.asarray(y, dtype=bool)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(y, score) -> float | None:
    """sklearn's `average_precision_score` (precision at each distinct threshold, weighted by the recall gained)."""
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return None
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, hits = np.asarray(score)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last item of each distinct threshold
    tps = np.cumsum(hits)[last]
    precision, recall = tps / (last + 1), tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _binary(labels, probs, pos, threshold) -> dict:
    y = labels == pos
    score = probs[:, pos]
    pred = score >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
    out = {"accuracy": (tp + tn) / len(y), "sensitivity": tp / (tp + fn) if tp + fn else None,
           "specificity": tn / (tn + fp) if tn + fp else None, "ppv": tp / (tp + fp) if tp + fp else None,
           "npv": tn / (tn + fn) if tn + fn else None, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0}
    if out["sensitivity"] is not None and out["specificity"] is not None:
        out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
    if y.any() and not y.all():
        out["auroc"] = auroc(y, score)
        out["auprc"] = average_precision(y, score)
    return out


def scalars(labels, probs, class_names, positive_class, threshold, n_bins: int = 15) -> dict:
    """Every scalar reported for one (re)sample: headline metrics, calibration, and per class for K > 2."""
    k = len(class_names)
    clipped = np.clip(probs, 1e-7, 1.0)
    out = {"ece": expected_calibration_error(labels, probs, n_bins), "mce": maximum_calibration_error(labels, probs, n_bins),
           "brier": brier_score(labels, probs),
           "log_loss": float(-np.log(clipped[np.arange(len(labels)), labels] / clipped.sum(axis=1)).mean())}
    if k == 2:
        return {**out, **_binary(labels, probs, positive_index(class_names, positive_class), threshold)}
    pred = probs.argmax(axis=1)
    out["accuracy"] = float((pred == labels).mean())
    out["f1_macro"] = float(skm.f1_score(labels, pred, average="macro", labels=list(range(k)), zero_division=0))
    present = np.unique(labels)
    if len(present) > 1:
        out["balanced_accuracy"] = float(skm.balanced_accuracy_score(labels, pred))
    if len(present) == k:
        out["auroc"] = float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
        out["auroc_micro"] = float(skm.roc_auc_score(np.eye(k)[labels], probs, average="micro"))
    for c, name in enumerate(class_names):
        y, hit = labels == c, pred == c
        tp, fn, fp, tn = int((hit & y).sum()), int((~hit & y).sum()), int((hit & ~y).sum()), int((~hit & ~y).sum())
        per = {"sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
               "ppv": tp / (tp + fp) if tp + fp else None, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
               "auroc": auroc(y, probs[:, c])}
        out.update({f"{metric}[{name}]": value for metric, value in per.items()})
    return out


def _cases(labels, probs, class_names, positive_class, threshold) -> dict:
    """{metric: (how many cases it rests on, what they are)} for the few-cases rule."""
    n = len(labels)
    if len(class_names) == 2:
        pos = positive_index(class_names, positive_class)
        y, hit = labels == pos, probs[:, pos] >= threshold
        positives, negatives = int(y.sum()), int((~y).sum())
        both = min(positives, negatives)
        rarer = ("case of the rarer class", "cases of the rarer class")
        return {"sensitivity": (positives, ("positive", "positives")), "specificity": (negatives, ("negative", "negatives")),
                "ppv": (int(hit.sum()), ("predicted positive", "predicted positives")),
                "npv": (int((~hit).sum()), ("predicted negative", "predicted negatives")),
                "auroc": (both, rarer), "auprc": (positives, ("positive", "positives")),
                "balanced_accuracy": (both, rarer), "f1": (positives, ("positive", "positives"))}
    out = {}
    pred = probs.argmax(axis=1)
    for c, name in enumerate(class_names):
        count, other = int((labels == c).sum()), int((labels != c).sum())
        cases = (f"{name} case", f"{name} cases")
        out.update({f"sensitivity[{name}]": (count, cases), f"f1[{name}]": (count, cases),
                    f"auroc[{name}]": (min(count, other), (f"case of the rarer side of {name}",
                                                           f"cases of the rarer side of {name}")),
                    f"specificity[{name}]": (other, (f"non-{name} case", f"non-{name} cases")),
                    f"ppv[{name}]": (int((pred == c).sum()), (f"predicted {name}", f"predicted {name}"))})
    return {**out, "_all": (n, ("case", "cases"))}


def bootstrap_intervals(labels, probs, class_names, positive_class=None, threshold=0.5, n: int = 1000, seed: int = 0,
                        level: float = 0.95, draws: Draws | None = None, n_bins: int = 15) -> dict:
    """{metric: {"value", "lower", "upper"[, "note"]}} for every scalar (headline, calibration, per class).

    `draws` (one `Draws` shared across the split, clustered by patient where keys are known) make one figure get
    one interval wherever it is shown; without them, `n` image resamples are drawn from `seed`. Resamples where a
    metric is undefined are left out; a metric resting on fewer than MIN_CASES cases gets a note, no interval.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    draws = draws or Draws(len(labels), n, seed)
    point = scalars(labels, probs, class_names, positive_class, threshold, n_bins)
    samples = {k: [] for k in point}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for idx in draws.indices:
            for k, v in scalars(labels[idx], probs[idx], class_names, positive_class, threshold, n_bins).items():
                if v is not None and k in samples:
                    samples[k].append(v)
    cases = _cases(labels, probs, class_names, positive_class, threshold)
    return {k: estimate(value, samples[k], *cases.get(k, cases.get("_all", (len(labels), ("case", "cases")))),
                        len(draws.indices), level) for k, value in point.items()}


def estimate(value, resampled, count: int, what, draws: int, level: float = 0.95) -> dict:
    """The one honesty rule for an interval, wherever a figure is shown (metrics, levels, the ensemble table, the
    ROC band): {"value", "lower", "upper"} from the resamples' quantiles, or lower and upper None with a "note"
    where the figure is undefined, defined in too few resamples, rests on fewer than MIN_CASES cases (`count`
    of `what`), or every resample gives the same value."""
    values = np.asarray([v for v in resampled if v is not None], dtype=np.float64)
    none = {"value": value, "lower": None, "upper": None}
    if value is None:  # e.g. PPV of a model that predicts no positives
        return {**none, "note": f"undefined: {counted(count, what)}"}
    if len(values) < max(10, draws // 10):
        return {**none, "note": f"defined in only {len(values)} of {draws} resamples: no interval"}
    if count < MIN_CASES:
        return {**none, "note": f"{counted(count, what)}: too few for an interval"}
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    if hi - lo == 0:  # every resample agrees: e.g. every image predicted positive gives sensitivity 1.000
        return {**none, "note": f"every resample gives {value:.3f}: no interval can be estimated"}
    return {"value": value, "lower": float(lo), "upper": float(hi)}


def auroc_interval(labels, probs, class_names, positive_class, draws: Draws, level: float = 0.95) -> dict:
    """The AUROC with its interval (or note) over `draws` alone, by `estimate`'s rule: the ensemble table's rows,
    one interval per figure, noted as the metrics table notes it."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    pos = positive_index(class_names, positive_class)

    def value(y, p):
        if len(np.unique(y)) < (len(class_names) if len(class_names) > 2 else 2):
            return None
        return auroc(y == pos, p[:, pos]) if pos is not None else skm.roc_auc_score(y, p, multi_class="ovr",
                                                                                     average="macro")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resampled = [value(labels[idx], probs[idx]) for idx in draws.indices]
    key = "auroc" if pos is not None else "_all"
    count, what = _cases(labels, probs, class_names, positive_class, 0.5).get(key, (len(labels), ("case", "cases")))
    return estimate(value(labels, probs), resampled, count, what, len(draws.indices), level)
