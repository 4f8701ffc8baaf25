"""Results at the levels clinicians decide at, on a real CT manifest: the repo's real Lung-PET-CT-Dx slices as 16
synthetic patients with two series each; slice, series and patient metrics with patient-clustered intervals in
metrics.json, the report, the group CSVs of fit, eval and predict."""

import csv
import json

import numpy as np
import pytest

from conftest import run_cli, write_patients
from medkeras.data.keys import patient_key
from medkeras.evaluation.aggregate import aggregate, combine

TUMOUR = [f"T{i}" for i in range(8)]
NORMAL = [f"N{i}" for i in range(8)]
SPLIT = {**{p: "train" for p in TUMOUR[:3] + NORMAL[:3]}, **{p: "val" for p in TUMOUR[3:5] + NORMAL[3:5]},
         **{p: "test" for p in TUMOUR[5:] + NORMAL[5:]}}


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _manifest(root, files, patient_label=None):
    path = root / ("ct.csv" if patient_label is None else "ct-labelled.csv")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", *(["patient_label"] if patient_label else [])])
        for f in files:
            patient = f.name.split("-s")[0]
            extra = [patient_label.get(patient, "")] if patient_label else []
            writer.writerow([f.relative_to(root), f.parent.name, SPLIT[patient], *extra])
    return path


@pytest.fixture(scope="module")
def ct_patients(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    files = write_patients(root / "ct", TUMOUR + NORMAL, series_per_patient=2, normal=NORMAL)
    manifest = _manifest(root, files)
    run = root / "run"
    result = run_cli(
        "fit", "--out", run, "--set", f"data.source={manifest}", "--set", "data.window=lung",
        "--set", "data.image_size=32", "--set", "model.backbones=[cnn8_small]", "--set", "train.epochs=2",
        "--set", "train.batch_size=8", "--set", "train.run_eagerly=true", "--set", "train.verbose=0",
        "--set", "eval.bootstrap=200", "--set", "eval.threshold=youden",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return root, files, run


def test_series_and_patient_results_with_clustered_intervals(ct_patients):
    root, files, run = ct_patients
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["n"] == 6 * 2 * 3  # 6 test patients, 2 series of 3 slices
    assert test["resampling"].startswith("cluster bootstrap over 6 patients")
    series, patient = test["levels"]["series"], test["levels"]["patient"]
    assert series["n"] == 12 and patient["n"] == 6
    assert patient["class_counts"] == {"normal": 3, "tumour": 3}  # positive if any slice is
    assert series["resampling"].startswith("cluster bootstrap over 6 patients")  # two series of a patient go together
    assert patient["resampling"].startswith("bootstrap over patients")
    for level in (test, series, patient):
        assert {"auroc", "sensitivity", "specificity", "ece", "brier"} <= set(level["intervals"])
    assert set(metrics["thresholds"]) == {"series", "patient"}  # each chosen on validation at its level
    assert patient["threshold"] == pytest.approx(metrics["thresholds"]["patient"])
    report = (run / "report.html").read_text()
    assert "By slice, series and patient" in report and "patient (n = 6)" in report and "series (n = 12)" in report


def test_a_patient_is_the_mean_of_its_slice_logits(ct_patients):
    """p(tumour) of a patient = sigmoid of the mean log-odds of its slices (the mean-of-logits rule), from the CSVs."""
    _, _, run = ct_patients
    slices, patients = _rows(run / "predictions.csv"), _rows(run / "predictions.patient.csv")
    assert len(patients) == 6 and len(_rows(run / "predictions.series.csv")) == 12
    for name in TUMOUR[5:] + NORMAL[5:]:
        row = next(r for r in patients if r["patient"] == patient_key(name))
        own = [r for r in slices if r["path"].split("/")[-1].startswith(f"{name}-s")]
        assert int(row["images"]) == len(own) == 6
        odds = np.mean([np.log(float(r["p_tumour"]) / float(r["p_normal"])) for r in own])
        assert float(row["p_tumour"]) == pytest.approx(1 / (1 + np.exp(-odds)), abs=2e-5)
        assert row["label"] == ("tumour" if name in TUMOUR else "normal")
        assert name not in (run / "predictions.patient.csv").read_text()  # keyed, never the raw ID


def test_patient_label_column_and_predict_groups(ct_patients, tmp_path):
    root, files, run = ct_patients
    # a patient_label column overrides "positive if any slice is"
    manifest = _manifest(root, files, patient_label={"T5": "normal"})
    out = tmp_path / "eval"
    result = run_cli("eval", run, "--data", manifest, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    patient = json.loads((out / "metrics.json").read_text())["levels"]["patient"]
    assert patient["class_counts"] == {"normal": 4, "tumour": 2}
    # predict writes one CSV per level beside --out, from the DICOM tags of the files it is given
    test_files = [f for f in files if SPLIT[f.name.split("-s")[0]] == "test"]
    result = run_cli("predict", run, *test_files, "--out", tmp_path / "pred.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(_rows(tmp_path / "pred.series.csv")) == 12 and len(_rows(tmp_path / "pred.patient.csv")) == 6
    evaluated = {r["patient"]: r["p_tumour"] for r in _rows(run / "predictions.patient.csv")}
    predicted = {r["patient"]: r["p_tumour"] for r in _rows(tmp_path / "pred.patient.csv")}
    assert predicted.keys() == evaluated.keys()
    for key in predicted:
        assert float(predicted[key]) == pytest.approx(float(evaluated[key]), abs=1e-4)


def test_rules_combine_logits():
    logits = np.array([[0.0, -2.0], [0.0, 3.0], [0.0, 1.0], [0.0, 0.5]])
    assert combine(logits, "mean").tolist() == [0.0, 0.625]
    assert combine(logits, "max", pos=1).tolist() == [0.0, 3.0]
    assert combine(logits, "topk", k=2, pos=1).tolist() == [0.0, 2.0]
    groups = aggregate(logits, [0, 1, 0, 0], ["a", "a", "b", None], ["n", "t"], "t")
    assert groups["keys"] == ["a", "b"] and groups["labels"].tolist() == [1, 0] and groups["sizes"] == [2, 1]
    with pytest.raises(ValueError, match="unknown aggregate rule"):
        combine(logits, "median")
