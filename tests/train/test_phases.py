"""Training phases (`train/phases.py`): with `data.augment_on: model` the augmentation runs at the front of the
fitted model, and what is saved, evaluated and exported is the model behind it; slices and CT studies alike."""

import csv
import json
import zipfile

import numpy as np
import pytest
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


def test_a_study_model_trains_under_progressive_resizing_in_plane_and_serves_at_its_volume_size(tmp_path):
    """`train.size_schedule` for studies resizes each training batch in plane (every slice alike, the slices kept),
    in tf.data or at the front of the fitted model; the model takes a plane of any size, and eval and export feed
    `data.volume_size` (the export verified against it; every door of a slab and a volume model under a schedule:
    test_recipes). A schedule past the plane or below a 3D backbone's least side, or a plane that is not square, is
    refused in one line."""
    import tensorflow as tf

    from medkeras.config import ConfigError, load_config
    from medkeras.data.pipeline import make_tf_dataset

    study = ["model.input=series", "model.backbones=[cnn8_small]", "data.window=lung", "data.image_size=32",
             "data.volume_size=[4, 32, 32]", "train.epochs=2"]
    cfg = load_config("demo", study).data
    size = tf.Variable(32, dtype=tf.int32)
    volumes = np.random.default_rng(0).uniform(0, 255, (4, 4, 32, 32, 1)).astype(np.float32)
    ds = make_tf_dataset(volumes, np.array([0, 1, 0, 1]), cfg, 2, True, size_var=size)
    assert next(iter(ds))[0].shape == (2, 4, 32, 32, 3)
    size.assign(16)
    assert next(iter(ds))[0].shape == (2, 4, 16, 16, 3)  # in plane, read as each epoch's iterator runs
    for bad, cause in ((["train.size_schedule=[[1, 16], [2, 48]]"], r"8\.\.32 \(the plane"),
                       (["model.input=volume", "model.backbones=[resnet18_3d]", "data.volume_size=[16, 32, 24]",
                         "train.size_schedule=[[1, 16]]"], "not square"),
                       (["model.input=volume", "model.backbones=[resnet18_3d]", "data.volume_size=[16, 32, 32]",
                         "train.size_schedule=[[1, 8]]"], r"16\.\.32")):  # the 3D ResNet's least side
        with pytest.raises(ConfigError, match=cause):
            load_config("demo", [*study, *bad])

    manifest = study_source(tmp_path / "ct")
    for where in ("data", "model"):
        run = tmp_path / where
        result = run_cli(
            "fit", "--out", run, *[a for kv in study for a in ("--set", kv)], "--set", f"data.source={manifest}",
            "--set", f"data.augment_on={where}", "--set", "data.augment.rotation=0.1",
            "--set", "train.size_schedule=[[1, 16], [2, 32]]", "--set", "train.batch_size=2",
            "--set", "train.verbose=0", "--set", "eval.bootstrap=0",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert [r["image_size"] for r in _log(run)] == ["16.0", "32.0"]
        assert "epoch 2: training at 32 px" in result.stdout
    result = run_cli("export", tmp_path / "model", "--out", tmp_path / "serving", "--name", "study")
    assert result.returncode == 0, result.stderr[-2000:]  # every signature verified against the Keras model
