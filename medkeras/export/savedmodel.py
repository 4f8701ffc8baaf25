"""`medkeras export`: a TF Serving SavedModel that serves exactly what was evaluated.

Layout `BASE/NAME/VERSION/` with three signatures, each returning `probabilities`, `logits` and `label`:
`serving_default` (float32 pixels, any size), `serve_encoded` (PNG/JPEG bytes) and `serve_hu` (raw Hounsfield
units, windowed in the graph). Resizing, windowing, each backbone's normalization, the temperature and the
threshold all live in the graph. The export is written to a temporary directory, reloaded in a fresh process with
plain `tf.saved_model.load`, compared with the Keras model, and only then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import medkeras
from medkeras.errors import MedkerasError
from medkeras.utils import dumps_json

PARITY_TOLERANCE = 1e-4
SIGNATURES = ("serving_default", "serve_encoded", "serve_hu")  # the verification checks each is there


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def preprocessing_facts(meta: dict) -> dict:
    """What `assets/preprocessing.json` says: enough for a client to know what to send."""
    return {
        "image_size": meta["image_size"],
        "channels": meta.get("channels", 3),
        "input": "serving_default: float32 pixels [N,H,W,C] in [0, 255] (C 1 or 3, any H, W; resized in the graph); "
        "serve_encoded: PNG/JPEG bytes [N]; serve_hu: float32 Hounsfield units [N,H,W]",
        "resize": "bilinear, antialiased",
        "windows": meta.get("windows", []),
        "normalization": "each backbone's own, inside the graph",
        "class_names": meta["class_names"],
        "positive_class": meta.get("positive_class"),
        "threshold": meta.get("threshold", 0.5),
        "temperature": meta.get("temperature", 1.0),
        "backbones": meta.get("backbones", []),
        "medkeras_version": medkeras.__version__,
    }


def build_archive(model, meta: dict, fold: bool = True):
    """A `keras.export.ExportArchive` tracking `model`, with the three serving signatures.

    `fold`: serve a copy with BatchNormalization folded into the convolutions (`export/fold.py`: 1.1-1.15x
    faster inference here, same outputs within 4e-6; `verify_export` checks it against the unfolded model).
    """
    import keras
    import tensorflow as tf

    if fold:
        from medkeras.export.fold import fold_batchnorm

        model, _ = fold_batchnorm(model)

    from medkeras.data.pipeline import resize_dynamic
    from medkeras.data.windows import apply_windows

    size = int(meta["image_size"])
    class_names = meta["class_names"]
    temperature = float(meta.get("temperature", 1.0))
    threshold = float(meta.get("threshold", 0.5))
    windows = [tuple(w) for w in meta.get("windows", [])]
    binary = len(class_names) == 2
    pos = class_names.index(meta["positive_class"]) if binary and meta.get("positive_class") else len(class_names) - 1

    def outputs(pixels):
        logits = tf.cast(model(pixels, training=False), tf.float32)
        probabilities = tf.nn.softmax(logits / temperature, axis=-1)
        if binary:
            label = tf.where(probabilities[:, pos] >= threshold, pos, 1 - pos)
        else:
            label = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "logits": logits, "label": tf.cast(label, tf.int64)}

    def to_size(images):
        return resize_dynamic(images, size)

    def to_model_input(images):
        images = tf.cast(images, tf.float32)
        images = tf.cond(tf.shape(images)[-1] == 1, lambda: tf.repeat(images, 3, axis=-1), lambda: images)
        return to_size(tf.ensure_shape(images, [None, None, None, 3]))

    def serving_default(image):
        return outputs(to_model_input(image))

    def decode_one(data):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        return to_size(tf.ensure_shape(tf.cast(image, tf.float32), [None, None, 3]))

    def serve_encoded(image_bytes):
        images = tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return outputs(images)

    def serve_hu(hu):
        hu = tf.cast(hu, tf.float32)
        if windows:
            images = apply_windows(hu, windows) * 255.0
        else:  # no window configured: per-image min-max, as the training reader does for DICOM
            lo = tf.reduce_min(hu, axis=[1, 2], keepdims=True)
            hi = tf.reduce_max(hu, axis=[1, 2], keepdims=True)
            images = ((hu - lo) / tf.maximum(hi - lo, 1e-6) * 255.0)[..., None]
        return outputs(to_model_input(images))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serving_default, input_signature=[tf.TensorSpec([None, None, None, None], tf.float32, name="image")]
    )
    archive.add_endpoint(
        "serve_encoded", serve_encoded, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint("serve_hu", serve_hu, input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="hu")])
    return archive


_VERIFY = r"""
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
for name in sys.argv[3].split(","):
    if name not in loaded.signatures:
        print(json.dumps({"error": "missing signature " + name})); sys.exit(0)
