"""The best checkpoint follows `train.monitor` the way it improves: lowest for losses, highest otherwise, also when a
run resumes; a monitor that will not be logged is refused before any work."""

import csv
import json

import pytest
from conftest import run_cli

from medkeras.train.callbacks import BestCheckpoint


class _Model:
    saved = []


def _checkpoint(tmp_path, monitor, values):
    saved = []
    callback = BestCheckpoint(tmp_path, monitor, save=lambda model, path: saved.append(path))
    callback.set_model(_Model())
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {monitor: value})
    return json.loads((tmp_path / "best.json").read_text()), len(saved)


def test_losses_are_minimised_and_other_metrics_maximised(tmp_path):
    best, saves = _checkpoint(tmp_path / "loss", "val_loss", [0.9, 0.7, 0.8, 0.6, float("nan")])
    assert best["epoch"] == 4 and best["value"] == 0.6 and saves == 3
    best, saves = _checkpoint(tmp_path / "auroc", "val_auroc", [0.6, 0.8, 0.7, 0.75])
    assert best["epoch"] == 2 and best["value"] == 0.8 and saves == 2
    # a resumed run keeps beating its recorded best, in the monitor's direction
    best, saves = _checkpoint(tmp_path / "loss", "val_loss", [0.65, 0.55])
    assert best["epoch"] == 2 and best["value"] == 0.55 and saves == 1


def test_a_val_loss_fit_keeps_the_epoch_of_lowest_val_loss(tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", "--out", run, "--set", "train.epochs=4", "--set", "train.steps_per_epoch=2",
                     "--set", "train.run_eagerly=true", "--set", "train.verbose=0", "--set", "train.monitor=val_loss",
                     "--set", "train.schedule=plateau", "--set", "train.early_stopping_patience=3",
                     "--set", "model.backbones=[cnn8_small]", "--set", "eval.bootstrap=0")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert "accuracy" in rows[0] and "val_accuracy" in rows[0]  # the training accuracy named as validation's
    losses = [float(r["val_loss"]) for r in rows]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val_loss" and metrics["best_epoch"] == 1 + losses.index(min(losses))
    assert metrics["monitor_value"] == pytest.approx(min(losses), rel=1e-6)
