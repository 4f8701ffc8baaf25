"""`medkeras cv` end to end at a tiny size on real BreastMNIST: folds that cover train+val once, out-of-fold
predictions and report, the fold table against its folds, the bagged ensemble as one graph averaging the folds'
logits (scored on test, exportable), and --resume at the first unfinished fold."""

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import run_cli

TINY = ("--set", "data.image_size=32", "--set", "model.backbones=[cnn8_small,cnn8_small]", "--set", "train.epochs=1",
        "--set", "train.steps_per_epoch=3", "--set", "train.run_eagerly=true", "--set", "train.verbose=0",
        "--set", "eval.bootstrap=50")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "run"
    result = run_cli("cv", "demo", "--folds", "3", "--bag", "--out", out, *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


def test_folds_cover_train_and_val_once_and_the_oof_report_scores_them(cv_run):
    out, stdout = cv_run
    vals = [[r["path"] for r in _rows(out / f"fold-{i}" / "predictions-val.csv")] for i in (1, 2, 3)]
    pool = [p for fold in vals for p in fold]
    assert len(pool) == len(set(pool)) == 546 + 78  # BreastMNIST train + val, each image in one fold's val
    oof = _rows(out / "oof" / "predictions.csv")
    assert sorted(r["path"] for r in oof) == sorted(pool)
    metrics = json.loads((out / "oof" / "metrics.json").read_text())
    y = np.array([r["label"] == "malignant" for r in oof])
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, [float(r["p_malignant"]) for r in oof]), abs=1e-5)
    assert "out-of-fold" in (out / "oof" / "report.html").read_text()
    test = {i: json.loads((out / f"fold-{i}" / "metrics.json").read_text())["test"]["n"] for i in (1, 2, 3)}
    assert set(test.values()) == {156}  # test untouched: every fold scores the same test split
    assert "out-of-fold AUROC" in stdout and "bagged ensemble test AUROC" in stdout


def test_fold_table_is_its_folds_mean_sd_and_interval(cv_run):
    out, _ = cv_run
    cv = json.loads((out / "cv.json").read_text())
    values = [json.loads((out / f"fold-{i}" / "metrics.json").read_text())["val"]["auroc"] for i in (1, 2, 3)]
    s = cv["summary"]["val_auroc"]
    assert s["mean"] == pytest.approx(np.mean(values)) and s["sd"] == pytest.approx(np.std(values, ddof=1))
    assert max(0, s["mean"] - 4.303 * s["sd"] / np.sqrt(3)) == pytest.approx(s["lower"], abs=1e-3)  # t(2) = 4.303
    table = _rows(out / "folds.csv")
    assert [r["fold"] for r in table] == ["1", "2", "3", "mean", "sd", "lower", "upper"]


def test_the_bag_averages_the_fold_models_logits_and_exports(cv_run, breast, tmp_path):
    from medkeras.data.resize import to_model_pixels
    from medkeras.models.io import load_model

    out, _ = cv_run
    bag, meta = load_model(out / "bag")
    folds = [load_model(out / f"fold-{i}")[0] for i in (1, 2, 3)]
    pixels = to_model_pixels(breast.splits["test"].images[:8], 32)
    expected = np.mean([np.asarray(m.predict(pixels, verbose=0)) for m in folds], axis=0)
    assert np.asarray(bag.predict(pixels, verbose=0)) == pytest.approx(expected, abs=1e-5)
    cv = json.loads((out / "cv.json").read_text())
    assert meta["temperature"] == pytest.approx(cv["calibration"]["temperature"])  # fitted out of fold
    rows = _rows(out / "bag" / "predictions.csv")
    y = np.array([r["label"] == "malignant" for r in rows])
    assert cv["bag"]["test"]["auroc"] == pytest.approx(roc_auc_score(y, [float(r["p_malignant"]) for r in rows]),
                                                       abs=1e-5)
    assert [r["model"] for r in cv["bag"]["ensemble"]][:3] == ["fold1 alone", "fold2 alone", "fold3 alone"]
    result = run_cli("export", out, "--out", tmp_path / "serving")  # the cross-validation's bag, as a run
    assert result.returncode == 0, result.stderr[-2000:]


def test_resume_continues_at_the_first_unfinished_fold(cv_run, tmp_path):
    out, _ = cv_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "cv.json").unlink()
    shutil.rmtree(copy / "fold-3")  # stopped before its third fold
    before = (copy / "fold-1" / "model.keras").stat().st_mtime_ns
    result = run_cli("cv", "--out", copy, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fold 1/3 is finished" in result.stdout and "fold 2/3 is finished" in result.stdout
    assert (copy / "fold-1" / "model.keras").stat().st_mtime_ns == before  # not trained again
    assert (copy / "fold-3" / "model.keras").is_file() and (copy / "cv.json").is_file()
    finished = run_cli("cv", "--out", copy, "--resume")
    assert finished.returncode == 0 and "is finished (3 folds): nothing to resume" in finished.stdout
    again = run_cli("cv", "demo", "--folds", "3", "--out", copy, *TINY)  # a finished one is never replaced silently
    assert again.returncode == 1 and "holds a finished cross-validation" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
