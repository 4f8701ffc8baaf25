"""Callbacks fit relies on: validation metrics computed like `eval` does, an atomic best checkpoint, progressive
resizing, and Keras' CSV log and TensorBoard counting epochs from 1.

`ValidationMetrics` runs one predict pass over the validation split per epoch and puts `val_loss`,
`val_accuracy` and `val_auroc` into the epoch logs, before the checkpoint, CSV logger and TensorBoard read them.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from medkeras.evaluation.metrics import auroc, softmax
from medkeras.train.monitors import monitor_mode
from medkeras.utils import atomic_path, atomic_write_json, atomic_write_text


class ValidationMetrics(keras.callbacks.Callback):
    """Adds val_loss / val_accuracy / val_auroc (scikit-learn's AUROC, macro OvR for K > 2) to each epoch's logs."""

    def __init__(self, dataset, labels, positive_index=None, predict=None):
        super().__init__()
        self.dataset = dataset
        self.labels = np.asarray(labels, dtype=np.int64)
        self.positive_index = positive_index
        self.predict = predict  # callable(model, dataset) -> logits; default model.predict

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.predict is not None:
            logits = np.asarray(self.predict(self.model, self.dataset), dtype=np.float32)
        else:
            logits = np.asarray(self.model.predict(self.dataset, verbose=0), dtype=np.float32)
        probs = softmax(logits)
        p_true = np.clip(probs[np.arange(len(self.labels)), self.labels], 1e-7, 1.0)
        logs["val_loss"] = float(-np.log(p_true).mean())
        logs["val_accuracy"] = float((probs.argmax(1) == self.labels).mean())
        value = auroc(self.labels, probs, self.positive_index)
        logs["val_auroc"] = float("nan") if value is None else value


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the best model by a logged metric (lowest for losses, else highest: `monitors.py`): `best.keras` and
    `best.json` (epoch, logs).

    Writes are atomic (a temporary file renamed into place), so a kill never leaves a half-written checkpoint.
    """

    def __init__(self, directory, monitor="val_auroc", save=None):
        super().__init__()
        self.directory = Path(directory)
        self.monitor = monitor
        self.sign = 1.0 if monitor_mode(monitor) == "max" else -1.0  # compared as sign * value, higher better
        self.best = -np.inf
        self.save = save  # callable(model, path) -> writes the .keras file
        state = self.directory / "best.json"
        if state.is_file():  # resumed run: keep beating the best so far, not -inf
            import json

            recorded = json.loads(state.read_text()).get("value")
            self.best = -np.inf if recorded is None else self.sign * float(recorded)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"train.monitor '{self.monitor}' is not among the logged metrics {sorted(logs)}")
        if not np.isfinite(value) or self.sign * value <= self.best:
            return
        self.best = self.sign * float(value)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.save(self.model, self.directory / "best.keras")
        atomic_write_json(
            self.directory / "best.json",
            {"epoch": epoch + 1, "monitor": self.monitor, "value": float(value),
             "logs": {k: float(v) for k, v in logs.items()}},
        )


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore with every file written whole (a temporary file, then one rename). Keras writes
    `latest.weights.h5` in place: a kill during its first backup (no `.bkp` to fall back on yet) left a truncated
    file that `--resume` could not open ("bad object header version number"; found by the kill test in CI)."""

    def _save_model(self):
        import json
        import shutil

        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        if self.double_checkpoint:
            for source, copy in ((self._weights_path, self._prev_weights_path),
                                 (self._training_metadata_path, self._prev_training_metadata_path)):
                if Path(source).exists():
                    with atomic_path(copy) as tmp:
                        shutil.copyfile(source, tmp)
        with atomic_path(self._weights_path, suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp))
        atomic_write_text(self._training_metadata_path,
                          json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))


class EpochLog(keras.callbacks.CSVLogger):
    """Keras' CSVLogger with epochs counted from 1, as the console, `best.json` and the report count them."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


class EpochBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard with epochs counted from 1."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


def size_schedule(schedule, epochs: int, image_size: int) -> list[int]:
    """The training image size of each epoch 1..epochs under `train.size_schedule` (data.image_size without one)."""
    sizes = [image_size] * epochs
    for first, size in sorted(schedule or []):
        for epoch in range(int(first), epochs + 1):
            sizes[epoch - 1] = int(size)
    return sizes


class ProgressiveResizing(keras.callbacks.Callback):
    """Sets the training image size at the start of each epoch from `sizes` (one per epoch, 1-based list order).

    The training pipeline reads `size_var` when it resizes a batch. With `train.steps_per_epoch` (a repeated
    dataset), the few batches already prefetched at an epoch boundary keep the previous size.
    """

    def __init__(self, size_var, sizes, final_size: int):
        super().__init__()
        self.size_var = size_var
        self.sizes = list(sizes)
        self.final_size = int(final_size)

    def on_epoch_begin(self, epoch, logs=None):
        size = self.sizes[min(epoch, len(self.sizes) - 1)]
        if int(self.size_var.numpy()) != size:
            print(f"medkeras: epoch {epoch + 1}: training at {size} px")
        self.size_var.assign(size)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["image_size"] = float(self.sizes[min(epoch, len(self.sizes) - 1)])

    def on_train_end(self, logs=None):
        self.size_var.assign(self.final_size)