fn = loaded.signatures["serving_default"]
result = fn(image=tf.constant(images))
print(json.dumps({"probabilities": result["probabilities"].numpy().tolist(), "label": result["label"].numpy().tolist()}))
"""


def _verification_images(meta, limit=32):
    """Validation images of the model's own data (pixels at the training size), or None where unavailable."""
    from medkeras.config import from_dict
    from medkeras.data.pipeline import split_arrays
    from medkeras.data.sources import load_dataset

    try:
        cfg = from_dict(meta["config"])
        dataset = load_dataset(cfg.data, seed=cfg.train.seed)
        split = dataset.splits["val"] if len(dataset.splits["val"]) else dataset.splits["test"]
        images, _, _, _ = split_arrays(split, cfg.data, on_bad_file="skip", verbose=False)
    except medkeras.MedkerasError:
        return None
    return np.asarray(images[:limit], dtype=np.float32)


def verification_batch(meta):
    """(images as a client sends them (N, H, W, C), the same as model input, where they came from)."""
    from medkeras.data.pipeline import to_model_pixels

    images = _verification_images(meta)
    source = "validation images"
    if images is None or len(images) == 0:
        size = int(meta["image_size"])
        images = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        source = "synthetic images (the model's data source is not available here)"
    if images.ndim == 3:
        images = images[..., None]
    return images, to_model_pixels(images, int(meta["image_size"])), source


def verify_export(path: Path, model, meta) -> dict:
    """Reload `path` in a fresh process (plain TensorFlow) and compare probabilities with the Keras model."""
    from medkeras.evaluate.metrics import softmax

    images, model_input, source = verification_batch(meta)
    expected = softmax(np.asarray(model.predict(model_input, verbose=0)), meta.get("temperature", 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp) / "images.npy"
        np.save(batch, images.astype(np.float32))
        proc = subprocess.run(
            [sys.executable, "-c", _VERIFY, str(path), str(batch), ",".join(SIGNATURES)],
            capture_output=True,
            text=True,
            timeout=900,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MedkerasError(f"{path}: the export does not load with tf.saved_model.load: {tail}")
    served = json.loads(lines[-1])
    if "error" in served:
        raise MedkerasError(f"{path}: {served['error']}")
    diff = float(np.abs(np.asarray(served["probabilities"], dtype=np.float32) - expected).max())
    if diff > PARITY_TOLERANCE:
        raise MedkerasError(f"{path}: served probabilities differ from the Keras model by {diff:.2e} (> {PARITY_TOLERANCE})")
    return {"images": int(len(images)), "source": source, "max_abs_diff": diff}


def open_export(model_path, base, name=None, version=None):
    """Load the model to export and pick `base/name/version` -> (model, meta, model_dir, version, target)."""
    from medkeras.models.io import load_model

    model, meta = load_model(model_path)
    if "class_names" not in meta:
        raise MedkerasError(f"{model_path}: not a medkeras model (no medkeras.json inside)")
    name = name or meta.get("config", {}).get("export", {}).get("name") or "medkeras"
    model_dir = Path(base) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = int(version) if version is not None else next_version(model_dir)
    target = model_dir / str(version)
    if target.exists():
        raise MedkerasError(f"{target}: version {version} exists already (omit --version for the next one)")
    return model, meta, model_dir, version, target


def export_savedmodel(model_path, base, name=None, version=None, verify=True) -> dict:
    """Export a run directory or `.keras` file to `base/name/version/` for TF Serving; returns what was done."""
    t0 = time.perf_counter()
    model, meta, model_dir, version, target = open_export(model_path, base, name, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))
    try:
        archive = build_archive(model, meta)
        archive.write_out(str(tmp / "export"), verbose=False)
        export = tmp / "export"
        assets = export / "assets"
        assets.mkdir(exist_ok=True)
        (assets / "labels.txt").write_text("\n".join(meta["class_names"]) + "\n")
        (assets / "preprocessing.json").write_text(dumps_json(preprocessing_facts(meta)))
        check = verify_export(export, model, meta) if verify else None
        os.rename(export, target)  # atomic on one file system: the version appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(target), "version": version, "verification": check, "seconds": round(time.perf_counter() - t0, 1)}
