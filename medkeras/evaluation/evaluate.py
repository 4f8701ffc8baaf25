"""`medkeras eval` and the end of `fit`: score a model on a split and write what a clinician-facing team reads.

Probabilities come from the model's logits through the saved temperature, binary labels through the saved
threshold, so what is evaluated here is what `predict` and the export return. Operating points and the
temperature are chosen on validation (`calibrate_on_validation`) and only applied to test.
"""

from __future__ import annotations

import csv
import io
import weakref
from pathlib import Path

import numpy as np

from medkeras.config.values import is_study
from medkeras.errors import DataError, MedkerasError
from medkeras.evaluation.aggregate import aggregate, level_keys, write_group_predictions
from medkeras.evaluation.attention import study_attention, write_attention
from medkeras.evaluation.calibration import at_search_bound, calibration_summary, fit_temperature
from medkeras.evaluation.intervals import Draws, auroc_interval, bootstrap_intervals
from medkeras.evaluation.metrics import (
    classification_metrics,
    positive_index,
    predict_labels,
    softmax,
)
from medkeras.evaluation.thresholds import choose_threshold, parse_rule
from medkeras.models.tta import flips_of
from medkeras.progress import step
from medkeras.utils import atomic_path, atomic_write_json

_JOINT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ensemble -> itself with its members' logits


def predict_logits(model, images, data_cfg, batch_size: int = 64, flips=()) -> np.ndarray:
    """Logits (N, K) for in-memory images, from `with_tta(model, flips)`: the mean over the image and its `flips`
    in the model's graph, the graph `predict` and the export serve (`models/tta.py`)."""
    from medkeras.data.pipeline import make_tf_dataset
    from medkeras.models.tta import with_tta

    labels = np.zeros(len(images), dtype=np.int64)
    ds = make_tf_dataset(images, labels, data_cfg, batch_size, training=False).map(lambda x, y: x)
    out = with_tta(model, flips).predict(ds, verbose=0)  # (N, K), or [(N, K)] * outputs
    return np.asarray(out, dtype=np.float32)


def member_logits(model, images, data_cfg, batch_size=64, flips=()) -> dict:
    """{member name: logits} for each member of an ensemble (empty for a single model)."""
    return predict_with_members(model, images, data_cfg, batch_size, flips)[1]


def predict_with_members(model, images, data_cfg, batch_size=64, flips=()):
    """-> (the model's logits, {member name: logits}) from one pass of the ensemble's own graph.

    The members' logits are the inputs of the ensemble's average, so one model with those as extra outputs gives
    them all: one trace and one forward pass, where predicting each member apart took a trace and a pass each
    (TensorFlow warned of "retracing" for these separate predict functions)."""
    import keras

    from medkeras.models.ensemble import members_of

    if len(members_of(model)) < 2 or "average_logits" not in [layer.name for layer in model.layers]:
        return predict_logits(model, images, data_cfg, batch_size, flips), {}
    parts = model.get_layer("average_logits").input
    names = [t._keras_history.operation.name for t in parts]
    joint = _JOINT.get(model)  # one per ensemble, so validation and test share its traced predict function
    if joint is None:
        joint = _JOINT[model] = keras.Model(model.inputs, [model.outputs[0], *parts], name=f"{model.name}_with_members")
    stacked = predict_logits(joint, images, data_cfg, batch_size, flips)  # (1 + M, N, K)
    return stacked[0], dict(zip(names, stacked[1:]))


def operating_point(val_labels, val_logits, class_names, positive_class, temperature, rule) -> float:
    """The binary threshold `rule` picks on validation probabilities at `temperature` (0.5 for K > 2)."""
    if len(class_names) != 2:
        return 0.5
    probs = softmax(val_logits, temperature)
    pos = positive_index(class_names, positive_class)
    return float(choose_threshold(rule, np.asarray(val_labels) == pos, probs[:, pos]))


