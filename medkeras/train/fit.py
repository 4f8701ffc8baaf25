"""`medkeras fit`: data -> model -> Keras fit, phase by phase, with the run's callbacks -> best model and report.

A run directory holds everything needed to understand and reuse the run: `config.yaml` (fully resolved),
`train_log.csv`, `tensorboard/`, `checkpoints/` (best model + its epoch and metrics; per-phase resume backups),
`model.keras` (the best model, with class names, size, windows, temperature and threshold inside),
`metrics.json` (validation and test), and the test report (`report.html`, `predictions.csv`, `plots/`).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
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

    def mark(self, name, once=False):
        if not (once and name in self.marks):
            self.marks[name] = round(time.perf_counter() - self.t0, 2)


def steps_per_execution(wanted: int, steps: int) -> int:
    """The largest count <= `wanted` that divides the epoch's `steps`: Keras runs whole executions, so 3 steps per
    call over a repeated dataset of 4 steps an epoch trained 6 steps an epoch (measured), not 4."""
    return max(d for d in range(1, max(1, min(wanted, steps)) + 1) if steps % d == 0)


def _first_step_callback(timer):
    import keras

    class FirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            timer.mark("first_step_s", once=True)

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


def _write_rows(path, header, rows):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _write_duplicates(run_dir: Path, dataset) -> None:
    """`duplicates.csv`: identical images found in two splits (a leak that inflates test metrics)."""
    from medkeras.data.splits import duplicates_across_splits

    dups = duplicates_across_splits(dataset)
    if dups["pairs"]:
        _write_rows(run_dir / "duplicates.csv", ["split_a", "item_a", "split_b", "item_b"], dups["pairs"])
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


def _truncate_log(path: Path, epochs_done: int) -> None:
    """On resume keep only the log rows of epochs the restored state has seen: no epoch twice, none lost."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    _write_rows(path, kept[0], kept[1:])


def _backup_epoch(backup_dir: Path) -> int | None:
    meta = backup_dir / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else None


def phases(tc) -> list[tuple[str, int, float, bool]]:
    """(name, last epoch, learning rate, backbones frozen) per phase of the recipe."""
    if tc.freeze_backbone:
        return [("frozen", tc.epochs, tc.learning_rate, True)]
    if tc.freeze_epochs:
        finetune = tc.finetune_learning_rate or tc.learning_rate / 10.0
        return [("frozen", tc.freeze_epochs, tc.learning_rate, True), ("finetune", tc.epochs, finetune, False)]
    return [("train", tc.epochs, tc.learning_rate, False)]


def set_backbones_trainable(model, trainable: bool) -> None:
    """Freeze or unfreeze every member's backbone; a frozen BatchNorm runs in inference mode in Keras 3."""
    import keras

    from medkeras.models.ensemble import members_of

    for member in members_of(model):
        for layer in member.layers:
            if isinstance(layer, keras.Model):
                layer.trainable = trainable


@dataclass
class _Context:
    """What every model trained in this run shares."""

    cfg: Config
    run_dir: Path
    meta: dict
    train_ds: object
    val_ds: object
    val_labels: np.ndarray
    steps: int
    loss: object
    one_hot: bool
    positive_index: int | None
    timer: _Timer
    resume: bool
    size_var: object = None  # progressive resizing: the training pipeline's current image size
    multiworker: object = None  # a MultiWorkerMirroredStrategy: train with medkeras' own loop (train/loop.py)
    tracker: object = None  # the mlflow module while an MLflow run is active (track.mlflow)


