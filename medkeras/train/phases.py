"""Step 3 of a fit, training: the recipe's phases (frozen backbones, then fine-tuning) of one model, each a Keras
`fit` with the run's callbacks (validation metrics, best checkpoint, CSV log, resume backup, TensorBoard).

`train_model` is the same for the whole ensemble, a member trained apart, or a multi-worker run (medkeras' own
loop, `loop.py`, drives the same callbacks).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from medkeras.config import Config, plane_size
from medkeras.train.rundir import Timer, backup_epoch, truncate_log
from medkeras.utils import atomic_path


@dataclass
class Context:
    """What every model trained in this run shares."""

    cfg: Config
    run_dir: Path
    meta: dict
    data: object  # inputs.RunData
    timer: Timer
    resume: bool
    size_var: object = None  # progressive resizing: the training pipeline's current image size
    multiworker: object = None  # a MultiWorkerMirroredStrategy: train with medkeras' own loop (train/loop.py)
    tracker: object = None  # the mlflow module while an MLflow run is active (track.mlflow)


def phases(tc) -> list[tuple[str, int, float, bool]]:
    """(name, last epoch, learning rate, backbones frozen) per phase of the recipe."""
    if tc.freeze_backbone:
        return [("frozen", tc.epochs, tc.learning_rate, True)]
    if tc.freeze_epochs:
        finetune = tc.finetune_learning_rate or tc.learning_rate / 10.0
        return [("frozen", tc.freeze_epochs, tc.learning_rate, True), ("finetune", tc.epochs, finetune, False)]
    return [("train", tc.epochs, tc.learning_rate, False)]


def batchnorm_modes(cfg) -> dict:
    """{member name: "frozen" | "trainable"}: `train.finetune_batchnorm`, with `auto` frozen for each backbone that
    starts from pretrained weights (`model.weights` not none for it) and trainable for one trained from scratch."""
    from medkeras.models.ensemble import member_names, weights_for

    mode, names = cfg.train.finetune_batchnorm, list(cfg.model.backbones)
    return {tag: mode if mode != "auto" else "trainable" if weights_for(cfg.model.weights, name).lower() == "none"
            else "frozen" for name, tag in zip(names, member_names(names))}


def set_backbones_trainable(model, trainable: bool, batchnorm="trainable") -> None:
    """Freeze or unfreeze every member's backbone; a frozen BatchNorm runs in inference mode in Keras 3. With
    `batchnorm` "frozen" (or {member name: mode} from `batchnorm_modes`), an unfrozen backbone keeps its BatchNorm
    layers frozen (inference mode, fixed moving statistics): Keras' transfer-learning guidance for fine-tuning
    pretrained weights on small data."""
    import keras

    from medkeras.models.ensemble import members_of

    for member in members_of(model):
        mode = batchnorm.get(member.name, "trainable") if isinstance(batchnorm, dict) else batchnorm
        for layer in member.layers:
            if isinstance(layer, keras.Model):
                layer.trainable = trainable
                if trainable and mode == "frozen":
                    for inner in layer._flatten_layers(include_self=False, recursive=True):
                        if isinstance(inner, keras.layers.BatchNormalization):
                            inner.trainable = False


def _verbose(verbose: int) -> int:
    """Keras' bar on a terminal; one line per epoch in a file or pipe, where a bar is a long line of control codes."""
    from medkeras.progress import interactive

    return 2 if verbose == 1 and not interactive() else verbose


def steps_per_execution(wanted: int, steps: int) -> int:
    """The largest count <= `wanted` that divides the epoch's `steps`: Keras runs whole executions, so 3 steps per
    call over a repeated dataset of 4 steps an epoch trained 6 steps an epoch (measured), not 4."""
    return max(d for d in range(1, max(1, min(wanted, steps)) + 1) if steps % d == 0)