def level_thresholds(labels, logits, names, split, class_names, positive_class, temperature, rule, eval_cfg) -> dict:
    """{level: threshold} chosen by `rule` on validation at each level it knows (series, patient): an operating
    point is chosen at the level it is used."""
    out = {}
    for level, keys in level_keys(split, names, eval_cfg.aggregate).items():
        groups = aggregate(logits, labels, keys["keys"], class_names, positive_class, eval_cfg.aggregate_rule,
                           eval_cfg.aggregate_topk, keys["patients"], keys["given"])
        if len(set(groups["labels"].tolist())) > 1 or parse_rule(rule)[0] == "fixed":
            out[level] = operating_point(groups["labels"], groups["logits"], class_names, positive_class, temperature,
                                         rule)
    return out


def calibrate_on_validation(val_labels, val_logits, class_names, positive_class, eval_cfg, split=None,
                            names=None) -> dict:
    """Temperature (if configured), then the configured threshold rule at that temperature, fitted on validation;
    with the validation `split` and item `names`, the rule's threshold at each level too (`thresholds`)."""
    temperature = fit_temperature(val_labels, val_logits) if eval_cfg.calibrate == "temperature" else 1.0
    flags = {}
    if at_search_bound(temperature):  # a degenerate model: said, and its temperature not used
        flags = {"temperature_fitted": float(temperature), "temperature_note": (
            f"the fitted temperature {temperature:.3f} is at its search bound: the validation predictions are "
            "degenerate (one class throughout, or no signal); temperature scaling is not applied")}
        print(f"medkeras: warning: {flags['temperature_note']}")
        temperature = 1.0
    if temperature != 1.0 and len(val_labels):
        worse = calibration_worse(val_labels, val_logits, temperature, eval_cfg.ece_bins, "the validation split")
        if worse:
            flags["calibration_note"] = worse
            print(f"medkeras: warning: {worse}")
    rule = eval_cfg.threshold
    threshold = operating_point(val_labels, val_logits, class_names, positive_class, temperature, rule)
    levels = {} if split is None else level_thresholds(val_labels, val_logits, names, split, class_names,
                                                         positive_class, temperature, rule, eval_cfg)
    return {"temperature": float(temperature), "threshold": threshold, "threshold_rule": str(rule), **flags,
            "thresholds": levels, "aggregate": {"levels": list(eval_cfg.aggregate), "rule": eval_cfg.aggregate_rule,
                                                "topk": int(eval_cfg.aggregate_topk)}}


def score_logits(labels, logits, class_names, positive_class, temperature, threshold, eval_cfg, draws=None) -> dict:
    """Metrics, intervals (from `draws`: shared by everything scored on the split) and calibration (before and after
    the temperature) for one split's logits."""
    probs = softmax(logits, temperature)
    metrics = classification_metrics(labels, probs, class_names, positive_class, threshold)
    if draws is None:
        draws = Draws(len(labels), eval_cfg.bootstrap, seed=0)
    if draws.indices and len(labels):
        metrics["intervals"] = bootstrap_intervals(labels, probs, class_names, positive_class, threshold,
                                                   level=eval_cfg.ci_level, draws=draws, n_bins=eval_cfg.ece_bins)
        metrics["ci_level"] = eval_cfg.ci_level
        metrics["resampling"] = draws.method
    if len(labels):
        metrics["calibration"] = {
            "temperature": float(temperature),
            "after": calibration_summary(labels, probs, eval_cfg.ece_bins),
            "before": calibration_summary(labels, softmax(logits, 1.0), eval_cfg.ece_bins),
        }
        worse = calibration_worse(labels, logits, temperature, eval_cfg.ece_bins, "this split")
        metrics["calibration"]["worse"] = bool(worse)
        if worse:
            metrics["notes"] = [*metrics.get("notes", []), worse]
    return metrics


def calibration_worse(labels, logits, temperature, n_bins, where) -> str | None:
    """A note where the temperature (fitted on validation by log-loss) makes `where` ECE worse, else None."""
    if temperature == 1.0:
        return None
    before = calibration_summary(labels, softmax(logits, 1.0), n_bins)["ece"]
    after = calibration_summary(labels, softmax(logits, temperature), n_bins)["ece"]
    if after <= before:
        return None
    return (f"temperature scaling (T = {temperature:.3f}, fitted on validation by log-loss) raises the ECE of {where} "
            f"from {before:.3f} to {after:.3f}")


