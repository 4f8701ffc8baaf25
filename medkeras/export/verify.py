"""Verifying an export before it is put in place: every signature, in a fresh process, against the Keras model.

The SavedModel is reloaded with plain `tf.saved_model.load` (no medkeras, no Keras) and asked, through each of its
three signatures, what the Keras model answers through the Python readers:
- `serving_default`: validation images as pixels, at the model's size and at another size;
- `serve_encoded`: the same images encoded as PNG and JPEG at a size other than the model's, compared with the
  Keras model on those files as `medkeras predict` reads them (Pillow);
- `serve_hu`: Hounsfield units of validation DICOM files where the data is DICOM (else HU made from the images),
  compared with the Keras model on the windowed slices.
Any signature more than `PARITY_TOLERANCE` away in probability refuses the export, naming it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from medkeras.config.values import is_study
from medkeras.errors import MedkerasError

PARITY_TOLERANCE = 1e-4

_SERVE = r"""
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
inputs = np.load(sys.argv[2])
files = json.loads(sys.argv[3])
out = {}
for name in ("serving_default", "serve_encoded", "serve_hu"):
    if name not in loaded.signatures:
        print(json.dumps({"error": "missing signature " + name})); sys.exit(0)
fn = loaded.signatures["serving_default"]
out["serving_default"] = fn(image=tf.constant(inputs["pixels"]))["probabilities"].numpy().tolist()
out["serving_default_resized"] = fn(image=tf.constant(inputs["resized"]))["probabilities"].numpy().tolist()
data = [open(f, "rb").read() for f in files]
out["serve_encoded"] = loaded.signatures["serve_encoded"](image_bytes=tf.constant(data))["probabilities"].numpy().tolist()
out["serve_hu"] = loaded.signatures["serve_hu"](hu=tf.constant(inputs["hu"]))["probabilities"].numpy().tolist()
print(json.dumps(out))
"""


def _validation_split(loaded, limit=32):
    """(pixels at the training size (N, S, S, C), the split, its data config) of the model's own validation data,
    or (None, None, None) where the data is not available here."""
    from medkeras.data.pipeline import split_arrays
    from medkeras.data.studies import load_items

    cfg = loaded.config
    if cfg is None:
        return None, None, None
    try:
        dataset = load_items(cfg.data, seed=cfg.train.seed, studies=is_study(cfg))
        split = dataset.splits["val"] if len(dataset.splits["val"]) else dataset.splits["test"]
        images, _, _, _ = split_arrays(split, cfg.data, on_bad_file="skip", verbose=False)
    except MedkerasError:
        return None, None, None
    if len(images) == 0:
        return None, None, None
    images = np.asarray(images[:limit], dtype=np.float32)
    return (images[..., None] if images.ndim == 3 else images), split, cfg.data


def _other_size(size: int) -> tuple[int, int]:
    """(width, height) unlike the model's: larger, not square, odd."""
    return 2 * size + 3, size + size // 2 + 1


def _encoded_files(pixels, folder: Path, size: int) -> list[Path]:
    """Two validation images as PNG and as JPEG (quality 90) at a size other than the model's."""
    from PIL import Image

    files = []
    for i, image in enumerate(pixels[:2]):
        grey = np.clip(np.round(image), 0, 255).astype(np.uint8)
        picture = Image.fromarray(grey[..., 0] if grey.shape[-1] == 1 else grey[..., :3])
        picture = picture.resize(_other_size(size), Image.BICUBIC)
        for fmt, suffix, options in (("PNG", ".png", {}), ("JPEG", ".jpg", {"quality": 90})):
            buf = io.BytesIO()
            picture.save(buf, format=fmt, **options)
            path = folder / f"val{i}{suffix}"
            path.write_bytes(buf.getvalue())
            files.append(path)
    return files


def _hu_inputs(split, windows, pixels) -> tuple[np.ndarray, str]:
    """Hounsfield units for `serve_hu`: up to 4 validation DICOM slices of one shape, else HU made from pixels."""
    from medkeras.data.readers import is_dicom, read_dicom_hu
    from medkeras.errors import DataError

    slices = []
    for path in (split.paths or []) if split is not None else []:
        if not is_dicom(path):
            continue
        try:
            hu = read_dicom_hu(path)
        except DataError:
            continue
        if not slices or hu.shape == slices[0].shape:
            slices.append(hu)
        if len(slices) == 4:
            break
    if slices:
        return np.stack(slices), "validation DICOM slices"
    grey = pixels[:4, ..., 0]
    if windows:  # the pixels spread over the windows' HU range, a window's width beyond it on each side
        low = min(level - 1.5 * width for level, width in windows)
        high = max(level + 1.5 * width for level, width in windows)
        return (low + grey / 255.0 * (high - low)).astype(np.float32), "HU made from validation images"
    return grey.astype(np.float32), "HU made from validation images"


