"""The config space as hypothesis draws it, and what one drawn config must do: be refused at validation in one
line naming a key, or train a tiny fit whose export serves what `eval` wrote (within 1e-4 per test image).

Shared by tests/test_config_space.py (a seeded ~20-case run) and bench/config_fuzz.py (a few hundred).
Values come from the typed schema's own domains (small backbones only, so every case runs in seconds), with
some that must be refused (unknown names, 2 or 4 windows, wrong lengths, clashing switches).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

TOLERANCE = 1e-4
SMALL = ["cnn8_small", "resnet18_small"]
WINDOWS = [None, "lung", "[lung, bone]", "[lung, mediastinum, bone]", "[lung, mediastinum, bone, lung]"]
KEY = re.compile(r"\b(data|model|train|eval|export|track)\.[a-z_]+(\.[a-z_]+)?\b")


def _override(key, values):
    """`key=value` with the first value most often (the rest one in three draws): most draws then run whole."""
    value = st.one_of(st.just(values[0]), st.just(values[0]), st.sampled_from(values))
    return value.map(lambda v: None if v is None else f"{key}={v}")


def overrides():
    """A list of `--set` overrides over the demo config: one draw of the config space."""
    choice = {
        "model.backbones": ["[cnn8_small]", "[resnet18_small]", "[cnn8_small, resnet18_small]",
                            "[cnn8_small, cnn8_small, resnet18_small]", "[resnet5]"],
        "model.head": ["linear", "mlp"],
        "model.dropout": [0.0, 0.3],
        "model.fusion": ["mean", "fitted"],
        "model.ensemble_weights": [None, "[1.0]", "[1.0, 2.0]", "[1.0, 1.0, 1.0]"],
        "data.window": WINDOWS,
        "data.image_size": [16, 24, 32],
        "data.normalize": ["backbone", "dataset"],
        "data.augment.flip": ["horizontal", "vertical", "horizontal_and_vertical", "none"],
        "data.augment.rotation": [0.0, 0.1],
        "data.augment.zoom": [0.0, 0.1],
        "data.augment.noise": [0.0, 5.0],
        "data.augment.blur": [0.0, 0.5],
        "data.augment.clahe": [0.0, 0.5],
        "data.augment.randaugment": [0, 2],
        "data.augment.erasing": [0.0, 0.3],
        "train.optimizer": ["adam", "adamw", "sgd"],
        "train.loss": ["cross_entropy", "focal", "bce"],
        "train.label_smoothing": [0.0, 0.1],
        "train.pos_weight": [None, 2.0],
        "train.class_weight": [None, "balanced", "{malignant: 2.0}", "{tumour: 2.0}"],
        "train.sampling": ["shuffle", "balanced"],
        "train.monitor": ["val_auroc", "val_loss", "val_accuracy", "loss", "accuracy", "val_loss", "val_f1"],
        "train.schedule": ["cosine", "step", "plateau", "constant"],
        "train.warmup_epochs": [0.0, 0.5],
        "train.size_schedule": [None, "[[1, 8], [2, 16]]", "[[1, 8], [2, 16]]", "[[2, 8]]"],
        "train.ensemble": ["joint", "separate"],
        "train.precision": ["float32", "mixed_float16", "mixed_bfloat16"],
        "train.freeze_backbone": [False, True],
        "train.freeze_epochs": [0, 1],
        "train.finetune_batchnorm": ["auto", "frozen", "trainable"],
        "train.gradient_accumulation_steps": [1, 2],
        "train.ema": [0.0, 0.9],
        "train.steps_per_execution": [1, 2],
        "train.early_stopping_patience": [0, 1],
        "train.run_eagerly": [True, True, False],
        "eval.tta": [False, True],
        "eval.tta_flips": ["[horizontal]", "[vertical]", "[horizontal, both]"],
        "eval.threshold": ["0.5", "youden", "f1", "sensitivity@0.95", "0.3"],
        "eval.calibrate": ["temperature", "none"],
    }
    return st.tuples(*(_override(k, v) for k, v in choice.items())).map(lambda t: [o for o in t if o])


def write_sources(root: Path, breast, lung: Path) -> dict:
    """Two small real sources: BreastMNIST rows as a MedMNIST .npz (pictures), and the real CT slices as six
    patients' series in a manifest with a split column (DICOM; windows apply)."""
    import pydicom
    from pydicom.uid import generate_uid

    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", 32), ("val", 16), ("test", 16)):
        s = breast.splits[split]
        ix = np.concatenate([np.flatnonzero(s.labels == c)[: n // 2] for c in (0, 1)])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = s.images[ix], s.labels[ix].reshape(-1, 1)
    np.savez(root / "breastmnist.npz", **arrays)
    rows = []
    for p, split in enumerate(["train"] * 4 + ["val", "test"]):
        series = generate_uid()
        for name, label in (("1-01.dcm", "normal"), ("1-13.dcm", "tumour"), ("1-14.dcm", "tumour")):
            ds = pydicom.dcmread(lung / name)
            ds.PatientID, ds.SeriesInstanceUID, ds.SOPInstanceUID = f"FUZZ{p}", series, generate_uid()
            path = root / "ct" / f"p{p}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            rows.append([path, label, split])
    with open(root / "ct.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "split"], *rows])
    return {"pictures": str(root / "breastmnist.npz"), "ct": str(root / "ct.csv")}


def with_source(drawn: list, sources: dict) -> list:
    """The drawn overrides on the source they need: CT where a window is drawn, pictures otherwise; tiny fits."""
    windowed = any(o.startswith("data.window=") for o in drawn)
    epochs = 2 if any(o.startswith(("train.freeze_epochs=1", "train.size_schedule=")) for o in drawn) else 1
    return [f"data.source={sources['ct' if windowed else 'pictures']}", f"train.epochs={epochs}",
            "train.steps_per_epoch=2", "train.batch_size=8", "train.verbose=0", "eval.bootstrap=10",
            "eval.gradcam_examples=1", *drawn]


def refused_in_one_line(exc) -> str:
    """The message of a refused config, checked: one line that names a config key."""
    message = str(exc)
    assert "\n" not in message.strip(), message
    assert KEY.search(message), f"names no config key: {message}"
    return message


def fit_or_refused_by_data(cfg, run: Path):
    """`medkeras.fit`, or None where a key is refused once the data is listed (a class weight naming a class the
    source lacks): then in one line naming the key, and before any training (no epoch logged)."""
    import medkeras
    from medkeras.errors import ConfigError

    try:
        return medkeras.fit(cfg, out=run)
    except ConfigError as exc:
        refused_in_one_line(exc)
        assert not (run / "train_log.csv").exists(), f"refused after training began: {exc}"
        return None


def served_as_evaluated(run: Path, base: Path) -> float:
    """Export `run` (library, in this process) and hold every test image's served probabilities and label to the
    ones in `run/predictions.csv`. -> the largest gap."""
    import tensorflow as tf

    from medkeras.data.readers import is_dicom, read_dicom_hu, read_image
    from medkeras.data.resize import to_model_pixels
    from medkeras.data.sources import load_dataset
    from medkeras.export.savedmodel import export_savedmodel
    from medkeras.models.io import open_model

    exported = export_savedmodel(run, base, name="fuzz", verify=False)
    loaded = open_model(run)
    split = load_dataset(loaded.config.data, seed=loaded.config.train.seed).splits["test"]
    signatures = tf.saved_model.load(exported["path"]).signatures
    with open(run / "predictions.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    names, classes = split.names(), loaded.class_names
    want = np.asarray([[float(rows[n][f"p_{c}"]) for c in classes] for n in names])
    labels = [rows[n]["predicted"] for n in names]
    if split.paths is not None:
        pixels = np.stack([to_model_pixels(read_image(p, loaded.windows)[None], loaded.image_size)[0]
                           for p in split.paths])
    else:
        pixels = np.asarray(split.images, np.float32)[..., None]
    answers = {"serving_default": signatures["serving_default"](image=tf.constant(pixels))}
    if split.paths is not None and all(is_dicom(p) for p in split.paths):
        hu = np.stack([read_dicom_hu(p) for p in split.paths])
        answers["serve_hu"] = signatures["serve_hu"](hu=tf.constant(hu))
    gap = 0.0
    for door, out in answers.items():
        got = out["probabilities"].numpy()
        gap = max(gap, float(np.abs(got - want).max()))
        assert np.abs(got - want).max() <= TOLERANCE, f"{door}: {np.abs(got - want).max():.2e} from eval"
        assert [classes[i] for i in out["label"].numpy()] == labels, door
    facts = json.loads((Path(exported["path"]) / "assets" / "preprocessing.json").read_text())
    assert facts["tta_flips"] == loaded.tta_flips
    return gap
