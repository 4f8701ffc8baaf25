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
    assert list(rows_a[0]) == ["path", "p_malignant", "p_benign-or-normal", "label"]
    for ra, rb in zip(rows_a, rows_b):
        assert Path(ra["path"]).name == Path(rb["path"]).name and ra["label"] == rb["label"]
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
    assert "skipped 1 unreadable files" in skip.stderr
