"""`medkeras predict`: score files and folders with a run directory, a `.keras` file or an exported SavedModel.

Inputs are read by the readers exactly as in training (`read_image`: DICOM to HU and windows, PNG/JPEG/NPY to
pixels), resized by the same rule, and scored in batches by the model with its test-time flips (`models/tta.py`);
the label uses the model's saved threshold and temperature (`models.outputs`, as the SavedModel's graph does).
"""

from __future__ import annotations

import csv
import io
import sys

import numpy as np

from medkeras.data.readers import named_inputs, read_image
from medkeras.data.resize import to_model_pixels
from medkeras.errors import DataError
from medkeras.models.io import open_model
from medkeras.models.outputs import predict_labels, softmax
from medkeras.progress import Progress
from medkeras.utils import atomic_path


class Scorer:
    """Pixels (N, S, S, 3) -> (probabilities, labels), from a Keras model or a SavedModel (`open_model`)."""

    def __init__(self, model_path):
        self.loaded = open_model(model_path)
        self.class_names = self.loaded.class_names
        self.image_size = self.loaded.image_size
        self.windows = self.loaded.windows

    def __call__(self, pixels: np.ndarray):
        """-> (probabilities, labels, logits)."""
        loaded = self.loaded
        if loaded.kind == "savedmodel":
            import tensorflow as tf

            out = loaded.model.signatures["serving_default"](image=tf.constant(pixels, tf.float32))
            return out["probabilities"].numpy(), out["label"].numpy(), out["logits"].numpy()
        logits = np.asarray(loaded.scoring_model().predict(pixels, verbose=0), dtype=np.float32)
        probs = softmax(logits, loaded.temperature)
        return probs, predict_labels(probs, loaded.positive_index, loaded.threshold), logits


def write_groups(out, scorer, rows, studies=False) -> list:
    """`<out>.series.csv` / `<out>.patient.csv` beside `out`: each group's slices combined as at evaluation (the
    model's aggregate rule; each level's threshold chosen on validation). -> the files written."""
    from pathlib import Path

    from medkeras.evaluation.aggregate import aggregate, write_group_predictions

    loaded, written = scorer.loaded, []
    rule = loaded.meta.get("aggregate") or {"levels": ["series", "patient"], "rule": "mean", "topk": 3}
    logits = np.stack([r[4] for r in rows]) if rows else np.zeros((0, len(scorer.class_names)))
    for level in rule["levels"]:
        keys = [(info.series if level == "series" else info.patient) if info else None for _, info, *_ in rows]
        groups = aggregate(logits, np.zeros(len(rows), np.int64), keys, scorer.class_names,
                           loaded.meta.get("positive_class"), rule["rule"], rule["topk"])
        if groups is None:
            continue
        probs = softmax(groups["logits"], loaded.temperature)
        threshold = float((loaded.meta.get("thresholds") or {}).get(level, loaded.threshold))
        path = Path(out).with_suffix(f".{level}.csv")
        write_group_predictions(path, level, groups, probs, predict_labels(probs, loaded.positive_index, threshold),
                                scorer.class_names, unit="studies" if studies else "images")
        written.append(str(path))
    return written


def predict(model_path, inputs, out=None, on_bad_file="fail", batch_size=32, progress=True, redact_paths=False) -> dict:
    """Score `inputs`; write CSV rows to `out` or stdout: path (relative to a folder given; never absolute; with
    `redact_paths` the keyed patient and an index instead), p_<class>..., predicted, and for DICOM the keyed patient
    and series. A multi-frame file gives one row per frame (`FILE#N`); where series or patients are known and `out`
    is a file, `<out>.series.csv` and `<out>.patient.csv` give one row per group. A study model scores studies
    instead, one row each (`predict_studies.py`), with `top_slice` where it has series members. Returns counts."""
    scorer = Scorer(model_path)
    studies = scorer.loaded.studies
    if studies:
        from medkeras.export.predict_studies import score_studies, study_inputs

        items = study_inputs(inputs)
    else:
        items = named_inputs(inputs)
    rows, bad = [], []
    bar = Progress(len(items), "scoring", "study" if studies else "file") if progress and len(items) > batch_size \
        else None
    if studies:
        if redact_paths:
            items = [(p, f"{info.patient or 'item'}-{k:05d}", info) for k, (p, _, info) in enumerate(items)]
        rows, bad = score_studies(scorer, items, on_bad_file, batch_size, bar)
    for start in range(0, 0 if studies else len(items), batch_size):
        chunk, images = [], []
        for k, (path, name, info) in enumerate(items[start : start + batch_size], start):
            if redact_paths:
                name = f"{(info.patient if info else None) or 'item'}-{k:05d}"
            try:
                image = read_image(path, scorer.windows)
            except DataError as exc:
                if on_bad_file == "fail":
                    raise
                bad.append((name, exc.cause))
                continue
            images.append(to_model_pixels(image[None], scorer.image_size)[0])
            chunk.append((name, info))
        if images:
            probs, labels, logits = scorer(np.stack(images))
            rows += [(name, info, pr, int(lb), lg) for (name, info), pr, lb, lg in zip(chunk, probs, labels, logits)]
        if bar is not None:
            bar.update(min(start + batch_size, len(items)))
    keys = any(info is not None for _, info, *_ in rows)
    top = studies and any(r[5] is not None for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    # `predicted`, as in predictions.csv of fit and eval (where `label` is the ground truth)
    writer.writerow(["path", *[f"p_{c}" for c in scorer.class_names], "predicted",
                     *(["patient", "series"] if keys else []), *(["top_slice"] if top else [])])
    for name, info, probs, label, *rest in rows:
        extra = ([info.patient or "", info.series or ""] if info else ["", ""]) if keys else []
        extra += [rest[1]] if top else []
        writer.writerow([name, *[f"{p:.9g}" for p in probs], scorer.class_names[label], *extra])
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        with atomic_path(out) as tmp:
            tmp.write_text(buf.getvalue())
    groups = write_groups(out, scorer, rows, studies) if keys and out is not None else []
    return {"scored": len(rows), "skipped": bad, "out": str(out) if out else None, "groups": groups,
            "unit": "study" if studies else "file"}
