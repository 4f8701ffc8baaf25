"""The report's figures (matplotlib, PNG): ROC with a bootstrap band, PR, reliability (each point with its count),
confusion matrix, training history, probability distribution per class, and metrics against the threshold."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medkeras.evaluation.calibration import reliability_bins
from medkeras.evaluation.metrics import softmax
from medkeras.utils import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def roc_with_band(y, score, out: Path, draws=(), level: float = 0.95, note: str | None = None) -> Path:
    """The ROC curve with a band from the split's own resamples (`draws`: the ones its AUROC interval comes from,
    whole patients where known); no band where that interval has a `note` instead (too few cases, ...)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    grid = np.linspace(0, 1, 101)
    curves = []
    for idx in [] if note else draws:
        if y[idx].all() or not y[idx].any():
            continue
        fpr, tpr, _ = roc_curve(y[idx], score[idx])
        curves.append(np.interp(grid, fpr, tpr))
    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.3, 4))
    if curves:
        lo, hi = np.quantile(curves, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.25, label=f"{int(level * 100)}% bootstrap band")
    elif note:
        ax.text(0.98, 0.3, f"no band: {note}", ha="right", fontsize=7, wrap=True, transform=ax.transAxes)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(y, score):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out)


def pr_curve(y, score, out: Path) -> Path:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    precision, recall, _ = precision_recall_curve(y, score)
    fig, ax = plt.subplots(figsize=(4.3, 4))
    ax.plot(recall, precision, lw=2, label=f"AUPRC {average_precision_score(y, score):.3f}")
    ax.axhline(y.mean(), color="k", ls="--", lw=0.8, label=f"prevalence {y.mean():.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out)


def roc_one_vs_rest(labels, probs, class_names, out: Path) -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for i, c in enumerate(class_names):
        y = labels == i
        if y.any() and not y.all():
            fpr, tpr, _ = roc_curve(y, probs[:, i])
            ax.plot(fpr, tpr, lw=1.5, label=f"{c} {roc_auc_score(y, probs[:, i]):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, one vs rest")
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, out)


def reliability(labels, logits, temperature, n_bins, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.3, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for title, t in (("before (T = 1)", 1.0), (f"after (T = {temperature:.2f})", temperature)):
        bins = reliability_bins(labels, softmax(logits, t), n_bins)
        used = bins["counts"] > 0
        line, = ax.plot(bins["confidence"][used], bins["accuracy"][used], "o-", ms=4, label=title)
        for x, acc, count in zip(bins["confidence"][used], bins["accuracy"][used], bins["counts"][used]):
            ax.annotate(str(int(count)), (x, acc), textcoords="offset points", xytext=(0, 5), ha="center",
                        fontsize=6, color=line.get_color())  # how many images each point rests on
    ax.set(xlabel="confidence (top-label probability)", ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out)


def confusion(cm, class_names, out: Path) -> Path:
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(fig, out)


def distribution(labels, probs, class_names, pos, threshold, out: Path) -> Path:
    plt = _plt()
    score_class = pos if pos is not None else probs.shape[1] - 1
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bins = np.linspace(0, 1, 26)
    for i, c in enumerate(class_names):
        if (labels == i).any():
            ax.hist(probs[labels == i, score_class], bins=bins, alpha=0.6, label=f"true {c}")
    if pos is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel=f"p({class_names[score_class]})", ylabel="images", title="Predicted probability by class")
    ax.legend(fontsize=8)
    return _save(fig, out)


def metrics_vs_threshold(y, score, threshold, out: Path) -> Path:
    plt = _plt()
    grid = np.linspace(0, 1, 101)
    pred = score[None, :] >= grid[:, None]
    tp = (pred & y).sum(1)
    fp = (pred & ~y).sum(1)
    fn = (~pred & y).sum(1)
    tn = (~pred & ~y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = {
            "sensitivity": tp / np.maximum(tp + fn, 1),
            "specificity": tn / np.maximum(tn + fp, 1),
            "PPV": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan),
            "F1": 2 * tp / np.maximum(2 * tp + fp + fn, 1),
        }
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, values in curves.items():
        ax.plot(grid, values, label=name)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"chosen {threshold:.2f}")
    ax.set(xlabel="threshold on p(positive)", title="Metrics against threshold", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(fig, out)


def history(history_csv, out: Path) -> Path | None:
    if history_csv is None or not Path(history_csv).is_file():
        return None
    with open(history_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = _plt()

    def column(key):
        return [float(r[key]) if r.get(key) not in (None, "", "nan") else np.nan for r in rows]

    epochs = [int(r["epoch"]) for r in rows]  # train_log.csv counts epochs from 1, as the console does
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            axes[0].plot(epochs, column(key), label=key)
    # runs before the training accuracy was logged as `accuracy` called it by Keras' metric names
    for key in ("accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "val_accuracy", "val_auroc"):
        if key in rows[0]:
            axes[1].plot(epochs, column(key), label=key.replace("sparse_categorical_", "").replace("categorical_", ""))
    axes[0].set(xlabel="epoch", title="Loss")
    axes[1].set(xlabel="epoch", title="Accuracy / AUROC")
    for ax in axes:
        ax.legend(fontsize=8)
    return _save(fig, out)


def draw_all(plot_dir: Path, scored, class_names, pos, threshold, eval_cfg, history_csv=None) -> list[Path]:
    labels, probs, logits = scored["labels"], scored["probs"], scored["logits"]
    m = scored["metrics"]
    figures = []
    if pos is not None:
        y = labels == pos
        if y.any() and not y.all():
            note = m.get("intervals", {}).get("auroc", {}).get("note")
            figures.append(roc_with_band(y, probs[:, pos], plot_dir / "roc.png", scored.get("draws") or (),
                                         eval_cfg.ci_level, note))
            figures.append(pr_curve(y, probs[:, pos], plot_dir / "pr.png"))
            figures.append(metrics_vs_threshold(y, probs[:, pos], threshold, plot_dir / "metrics_vs_threshold.png"))
    elif len(np.unique(labels)) > 1:
        figures.append(roc_one_vs_rest(labels, probs, class_names, plot_dir / "roc.png"))
    temperature = m.get("calibration", {}).get("temperature", 1.0)
    figures.append(reliability(labels, logits, temperature, eval_cfg.ece_bins, plot_dir / "reliability.png"))
    figures.append(confusion(m["confusion_matrix"], class_names, plot_dir / "confusion_matrix.png"))
    figures.append(distribution(labels, probs, class_names, pos, threshold, plot_dir / "probability_distribution.png"))
    hist = history(history_csv, plot_dir / "training_history.png")
    if hist is not None:
        figures.append(hist)
    return figures