def ensemble_table(labels, members: dict, ensemble_logits, class_names, positive_class, threshold, eval_cfg,
                   draws=None, temperature: float = 1.0) -> list:
    """Rows: each member alone, each leave-one-out average, the plain average and the model's own combination, all
    at the model's temperature and threshold; AUROC intervals (or the note the metrics table gives) from the
    split's shared `draws`, so the saved model's row equals the metrics table."""
    if not members:
        return []
    names = list(members)
    combos = [(f"{n} alone", [n]) for n in names]
    if len(names) > 2:
        combos += [(f"without {n}", [m for m in names if m != n]) for n in names]
    combos.append(("plain average (all)", names))
    rows = []
    for title, parts in combos:
        logits = np.mean([members[p] for p in parts], axis=0)
        rows.append(_row(title, labels, logits, class_names, positive_class, threshold, eval_cfg, draws, temperature))
    rows.append(_row("model as saved", labels, ensemble_logits, class_names, positive_class, threshold, eval_cfg, draws,
                     temperature))
    return rows


def _row(title, labels, logits, class_names, positive_class, threshold, eval_cfg, draws, temperature):
    probs = softmax(logits, temperature)
    point = classification_metrics(labels, probs, class_names, positive_class, threshold)
    ci = auroc_interval(labels, probs, class_names, positive_class, draws, eval_cfg.ci_level) if draws and \
        draws.indices else {}
    return {
        "model": title,
        "auroc": point.get("auroc"),
        "auroc_lower": ci.get("lower"),
        "auroc_upper": ci.get("upper"),
        "auroc_note": ci.get("note"),
        "auprc": point.get("auprc"),
        "accuracy": point.get("accuracy"),
        "ece": calibration_summary(labels, probs, eval_cfg.ece_bins)["ece"] if len(labels) else None,
    }


def score_levels(logits, labels, names, split, class_names, positive_class, temperature, thresholds, threshold,
                 eval_cfg) -> dict:
    """{level: groups (keys, logits, labels, sizes), their probs, pred and metrics} for each level `split` knows;
    intervals resample patients (clustered where a patient has several series), thresholds are the level's own."""
    out = {}
    pos = positive_index(class_names, positive_class)
    for level, keys in level_keys(split, names, eval_cfg.aggregate).items():
        groups = aggregate(logits, labels, keys["keys"], class_names, positive_class, eval_cfg.aggregate_rule,
                           eval_cfg.aggregate_topk, keys["patients"], keys["given"])
        thr = float(thresholds.get(level, threshold))
        unit = "patients" if level == "patient" else "series"
        draws = Draws(len(groups["labels"]), eval_cfg.bootstrap, seed=0,
                      groups=groups["patients"] if keys["patients"] is not None else None, unit=unit)
        metrics = score_logits(groups["labels"], groups["logits"], class_names, positive_class, temperature, thr,
                               eval_cfg, draws)
        metrics.update(threshold=thr, rule=eval_cfg.aggregate_rule)
        probs = softmax(groups["logits"], temperature)
        out[level] = {**groups, "probs": probs, "pred": predict_labels(probs, pos, thr), "metrics": metrics}
    return out


def write_predictions(path, names, labels, probs, pred, class_names, logits=None) -> None:
    """One row per image: path, p_<class>..., predicted, label[, logit_<class>... (validation, for cross-validation's
    out-of-fold predictions)]."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", *[f"p_{c}" for c in class_names], "predicted", "label",
                     *([f"logit_{c}" for c in class_names] if logits is not None else [])])
    for i, (name, y, p, yhat) in enumerate(zip(names, labels, probs, pred)):
        extra = [f"{v:.7g}" for v in logits[i]] if logits is not None else []
        # 9 significant digits: a float32 probability exactly, so no ties appear that the model did not make
        writer.writerow([name, *[f"{v:.9g}" for v in p], class_names[yhat], class_names[y], *extra])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def scoring_flips(meta, eval_cfg, tta=None) -> list:
    """The flips a split is scored with: the model's own (what it serves) unless `tta` says otherwise (True: the
    config's `eval.tta_flips`, False: none)."""
    if tta is None:
        return flips_of(meta)
    return list(eval_cfg.tta_flips or ["horizontal"]) if tta else []


