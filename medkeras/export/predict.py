"""`medkeras predict`: score files and folders with a run directory, a `.keras` file or an exported SavedModel.

Inputs are read exactly as in training (`read_image`: DICOM to HU and windows, PNG/JPEG/NPY to pixels), resized
by the same function, and scored in batches. The label uses the model's saved threshold and temperature.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from medkeras.data.sources import READABLE_SUFFIXES, read_image
from medkeras.errors import DataError, MedkerasError
from medkeras.utils import atomic_path


def collect_inputs(inputs) -> list[Path]:
    """Files as given; folders searched recursively for PNG, JPEG, DICOM and NPY files (sorted)."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES)
            if not found:
                raise DataError(path, "folder holds no PNG, JPEG, DICOM or NPY files")
            files += _dicom_series_in_z_order(found)
        elif path.exists():
            files.append(path)
        else:
            raise DataError(path, "file not found")
    return files


def _dicom_series_in_z_order(files):
    """Keep folder order, but list each folder's DICOM slices along z (a series reads top to bottom)."""
    from medkeras.data.dicom import series_in_z_order
    from medkeras.data.sources import DICOM_SUFFIXES

    out, by_dir = [], {}
    for f in files:
        by_dir.setdefault(f.parent, []).append(f)
    for folder, items in by_dir.items():
        dicom = [f for f in items if f.suffix.lower() in DICOM_SUFFIXES]
        try:
            dicom = series_in_z_order(dicom)
        except DataError:
            pass  # an unreadable slice is reported when it is read, in order of the file names
        out += [f for f in items if f.suffix.lower() not in DICOM_SUFFIXES] + dicom
    return out


def _savedmodel_dir(path: Path) -> Path | None:
    """A SavedModel directory, or the newest version under a TF Serving `BASE/NAME` directory."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if versions and (versions[-1] / "saved_model.pb").is_file():
        return versions[-1]
    return None


class Scorer:
    """Pixels (N, S, S, 3) -> (probabilities, labels), from a Keras model or a SavedModel, plus what to read."""

    def __init__(self, model_path):
        model_path = Path(model_path)
        saved = _savedmodel_dir(model_path) if model_path.is_dir() else None
        if saved is not None:
            import tensorflow as tf

            facts_file = saved / "assets" / "preprocessing.json"
            if not facts_file.is_file():
                raise MedkerasError(f"{saved}: not a medkeras export (no assets/preprocessing.json)")
            self.meta = json.loads(facts_file.read_text())
            self._fn = tf.saved_model.load(str(saved)).signatures["serving_default"]
            self._keras = None
        else:
            from medkeras.models.io import load_model

            self._keras, self.meta = load_model(model_path)
            if "class_names" not in self.meta:
                raise MedkerasError(f"{model_path}: not a medkeras model (no medkeras.json inside)")
        self.class_names = list(self.meta["class_names"])
        self.image_size = int(self.meta["image_size"])
        self.windows = [tuple(w) for w in self.meta.get("windows", [])]

    def __call__(self, pixels: np.ndarray):
        if self._keras is None:
            import tensorflow as tf

            out = self._fn(image=tf.constant(pixels, tf.float32))
            return out["probabilities"].numpy(), out["label"].numpy()
        from medkeras.evaluate.metrics import positive_index, predict_labels, softmax

        probs = softmax(np.asarray(self._keras.predict(pixels, verbose=0)), self.meta.get("temperature", 1.0))
        pos = positive_index(self.class_names, self.meta.get("positive_class")) if len(self.class_names) == 2 else None
        return probs, predict_labels(probs, pos, float(self.meta.get("threshold", 0.5)))


def predict(model_path, inputs, out=None, on_bad_file="fail", batch_size=32, progress=True) -> dict:
    """Score `inputs`; write CSV rows (path, p_<class>..., label) to `out` or stdout. Returns counts."""
    from medkeras.data.pipeline import to_model_pixels

    files = collect_inputs(inputs)
    scorer = Scorer(model_path)
    rows, bad = [], []
    bar = None
    if progress and len(files) > batch_size:
        import keras

        bar = keras.utils.Progbar(len(files), unit_name="file")
    for start in range(0, len(files), batch_size):
        chunk, images = [], []
        for path in files[start : start + batch_size]:
            try:
                image = read_image(path, scorer.windows)
            except DataError as exc:
                if on_bad_file == "fail":
                    raise
                bad.append((str(path), exc.cause))
                continue
            images.append(to_model_pixels(image[None], scorer.image_size)[0])
            chunk.append(path)
        if images:
            probs, labels = scorer(np.stack(images))
            rows += [(str(p), pr, int(lb)) for p, pr, lb in zip(chunk, probs, labels)]
        if bar is not None:
            bar.update(min(start + batch_size, len(files)))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", *[f"p_{c}" for c in scorer.class_names], "label"])
    for path, probs, label in rows:
        writer.writerow([path, *[f"{p:.6f}" for p in probs], scorer.class_names[label]])
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        with atomic_path(out) as tmp:
            tmp.write_text(buf.getvalue())
    return {"scored": len(rows), "skipped": bad, "out": str(out) if out else None}
