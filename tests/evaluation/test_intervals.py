"""Intervals on real predictions: clustered by patient where slices are not independent, one draw shared by every
figure of a split, every reported figure with an interval, and a note instead of a degenerate one."""

import csv

import numpy as np
import pytest

from medkeras.config import EvalConfig
from medkeras.evaluation.intervals import Draws, bootstrap_intervals


def _real_predictions(tiny_run):
    """The tiny demo model's test predictions on BreastMNIST: (labels, probabilities), 156 real images."""
    with open(tiny_run[0] / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([0 if r["label"] == "malignant" else 1 for r in rows])
    p = np.array([float(r["p_malignant"]) for r in rows])
    return labels, np.stack([p, 1 - p], axis=1)


def _width(ci):
    return ci["upper"] - ci["lower"]


def test_cluster_bootstrap_is_wider_for_correlated_slices_and_alike_for_one_slice_per_patient(tiny_run):
    labels, probs = _real_predictions(tiny_run)
    names = ["malignant", "benign"]
    # five slices per patient, as alike as slices of one lesion: treating them as independent cases understates the
    # uncertainty; resampling patients does not
    many_labels, many_probs = np.repeat(labels, 5), np.repeat(probs, 5, axis=0)
    patients = np.repeat(np.arange(len(labels)), 5)
    naive = bootstrap_intervals(many_labels, many_probs, names, "malignant", draws=Draws(len(many_labels), 400, 1))
    clustered = bootstrap_intervals(many_labels, many_probs, names, "malignant",
                                    draws=Draws(len(many_labels), 400, 1, groups=patients))
    assert _width(clustered["auroc"]) > 1.8 * _width(naive["auroc"])  # ~sqrt(5)
    assert Draws(len(many_labels), 10, 1, groups=patients).method.startswith("cluster bootstrap over 156 patients")
    # one slice per patient: the same thing in expectation
    single = bootstrap_intervals(labels, probs, names, "malignant", draws=Draws(len(labels), 400, 2))
    per_patient = bootstrap_intervals(labels, probs, names, "malignant",
                                      draws=Draws(len(labels), 400, 2, groups=np.arange(len(labels))))
    for key in ("auroc", "accuracy", "ece", "brier"):
        assert _width(per_patient[key]) == pytest.approx(_width(single[key]), rel=0.25), key


def test_every_figure_has_an_interval_or_says_why_not(tiny_run):
    labels, probs = _real_predictions(tiny_run)
    names = ["malignant", "benign"]
    ci = bootstrap_intervals(labels, probs, names, "malignant", n=300)
    for key in ("auroc", "auprc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "ece", "mce", "brier",
                "log_loss"):
        entry = ci[key]
        assert entry.get("note") or entry["lower"] <= entry["value"] <= entry["upper"], key
    few = np.concatenate([np.flatnonzero(labels == 0)[:3], np.flatnonzero(labels == 1)[:60]])  # 3 positives
    ci = bootstrap_intervals(labels[few], probs[few], names, "malignant", n=300)
    assert ci["sensitivity"]["lower"] is None and ci["sensitivity"]["note"] == "3 positives: too few for an interval"
    assert "too few" not in (ci["specificity"].get("note") or "")  # 60 negatives are enough
    everything_positive = np.stack([np.ones(len(labels)) * 0.9, np.ones(len(labels)) * 0.1], axis=1)
    ci = bootstrap_intervals(labels, everything_positive, names, "malignant", n=100)
    assert "every resample gives 1.000" in ci["sensitivity"]["note"]
    nothing_positive = everything_positive[:, ::-1]  # PPV undefined: it says so rather than leaving a bare null
    ci = bootstrap_intervals(labels, nothing_positive, names, "malignant", n=100)
    assert ci["ppv"]["value"] is None and ci["ppv"]["note"] == "undefined: 0 predicted positives"


def test_per_class_figures_of_a_k_class_task_have_intervals():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    logits = np.eye(3)[labels] * 1.5 + rng.normal(size=(180, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ci = bootstrap_intervals(labels, probs, ["normal", "pneumonia", "covid"], n=200)
    for name in ("normal", "pneumonia", "covid"):
        for metric in ("auroc", "sensitivity", "specificity", "ppv", "f1"):
            entry = ci[f"{metric}[{name}]"]
            assert entry["lower"] <= entry["value"] <= entry["upper"], (metric, name)


def test_one_figure_one_interval_in_the_report_and_the_ensemble_table(tiny_run):
    import json

    metrics = json.loads((tiny_run[0] / "metrics.json").read_text())
    saved = next(r for r in metrics["ensemble"] if r["model"] == "model as saved")
    auroc = metrics["test"]["intervals"]["auroc"]
    assert (saved["auroc_lower"], saved["auroc_upper"]) == (auroc["lower"], auroc["upper"])
    assert metrics["test"]["resampling"] == "bootstrap over images (1000 resamples)"


def test_a_temperature_at_its_search_bound_is_flagged_not_used():
    from medkeras.evaluation.evaluate import calibrate_on_validation

    labels = np.array([0, 1] * 20)
    logits = np.tile([[4.0, -4.0]], (40, 1))  # a degenerate model: one class throughout, sure of it
    fitted = calibrate_on_validation(labels, logits, ["a", "b"], "b", EvalConfig())
    assert fitted["temperature"] == 1.0 and fitted["temperature_fitted"] == pytest.approx(np.exp(3), rel=0.02)
    assert "search bound" in fitted["temperature_note"]


def test_fast_auroc_and_average_precision_equal_sklearn(tiny_run):
    """The bootstrap's rank-based AUROC and AP equal sklearn's on real predictions, rounded to force ties."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from medkeras.evaluation.intervals import auroc, average_precision

    labels, probs = _real_predictions(tiny_run)
    y = labels == 0
    for digits in (6, 2, 1):
        score = np.round(probs[:, 0], digits)
        assert auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
        assert average_precision(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)
    assert auroc(np.ones(5, bool), np.arange(5)) is None