def score_split(model, meta, split_name, dataset, cfg, tta=None, threshold=None, on_bad_file="fail", analysis=True,
                arrays=None, thresholds=None):
    """Predict one split of `dataset` and compute everything the report shows -> dict.

    `arrays`: the split's (images, labels, names) already decoded (the end of `fit` scores what it trained and
    validated on, without reading the files again). `thresholds`: {level: threshold} (default: the model's own).
    """
    from medkeras.data.pipeline import split_arrays

    eval_cfg = cfg.eval
    flips = scoring_flips(meta, eval_cfg, tta)
    if arrays is not None:
        (images, labels, names), bad = arrays, []
    else:
        images, labels, names, bad = split_arrays(dataset.splits[split_name], cfg.data, on_bad_file)
    if len(labels) == 0:
        raise DataError(cfg.data.source, f"the {split_name} split is empty: nothing to evaluate")
    if analysis:
        logits, members = predict_with_members(model, images, cfg.data, eval_cfg.batch_size, flips)
    else:
        logits, members = predict_logits(model, images, cfg.data, eval_cfg.batch_size, flips), {}
    if thresholds is None:
        thresholds = meta.get("thresholds", {}) if threshold is None else {}
    thr = float(meta.get("threshold", 0.5)) if threshold is None else float(threshold)
    scored = score_arrays(split_name, dataset, (images, labels, names), logits, float(meta.get("temperature", 1.0)),
                          thr, thresholds, eval_cfg, members)
    attention = study_attention(model, images, cfg.data, eval_cfg.batch_size, flips) if analysis else {}  # series models
    return {**scored, "bad_files": bad, "tta": bool(flips), "tta_flips": flips,
            "tta_as_served": flips == flips_of(meta), "attention": attention}


def score_arrays(split_name, dataset, arrays, logits, temperature, threshold, thresholds, eval_cfg, members=None,
                 split=None) -> dict:
    """Everything the report shows for logits already computed on a split's `arrays` (images or None, labels,
    names): metrics with intervals from one shared draw, each level's results, the ensemble table. `split`: the
    `Split` the names belong to (default: `dataset.splits[split_name]`)."""
    images, labels, names = arrays
    split = dataset.splits[split_name] if split is None else split
    class_names, positive_class = dataset.class_names, dataset.positive_class
    patients, series = split.keys_of(names)
    known = all(p is not None for p in patients) and len(patients) > 0
    draws = Draws(len(labels), eval_cfg.bootstrap, seed=0, groups=patients if known else None)
    metrics = score_logits(labels, logits, class_names, positive_class, temperature, threshold, eval_cfg, draws)
    levels = score_levels(logits, labels, names, split, class_names, positive_class, temperature, thresholds,
                          threshold, eval_cfg)
    if levels:
        metrics["levels"] = {level: scored["metrics"] for level, scored in levels.items()}
    probs = softmax(logits, temperature)
    pos = positive_index(class_names, positive_class)
    return {
        "split": split_name,
        "images": images,
        "labels": labels,
        "names": names,
        "logits": logits,
        "probs": probs,
        "pred": predict_labels(probs, pos, threshold),
        "metrics": metrics,
        "ensemble": ensemble_table(labels, members or {}, logits, class_names, positive_class, threshold, eval_cfg,
                                   draws, temperature),
        "patients": patients,
        "series": series,
        "levels": levels,
        "draws": draws.indices,  # the resamples every interval of this split comes from (the ROC band too)
        "bad_files": [],
        "tta": False,
    }


def write_outputs(out_dir, scored, dataset, cfg, meta, model=None, history_csv=None) -> dict:
    """predictions.csv, plots/*.png and report.html for one scored split; returns the metrics dict."""
    from medkeras.evaluation.report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(
        out_dir / "predictions.csv", scored["names"], scored["labels"], scored["probs"], scored["pred"], dataset.class_names
    )
    if scored.get("attention"):
        write_attention(out_dir / "attention.csv", scored["names"], scored["attention"])
    for level, groups in scored.get("levels", {}).items():
        write_group_predictions(out_dir / f"predictions.{level}.csv", level, groups, groups["probs"], groups["pred"],
                                dataset.class_names, groups["labels"], "studies" if is_study(cfg) else "images")
    write_report(out_dir, scored, dataset, cfg, meta, model=model, history_csv=history_csv)
    return scored["metrics"]


