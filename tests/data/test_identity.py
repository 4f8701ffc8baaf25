"""Items known by what they are: the repo's real CT series laid out as TCIA serves them (every series folder holds
`1-01.dcm` ...), listed in a manifest of absolute paths kept elsewhere. Names stay unique relative paths, series
and patient groups get their own members, the cluster bootstrap resamples the right patients, `predict` names two
series' `1-01.dcm` apart, and no name shows a folder named by the PatientID."""

import csv

import numpy as np
from conftest import TCIA_STUDY, tcia_layout

from medkeras.config import DataConfig
from medkeras.data.keys import patient_key
from medkeras.data.sources import load_dataset


def _manifest(tmp_path, split_by_patient=None):
    rows = tcia_layout(tmp_path / "tcia")
    manifest = tmp_path / "elsewhere" / "manifest.csv"  # not above the data: every path is absolute
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for path, label, patient, _ in rows:
            writer.writerow([path, label, (split_by_patient or {}).get(patient, "test")])
    return manifest, rows


def test_series_and_patients_keep_their_own_members(tmp_path):
    from medkeras.evaluation.aggregate import aggregate, level_keys

    manifest, rows = _manifest(tmp_path, {"Lung_Dx-A0001": "test", "Lung_Dx-A0002": "test"})
    split = load_dataset(DataConfig(source=str(manifest), split=[0.0, 0.0, 1.0])).splits["test"]
    names = split.names()
    assert len(set(names)) == len(names) == 12  # 2 patients x 2 series x 3 files, no name said twice
    # relative to the data's own folder, the patient's folder (TCIA names it by the PatientID) shown by its key
    assert f"patient-{patient_key('Lung_Dx-A0001')}/{TCIA_STUDY}/3.000000-5mm-41315/1-01.dcm" in names
    assert not any(n.startswith("/") or "Lung_Dx" in n for n in names)
    keys = level_keys(split, names, ["series", "patient"])
    series, patients = keys["series"]["keys"], keys["patient"]["keys"]
    assert sorted(np.unique(series, return_counts=True)[1].tolist()) == [3, 3, 3, 3]
    assert sorted(np.unique(patients, return_counts=True)[1].tolist()) == [6, 6]
    for name, s, p in zip(names, series, patients):  # each slice in its own series and patient
        same_series = {n.rsplit("/", 1)[0] for n, t in zip(names, series) if t == s}
        same_patient = {n.split("/", 1)[0] for n, t in zip(names, patients) if t == p}
        assert same_series == {name.rsplit("/", 1)[0]} and same_patient == {name.split("/", 1)[0]}
    labels = np.asarray(split.labels)
    groups = aggregate(np.zeros((12, 2)), labels, series, ["normal", "tumour"], "tumour", "mean", 3)
    assert list(groups["sizes"]) == [3, 3, 3, 3]


def test_the_cluster_bootstrap_resamples_whole_patients(tmp_path):
    from medkeras.evaluation.intervals import Draws

    manifest, _ = _manifest(tmp_path)
    split = load_dataset(DataConfig(source=str(manifest), split=[0.0, 0.0, 1.0])).splits["test"]
    patients, _ = split.keys_of(split.names())
    draws = Draws(len(patients), 50, seed=0, groups=patients, unit="images")
    assert draws.clustered and draws.groups == 2 and "2 patients" in draws.method
    for ix in draws.indices:  # each resample: whole patients (6 slices each), never a patient cut apart
        drawn = [patients[i] for i in ix]
        assert len(ix) == 12 and all(drawn.count(p) % 6 == 0 for p in set(drawn))


def test_predict_names_two_series_files_apart(tmp_path, ct_run):
    from medkeras.export.predict import predict

    run, _ = ct_run
    rows = tcia_layout(tmp_path / "tcia", second_patient=False)
    paths = [str(path) for path, name, *_ in rows if path.name == "1-01.dcm"]
    out = tmp_path / "scored.csv"
    predict(run, paths, out=out, progress=False)
    with open(out) as fh:
        scored = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in scored) == ["2.000000-5mm-40805/1-01.dcm", "3.000000-5mm-41315/1-01.dcm"]
    assert len({r["series"] for r in scored}) == 2


def test_predict_names_two_series_folders_apart_and_hides_the_patient_folder(tmp_path, ct_run):
    """Two series folders given together (each with its 1-01.dcm ...): names relative to the folder both share;
    a whole patient folder: the PatientID that names it shown by its key, in every row."""
    from medkeras.export.predict import predict

    run, _ = ct_run
    tcia_layout(tmp_path / "tcia", second_patient=False)
    study = tmp_path / "tcia" / "Lung_Dx-A0001" / TCIA_STUDY
    for inputs, out in (([study / "2.000000-5mm-40805", study / "3.000000-5mm-41315"], "two.csv"),
                        ([tmp_path / "tcia"], "patient.csv")):
        predict(run, [str(i) for i in inputs], out=tmp_path / out, progress=False)
        with open(tmp_path / out) as fh:
            names = [r["path"] for r in csv.DictReader(fh)]
        assert len(names) == len(set(names)) == 6, names
        assert not any("Lung_Dx" in n for n in names), names
        if out == "two.csv":
            assert sorted(names)[::3] == ["2.000000-5mm-40805/1-01.dcm", "3.000000-5mm-41315/1-01.dcm"]
    assert all(n.startswith(f"patient-{patient_key('Lung_Dx-A0001')}/{TCIA_STUDY}/") for n in names)


def test_an_unreadable_file_in_a_patient_folder_is_named_by_the_key_too(tmp_path):
    """A file with no readable header (no PatientID of its own) in a TCIA patient folder: its name hides the folder
    as its readable neighbours' do (predict's skip message showed the raw ID; found by a new-user trial)."""
    from medkeras.data.readers import named_inputs

    tcia_layout(tmp_path / "tcia", second_patient=False)
    series = tmp_path / "tcia" / "Lung_Dx-A0001" / TCIA_STUDY / "2.000000-5mm-40805"
    (series / "1-99.dcm").write_bytes(b"not a DICOM file at all")
    names = [name for _, name, _ in named_inputs([str(tmp_path / "tcia")])]
    assert len(names) == 7 and any(n.endswith("/1-99.dcm") for n in names)
    assert not any("Lung_Dx" in n for n in names), names
    assert all(n.startswith(f"patient-{patient_key('Lung_Dx-A0001')}/") for n in names)


def test_a_manifest_patient_id_that_names_a_folder_is_hidden_too(tmp_path):
    rows = tcia_layout(tmp_path / "tcia", second_patient=False)
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "patient_id"])
        writer.writerows([[path, label, "test", patient] for path, label, patient, _ in rows])
    names = load_dataset(DataConfig(source=str(manifest), split=[0.0, 0.0, 1.0])).splits["test"].names()
    assert len(set(names)) == 6 and not any("Lung_Dx" in n for n in names)
