"""Training phases (`train/phases.py`): with `data.augment_on: model` the augmentation runs at the front of the
fitted model, and what is saved, evaluated and exported is the model behind it; slices and CT studies alike."""

import csv
import json
import zipfile

import numpy as np
from conftest import run_cli, study_source


def _log(run):
    return list(csv.DictReader(open(run / "train_log.csv")))


def test_augmentation_in_the_model_trains_as_in_the_pipeline_and_is_never_saved(tmp_path):
    """The same seed gives the same first epoch either way (CLAHE, erasing, noise and the progressive resize all in
    the front: the draws are the pipeline's), and the saved model holds no augmentation. After the size change the
    two part: the pipeline's prefetched batches keep the old size for a few steps (ProgressiveResizing says so);
    the front reads the size at each step."""
    logs, configs = {}, {}
    for where in ("data", "model"):
        run = tmp_path / where
        result = run_cli(
            "fit", "--out", run, "--set", f"data.augment_on={where}", "--set", "train.epochs=2", "--set",
            "train.steps_per_epoch=3", "--set", "train.verbose=0", "--set", "model.backbones=[cnn8_small]",
            "--set", "eval.bootstrap=0", "--set", "data.augment.clahe=0.5", "--set", "data.augment.erasing=0.3",
            "--set", "data.augment.noise=3", "--set", "train.size_schedule=[[1, 20], [2, 28]]",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        logs[where] = _log(run)
        configs[where] = json.loads(zipfile.ZipFile(run / "model.keras").read("config.json"))
    first = {where: logs[where][0] for where in logs}
    assert first["data"]["image_size"] == first["model"]["image_size"] == "20.0"
    for key in ("loss", "accuracy", "val_loss", "val_auroc"):  # the pipeline resamples on OpenCV, the front on TF:
        np.testing.assert_allclose(float(first["model"][key]), float(first["data"][key]), rtol=5e-3)  # 0.24% here
    assert logs["model"][1]["image_size"] == "28.0"
    assert "training_front" not in json.dumps(configs["model"])
    assert configs["model"]["config"]["layers"] == configs["data"]["config"]["layers"]  # the same model saved


def test_a_study_model_augments_in_the_model_as_in_the_pipeline_and_saves_the_same_model(tmp_path):
    """A series model on real CT studies (TCIA layout): with `data.augment_on: model` the volume augmentation runs
    at the front of the fitted model (TF's kernel) and the first epoch matches the pipeline's (OpenCV's kernel, the
    same draws) to interpolation error; the saved model is the same, with no augmentation in it."""
    manifest = study_source(tmp_path / "ct")
    logs, configs = {}, {}
    for where in ("data", "model"):
        run = tmp_path / where
        result = run_cli(
            "fit", "--out", run, "--set", f"data.source={manifest}", "--set", f"data.augment_on={where}",
            "--set", "data.window=lung", "--set", "data.image_size=32", "--set", "data.volume_size=[4, 32, 32]",
            "--set", "model.input=series", "--set", "model.backbones=[cnn8_small]", "--set", "train.epochs=1",
            "--set", "train.batch_size=2", "--set", "train.verbose=0", "--set", "eval.bootstrap=0",
            "--set", "data.augment.rotation=0.1", "--set", "data.augment.brightness=0.2",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        logs[where] = _log(run)
        configs[where] = json.loads(zipfile.ZipFile(run / "model.keras").read("config.json"))
    for key in ("loss", "accuracy", "val_loss"):
        np.testing.assert_allclose(float(logs["model"][0][key]), float(logs["data"][0][key]), rtol=1e-3, atol=1e-4)
    assert "training_front" not in json.dumps(configs["model"])
    assert configs["model"]["config"]["layers"] == configs["data"]["config"]["layers"]