def evaluate(model_path, data=None, split="test", out=None, tta=None, threshold=None) -> dict:
    """Evaluate a run directory or a `.keras` file on `split` (of its own data, or `data`); returns metrics.

    `threshold`: a number, or a rule (`youden`, `f1`, `sensitivity@0.95`, ...) chosen on the validation split
    and applied to `split`; default: the model's saved threshold. Writes `metrics.json`, `predictions.csv`,
    `report.html` and `plots/` into `out` (default `<run>/eval-<split>`, or `<model>-eval-<split>` beside a file).
    """
    from medkeras.data.pipeline import split_arrays
    from medkeras.data.studies import load_items
    from medkeras.models.io import open_model

    model_path = Path(model_path)
    loaded = open_model(model_path, keras_only=True, purpose="evaluation")
    model, meta, cfg = loaded.model, loaded.meta, loaded.config
    if cfg is None:
        raise MedkerasError(f"{loaded.path}: carries no training config; cannot tell its data (give --data)")
    if data is not None:
        cfg.data.source = str(data)
        cfg.data.class_names = None  # read the new source's own classes, then compare with the model's
        cfg.data.positive_class = None
    dataset = load_items(cfg.data, seed=cfg.train.seed, studies=is_study(cfg))
    names = list(meta["class_names"])
    if data is not None and sorted(dataset.class_names) == sorted(names) and list(dataset.class_names) != names:
        cfg.data.class_names = list(meta["class_names"])  # the same classes named in another order: the model's
        dataset = load_items(cfg.data, seed=cfg.train.seed, studies=is_study(cfg))
    if list(dataset.class_names) != list(meta["class_names"]):
        raise DataError(
            cfg.data.source, f"classes {dataset.class_names} do not match the model's classes {meta['class_names']}"
        )
    dataset.positive_class = meta.get("positive_class", dataset.positive_class)
    if split not in dataset.splits:
        raise MedkerasError(f"unknown split '{split}' (train, val or test)")
    thr, thresholds = None, None
    if threshold is not None:
        kind, value = parse_rule(threshold)
        if kind == "fixed":
            thr = value
        else:  # chosen on validation with the model's own temperature and the same TTA as the scored split
            images, labels, names, _ = split_arrays(dataset.splits["val"], cfg.data, cfg.data.on_bad_file)
            if len(labels) == 0:
                raise DataError(cfg.data.source, f"threshold rule '{threshold}' needs a validation split; it is empty")
            flips = scoring_flips(meta, cfg.eval, tta)
            logits = predict_logits(model, images, cfg.data, cfg.eval.batch_size, flips)
            temperature = float(meta.get("temperature", 1.0))
            thr = operating_point(labels, logits, dataset.class_names, dataset.positive_class, temperature, threshold)
            thresholds = level_thresholds(labels, logits, names, dataset.splits["val"], dataset.class_names,
                                          dataset.positive_class, temperature, threshold, cfg.eval)
        cfg.eval.threshold = str(threshold)
    with step(f"reading and scoring the {split} split"):
        scored = score_split(model, meta, split, dataset, cfg, tta=tta, threshold=thr, on_bad_file=cfg.data.on_bad_file,
                             thresholds=thresholds)
    if out is None:
        out = (model_path / f"eval-{split}") if model_path.is_dir() else model_path.with_name(f"{model_path.stem}-eval-{split}")
    out = Path(out)
    history = model_path / "train_log.csv" if model_path.is_dir() else None
    with step("writing the report"):
        metrics = write_outputs(out, scored, dataset, cfg, meta, model=model, history_csv=history)
    result = {
        "model": str(model_path),
        "data": str(cfg.data.source),
        "split": split,
        "tta": scored["tta"],
        "tta_flips": scored["tta_flips"],
        "tta_as_served": scored["tta_as_served"],
        "threshold_rule": str(threshold) if threshold is not None else meta.get("threshold_rule", "saved"),
        **metrics,
        "ensemble": scored["ensemble"],
    }
    atomic_write_json(out / "metrics.json", result)
    result["out"] = str(out)
    return result