def verification_batch(loaded):
    """(pixels as a client sends them (N, S, S, C), where they came from, the split, the data config)."""
    pixels, split, data_cfg = _validation_split(loaded)
    source = "validation images"
    if pixels is None:
        size = loaded.image_size
        pixels = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        source = "synthetic images (the model's data source is not available here)"
    return pixels, source, split, data_cfg


def verify_export(path: Path, loaded, target=None) -> dict:
    """Reload `path` in a fresh process (plain TensorFlow) and compare every signature with the Keras model.

    `target`: where the export is going (named in errors instead of the temporary directory)."""
    from medkeras.data.readers import hu_to_pixels, read_image
    from medkeras.data.resize import to_model_pixels
    from medkeras.models.outputs import softmax

    size, model = loaded.image_size, loaded.scoring_model()  # with its test-time flips, as every signature
    pixels, source, split, _ = verification_batch(loaded)

    def keras_probs(batch):
        return softmax(np.asarray(model.predict(to_model_pixels(batch, size), verbose=0)), loaded.temperature)

    resized = to_model_pixels(pixels[:4], 2 * size + 3)[..., : pixels.shape[-1]]  # another size, same content
    with tempfile.TemporaryDirectory() as tmp:
        files = _encoded_files(pixels, Path(tmp), size)
        hu, hu_source = _hu_inputs(split, loaded.windows, pixels)
        expected = {
            "serving_default": keras_probs(pixels),
            "serving_default_resized": keras_probs(resized),
            # each in one batch, as the signature gets them: under mixed_bfloat16 a CPU's kernels round differently
            # at other batch sizes (logits 9e-5 apart between batches of 1 and 4, measured)
            "serve_encoded": keras_probs(np.concatenate([to_model_pixels(read_image(f)[None], size) for f in files])),
            "serve_hu": keras_probs(np.concatenate([to_model_pixels(hu_to_pixels(h, loaded.windows)[None], size)
                                                    for h in hu])),
        }
        np.savez(Path(tmp) / "inputs.npz", pixels=pixels, resized=resized, hu=hu)
        served = served_in_fresh_process(_SERVE, [path, Path(tmp) / "inputs.npz", json.dumps([str(f) for f in files])],
                                         target or path)
    what = {
        "serving_default": f"{len(pixels)} {source}",
        "serving_default_resized": f"{len(resized)} {source} at {2 * size + 3} px",
        "serve_encoded": f"{len(files)} PNG/JPEG files of {source} at {'x'.join(map(str, _other_size(size)))} px",
        "serve_hu": f"{len(hu)} {hu_source}",
    }
    diffs = compared(expected, served, what)
    return {"images": int(len(pixels)), "source": source, "max_abs_diff": max(diffs.values()), "signatures": diffs,
            "checked": what}


def served_in_fresh_process(script: str, args, name) -> dict:
    """Run a verification `script` (it prints one JSON line of answers) in a fresh Python -> those answers; an export
    that does not load or run, or a missing signature, refused naming `name`."""
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MedkerasError(f"{name}: the export does not load or run with tf.saved_model.load: {tail}")
    served = json.loads(lines[-1])
    if "error" in served:
        raise MedkerasError(f"{name}: {served['error']}")
    return served


def compared(expected: dict, served: dict, what: dict) -> dict:
    """{check: max |served - expected| probability}; a check over `PARITY_TOLERANCE` refuses the export."""
    diffs = {}
    for name, want in expected.items():
        got = np.asarray(served[name], dtype=np.float32).reshape(np.shape(want))
        diffs[name] = float(np.abs(got - want).max()) if np.size(want) else 0.0
        if diffs[name] > PARITY_TOLERANCE:
            signature = name.split()[0].replace("_resized", "")
            values = "attention weights" if name.endswith(" attention") else "probabilities"
            raise MedkerasError(f"{name}: {signature} on {what[name]} gives {values} {diffs[name]:.2e} away from "
                                f"the Keras model (> {PARITY_TOLERANCE}); the export is refused")
    return diffs
