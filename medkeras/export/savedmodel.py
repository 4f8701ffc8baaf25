"""`medkeras export`: a TF Serving SavedModel that serves exactly what was evaluated.

Layout `BASE/NAME/VERSION/` with three signatures, each returning `probabilities`, `logits` and `label`:
`serving_default` (float32 pixels, any size), `serve_encoded` (PNG/JPEG bytes) and `serve_hu` (raw Hounsfield
units, windowed in the graph). Decoding is the readers' graph twin (`readers.decode_encoded`: JPEG with the
accurate DCT, as Pillow), windows, resizing, each backbone's normalization, the temperature and the threshold
all live in the graph. The export is written to a temporary directory, reloaded in a fresh process with plain
`tf.saved_model.load`, every signature compared with the Keras model (`verify.py`), and only then renamed into
place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import medkeras
from medkeras.errors import MedkerasError
from medkeras.models.io import META_NAME, open_model
from medkeras.models.outputs import positive_index, predict_labels
from medkeras.progress import step
from medkeras.utils import dumps_json

SIGNATURES = ("serving_default", "serve_encoded", "serve_hu")


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def preprocessing_facts(meta: dict) -> dict:
    """What `assets/preprocessing.json` says: enough for a client to know what to send."""
    from medkeras.models.tta import flips_of

    return {
        "image_size": meta["image_size"],
        "channels": meta.get("channels", 3),
        "input": "serving_default: float32 pixels [N,H,W,C] in [0, 255] (C 1 or 3, any H, W; resized in the graph); "
        "serve_encoded: PNG/JPEG bytes [N]; serve_hu: float32 Hounsfield units [N,H,W]",
        "resize": "bilinear, antialiased",
        "jpeg_dct": "INTEGER_ACCURATE (libjpeg's ISLOW, as Pillow decodes)",
        "windows": meta.get("windows") or [],
        "normalization": "each backbone's own, inside the graph",
        "class_names": meta["class_names"],
        "positive_class": meta.get("positive_class"),
        "threshold": meta.get("threshold", 0.5),
        "temperature": meta.get("temperature", 1.0),
        "tta_flips": flips_of(meta),
        "tta": "logits averaged over the image and these flips, inside every signature" if flips_of(meta) else "none",
        "backbones": meta.get("backbones", []),
        # fit saves every model computing in float32, whatever policy it trained under (models/io.py: in_float32)
        "trained_precision": meta.get("trained_precision", "float32"),
        "medkeras_version": medkeras.__version__,
    }


def build_archive(model, meta: dict, fold: bool = True):
    """A `keras.export.ExportArchive` tracking `model`, with the three serving signatures.

    `fold`: serve a copy with BatchNormalization folded into the convolutions (`export/fold.py`: 1.1-1.15x
    faster inference here, same outputs within 4e-6; the verification checks it against the unfolded model).
    The model's test-time flips (`meta["tta_flips"]`) are averaged inside every signature (`models/tta.py`).
    """
    import keras
    import tensorflow as tf

    from medkeras.data.readers import decode_encoded, hu_to_pixels
    from medkeras.data.resize import to_model_input
    from medkeras.models.tta import flips_of, with_tta

    if fold:
        from medkeras.export.fold import fold_batchnorm

        model, _ = fold_batchnorm(model)
    model = with_tta(model, flips_of(meta))

    size = int(meta["image_size"])
    temperature = float(meta.get("temperature", 1.0))
    threshold = float(meta.get("threshold", 0.5))
    windows = list(meta.get("windows") or [])
    pos = positive_index(meta["class_names"], meta.get("positive_class"))

    def scored(logits):
        logits = tf.cast(logits, tf.float32)
        probabilities = tf.nn.softmax(logits / temperature, axis=-1)
        return {"probabilities": probabilities, "logits": logits, "label": predict_labels(probabilities, pos, threshold)}

    def outputs(pixels):
        return scored(model(pixels, training=False))

    def serving_default(image):
        return outputs(to_model_input(image, size))

    def decode_one(data):  # the reader's twin, then the resize and channels every other path uses
        return to_model_input(decode_encoded(data)[None], size)[0]

    def serve_encoded(image_bytes):
        images = tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return outputs(images)

    def serve_hu(hu):
        return outputs(to_model_input(hu_to_pixels(tf.cast(hu, tf.float32), windows), size))

    archive = keras.export.ExportArchive()
    archive.track(model)
    if meta.get("model_input", "slice") != "slice":  # a study model: pixels and HU volumes (study_export.py)
        from medkeras.export.study_export import add_study_endpoints
        from medkeras.models.study import with_attention

        both = with_attention(model)  # series members: their slice attention beside the logits, in the same pass

        def study_outputs(pixels):
            if both is None:
                return outputs(pixels)
            logits, weights = both(pixels, training=False)
            weights = tf.cast(weights, tf.float32)
            return {**scored(logits), "attention": weights, "top_slice": tf.argmax(weights, axis=1, output_type=tf.int32)}

        add_study_endpoints(archive, meta, study_outputs)
        return archive
    archive.add_endpoint(
        "serving_default", serving_default, input_signature=[tf.TensorSpec([None, None, None, None], tf.float32, name="image")]
    )
    archive.add_endpoint(
        "serve_encoded", serve_encoded, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint("serve_hu", serve_hu, input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="hu")])
    return archive


def open_export(model_path, base, name=None, version=None):
    """Load the model to export and pick `base/name/version` -> (loaded model, model_dir, version, target)."""
    loaded = open_model(model_path, keras_only=True, purpose="export")
    name = name or (loaded.meta.get("config") or {}).get("export", {}).get("name") or "medkeras"
    model_dir = Path(base) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = int(version) if version is not None else next_version(model_dir)
    target = model_dir / str(version)
    if target.exists():
        raise MedkerasError(f"{target}: version {version} exists already (omit --version for the next one)")
    return loaded, model_dir, version, target


def export_savedmodel(model_path, base, name=None, version=None, verify=True) -> dict:
    """Export a run directory or `.keras` file to `base/name/version/` for TF Serving; returns what was done."""
    from medkeras.export.study_export import study_facts, verify_study_export
    from medkeras.export.verify import verify_export

    t0 = time.perf_counter()
    loaded, model_dir, version, target = open_export(model_path, base, name, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))
    try:
        studies = loaded.studies
        with step("tracing the two study signatures" if studies else "tracing the three signatures"):
            archive = build_archive(loaded.model, loaded.meta)
            archive.write_out(str(tmp / "export"), verbose=False)
        export = tmp / "export"
        assets = export / "assets"
        assets.mkdir(exist_ok=True)
        (assets / "labels.txt").write_text("\n".join(loaded.class_names) + "\n")
        facts = preprocessing_facts(loaded.meta)
        (assets / "preprocessing.json").write_text(dumps_json({**facts, **study_facts(loaded.meta)} if studies
                                                              else facts))
        (assets / META_NAME).write_text(dumps_json(loaded.meta))  # what `open_model` reads back
        with step("verifying every signature in a fresh process", verbose=verify):
            check = (verify_study_export if studies else verify_export)(export, loaded, target) if verify else None
        os.rename(export, target)  # atomic on one file system: the version appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(target), "version": version, "verification": check, "seconds": round(time.perf_counter() - t0, 1)}
