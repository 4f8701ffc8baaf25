"""One self-contained `report.html` per evaluated split: data, metrics with intervals, operating point,
calibration, ensemble table, Grad-CAM, error review and the config.

Plots are drawn by `plots.py` into `plots/` and embedded (base64), so the page can be mailed as one file.
File names are shown; patient identifiers never reach this module (only hashed keys exist past the reader).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import yaml

from medkeras.evaluation import plots
from medkeras.evaluation.thresholds import parse_rule
from medkeras.models.outputs import positive_index
from medkeras.progress import counted
from medkeras.utils import atomic_write_text

HEADLINE = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1", "f1_macro", "sensitivity", "specificity", "ppv",
            "npv", "auroc_micro", "log_loss")
SMALL_TEST = 200  # below this, intervals are wide: say so


def _fmt(value, digits=3) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _with_ci(metrics, key, digits=3) -> str:
    """A figure with its interval, or with the note saying why it has none (too few cases, all resamples equal)."""
    ci = metrics.get("intervals", {}).get(key)
    value = ci["value"] if ci else metrics.get(key)
    if ci and ci.get("note"):
        return f"{_fmt(value, digits)} <em>({html.escape(ci['note'])})</em>"
    if not ci or ci.get("lower") is None:
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{_fmt(ci['lower'], digits)}, {_fmt(ci['upper'], digits)}]"


def _per_class_table(m, class_names) -> str:
    """K > 2: each class one-vs-rest, every figure with its interval."""
    if len(class_names) <= 2:
        return ""
    columns = ("auroc", "sensitivity", "specificity", "ppv", "f1")
    rows = [[html.escape(c), *[_with_ci(m, f"{k}[{c}]") for k in columns], int(m["class_counts"][c])]
            for c in class_names]
    return "<h3>Per class (one vs rest)</h3>" + _table(rows, ["class", *columns, "n"])


LEVEL_ROWS = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "f1", "accuracy", "balanced_accuracy", "f1_macro",
              "brier", "ece")


def _levels_table(m, fixed: bool = False, item: str = "slice") -> str:
    """Item (slice, or study), series and patient results side by side, each with its n, threshold and resampling."""
    levels = m.get("levels") or {}
    if not levels:
        return ""
    columns = [(item, m), *levels.items()]
    rows = [[k, *[_with_ci(lm, k) for _, lm in columns]] for k in LEVEL_ROWS
            if any(k in lm or k in lm.get("intervals", {}) for _, lm in columns)]
    what = "threshold (fixed)" if fixed else "threshold (chosen on validation at this level)"
    rows.append([what, *[_fmt(lm.get("threshold")) for _, lm in columns]])
    rows.append(["intervals", *[html.escape(str(lm.get("resampling", "none"))) for _, lm in columns]])
    header = ["metric", *[f"{name} (n = {lm.get('n')})" for name, lm in columns]]
    rule = html.escape(str(next(iter(levels.values())).get("rule", "mean")))
    items = "studies'" if item == "study" else "slices'"
    return (f"<h3>By {item}, series and patient</h3><p>A group's logits are its {items} combined by " + rule +
            f"; a group is positive if any {item} is (or as its patient_label says).</p>" + _table(rows, header))


def _img(path: Path, width=None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    style = f' style="width:{width}px"' if width else ""
    return f'<figure><img alt="{html.escape(path.stem)}"{style} src="data:image/png;base64,{data}"></figure>'


def _thumb(pixels, caption, size=112) -> str:
    from PIL import Image

    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8).squeeze()).resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure class="thumb"><img src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(rows, header) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _data_section(dataset, warnings) -> str:
    from medkeras.data.splits import (
        duplicates_across_splits,
        near_duplicates_across_splits,
        patients_per_split,
    )

    counts = dataset.counts()
    rows = [[html.escape(s), *[counts[s][c] for c in dataset.class_names], sum(counts[s].values())] for s in counts]
    parts = [_table(rows, ["split", *dataset.class_names, "total"])]
    for what, found in (("identical images", duplicates_across_splits(dataset)),
                        ("slices at the same position of one scan (other series or reconstructions)",
                         near_duplicates_across_splits(dataset))):
        parts.append(f"<p>{what.capitalize()} across splits: " + ", ".join(f"{k} {v}" for k, v in found["counts"].items())
                     + "</p>")
        leaks = {k: v for k, v in found["counts"].items() if v and "train" in k}
        if leaks:
            warnings.append(f"{what} appear in train and in another split (" +
                            ", ".join(f"{k}: {v}" for k, v in leaks.items()) + "): those metrics are optimistic")
    patients = patients_per_split(dataset)
    if patients:
        parts.append("<p>Patients per split: " + ", ".join(f"{k} {v}" for k, v in patients["counts"].items()) + "; shared: "
                     + ", ".join(f"{k} {v}" for k, v in patients["shared"].items()) + "</p>")
        shared = {k: v for k, v in patients["shared"].items() if v}
        if shared:
            warnings.append("patients appear in more than one split (" + ", ".join(f"{k}: {v}" for k, v in shared.items()) + ")")
    else:
        parts.append("<p>Patients per split: unknown (the source has no patient IDs).</p>")
    return "".join(parts)


def _face(image):
    """What a thumbnail shows of an item: a slice itself, a study (D, H, W, C) its middle slice."""
    return image[image.shape[0] // 2] if image.ndim == 4 else image


def _attention_section(scored, pos, k, model=None) -> str:
    """Studies: the slices that drove each prediction (series members' gated attention, averaged over members),
    for the most confident true positives and the worst false negatives; each slice with its weight and, with the
    model at hand, its Grad-CAM for the positive class through the attention pooling (`gradcam.SeriesCAM`)."""
    attention = scored.get("attention") or {}
    if not attention:
        return ("<p>Grad-CAM and slice attention: not shown; this model's members see studies whole (slab or volume "
                "members); only series members weigh slices.</p>")
    if k <= 0 or pos is None:
        return "<p>Slice attention: not shown (multi-class).</p>"
    labels, probs, pred, images = scored["labels"], scored["probs"], scored["pred"], scored["images"]
    weights = np.mean(list(attention.values()), axis=0)  # (N, D)
    tp = np.flatnonzero((labels == pos) & (pred == pos))
    tp = tp[np.argsort(-probs[tp, pos])][:k]
    fn = np.flatnonzero((labels == pos) & (pred != pos))
    fn = fn[np.argsort(probs[fn, pos])][:k]
    chosen_all = [int(i) for i in tp] + [int(i) for i in fn]
    maps = {}
    if model is not None and chosen_all:
        from medkeras.data.resize import to_model_channels
        from medkeras.evaluation.gradcam import overlay, study_gradcam

        studies = to_model_channels(np.asarray(images[chosen_all], np.float32)).numpy()
        cams = study_gradcam(model, studies, pos)
        maps = {} if cams is None else {i: (studies[j], cams[j]) for j, i in enumerate(chosen_all)}
    rows = []
    for kind, chosen in (("TP", tp), ("FN", fn)):
        for i in chosen:
            top = np.argsort(-weights[i])[:3]
            if i in maps:
                pixels, cam = maps[i]
                cells = "".join(_thumb(overlay(pixels[d], cam[d]), f"slice {d}: {weights[i, d]:.2f}") for d in top)
            else:
                cells = "".join(_thumb(images[i][d].astype(np.float32), f"slice {d}: {weights[i, d]:.2f}")
                                for d in top)
            rows.append(f"<p>{kind} {html.escape(str(scored['names'][i]))} p={probs[i, pos]:.2f}</p>{cells}")
    return ("<p>The slices each study's prediction weighed most (attention of the series members, with their Grad-CAM "
            "for the positive class through the attention pooling; "
            f"{', '.join(map(html.escape, attention))}; every weight in attention.csv).</p>" + ("".join(rows) or
                                                                                            "<p>no positive studies in this split.</p>"))


def _gradcam_section(model, scored, class_names, pos, k) -> str:
    if scored["images"] is not None and scored["images"].ndim == 5:
        return _attention_section(scored, pos, k, model)
    if model is None or k <= 0 or pos is None:
        return "<p>Grad-CAM: not shown (multi-class, or no model at hand).</p>"
    from medkeras.evaluation.gradcam import gradcam, overlay

    labels, probs, pred = scored["labels"], scored["probs"], scored["pred"]
    tp = np.flatnonzero((labels == pos) & (pred == pos))
    tp = tp[np.argsort(-probs[tp, pos])][:k]
    fn = np.flatnonzero((labels == pos) & (pred != pos))
    fn = fn[np.argsort(probs[fn, pos])][:k]
    chosen = list(tp) + list(fn)
    if not chosen:
        return "<p>Grad-CAM: no positive images in this split.</p>"
    from medkeras.data.resize import to_model_pixels

    pixels = to_model_pixels(scored["images"][chosen], int(scored["image_size"]))
    maps = gradcam(model, pixels, np.full(len(chosen), pos))
    cells = []
    for j, i in enumerate(chosen):
        kind = "TP" if i in tp else "FN"
        name = str(scored["names"][i])  # unique: the item's path relative to the data's folder
        cells.append(_thumb(overlay(pixels[j], maps[j]), f"{kind} {name} p={probs[i, pos]:.2f}"))
    return ("<p>Evidence for the positive class: the most confident true positives, then the worst false negatives.</p>"
            + "".join(cells))


def _errors_section(scored, class_names, pos, k=8) -> str:
    if pos is None:
        return ""
    labels, probs, pred = scored["labels"], scored["probs"], scored["pred"]
    images = scored["images"]
    if images is None:  # scored from logits alone (cross-validation's out-of-fold predictions): names only
        wrong = np.flatnonzero((labels == pos) != (pred == pos))
        wrong = wrong[np.argsort(-np.abs(probs[wrong, pos] - 0.5))][: 2 * k]
        return "<p>Most confident errors: " + (", ".join(html.escape(f"{scored['names'][i]} p={probs[i, pos]:.2f}")
                                                         for i in wrong) or "none") + "</p>"
    out = []
    for title, idx in (
        ("Worst false negatives", np.flatnonzero((labels == pos) & (pred != pos))),
        ("Worst false positives", np.flatnonzero((labels != pos) & (pred == pos))),
    ):
        order = np.argsort(probs[idx, pos]) if title.startswith("Worst false n") else np.argsort(-probs[idx, pos])
        idx = idx[order][:k]
        cells = "".join(
            _thumb(_face(images[i]).astype(np.float32), f"{scored['names'][i]} p={probs[i, pos]:.2f}") for i in idx
        )
        out.append(f"<h3>{title} ({len(order)})</h3>" + (cells or "<p>none</p>"))
    return "".join(out)


def _band_note(m) -> str:
    """Why the ROC plot has no band, where the AUROC interval is a note (the rule the tables follow)."""
    note = m.get("intervals", {}).get("auroc", {}).get("note")
    return f"<p>The ROC plot has no band: {html.escape(note)}.</p>" if note else ""


def _tta_words(scored) -> str:
    """How the split was scored: TTA off, or on with its flips; and whether that is what the model serves."""
    flips = scored.get("tta_flips") or []
    item = "study" if scored.get("studies") else "image"
    words = f"TTA: mean over the {item} and its {' and '.join(flips)} flip{'s' if len(flips) > 1 else ''}" if flips \
        else "TTA off"
    if scored.get("tta_as_served") is False:
        words += " (not as the model serves: predict and the export score it as trained)"
    return words


def write_report(out_dir, scored, dataset, cfg, meta, model=None, history_csv=None) -> Path:
    """Plots into `out_dir/plots/` and the self-contained `out_dir/report.html`."""
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    m = scored["metrics"]
    class_names = dataset.class_names
    pos = positive_index(class_names, dataset.positive_class)
    threshold = m.get("threshold", 0.5)
    studies = meta.get("model_input", "slice") != "slice"  # a study model: each item a CT study
    scored = {**scored, "image_size": meta.get("image_size", cfg.data.image_size), "studies": studies}
    items = "studies" if studies else "images"
    warnings = list(m.get("notes", []))
    for note in ("temperature_note", "calibration_note", "bag_note"):  # said when the model was calibrated
        if meta.get(note):
            warnings.append(meta[note])

    figures = plots.draw_all(plot_dir, scored, class_names, pos, threshold, cfg.eval, history_csv)
    data_html = _data_section(dataset, warnings)
    if m["n"] < SMALL_TEST:
        warnings.append(f"only {m['n']} {items} in the {scored['split']} split: intervals are wide, read them before the point values")
    if scored.get("bad_files"):
        n = len(scored["bad_files"])
        warnings.append(f"{counted(n, 'unreadable study' if studies else 'unreadable file')} {'was' if n == 1 else 'were'} skipped")
    metric_rows = [[k, _with_ci(m, k)] for k in HEADLINE if k in m]
    level = int(round(100 * m.get("ci_level", 0.95)))
    sentence = ""
    if pos is not None:
        rule = str(meta.get("threshold_rule", cfg.eval.threshold))
        how = "fixed" if parse_rule(rule)[0] == "fixed" else f"rule: {html.escape(rule)}, chosen on validation"
        sentence = (
            f"<p class='op'>At threshold {threshold:.3f} on p({html.escape(class_names[pos])}) ({how}): "
            f"sensitivity {_with_ci(m, 'sensitivity')}, specificity {_with_ci(m, 'specificity')} "
            f"(n = {m['n']}, {counted(m['class_counts'][class_names[pos]], ('positive', 'positives'))}).</p>"
        )
    cal = m.get("calibration", {})
    cal_keys = ("ece", "ece_floor", "mce", "brier")
    cal_rows = [["before (T = 1)", *[_fmt(cal.get("before", {}).get(k), 4) for k in cal_keys]],
                [f"after (T = {cal.get('temperature', 1.0):.3f})",
                 *[_with_ci(m, k, 4) if k in m.get("intervals", {}) else _fmt(cal.get("after", {}).get(k), 4)
                   for k in cal_keys]]]
    ens_rows = [[html.escape(r["model"]), _with_ci({"intervals": {"auroc": {
                    "value": r["auroc"], "lower": r.get("auroc_lower"), "upper": r.get("auroc_upper"),
                    "note": r.get("auroc_note")}}}, "auroc"),
                 _fmt(r["auprc"]), _fmt(r["accuracy"]), _fmt(r["ece"], 4)] for r in scored.get("ensemble", [])]
    temperature = cal.get("temperature", 1.0)
    ensemble_html = _table(ens_rows, ["model", f"AUROC [{level}% CI]", "AUPRC", "accuracy", f"ECE (T = {temperature:.3f})"]
                           ) if ens_rows else "<p>single model</p>"
    warn_html = "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in warnings)
    config_dict = cfg.to_dict()
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medkeras report: {html.escape(str(dataset.name))}, {html.escape(str(cfg.name))}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0}} th,td{{border:1px solid #ccc;padding:3px 10px;text-align:right}}
th{{background:#f3f3f3}} td:first-child{{text-align:left}} figure{{display:inline-block;margin:0.4em;vertical-align:top}}
img{{max-width:520px}} .thumb img{{width:112px;image-rendering:pixelated}} figcaption{{font-size:0.75em;max-width:120px;overflow-wrap:anywhere}}
.warn{{background:#fff3cd;padding:6px 10px;border-left:4px solid #e0a800}} .op{{font-size:1.1em}}
pre{{background:#f7f7f7;padding:10px;overflow:auto}}
</style></head><body>
<h1>medkeras evaluation: {html.escape(str(dataset.name))} ({html.escape(scored['split'])} split)</h1>
<p>Model: {html.escape(', '.join(meta.get('backbones', [])))} (config {html.escape(str(cfg.name))}) &middot; data:
{html.escape(str(cfg.data.source))}
&middot; {f"volume size {meta.get('volume_size')}" if studies else f"image size {meta.get('image_size')}"}
&middot; {html.escape(_tta_words(scored))}
&middot; medkeras {html.escape(str(meta.get('medkeras_version')))}</p>
{warn_html}
<h2>Data</h2>{data_html}
<h2>Metrics ({level}% intervals: {html.escape(str(m.get('resampling', 'none')))})</h2>
{sentence}
{_table(metric_rows, ["metric", f"value [{level}% CI]"])}
{_per_class_table(m, class_names)}
{_levels_table(m, parse_rule(str(meta.get("threshold_rule", cfg.eval.threshold)))[0] == "fixed", "study" if studies else "slice")}
<h2>Calibration ({cfg.eval.ece_bins} bins)</h2>
{_table(cal_rows, ["probabilities", "ECE", "ECE if perfectly calibrated (sampling floor)", "MCE", "Brier"])}
<p>The floor is the mean ECE that predictions with these confidences would show on {m.get('n')} {items} if they were
perfectly calibrated: an ECE near it is as calibrated as this test set can tell.</p>
<h2>Plots</h2>
{''.join(_img(f) for f in figures)}
{_band_note(m)}
<h2>Ensemble</h2>
{ensemble_html}
<h2>Grad-CAM</h2>
{_gradcam_section(model, scored, class_names, pos, cfg.eval.gradcam_examples)}
<h2>Error review</h2>
{_errors_section(scored, class_names, pos)}
<h2>Config</h2>
<pre>{html.escape(yaml.safe_dump(config_dict, sort_keys=False))}</pre>
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path
