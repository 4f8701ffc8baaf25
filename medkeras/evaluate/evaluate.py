"""`medkeras eval`: score a saved model on a split, write metrics.json, predictions.csv, plots and report.html.

Probabilities always come from the model's logits through the saved temperature, and binary labels through the
saved threshold, so what is evaluated here is what `predict` and the export return.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from medkeras.config import from_dict
from medkeras.errors import ConfigError, DataError, MedkerasError
from medkeras.evaluate.metrics import classification_metrics, positive_index, predict_labels, softmax
from medkeras.utils import atomic_path, atomic_write_json


def predict_logits(model, images, data_cfg, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """Logits (N, K) for in-memory images; `tta` averages them with the horizontally flipped images' logits."""
    from medkeras.data.pipeline import make_tf_dataset

    labels = np.zeros(len(images), dtype=np.int64)
    ds = make_tf_dataset(images, labels, data_cfg, batch_size, training=False).map(lambda x, y: x)
    logits = np.asarray(model.predict(ds, verbose=0), dtype=np.float32)
    if tta:
        import tensorflow as tf

        flipped = np.asarray(model.predict(ds.map(lambda x: tf.reverse(x, axis=[2])), verbose=0), dtype=np.float32)
        logits = (logits + flipped) / 2.0
    return logits


def parse_threshold(rule, default: float = 0.5) -> float:
    """A threshold rule: a number in [0, 1] (rules fitted on validation come with the evaluation issue)."""
    if rule is None or rule == "":
        return default
    try:
        value = float(rule)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold must be a number in [0, 1], got '{rule}'") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {value}")
    return value


def write_predictions(path, names, labels, probs, pred, class_names) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", *[f"p_{c}" for c in class_names], "predicted", "label"])
    for name, y, p, yhat in zip(names, labels, probs, pred):
        writer.writerow([name, *[f"{v:.6f}" for v in p], class_names[yhat], class_names[y]])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def score_split(model, meta, split_name, dataset, data_cfg, batch_size=64, tta=False, threshold=None, on_bad_file="fail"):
    """Predict one split of `dataset` and compute its metrics -> dict with arrays and metrics."""
    from medkeras.data.pipeline import split_arrays

    if split_name not in dataset.splits:
        raise ConfigError(f"unknown split '{split_name}' (train, val or test)")
    images, labels, names, bad = split_arrays(dataset.splits[split_name], data_cfg, on_bad_file)
    if len(labels) == 0:
        raise DataError(data_cfg.source, f"the {split_name} split is empty")
    logits = predict_logits(model, images, data_cfg, batch_size, tta)
    probs = softmax(logits, meta.get("temperature", 1.0))
    class_names = dataset.class_names
    thr = threshold if threshold is not None else float(meta.get("threshold", 0.5))
    pos = positive_index(class_names, dataset.positive_class) if len(class_names) == 2 else None
    result = classification_metrics(labels, probs, class_names, dataset.positive_class, thr)
    return {
        "split": split_name,
        "images": images,
        "labels": labels,
        "names": names,
        "logits": logits,
        "probs": probs,
        "pred": predict_labels(probs, pos, thr),
        "metrics": result,
        "bad_files": bad,
    }


def write_outputs(out_dir, scored, dataset, config_dict, meta, history_csv=None) -> dict:
    """predictions.csv, plots/*.png and report.html for one scored split; returns the metrics dict."""
    from medkeras.evaluate.report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(
        out_dir / "predictions.csv", scored["names"], scored["labels"], scored["probs"], scored["pred"], dataset.class_names
    )
    write_report(out_dir, scored, dataset, config_dict, meta, history_csv)
    return scored["metrics"]


def evaluate(model_path, data=None, split="test", out=None, tta=False, threshold=None, batch_size=None) -> dict:
    """Evaluate a run directory or a `.keras` file on `split` (of its own data, or `data`); returns metrics.

    Writes `metrics.json`, `predictions.csv`, `report.html` and `plots/` into `out` (default: `<run>/eval-<split>`
    or `<model>-eval-<split>` beside a bare `.keras` file).
    """
    from medkeras.data.sources import load_dataset
    from medkeras.models.io import load_model

    model_path = Path(model_path)
    model, meta = load_model(model_path)
    if "config" not in meta:
        raise MedkerasError(f"{model_path}: not a medkeras model (no medkeras.json inside); cannot tell its classes")
    cfg = from_dict(meta["config"])
    if data is not None:
        cfg.data.source = str(data)
    dataset = load_dataset(cfg.data, seed=cfg.train.seed)
    if list(dataset.class_names) != list(meta["class_names"]):
        raise DataError(
            cfg.data.source, f"classes {dataset.class_names} do not match the model's classes {meta['class_names']}"
        )
    dataset.positive_class = meta.get("positive_class", dataset.positive_class)
    thr = parse_threshold(threshold, float(meta.get("threshold", 0.5))) if threshold is not None else None
    scored = score_split(
        model, meta, split, dataset, cfg.data, batch_size or cfg.eval.batch_size, tta, thr, cfg.data.on_bad_file
    )
    if out is None:
        out = (model_path / f"eval-{split}") if model_path.is_dir() else model_path.with_name(f"{model_path.stem}-eval-{split}")
    out = Path(out)
    history = model_path / "train_log.csv" if model_path.is_dir() else None
    metrics = write_outputs(out, scored, dataset, cfg.to_dict(), meta, history)
    result = {"model": str(model_path), "data": str(cfg.data.source), "split": split, "tta": bool(tta), **metrics}
    atomic_write_json(out / "metrics.json", result)
    result["out"] = str(out)
    return result
