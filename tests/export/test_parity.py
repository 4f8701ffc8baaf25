"""One reading of every image: on real files of any size and encoding, every path that reads or serves an image
gives the same probabilities within 1e-4 -- `medkeras predict` with the Keras model and with the SavedModel, the
exported `serving_default` (pixels), `serve_encoded` (the file's bytes) and, for DICOM, `serve_hu` (raw HU)."""

import csv
import json
import shutil

import numpy as np
from conftest import LUNG, run_cli, write_real_encodings

from medkeras import read_dicom_hu
from medkeras.data.readers import is_dicom, read_image

TOLERANCE = 1e-4


def _csv(path) -> dict:
    with open(path, newline="") as fh:
        return {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(fh)}


def _all_paths_agree(run, export, folder, class_names):
    """Probabilities per file from every path; asserts they agree within TOLERANCE. -> the spread per file."""
    import tensorflow as tf

    files = sorted(p for p in folder.iterdir() if p.is_file())
    keras_csv, served_csv = folder.parent / "keras.csv", folder.parent / "served.csv"
    for model, out in ((run, keras_csv), (export.parent, served_csv)):
        result = run_cli("predict", model, folder, "--out", out)
        assert result.returncode == 0, result.stderr[-2000:]
    by_keras, by_served = _csv(keras_csv), _csv(served_csv)
    signatures = tf.saved_model.load(str(export)).signatures
    windows = json.loads((export / "assets" / "preprocessing.json").read_text())["windows"]
    columns = [f"p_{c}" for c in class_names]
    encoded = [f for f in files if not is_dicom(f)]
    by_bytes = signatures["serve_encoded"](image_bytes=tf.constant([f.read_bytes() for f in encoded]))
    by_bytes = dict(zip((f.name for f in encoded), by_bytes["probabilities"].numpy()))
    spread = {}
    for f in files:
        pixels = read_image(f, windows)[None]
        answers = {
            "predict (Keras)": [float(by_keras[f.name][c]) for c in columns],
            "predict (SavedModel)": [float(by_served[f.name][c]) for c in columns],
            "serving_default": signatures["serving_default"](image=tf.constant(pixels))["probabilities"].numpy()[0],
        }
        if is_dicom(f):
            hu = tf.constant(read_dicom_hu(f)[None])
            answers["serve_hu"] = signatures["serve_hu"](hu=hu)["probabilities"].numpy()[0]
        else:
            answers["serve_encoded"] = by_bytes[f.name]
        stacked = np.asarray(list(answers.values()), dtype=np.float64)
        spread[f.name] = float(np.abs(stacked - stacked[0]).max())
        assert spread[f.name] <= TOLERANCE, f"{f.name}: {answers}"
    return spread


def test_every_path_agrees_on_real_pictures(exported, tmp_path, breast):
    """The demo model on real ultrasound and CT pictures (JPEG q75/q95, PNG 8/16-bit, grey/RGB, 512 and 623 px)."""
    path, run = exported
    folder = tmp_path / "inputs"
    write_real_encodings(folder, breast.splits["test"].images)
    spread = _all_paths_agree(run, path, folder, ["malignant", "benign-or-normal"])
    assert len(spread) == 19 and any(name.endswith(".jpg") for name in spread)


def test_every_path_agrees_on_real_ct(ct_run, tmp_path, breast, ct_small_path):
    """A CT model (lung window) on real DICOM slices (512 px, and CT_small at 128 px) read as HU, and on the same
    slices as users export them: windowed JPEG and PNG pictures."""
    run, path = ct_run
    facts = json.loads((path / "assets" / "preprocessing.json").read_text())
    assert facts["positive_class"] == "tumour" and facts["windows"] == [[-600.0, 1500.0]]  # said, never null
    folder = tmp_path / "inputs"
    write_real_encodings(folder, breast.splits["test"].images)
    for name in ("1-01.dcm", "1-13.dcm", "1-14.dcm"):
        shutil.copy(LUNG / name, folder / name)
    shutil.copy(ct_small_path, folder / "ct_small.dcm")
    spread = _all_paths_agree(run, path, folder, ["normal", "tumour"])
    assert sum(name.endswith(".dcm") for name in spread) == 4
