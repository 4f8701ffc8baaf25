"""Calibration: ECE / MCE with equal-width bins (as MONAI and Guo et al. 2017), Brier score, temperature scaling.

The temperature is fitted on validation logits (minimum negative log-likelihood), saved with the model and
applied wherever probabilities are produced (eval, predict, export).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from medkeras.evaluation.metrics import softmax


def _bin_index(confidence, n_bins: int):
    """(edges, the equal-width bin over (0, 1] of each confidence)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return edges, np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def reliability_bins(labels, probs, n_bins: int = 15) -> dict:
    """Top-label confidence vs accuracy in `n_bins` equal-width bins over (0, 1]."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges, index = _bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": edges,
            "counts": counts,
            "confidence": np.where(counts > 0, conf_sum / np.maximum(counts, 1), np.nan),
            "accuracy": np.where(counts > 0, acc_sum / np.maximum(counts, 1), np.nan),
        }


def expected_calibration_error(labels, probs, n_bins: int = 15) -> float:
    bins = reliability_bins(labels, probs, n_bins)
    used = bins["counts"] > 0
    gaps = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float((bins["counts"][used] / bins["counts"].sum() * gaps).sum())


def ece_floor(probs, n_bins: int = 15, n: int = 1000, seed: int = 0) -> float:
    """The ECE that perfectly calibrated predictions with these confidences would still show on this many images.

    ECE is biased upwards on small test sets: each bin's accuracy is an estimate from its few images. Drawing
    "correct" with probability equal to each image's confidence (perfect calibration by construction) `n` times
    gives the mean ECE from sampling alone; a measured ECE near it is as calibrated as the test set can tell.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    onehot = np.eye(n_bins)[_bin_index(confidence, n_bins)[1]]  # (N, bins): the bins `reliability_bins` uses
    rng, total, chunk = np.random.default_rng(seed), 0.0, max(1, 2**22 // max(1, len(confidence)))
    for start in range(0, n, chunk):  # draws in chunks of ~4M images: memory stays small for large test sets
        correct = rng.random((min(chunk, n - start), len(confidence))) < confidence  # (draws, N)
        accuracy_sum = correct.astype(np.float64) @ onehot  # (draws, bins)
        gaps = np.abs(accuracy_sum - (confidence @ onehot)) / len(confidence)  # counts/N * |acc - conf| per bin
        total += float(gaps.sum())
    return total / n


def maximum_calibration_error(labels, probs, n_bins: int = 15) -> float:
    bins = reliability_bins(labels, probs, n_bins)
    used = bins["counts"] > 0
    return float(np.abs(bins["accuracy"][used] - bins["confidence"][used]).max())


def brier_score(labels, probs) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot label (binary: 2x sklearn's)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def nll(labels, logits, temperature: float = 1.0) -> float:
    probs = softmax(logits, temperature).astype(np.float64)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), np.asarray(labels)], 1e-12, 1.0)).mean())


LOG_T_BOUNDS = (-3.0, 3.0)


def at_search_bound(temperature: float) -> bool:
    """A fitted temperature at its search bound (e^-3 or e^3 = 20.09): the validation logits are degenerate (one
    class predicted throughout, or no signal), so scaling by it would only hide that."""
    return any(abs(np.log(temperature) - b) < 1e-2 for b in LOG_T_BOUNDS)


def fit_temperature(labels, logits) -> float:
    """The T > 0 minimizing validation NLL of softmax(logits / T) (searched over log T in [-3, 3])."""
    labels = np.asarray(labels)
    result = minimize_scalar(lambda log_t: nll(labels, logits, float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded")
    temperature = float(np.exp(result.x))
    return temperature if nll(labels, logits, temperature) <= nll(labels, logits, 1.0) else 1.0


def calibration_summary(labels, probs, n_bins: int = 15) -> dict:
    return {
        "ece": expected_calibration_error(labels, probs, n_bins),
        "ece_floor": ece_floor(probs, n_bins),  # what a perfectly calibrated model would show on this many images
        "mce": maximum_calibration_error(labels, probs, n_bins),
        "brier": brier_score(labels, probs),
        "bins": n_bins,
    }
