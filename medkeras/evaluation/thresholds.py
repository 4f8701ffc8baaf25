"""Operating points for binary classifiers: a rule, chosen on validation, applied unchanged to test.

Rules: a number (`0.5`), `youden` (max sensitivity + specificity - 1), `f1` (max F1), `sensitivity@0.95` (the
highest threshold whose sensitivity is at least 0.95) and `specificity@0.90` (the lowest threshold whose
specificity is at least 0.90). Thresholds apply as `p(positive) >= t`.
"""

from __future__ import annotations

import re

import numpy as np

from medkeras.errors import ConfigError

_TARGET = re.compile(r"^(sensitivity|specificity)@(0(?:\.\d+)?|1(?:\.0+)?)$")


def parse_rule(rule) -> tuple[str, float | None]:
    """'0.3' -> ('fixed', 0.3); 'youden' -> ('youden', None); 'sensitivity@0.95' -> ('sensitivity', 0.95)."""
    text = str(rule).strip().lower()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {value}")
        return "fixed", value
    if text in ("youden", "f1"):
        return text, None
    match = _TARGET.match(text)
    if match:
        return match.group(1), float(match.group(2))
    raise ConfigError(
        f"unknown threshold rule '{rule}' (a number, youden, f1, sensitivity@0.95 or specificity@0.90)"
    )


def check_choosable(rule, labels, positive_index, class_names, source) -> None:
    """Refuse, before anything trains, a rule (not a number) that must choose on a validation split holding one
    class: the run would train, then fail at its end, and resume there again."""
    from medkeras.errors import DataError

    if positive_index is None or parse_rule(rule)[0] == "fixed":
        return
    positive = np.asarray(labels) == positive_index
    if len(positive) and (positive.all() or not positive.any()):
        held = class_names[positive_index] if positive.all() else next(
            (c for k, c in enumerate(class_names) if k != positive_index), "negative")
        raise DataError(source, f"the validation split holds only '{held}' items, and eval.threshold '{rule}' is "
                                "chosen on both classes: give a split column, more patients, or a number "
                                "(--set eval.threshold=0.5)")


def choose_threshold(rule, positive: np.ndarray, scores: np.ndarray) -> float:
    """The threshold `rule` picks on (`positive` bool labels, `scores` = p(positive)): a number as given, a rule's
    chosen validation score moved halfway down to the next lower score (`_between`)."""
    kind, target = parse_rule(rule)
    if kind == "fixed":
        return float(target)
    scores = np.asarray(scores, dtype=np.float64)
    return _between(_chosen_score(kind, target, rule, positive, scores), scores)


def _chosen_score(kind, target, rule, positive, scores: np.ndarray) -> float:
    """The validation score at which `rule` (not fixed) labels best."""
    from sklearn.metrics import (  # here: config checks import this module
        precision_recall_curve,
        roc_curve,
    )

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ConfigError(f"threshold rule '{rule}' needs both classes in the validation split")
    if kind == "f1":
        precision, recall, thresholds = precision_recall_curve(positive, scores)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        return float(thresholds[int(np.argmax(f1[:-1]))])
    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if kind == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if kind == "sensitivity":
        ok = np.flatnonzero(tpr >= target)  # thresholds fall along the curve: the first such is the highest
        return float(thresholds[ok[0]])
    specificity = 1.0 - fpr
    ok = np.flatnonzero(specificity >= target)  # the last such is the lowest threshold keeping the target
    return float(thresholds[ok[-1]])


def _between(threshold: float, scores: np.ndarray) -> float:
    """The chosen validation score `threshold` moved halfway down to the next lower score: validation is labelled
    exactly as at the score itself (`p >= threshold`), but no case sits on the operating point. On the score, a
    test case scoring as a validation case does (a rescan, a duplicate) took either label as the float32 rounding
    of each door fell (a SavedModel labelled a real CT study otherwise than eval did, 1e-7 apart)."""
    lower = scores[scores < threshold]
    return float((threshold + lower.max()) / 2 if lower.size else threshold / 2)
