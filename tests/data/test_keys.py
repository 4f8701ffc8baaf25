"""Keyed patient keys: an HMAC with this user's secret, and no raw patient ID (nor an unkeyed hash of one) in
anything medkeras writes: run directories, TensorBoard logs, reports, exports and prepared stores."""

import pytest
from conftest import LUNG, assert_no_raw_ids, run_cli

from medkeras.data.readers import patient_key


def test_patient_keys_are_keyed_by_this_users_secret(tmp_path, monkeypatch):
    """An HMAC of the ID with a secret: stable for one secret, different for another, never an unkeyed hash."""
    from conftest import raw_id_traces

    from medkeras.data import keys

    key = patient_key(LUNG / "1-01.dcm")
    assert key == keys.patient_key("Lung_Dx-A0001") and len(key) == 16
    assert key.encode() not in raw_id_traces("Lung_Dx-A0001")
    monkeypatch.setenv(keys.KEY_ENV, "another team's secret, shared")
    assert keys.patient_key("Lung_Dx-A0001") != key
    monkeypatch.delenv(keys.KEY_ENV)
    monkeypatch.setenv(keys.KEY_FILE_ENV, str(tmp_path / "absent.key"))
    with pytest.raises(keys.ConfigError, match="patient key file not found"):
        keys.patient_key("x")
    from medkeras.data.readers import dicom_items

    with pytest.raises(keys.ConfigError, match="absent.key: patient key file not found") as caught:
        dicom_items(LUNG / "1-01.dcm")  # reading a DICOM: the key file is named as the cause, not the DICOM
    assert "unreadable DICOM" not in str(caught.value)
    monkeypatch.delenv(keys.KEY_FILE_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = keys.patient_key("Lung_Dx-A0001")  # this user's own secret, created once, readable by its owner only
    created = tmp_path / "config" / "medkeras" / "patient.key"
    assert created.stat().st_mode & 0o777 == 0o600 and keys.patient_key("Lung_Dx-A0001") == first != key


def test_no_raw_patient_id_in_anything_written(ct_run, tmp_path):
    """The CT run (a manifest with patient_id column over DICOM whose PatientID tag is Lung_Dx-A0001): its run
    directory (config, logs, TensorBoard, checkpoints, report, predictions), its SavedModel export, and a store
    prepared from the same manifest hold neither the raw IDs nor their md5/sha1/sha256."""
    import yaml

    run, export = ct_run
    manifest = yaml.safe_load((run / "config.yaml").read_text())["data"]["source"]
    result = run_cli("prepare", manifest, "--out", tmp_path / "store", "--window", "lung")
    assert result.returncode == 0, result.stderr[-2000:]
    read = 0
    for folder in (run, export, tmp_path / "store"):
        for raw in ("Lung_Dx-A0001", "P-train", "P-val", "P-test"):
            read += assert_no_raw_ids(folder, raw)
    assert read > 40 and (run / "tensorboard").is_dir() and (run / "report.html").is_file()