def train_model(ctx: _Context, model, tag: str | None = None, sized: bool = False):
    """Fit `model` through the recipe's phases; returns the best model (by `train.monitor`) and its record.

    `sized`: train under `train.size_schedule` (progressive resizing); other models see `data.image_size`.
    """
    import keras

    from medkeras.models.io import load_model, save_model
    from medkeras.config import size_schedule
    from medkeras.train.callbacks import BestCheckpoint, ProgressiveResizing, ValidationMetrics
    from medkeras.train.losses import make_optimizer

    tc = ctx.cfg.train
    ckpt = ctx.run_dir / "checkpoints" / (tag or "")
    log = ctx.run_dir / (f"train_log_{tag}.csv" if tag else "train_log.csv")
    start = 0
    plan = phases(tc)
    for index, (name, end, rate, frozen) in enumerate(plan):
        done = ckpt / f"{name}.weights.h5"
        if ctx.resume and done.is_file() and index < len(plan) - 1:
            set_backbones_trainable(model, not frozen)
            model.load_weights(str(done))
            start = end
            continue
        backup = ckpt / "backup" / name
        if ctx.resume:
            _truncate_log(log, _backup_epoch(backup) or start)
        set_backbones_trainable(model, not frozen)
        optimizer = make_optimizer(tc, ctx.steps, end - start, rate)
        if ctx.multiworker is None:
            model.compile(
                optimizer=optimizer,
                loss=ctx.loss,
                metrics=["categorical_accuracy" if ctx.one_hot else "sparse_categorical_accuracy"],
                jit_compile=tc.jit_compile,
                run_eagerly=tc.run_eagerly,
                steps_per_execution=steps_per_execution(tc.steps_per_execution, ctx.steps),
            )
        ctx.timer.mark("setup_s", once=True)
        predict = None
        if ctx.multiworker is not None:
            from medkeras.train.loop import local_predict as predict
        callbacks = [
            ValidationMetrics(ctx.val_ds, ctx.val_labels, ctx.positive_index, predict),
            BestCheckpoint(ckpt, tc.monitor, save=lambda m, p: save_model(m, p, ctx.meta)),
            keras.callbacks.CSVLogger(str(log), append=ctx.resume or start > 0),
            keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True),
            keras.callbacks.TensorBoard(str(ctx.run_dir / "tensorboard" / (tag or "")), write_graph=False, profile_batch=0),
            _first_step_callback(ctx.timer),
        ]
        if tc.ema and ctx.multiworker is None:  # first: every later callback sees the averaged weights
            callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if ctx.size_var is not None:
            full = ctx.cfg.data.image_size
            sizes = size_schedule(tc.size_schedule if sized else None, tc.epochs, full)
            callbacks.insert(0, ProgressiveResizing(ctx.size_var, sizes, full))
        if ctx.tracker is not None:
            from medkeras.train.tracking import epoch_logger

            callbacks.append(epoch_logger(ctx.tracker, tag))
        if tc.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(tc.monitor, patience=tc.early_stopping_patience, mode="max"))
        if tc.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(tc.monitor, factor=0.1, patience=3, mode="max"))
        if tag:
            print(f"medkeras: training member {tag}, phase {name} (epochs {start + 1}-{end})")
        elif len(plan) > 1:
            print(f"medkeras: phase {name} (epochs {start + 1}-{end}, learning rate {rate:g})")
        if ctx.multiworker is not None:
            from medkeras.train.loop import custom_fit

            custom_fit(
                model, ctx.train_ds, strategy=ctx.multiworker, loss=ctx.loss, optimizer=optimizer, epochs=end,
                initial_epoch=start, steps=ctx.steps, callbacks=callbacks, verbose=tc.verbose,
            )
        else:
            model.fit(
                ctx.train_ds, initial_epoch=start, epochs=end, steps_per_epoch=ctx.steps, callbacks=callbacks,
                verbose=tc.verbose,
            )
        if index < len(plan) - 1:
            model.save_weights(str(done))
        start = end
    best = json.loads((ckpt / "best.json").read_text()) if (ckpt / "best.json").is_file() else {}
    if (ckpt / "best.keras").is_file():
        model, _ = load_model(ckpt / "best.keras")
    return model, best


