"""`medkeras predict`: score files and folders with a run directory, a `.keras` file or an exported SavedModel.

Inputs are read by the readers exactly as in training (`read_image`: DICOM to HU and windows, PNG/JPEG/NPY to
pixels), resized by the same rule, and scored in batches; the label uses the model's saved threshold and
temperature (`models.outputs`, as the SavedModel's graph does).
"""

from __future__ import annotations

import csv
import io
import sys

import numpy as np

from medkeras.data.readers import collect_inputs, read_image
from medkeras.data.resize import to_model_pixels
from medkeras.errors import DataError
from medkeras.models.io import open_model
from medkeras.models.outputs import predict_labels, softmax
from medkeras.utils import atomic_path


class Scorer:
    """Pixels (N, S, S, 3) -> (probabilities, labels), from a Keras model or a SavedModel (`open_model`)."""

    def __init__(self, model_path):
        self.loaded = open_model(model_path)
        self.class_names = self.loaded.class_names
        self.image_size = self.loaded.image_size
        self.windows = self.loaded.windows

    def __call__(self, pixels: np.ndarray):
        loaded = self.loaded
        if loaded.kind == "savedmodel":
            import tensorflow as tf

            out = loaded.model.signatures["serving_default"](image=tf.constant(pixels, tf.float32))
            return out["probabilities"].numpy(), out["label"].numpy()
        probs = softmax(np.asarray(loaded.model.predict(pixels, verbose=0)), loaded.temperature)
        return probs, predict_labels(probs, loaded.positive_index, loaded.threshold)


def predict(model_path, inputs, out=None, on_bad_file="fail", batch_size=32, progress=True) -> dict:
    """Score `inputs`; write CSV rows (path, p_<class>..., label) to `out` or stdout. Returns counts."""
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