def build_optimizer(model):
    """Make the optimizer's slots now, eagerly. Keras (no distribution strategy) would make them inside the first
    train step's trace, and a `tf.function` that creates variables is traced twice: 84 s + 31 s of the lung
    ensemble's 139 s before its first step (bench/startup.py --fit)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _first_step_callback(timer, what: str = "building the graph"):
    """Marks the first step's time, and says every ~10 s that the graph is being built until that step ends
    (the lung ensemble spends minutes there on a CPU, which Keras' bar does not show)."""
    import keras

    from medkeras.progress import Heartbeat, say

    class FirstStep(keras.callbacks.Callback):
        beat = None

        def on_train_begin(self, logs=None):
            say(f"{what} (the first step takes longest)...")
            self.beat = Heartbeat(what).start()

        def on_train_batch_end(self, batch, logs=None):
            if self.beat is not None:
                say(f"{what}: done in {self.beat.stop():.1f} s")
                self.beat = None
            timer.mark("first_step_s", once=True)

        def on_train_end(self, logs=None):
            if self.beat is not None:
                self.beat.stop()
                self.beat = None

    return FirstStep()


def _with_front(ctx, model, sized: bool):
    """`model` behind the training augmentation (`data.augment_on: model`): one functional model sharing its layers,
    fitted in its place; callbacks save and validate `model` itself."""
    import keras

    from medkeras.config import is_study
    from medkeras.data.augment import training_front
    from medkeras.data.augment3d import study_training_front

    full = ctx.cfg.data.image_size
    resize = ctx.size_var if sized else None
    with ctx.multiworker.scope() if ctx.multiworker is not None else contextlib.nullcontext():
        channels = ctx.data.train_ds.element_spec[0].shape[-1]  # as read: the front repeats grey to the model's 3
        if is_study(ctx.cfg):  # (D, H, W, C) studies at data.volume_size
            inputs = keras.Input((*(int(v) for v in ctx.cfg.data.volume_size), channels), name="volume")
            front = study_training_front(ctx.cfg.data.augment, ctx.cfg.train.seed, resize)
        else:
            inputs = keras.Input((full, full, channels), name="pixels")
            front = training_front(ctx.cfg.data.augment, ctx.cfg.train.seed, resize)
        return keras.Model(inputs, model(front(inputs)), name=f"{model.name}_training")


def train_model(ctx: Context, model, tag: str | None = None, sized: bool = False):
    """Fit `model` through the recipe's phases; returns the best model (by `train.monitor`) and its record.

    `sized`: train under `train.size_schedule` (progressive resizing); other models see `data.image_size`.
    """
    import keras

    from medkeras.models.io import load_model, save_model
    from medkeras.train.callbacks import (
        AtomicBackupAndRestore,
        BestCheckpoint,
        EpochBoard,
        EpochLog,
        ProgressiveResizing,
        ValidationMetrics,
        size_schedule,
    )
    from medkeras.train.losses import make_optimizer
    from medkeras.train.monitors import monitor_mode

    tc, data = ctx.cfg.train, ctx.data
    ckpt = ctx.run_dir / "checkpoints" / (tag or "")
    log = ctx.run_dir / (f"train_log_{tag}.csv" if tag else "train_log.csv")
    start = 0
    plan = phases(tc)
    fitted = _with_front(ctx, model, sized) if data.augment_in_model else model  # what fit steps; `model` is saved
    for index, (name, end, rate, frozen) in enumerate(plan):
        done = ckpt / f"{name}.weights.h5"
        if ctx.resume and done.is_file() and index < len(plan) - 1:
            set_backbones_trainable(model, not frozen, batchnorm_modes(ctx.cfg))
            model.load_weights(str(done))
            start = end
            continue
        backup = ckpt / "backup" / name
        if ctx.resume:
            truncate_log(log, backup_epoch(backup) or start)
        set_backbones_trainable(model, not frozen, batchnorm_modes(ctx.cfg))
        with ctx.multiworker.scope() if ctx.multiworker is not None else contextlib.nullcontext():
            optimizer = make_optimizer(tc, data.steps, end - start, rate)  # its variables mirrored where trained
        if ctx.multiworker is None:
            fitted.compile(
                optimizer=optimizer,
                loss=data.loss,
                # logged as `accuracy`, beside ValidationMetrics' val_accuracy
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy") if data.one_hot
                         else keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=tc.jit_compile,
                run_eagerly=tc.run_eagerly,
                steps_per_execution=steps_per_execution(tc.steps_per_execution, data.steps),
            )
            build_optimizer(fitted)
        ctx.timer.mark("setup_s", once=True)
        predict = None
        if ctx.multiworker is not None:
            from medkeras.train.loop import local_predict as predict
        callbacks = [
            ValidationMetrics(data.val_ds, data.arrays["val"][1], data.positive_index, predict),
            BestCheckpoint(ckpt, tc.monitor, save=lambda m, p: save_model(model, p, ctx.meta)),  # never the front
            EpochLog(str(log), append=ctx.resume or start > 0),
            # kept after training (delete_checkpoint=False): `--resume` with more epochs continues a finished run
            AtomicBackupAndRestore(str(backup), double_checkpoint=True, delete_checkpoint=False),
            EpochBoard(str(ctx.run_dir / "tensorboard" / (tag or "")), write_graph=False, profile_batch=0),
            _first_step_callback(ctx.timer, f"phase {name}{f' of {tag}' if tag else ''}: building the graph"),
        ]
        if tc.ema:  # first: every later callback sees the averaged weights
            callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if ctx.size_var is not None:
            full = plane_size(ctx.cfg)
            sizes = size_schedule(tc.size_schedule if sized else None, tc.epochs, full)
            callbacks.insert(0, ProgressiveResizing(ctx.size_var, sizes, full))
        if ctx.tracker is not None:
            from medkeras.train.tracking import epoch_logger

            callbacks.append(epoch_logger(ctx.tracker, tag))
        mode = monitor_mode(tc.monitor)  # one direction for the checkpoint, early stopping and the plateau
        if tc.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(tc.monitor, patience=tc.early_stopping_patience, mode=mode))
        if tc.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(tc.monitor, factor=0.1, patience=3, mode=mode))
        if tag:
            print(f"medkeras: training member {tag}, phase {name} (epochs {start + 1}-{end})")
        elif len(plan) > 1:
            print(f"medkeras: phase {name} (epochs {start + 1}-{end}, learning rate {rate:g})")
        if ctx.multiworker is not None:
            from medkeras.train.loop import custom_fit

            custom_fit(
                fitted, data.train_ds, strategy=ctx.multiworker, loss=data.loss, optimizer=optimizer, epochs=end,
                initial_epoch=start, steps=data.steps, callbacks=callbacks, verbose=_verbose(tc.verbose),
                size_var=ctx.size_var if sized and not data.augment_in_model else None,
            )
        else:
            fitted.fit(
                data.train_ds, initial_epoch=start, epochs=end, steps_per_epoch=data.steps, callbacks=callbacks,
                verbose=_verbose(tc.verbose),
            )
        if index < len(plan) - 1:
            with atomic_path(done, suffix=".weights.h5") as tmp:  # whole or absent: resume loads it
                model.save_weights(str(tmp))
        start = end
    best = json.loads((ckpt / "best.json").read_text()) if (ckpt / "best.json").is_file() else {}
    if (ckpt / "best.keras").is_file():
        model, _ = load_model(ckpt / "best.keras")
    return model, best
