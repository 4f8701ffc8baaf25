"""Training phases (`train/phases.py`): with `data.augment_on: model` the augmentation runs at the front of the
fitted model, and what is saved, evaluated and exported is the model behind it."""

import csv
import json
import zipfile

import numpy as np
from conftest import run_cli


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
    for key in ("loss", "accuracy", "val_loss", "val_auroc"):
        np.testing.assert_allclose(float(first["model"][key]), float(first["data"][key]), rtol=1e-4)
    assert logs["model"][1]["image_size"] == "28.0"
    assert "training_front" not in json.dumps(configs["model"])
    assert configs["model"]["config"]["layers"] == configs["data"]["config"]["layers"]  # the same model saved
