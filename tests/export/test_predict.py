"""`medkeras predict`: Keras and SavedModel agree, every input kind is read, bad files fail or are skipped."""

import csv
import io
from pathlib import Path

import numpy as np
from conftest import LUNG, run_cli


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_keras_and_savedmodel_agree(exported, test_pngs, tmp_path):
    path, run = exported
    folder = test_pngs[0].parent
    a = run_cli("predict", run, folder, "--out", tmp_path / "keras.csv")
    b = run_cli("predict", path.parent, *test_pngs, "--out", tmp_path / "served.csv")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    rows_a, rows_b = _read_csv(tmp_path / "keras.csv"), _read_csv(tmp_path / "served.csv")
    assert len(rows_a) == len(rows_b) == 6
    assert list(rows_a[0]) == ["path", "p_malignant", "p_benign-or-normal", "predicted"]  # `label` is ground truth
    for ra, rb in zip(rows_a, rows_b):
        assert Path(ra["path"]).name == Path(rb["path"]).name and ra["predicted"] == rb["predicted"]
        assert abs(float(ra["p_malignant"]) - float(rb["p_malignant"])) <= 1e-4


def test_predict_input_kinds_and_bad_files(tiny_run, tmp_path, breast):
    run, _ = tiny_run
    np.save(tmp_path / "a.npy", breast.splits["test"].images[0])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    inputs = [tmp_path / "a.npy", LUNG / "1-01.dcm", tmp_path / "broken.png"]
    fail = run_cli("predict", run / "model.keras", *inputs)
    assert fail.returncode == 1 and "broken.png" in fail.stderr.splitlines()[-1] and "Traceback" not in fail.stderr
    skip = run_cli("predict", run / "model.keras", *inputs, "--on-bad-file", "skip")
    assert skip.returncode == 0, skip.stderr
    rows = list(csv.DictReader(io.StringIO(skip.stdout)))
    assert [Path(r["path"]).name for r in rows] == ["a.npy", "1-01.dcm"]
    assert "skipped 1 unreadable file\n" in skip.stderr


def test_predict_on_dicom_gives_a_row_per_frame_with_keyed_patient_and_series(ct_run, tmp_path, lce_ct):
    """A folder holding a multi-frame CT and slices of two patients: one row per image (per frame, `FILE#N` in z
    order), names relative to the folder, the keyed patient and series per row; `--redact-paths` shows neither
    file names nor the raw ID."""
    import shutil

    from conftest import assert_no_raw_ids, write_patients

    from medkeras.data.keys import patient_key

    run, _ = ct_run
    folder = tmp_path / "scans"
    write_patients(folder, ["PAT-A", "PAT-B"])
    shutil.copy(lce_ct, folder / "lce_ct.dcm")
    out = tmp_path / "pred.csv"
    result = run_cli("predict", run, folder, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _read_csv(out)
    assert len(rows) == 6 + 3 and list(rows[0])[-2:] == ["patient", "series"]
    assert [r["path"] for r in rows if r["path"].startswith("lce")] == ["lce_ct.dcm#3", "lce_ct.dcm#2", "lce_ct.dcm#1"]
    assert not any(r["path"].startswith("/") for r in rows)
    assert {r["patient"] for r in rows} == {patient_key("PAT-A"), patient_key("PAT-B"), patient_key("Lung_Dx-A0001")}
    assert len({r["series"] for r in rows}) == 3
    redacted = tmp_path / "redacted"
    redacted.mkdir()
    result = run_cli("predict", run, folder, "--out", redacted / "pred.csv", "--redact-paths")
    assert result.returncode == 0, result.stderr[-2000:]
    text = (redacted / "pred.csv").read_text()
    assert ".dcm" not in text and "PAT-" not in text
    for patient in ("PAT-A", "PAT-B", "Lung_Dx-A0001"):
        assert_no_raw_ids(redacted, patient)
