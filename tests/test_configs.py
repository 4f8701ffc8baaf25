"""Every bundled config loads, and runs a few steps at a tiny size through the real CLI on real images."""

import json

import pytest
from conftest import LUNG, run_cli
from PIL import Image

from medkeras.config import bundled_configs, load_config

TINY = ["--set", "train.epochs=2", "--set", "train.steps_per_epoch=1", "--set", "train.batch_size=4",
        "--set", "train.run_eagerly=true", "--set", "train.verbose=0", "--set", "eval.bootstrap=50",
        "--set", "eval.gradcam_examples=1", "--set", "data.image_size=32"]


def test_every_bundled_config_loads_and_is_listed():
    names = set(bundled_configs())
    assert {"demo", "lung-ct-ensemble", "cancer-resnet34-frozen", "spine-xray-ensemble", "cxr-5class"} <= names
    for name in names:
        cfg = load_config(name)
        assert cfg.description, name
    listing = run_cli("configs").stdout
    assert all(name in listing for name in names)


def _class_folder(root, breast, classes, per_class=8):
    images = breast.splits["train"].images
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(images[k * per_class + i]).save(root / name / f"{i}.png")
    return root


def _fit(tmp_path, config, *extra):
    out = tmp_path / "run"
    result = run_cli("fit", config, "--out", out, *TINY, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "metrics.json").read_text())


def test_lung_ct_ensemble_on_real_ct(tmp_path):
    manifest = tmp_path / "ct.csv"
    rows = [("1-01.dcm", "normal", "train"), ("1-13.dcm", "cancerous", "train"), ("1-01.dcm", "normal", "val"),
            ("1-14.dcm", "cancerous", "val"), ("1-01.dcm", "normal", "test"), ("1-14.dcm", "cancerous", "test")]
    manifest.write_text("path,label,split\n" + "".join(f"{LUNG / p},{y},{s}\n" for p, y, s in rows))
    out, metrics = _fit(tmp_path, "lung-ct-ensemble", "--set", f"data.source={manifest}", "--set", "model.weights=none",
                        "--set", "train.freeze_epochs=1")
    assert metrics["test"]["n"] == 2
    assert [r["model"] for r in metrics["ensemble"]][:3] == ["vgg19_bn alone", "efficientnetb0 alone", "resnet101 alone"]
    log = (out / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["1", "2"]  # phase 1 then phase 2, one row per epoch


def test_cancer_resnet34_frozen(tmp_path, breast):
    data = _class_folder(tmp_path / "data", breast, ["cancer", "normal"])
    _, metrics = _fit(tmp_path, "cancer-resnet34-frozen", "--set", f"data.source={data}", "--set", "model.weights=none")
    assert metrics["test"]["n"] >= 2


@pytest.mark.slow
def test_spine_xray_ensemble_separate_members_fitted_fusion(tmp_path, breast):
    data = _class_folder(tmp_path / "data", breast, ["negative", "positive"])
    out, metrics = _fit(tmp_path, "spine-xray-ensemble", "--set", f"data.source={data}", "--set", "model.weights=none",
                        "--set", "data.split=[0.5, 0.25, 0.25]", "--set", "train.size_schedule=[[1, 24], [2, 32]]")
    log = (out / "train_log_efficientnetv2s.csv").read_text().splitlines()
    assert log[0].split(",")[1] == "image_size" and [r.split(",")[1] for r in log[1:]] == ["24.0", "32.0"]
    weights = metrics["fusion_weights"]
    assert set(weights) == {"densenet121", "efficientnetv2s", "resnet50"}
    assert abs(sum(weights.values()) - 1.0) < 1e-6


@pytest.mark.slow
def test_cxr_5class(tmp_path, breast):
    classes = ["covid", "normal", "opacity", "pneumonia", "tuberculosis"]
    data = _class_folder(tmp_path / "data", breast, classes, per_class=6)
    _, metrics = _fit(tmp_path, "cxr-5class", "--set", f"data.source={data}", "--set", "model.weights=none",
                      "--set", "train.freeze_epochs=1", "--set", "data.split=[0.34, 0.33, 0.33]")
    assert len(metrics["test"]["confusion_matrix"]) == 5
    assert "f1_macro" in metrics["test"]
