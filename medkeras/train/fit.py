"""`medkeras fit`: data -> model -> Keras fit with the run's callbacks -> best model, metrics and report.

A run directory holds everything needed to understand and reuse the run: `config.yaml` (fully resolved),
`train_log.csv`, `tensorboard/`, `checkpoints/` (best model + its epoch and metrics; the resume backup),
`model.keras` (the best model, with class names, size, windows and threshold inside), `metrics.json`
(validation and test), and the test report (`report.html`, `predictions.csv`, `plots/`).
"""

from __future__ import annotations

import csv
import time
from datetime import datetime
from pathlib import Path

import numpy as np

import medkeras
from medkeras.config import Config, from_dict
from medkeras.errors import MedkerasError
from medkeras.utils import atomic_path, atomic_write_json


class _Timer:
    """Wall-clock marks: set-up (data + model build), first training step (graph building), whole fit."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.marks = {}

    def mark(self, name):
        self.marks[name] = round(time.perf_counter() - self.t0, 2)


def _first_step_callback(timer):
    import keras

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if "first_step_s" not in timer.marks:
                timer.mark("first_step_s")

    return FirstStep()


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def model_meta(cfg: Config, dataset) -> dict:
    """What a saved model carries so that eval, predict and export need nothing else."""
    from medkeras.data.windows import parse_windows

    return {
        "medkeras_version": medkeras.__version__,
        "class_names": list(dataset.class_names),
        "positive_class": dataset.positive_class,
        "image_size": cfg.data.image_size,
        "channels": 3,
        "input": "float32 pixels in [0, 255], (N, H, W, 3)",
        "windows": [list(w) for w in parse_windows(cfg.data.window)],
        "backbones": list(cfg.model.backbones),
        "threshold": 0.5,
        "threshold_rule": cfg.eval.threshold,
        "temperature": 1.0,
        "config": cfg.to_dict(),
    }


def _write_bad_files(path, bad):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "cause"])
        writer.writerows(bad)


def _write_duplicates(run_dir: Path, dataset) -> None:
    """`duplicates.csv`: identical images found in two splits (a leak that inflates test metrics)."""
    from medkeras.data.splits import duplicates_across_splits

    dups = duplicates_across_splits(dataset)
    if dups["pairs"]:
        with atomic_path(run_dir / "duplicates.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["split_a", "item_a", "split_b", "item_b"])
            writer.writerows(dups["pairs"])
        print(f"medkeras: warning: {len(dups['pairs'])} identical images across splits ({run_dir / 'duplicates.csv'})")


def _prepare_run_dir(run_dir: Path, resume: bool):
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise MedkerasError(f"{run_dir}: nothing to resume (no config.yaml in this run directory)")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise MedkerasError(f"{run_dir}: run directory exists and is not empty (use --resume, or another --out)")
    run_dir.mkdir(parents=True, exist_ok=True)


def load_run_config(run_dir) -> Config:
    import yaml

    return from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))


def fit(cfg: Config, out=None, resume: bool = False) -> Path:
    """Train what `cfg` describes; returns the run directory. `resume` continues a killed run in `out`."""
    import keras

    from medkeras.data.pipeline import make_tf_dataset, split_arrays
    from medkeras.data.sources import load_dataset
    from medkeras.evaluate.evaluate import calibrate_on_validation, predict_logits, score_split, write_outputs
    from medkeras.evaluate.metrics import positive_index
    from medkeras.models.ensemble import build_model
    from medkeras.models.io import load_model, save_model
    from medkeras.train.callbacks import BestCheckpoint, ValidationMetrics
    from medkeras.train.losses import make_loss, make_optimizer

    timer = _Timer()
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    _prepare_run_dir(run_dir, resume)
    if resume:
        cfg = load_run_config(run_dir)
    tc = cfg.train
    keras.utils.set_random_seed(tc.seed)

    dataset = load_dataset(cfg.data, seed=tc.seed)
    arrays, bad = {}, []
    for split in ("train", "val", "test"):
        images, labels, names, skipped = split_arrays(dataset.splits[split], cfg.data, cfg.data.on_bad_file)
        arrays[split] = (images, labels, names)
        bad += [(split, p, c) for p, c in skipped]
    if bad:
        _write_bad_files(run_dir / "bad_files.csv", bad)
        print(f"medkeras: skipped {len(bad)} unreadable files (listed in {run_dir / 'bad_files.csv'})")
    for split in ("train", "val"):
        if len(arrays[split][1]) == 0:
            raise MedkerasError(f"{cfg.data.source}: the {split} split is empty after reading")
    cfg.data.class_names = list(dataset.class_names)
    cfg.data.positive_class = dataset.positive_class
    if not resume:
        cfg.save(run_dir / "config.yaml")
    meta = model_meta(cfg, dataset)
    num_classes = dataset.num_classes
    pos = positive_index(dataset.class_names, dataset.positive_class) if num_classes == 2 else None

    loss, one_hot = make_loss(tc, num_classes)
    train_images, train_labels, _ = arrays["train"]
    train_ds = make_tf_dataset(train_images, train_labels, cfg.data, tc.batch_size, training=True, seed=tc.seed)
    if one_hot:
        import tensorflow as tf

        train_ds = train_ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    steps = int(np.ceil(len(train_labels) / tc.batch_size))
    if tc.steps_per_epoch:
        steps = tc.steps_per_epoch
        train_ds = train_ds.repeat()
    val_images, val_labels, _ = arrays["val"]
    val_ds = make_tf_dataset(val_images, val_labels, cfg.data, cfg.eval.batch_size).map(lambda x, y: x)

    model = build_model(cfg.model, num_classes, cfg.data.image_size)
    model.compile(
        optimizer=make_optimizer(tc, steps),
        loss=loss,
        metrics=["categorical_accuracy" if one_hot else "sparse_categorical_accuracy"],
        jit_compile=tc.jit_compile,
        run_eagerly=tc.run_eagerly,
    )
    timer.mark("setup_s")
    checkpoints = run_dir / "checkpoints"
    callbacks = [
        ValidationMetrics(val_ds, val_labels, pos),
        BestCheckpoint(checkpoints, tc.monitor, save=lambda m, p: save_model(m, p, meta)),
        keras.callbacks.BackupAndRestore(str(checkpoints / "backup")),
        keras.callbacks.CSVLogger(str(run_dir / "train_log.csv"), append=resume),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, profile_batch=0),
        _first_step_callback(timer),
    ]
    model.fit(train_ds, epochs=tc.epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=tc.verbose)
    timer.mark("fit_s")

    best_path = checkpoints / "best.keras"
    if best_path.is_file():
        model, _ = load_model(best_path)
    best = {}
    if (checkpoints / "best.json").is_file():
        import json

        best = json.loads((checkpoints / "best.json").read_text())

    # Temperature and operating point are fitted on validation only, then saved with the model.
    val_logits = predict_logits(model, val_images, cfg.data, cfg.eval.batch_size, cfg.eval.tta, cfg.eval.tta_flips)
    meta.update(calibrate_on_validation(val_labels, val_logits, dataset.class_names, dataset.positive_class, cfg.eval))
    save_model(model, run_dir / "model.keras", meta)

    results = {}
    for split in ("val", "test"):
        if len(dataset.splits[split]) == 0:
            continue
        scored = score_split(model, meta, split, dataset, cfg, on_bad_file="skip", analysis=split == "test")
        if split == "test":
            write_outputs(run_dir, scored, dataset, cfg, meta, model=model, history_csv=run_dir / "train_log.csv")
            results["ensemble"] = scored["ensemble"]
        results[split] = scored["metrics"]
    _write_duplicates(run_dir, dataset)
    timer.mark("total_s")
    atomic_write_json(
        run_dir / "metrics.json",
        {
            "config": cfg.name,
            "best_epoch": best.get("epoch"),
            "monitor": tc.monitor,
            "monitor_value": best.get("value"),
            "temperature": meta["temperature"],
            "threshold": meta["threshold"],
            "threshold_rule": meta["threshold_rule"],
            **results,
            "timing_s": timer.marks,
        },
    )
    return run_dir