def dataset_statistics(batches) -> tuple[list, list]:
    """Per-channel mean and std of un-augmented training batches at the training resolution (pixels / 255)."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for x, _ in batches:
        x = x.numpy().astype(np.float64) / 255.0
        total += x.sum(axis=(0, 1, 2))
        total_sq += (x**2).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def make_strategy(name: str):
    """A tf.distribute strategy: `mirrored` over every GPU (or every logical CPU where there is none), `auto`
    mirrored only with several GPUs, `one_device` the first device. The global batch is `train.batch_size`."""
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.get_strategy()


def _set_precision(tc):
    import keras

    keras.mixed_precision.set_global_policy(tc.precision)
    if tc.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fit(cfg: Config, out=None, resume: bool = False) -> Path:
    """Train what `cfg` describes; returns the run directory. `resume` continues a killed run in `out`.

    Under `train.strategy: multiworker` every worker runs this with the same arguments and its own TF_CONFIG;
    the chief writes `out`, the others train alongside with a scratch directory and return it.
    """
    import contextlib

    import keras

    timer = _Timer()
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    multiworker = None
    if cfg.train.strategy == "multiworker":
        import tempfile

        from medkeras.train.loop import is_chief, make_multiworker_strategy

        multiworker = make_multiworker_strategy()
        if not is_chief(multiworker):
            run_dir = Path(tempfile.mkdtemp(prefix="medkeras-worker-"))
            if resume and out is not None and (Path(out) / "config.yaml").is_file():
                (run_dir / "config.yaml").write_text((Path(out) / "config.yaml").read_text())
    _prepare_run_dir(run_dir, resume)
    if resume:
        cfg = load_run_config(run_dir)
    _set_precision(cfg.train)
    size_var = None
    if cfg.train.size_schedule:  # created outside the strategy scope: the input pipeline reads it, not a replica
        import tensorflow as tf

        size_var = tf.Variable(cfg.data.image_size, dtype=tf.int32, trainable=False, name="train_image_size")
    try:  # multiworker: only model building and training run in the strategy's scope (see _fit)
        from medkeras.train.loop import is_chief
        from medkeras.train.tracking import mlflow_run

        scope = contextlib.nullcontext() if multiworker else make_strategy(cfg.train.strategy).scope()
        chief = multiworker is None or is_chief(multiworker)  # only the chief tracks a multi-worker run
        with mlflow_run(cfg, run_dir, enabled=chief) as tracker, scope:
            return _fit(cfg, run_dir, resume, timer, size_var, multiworker, tracker)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _uses_schedule(tc, name: str | None) -> bool:
    """Whether the model (a member by backbone name, or the whole joint model) trains under the size schedule."""
    return bool(tc.size_schedule) and (name is None or not tc.size_schedule_members or name in tc.size_schedule_members)


def _fit(cfg, run_dir, resume, timer, size_var=None, multiworker=None, tracker=None) -> Path:
    import keras

    from medkeras.data.pipeline import make_tf_dataset, split_arrays, stream_tf_dataset
    from medkeras.data.sources import load_dataset
    from medkeras.evaluate.evaluate import calibrate_on_validation, member_logits, predict_logits, score_split, write_outputs
    from medkeras.evaluate.metrics import positive_index
    from medkeras.models.ensemble import (
        build_ensemble,
        build_member,
        build_model,
        fit_fusion_weights,
        members_of,
        weights_for,
    )
    from medkeras.models.io import save_model
    from medkeras.train.losses import class_weights, make_loss

    tc = cfg.train
    keras.utils.set_random_seed(tc.seed)
    dataset = load_dataset(cfg.data, seed=tc.seed)
    arrays, bad = {}, []
    for split in ("train", "val", "test"):
        if split == "train" and dataset.splits[split].store is not None:  # streamed, never held in memory
            arrays[split] = (None, dataset.splits[split].labels, dataset.splits[split].names())
            continue
        images, labels, names, skipped = split_arrays(dataset.splits[split], cfg.data, cfg.data.on_bad_file)
        arrays[split] = (images, labels, names)
        bad += [(split, p, c) for p, c in skipped]
    if bad:
        _write_rows(run_dir / "bad_files.csv", ["split", "path", "cause"], bad)
        print(f"medkeras: skipped {len(bad)} unreadable files (listed in {run_dir / 'bad_files.csv'})")
    for split in ("train", "val"):
        if len(arrays[split][1]) == 0:
            raise MedkerasError(f"{cfg.data.source}: the {split} split is empty after reading")
    cfg.data.class_names = list(dataset.class_names)
    cfg.data.positive_class = dataset.positive_class
    def train_batches(training):
        sv = size_var if training else None
        split, images = dataset.splits["train"], arrays["train"][0]
        if split.store is not None:
            return stream_tf_dataset(split, cfg.data, tc.batch_size, training, tc.seed, size_var=sv)
        return make_tf_dataset(images, arrays["train"][1], cfg.data, tc.batch_size, training, tc.seed, size_var=sv)

    if cfg.data.normalize == "dataset" and cfg.data.mean is None:
        cfg.data.mean, cfg.data.std = dataset_statistics(train_batches(training=False))
    normalization = (cfg.data.mean, cfg.data.std) if cfg.data.normalize == "dataset" else None
    if not resume:
        cfg.save(run_dir / "config.yaml")
    meta = model_meta(cfg, dataset)
    k = dataset.num_classes
    pos = positive_index(dataset.class_names, dataset.positive_class) if k == 2 else None

    loss, one_hot = make_loss(tc, k)
    train_labels = arrays["train"][1]
    weights = class_weights(tc, train_labels, dataset.class_names, pos)
    train_ds = train_batches(training=True)
    if one_hot or weights is not None:
        import tensorflow as tf

        table = tf.constant(weights if weights is not None else np.ones(k, np.float32))

        def relabel(x, y):
            target = tf.one_hot(y, k) if one_hot else y
            return (x, target, tf.gather(table, y)) if weights is not None else (x, target)

        train_ds = train_ds.map(relabel)
    steps = int(np.ceil(len(train_labels) / tc.batch_size))
    if tc.steps_per_epoch:
        steps = tc.steps_per_epoch
        train_ds = train_ds.repeat()
    val_images, val_labels, _ = arrays["val"]
    val_ds = make_tf_dataset(val_images, val_labels, cfg.data, cfg.eval.batch_size).map(lambda x, y: x)
    ctx = _Context(
        cfg, run_dir, meta, train_ds, val_ds, val_labels, steps, loss, one_hot, pos, timer, resume, size_var, multiworker,
        tracker,
    )

    names = list(cfg.model.backbones)
    if tc.ensemble == "separate" and len(names) > 1:
        members, best = [], {}
        for i, name in enumerate(names):
            tag = name if names.count(name) == 1 else f"{name}_{i}"
            member = build_member(
                name, k, cfg.data.image_size, weights_for(cfg.model.weights, name), cfg.model.head, cfg.model.dropout,
                tag, normalization, dynamic=_uses_schedule(tc, name),
            )
            member, best[tag] = train_model(ctx, member, tag, sized=_uses_schedule(tc, name))
            members.append(member)
        model = build_ensemble(members, cfg.data.image_size, cfg.model.ensemble_weights)
    elif multiworker is not None:
        from medkeras.models.io import load_model
        from medkeras.train.loop import is_chief

        with multiworker.scope():
            dynamic = _uses_schedule(tc, None)
            model, best = train_model(ctx, build_model(cfg.model, k, cfg.data.image_size, normalization, dynamic), dynamic)
        if not is_chief(multiworker):
            return run_dir  # the chief evaluates and writes the run
        model, _ = load_model(run_dir / "checkpoints" / "best.keras")  # outside the scope: plain predict from here
    else:
        dynamic = _uses_schedule(tc, None)
        model, best = train_model(ctx, build_model(cfg.model, k, cfg.data.image_size, normalization, dynamic), sized=dynamic)
    timer.mark("fit_s")

    if cfg.model.fusion == "fitted" and len(members_of(model)) > 1:
        logits = member_logits(model, val_images, cfg.data, cfg.eval.batch_size)
        fusion = fit_fusion_weights(list(logits.values()), val_labels)
        model = build_ensemble(members_of(model), cfg.data.image_size, fusion)
        meta["fusion_weights"] = dict(zip(logits, fusion))
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
            history = run_dir / "train_log.csv"
            write_outputs(run_dir, scored, dataset, cfg, meta, model=model, history_csv=history)
            results["ensemble"] = scored["ensemble"]
        results[split] = scored["metrics"]
    _write_duplicates(run_dir, dataset)
    timer.mark("total_s")
    record = best if "epoch" in best else {}
    atomic_write_json(
        run_dir / "metrics.json",
        {
            "config": cfg.name,
            "best_epoch": record.get("epoch"),
            "monitor": tc.monitor,
            "monitor_value": record.get("value"),
            "members_best": None if record else best,
            "temperature": meta["temperature"],
            "threshold": meta["threshold"],
            "threshold_rule": meta["threshold_rule"],
            "fusion_weights": meta.get("fusion_weights"),
            **results,
            "timing_s": timer.marks,
        },
    )
    from medkeras.train.tracking import log_results

    log_results(tracker, results)
    return run_dir
