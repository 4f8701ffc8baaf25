"""Results at the levels clinicians decide at: slice predictions combined per series and per patient.

A group's logits are its slices' combined by `eval.aggregate_rule`: `mean` (of the logits, the default), `max` (the
slice most sure of the positive class, or of any class for K > 2) or `topk` (the mean of the `eval.aggregate_topk`
surest slices). A group is positive if any of its slices is (K > 2: its most frequent class), unless a
`patient_label` column says otherwise. Everything downstream (temperature, thresholds chosen on validation at this
level, intervals resampling patients) treats the groups as it treats slices.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from medkeras.models.outputs import positive_index, softmax
from medkeras.utils import atomic_path

RULES = ("mean", "max", "topk")


def _sureness(logits, pos) -> np.ndarray:
    probs = softmax(logits)
    return probs[:, pos] if pos is not None else probs.max(axis=1)


def combine(logits, rule: str = "mean", k: int = 3, pos: int | None = None) -> np.ndarray:
    """One group's slice logits (n, K) -> its logits (K,)."""
    logits = np.asarray(logits, dtype=np.float64)
    if rule == "mean" or len(logits) == 1:
        return logits.mean(axis=0)
    order = np.argsort(-_sureness(logits, pos), kind="stable")
    if rule == "max":
        return logits[order[0]]
    if rule == "topk":
        return logits[order[: max(1, int(k))]].mean(axis=0)
    raise ValueError(f"unknown aggregate rule '{rule}' (one of {', '.join(RULES)})")


def group_label(labels, pos: int | None) -> int:
    """Positive if any slice is (binary); the most frequent class, ties to the higher index (K > 2)."""
    labels = np.asarray(labels)
    if pos is not None:
        return int(pos) if (labels == pos).any() else 1 - int(pos)
    counts = np.bincount(labels)
    return int(np.flatnonzero(counts == counts.max())[-1])


def aggregate(logits, labels, keys, class_names, positive_class=None, rule="mean", k=3, patients=None,
              group_labels=None) -> dict | None:
    """Slices -> groups by `keys` (None keys are left out). -> {"keys", "logits", "labels", "patients", "sizes"}, or
    None where no slice has a key. `patients`: each slice's patient, so groups can be resampled by patient;
    `group_labels`: a given label per slice's group (a `patient_label` column), used instead of the rule above."""
    keys = list(keys)
    if not any(key is not None for key in keys):
        return None
    pos = positive_index(class_names, positive_class)
    logits, labels = np.asarray(logits), np.asarray(labels)
    order: dict = {}
    for i, key in enumerate(keys):
        if key is not None:
            order.setdefault(key, []).append(i)
    out = {"keys": list(order), "logits": [], "labels": [], "patients": [], "sizes": []}
    for key, rows in order.items():
        out["logits"].append(combine(logits[rows], rule, k, pos))
        given = [group_labels[i] for i in rows if group_labels is not None and group_labels[i] is not None]
        out["labels"].append(int(given[0]) if given else group_label(labels[rows], pos))
        out["patients"].append(patients[rows[0]] if patients is not None else key)
        out["sizes"].append(len(rows))
    out["logits"] = np.asarray(out["logits"], dtype=np.float32)
    out["labels"] = np.asarray(out["labels"], dtype=np.int64)
    return out


def level_keys(split, names, levels) -> dict:
    """{level: {"keys": group per item, "patients": patient per item (None unless every item has one), "given":
    a patient_label per item or None}} for each of `levels` ("series", "patient") that `split` knows. Frames of one
    multi-frame file carry their file's series (the readers' `FILE#N` names)."""
    patients, series = split.keys_of(names)
    every = patients if patients and all(p is not None for p in patients) else None
    out = {}
    for level in levels:
        keys = series if level == "series" else patients
        if keys and any(k is not None for k in keys):
            given = split.values_of("patient_labels", names) if level == "patient" else None
            out[level] = {"keys": keys, "patients": every, "given": given}
    return out


def write_group_predictions(path, level, groups, probs, pred, class_names, labels=None, unit="images") -> None:
    """One row per series or patient (its key, how many `unit` (images or studies) it holds, probabilities,
    prediction[, label]); written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([level, unit, *[f"p_{c}" for c in class_names], "predicted", *(["label"] if labels is not None else [])])
    for i, key in enumerate(groups["keys"]):
        extra = [class_names[labels[i]]] if labels is not None else []
        writer.writerow([key, groups["sizes"][i], *[f"{v:.9g}" for v in probs[i]], class_names[pred[i]], *extra])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
