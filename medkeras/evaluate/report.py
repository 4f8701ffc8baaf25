"""Plots (matplotlib PNG) and one self-contained `report.html` for an evaluated split.

Every image is written to `plots/` and embedded in the page (base64), so the report can be mailed as one file.
File names are shown; patient identifiers never reach this module.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

import numpy as np
import yaml

from medkeras.utils import atomic_path, atomic_write_text


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _figure()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_roc_pr(labels, probs, pos, plots: Path) -> list[Path]:
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    plt = _figure()
    y = labels == pos
    if y.all() or not y.any():
        return []
    fpr, tpr, _ = roc_curve(y, probs[:, pos])
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right")
    out = [_save(fig, plots / "roc.png")]
    precision, recall, _ = precision_recall_curve(y, probs[:, pos])
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(recall, precision, lw=2)
    ax.axhline(y.mean(), color="k", ls="--", lw=0.8, label=f"prevalence {y.mean():.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    out.append(_save(fig, plots / "pr.png"))
    return out


def plot_confusion(cm, class_names, plots: Path) -> Path:
    plt = _figure()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(fig, plots / "confusion_matrix.png")


def plot_distribution(labels, probs, class_names, pos, threshold, plots: Path) -> Path:
    plt = _figure()
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
    return _save(fig, plots / "probability_distribution.png")


def plot_history(history_csv: Path, plots: Path) -> Path | None:
    if history_csv is None or not Path(history_csv).is_file():
        return None
    with open(history_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = _figure()
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            axes[0].plot(epochs, [float(r[key]) for r in rows], label=key)
    for key in ("accuracy", "val_accuracy", "val_auroc"):
        if key in rows[0]:
            axes[1].plot(epochs, [float(r[key]) if r[key] not in ("", "nan") else np.nan for r in rows], label=key)
    axes[0].set(xlabel="epoch", title="Loss")
    axes[1].set(xlabel="epoch", title="Accuracy / AUROC")
    for ax in axes:
        ax.legend(fontsize=8)
    return _save(fig, plots / "training_history.png")


def _fmt(value) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


HEADLINE = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1", "f1_macro", "sensitivity", "specificity", "ppv",
            "npv", "log_loss", "auroc_micro")


def write_report(out_dir, scored, dataset, config_dict, meta, history_csv=None) -> Path:
    """Plots into `out_dir/plots/` and the self-contained `out_dir/report.html`."""
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    m = scored["metrics"]
    labels, probs = scored["labels"], scored["probs"]
    class_names = dataset.class_names
    pos = class_names.index(m["positive_class"]) if "positive_class" in m else None
    threshold = m.get("threshold", 0.5)
    figures = []
    if pos is not None:
        figures += plot_roc_pr(labels, probs, pos, plots)
    figures.append(plot_confusion(m["confusion_matrix"], class_names, plots))
    figures.append(plot_distribution(labels, probs, class_names, pos, threshold, plots))
    hist = plot_history(history_csv, plots)
    if hist is not None:
        figures.append(hist)

    counts = dataset.counts()
    count_rows = "".join(
        f"<tr><th>{html.escape(s)}</th>" + "".join(f"<td>{counts[s][c]}</td>" for c in class_names)
        + f"<td>{sum(counts[s].values())}</td></tr>"
        for s in counts
    )
    metric_rows = "".join(f"<tr><th>{k}</th><td>{_fmt(m[k])}</td></tr>" for k in HEADLINE if k in m)
    sentence = ""
    if pos is not None:
        sentence = (
            f"<p class='op'>At threshold {threshold:.3f} on p({html.escape(class_names[pos])}): sensitivity "
            f"{_fmt(m.get('sensitivity'))}, specificity {_fmt(m.get('specificity'))} "
            f"(n = {m['n']}, {m['class_counts'][class_names[pos]]} positive).</p>"
        )
    warnings = list(m.get("notes", []))
    if m["n"] < 100:
        warnings.append(f"only {m['n']} images in this split: every figure here is uncertain")
    if scored.get("bad_files"):
        warnings.append(f"{len(scored['bad_files'])} unreadable files were skipped")
    warn_html = "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in warnings)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medkeras report: {html.escape(str(config_dict.get('name', '')))}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0}} th,td{{border:1px solid #ccc;padding:3px 10px;text-align:right}}
th{{background:#f3f3f3;text-align:left}} figure{{display:inline-block;margin:0.5em}} img{{max-width:520px}}
.warn{{background:#fff3cd;padding:6px 10px;border-left:4px solid #e0a800}} .op{{font-size:1.1em}}
pre{{background:#f7f7f7;padding:10px;overflow:auto}}
</style></head><body>
<h1>medkeras evaluation: {html.escape(str(config_dict.get('name', '')))} ({html.escape(scored['split'])} split)</h1>
<p>Model: {html.escape(', '.join(meta.get('backbones', [])))} &middot; data: {html.escape(str(dataset.name))}
&middot; image size {meta.get('image_size')} &middot; medkeras {html.escape(str(meta.get('medkeras_version')))}</p>
{warn_html}
<h2>Data</h2>
<table><tr><th>split</th>{''.join(f'<th>{html.escape(c)}</th>' for c in class_names)}<th>total</th></tr>{count_rows}</table>
<h2>Metrics</h2>
{sentence}
<table>{metric_rows}</table>
<h2>Plots</h2>
{''.join(_img(f) for f in figures)}
<h2>Config</h2>
<pre>{html.escape(yaml.safe_dump(config_dict, sort_keys=False))}</pre>
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
