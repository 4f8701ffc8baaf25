"""Studies (`data/studies.py`) on real CT laid out as TCIA lays it out: every series folder one study, named by its
path (the series repeat file names), patients kept whole across splits and never shown raw; volumes read,
resampled and windowed equal pydicom + numpy + scipy on the same files; NIfTI and series agree; bad rows refused."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import LUNG, SERIES_3, TCIA_STUDY, data_cfg

from medkeras.data.studies import find_studies, load_studies, study_arrays, study_volume
from medkeras.errors import DataError

BLOCKS = {"tumour": ("1-13.dcm", "1-14.dcm"), "normal": ("1-01.dcm",)}  # contiguous blocks of the real series
SERIES = {"2.000000-5mm-40805": LUNG, "3.000000-5mm-41315": SERIES_3}


def _tcia_studies(root, patients=("Lung_Dx-A0001", "Lung_Dx-A0002")):
    """class/<patient>/<study>/<series>/1-NN.dcm: each series folder holds one contiguous block of real slices;
    the second patient's copies get their own PatientID and UIDs."""
    from pydicom.uid import generate_uid

    for patient in patients:
        for label, names in BLOCKS.items():
            for folder, source in SERIES.items():
                series = generate_uid()
                for name in names:
                    target = root / label / patient / TCIA_STUDY / folder / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    ds = pydicom.dcmread(source / name)
                    if patient != "Lung_Dx-A0001":
                        ds.PatientID, ds.PatientName = patient, f"{patient}^Test"
                    ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()  # one series per block
                    ds.save_as(target, enforce_file_format=True)
    return root


def _reference(files, windows, size):
    """MONAI-style by hand: pydicom HU per slice, stacked along z, scipy's trilinear at TF's half-pixel grid."""
    from scipy.ndimage import map_coordinates

    slices = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    grid = np.meshgrid(*[np.clip((np.arange(o) + 0.5) * i / o - 0.5, 0, i - 1) for i, o in zip(hu.shape, size)],
                       indexing="ij")
    resampled = map_coordinates(hu, grid, order=1, mode="nearest")
    level, width = windows[0]
    return np.clip((resampled - (level - width / 2)) / width, 0, 1) * 255


def test_a_tcia_folder_is_one_study_per_series_named_by_path_and_split_by_patient(tmp_path):
    root = _tcia_studies(tmp_path / "ct")
    assert len(find_studies(root / "tumour")) == 4  # 2 patients x 2 series
    ds = load_studies(data_cfg(source=str(root), split=[0.5, 0.0, 0.5]), seed=0)
    assert ds.class_names == ["normal", "tumour"]
    names = [n for s in ds.splits.values() for n in s.names()]
    assert len(names) == len(set(names)) == 8  # series folders repeat 1-13.dcm; their paths never repeat
    assert all(n.count("/") == 3 and "Lung_Dx" not in n for n in names)  # class/patient-KEY/study/series
    for split in ds.splits.values():  # each patient's four studies in one split
        assert len(split) in (0, 4) and len(set(split.groups or [])) <= 1
    assert len({g for s in ds.splits.values() for g in (s.groups or [])}) == 2
    groups = {g for s in ds.splits.values() for g in (s.groups or [])}
    assert not any("Lung_Dx" in g for g in groups) and all(n.split("/")[1] in {f"patient-{g}" for g in groups}
                                                           for n in names)  # the patient folder shown as its key


def test_study_volumes_equal_pydicom_numpy_and_scipy_on_the_real_series(tmp_path):
    root = _tcia_studies(tmp_path / "ct", patients=("Lung_Dx-A0001",))
    ds = load_studies(data_cfg(source=str(root), split=[1.0, 0.0, 0.0]), seed=0)
    train = ds.splits["train"]
    windows, size = [[-600.0, 1500.0]], (4, 48, 40)  # anisotropic, up in z, down in plane
    volumes = study_arrays(train, windows, size=size)
    assert volumes.shape == (4, 4, 48, 40, 1) and volumes.dtype == np.float32
    for path, volume in zip(train.paths, volumes):
        want = _reference(sorted(Path(path).iterdir()), windows, size)
        np.testing.assert_allclose(volume[..., 0], want, atol=0.01)  # 0.06 HU: TF works in float32, scipy in float64
    # at a spacing, then cropped or padded to the size: the two slices 5 mm apart become 4 at 2.5 mm
    spaced = study_volume(train.paths[-1], windows, spacing=(2.5, 5.0, 5.0), size=(6, 64, 64))
    assert spaced.shape == (6, 64, 64, 1)
    air = 255 * (-1024 + 1350) / 1500  # -1024 HU in the lung window
    np.testing.assert_allclose(spaced[[0, -1]], air, rtol=1e-6)  # padded with air before and after
    assert spaced[1:5].std() > 10  # the four resampled slices hold the scan


def test_a_manifest_names_series_folders_and_nifti_files_and_both_read_alike(tmp_path):
    nib = pytest.importorskip("nibabel")
    from medkeras.data.readers.volume import read_volume

    root = _tcia_studies(tmp_path / "ct", patients=("Lung_Dx-A0001",))
    series = root / "tumour" / "Lung_Dx-A0001" / TCIA_STUDY / "2.000000-5mm-40805"
    volume = read_volume(series)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    nifti = tmp_path / "elsewhere" / "study.nii.gz"
    nifti.parent.mkdir()
    nib.save(nib.Nifti1Image(volume.hu.transpose(2, 1, 0).copy(), lps_to_ras @ volume.affine[:, [2, 1, 0, 3]]), nifti)
    manifest = tmp_path / "studies.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "patient_id"])
        writer.writerow([series, "tumour", "train", "P1"])
        writer.writerow([nifti, "tumour", "test", "P2"])
        writer.writerow([root / "normal" / "Lung_Dx-A0001" / TCIA_STUDY / "2.000000-5mm-40805", "normal", "train", "P1"])
    ds = load_studies(data_cfg(source=str(manifest)))
    test, train = ds.splits["test"], ds.splits["train"]
    assert test.names() == ["elsewhere/study.nii.gz"]  # relative to the folder all the studies share
    (key,) = test.series  # no SeriesInstanceUID in a NIfTI file: its own series, keyed, so results per series keep it
    assert key and key not in train.series and "study" not in key
    windows = [[-600.0, 1500.0], [50.0, 350.0]]
    a = study_arrays(train, windows, size=(2, 32, 32))[0]
    b = study_arrays(test, windows, size=(2, 32, 32))[0]
    np.testing.assert_allclose(a, b, atol=1e-3)  # a series and its NIfTI: one study


def test_bad_studies_are_refused_in_one_line_naming_the_file(tmp_path):
    root = _tcia_studies(tmp_path / "ct", patients=("Lung_Dx-A0001",))
    gap = root / "tumour" / "Lung_Dx-A0001" / TCIA_STUDY / "2.000000-5mm-40805"
    shutil.copy(LUNG / "1-01.dcm", gap / "1-01.dcm")  # a slice of the source series, 60 mm above the block
    ds = load_studies(data_cfg(source=str(root), split=[1.0, 0.0, 0.0]), seed=0)
    with pytest.raises(DataError, match=r"1-1[34]\.dcm: another series"):
        study_arrays(ds.splits["train"], [[-600.0, 1500.0]], size=(2, 16, 16))
    stray = pydicom.dcmread(gap / "1-01.dcm")
    stray.SeriesInstanceUID = pydicom.dcmread(gap / "1-13.dcm").SeriesInstanceUID
    stray.save_as(gap / "1-01.dcm")  # now of the series, but slices are missing between
    with pytest.raises(DataError, match=r"1-01\.dcm: a gap of 60\.00 mm"):
        study_arrays(ds.splits["train"], [[-600.0, 1500.0]], size=(2, 16, 16))
    from medkeras.errors import ConfigError

    with pytest.raises(ConfigError, match=r"studies need a size \[D, H, W\]"):
        study_arrays(ds.splits["train"], [[-600.0, 1500.0]])
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,label\nno/such/series,tumour\n")
    with pytest.raises(DataError, match="line 2: no/such/series not found"):
        load_studies(data_cfg(source=str(manifest)))
    (tmp_path / "notes.txt").write_text("x")
    manifest.write_text("path,label\nnotes.txt,tumour\n")
    with pytest.raises(DataError, match="is not a study"):
        load_studies(data_cfg(source=str(manifest)))


def test_inputs_users_type_are_taken_or_refused_in_one_line(tmp_path):
    """A single slice named as a study, windows written as `data.window` takes them, a size of two numbers, and two
    patients with one study per class (too few to stratify: split by patient only, no scikit-learn error)."""
    from medkeras.errors import ConfigError

    root = _tcia_studies(tmp_path / "ct")
    one = root / "tumour" / "Lung_Dx-A0001" / TCIA_STUDY / "2.000000-5mm-40805" / "1-13.dcm"
    manifest = tmp_path / "one.csv"
    manifest.write_text(f"path,label\n{one},tumour\n")
    with pytest.raises(DataError, match="line 2: .*1-13.dcm is one slice, not a study: name its series folder"):
        load_studies(data_cfg(source=str(manifest)))
    series = one.parent
    np.testing.assert_array_equal(study_volume(series, "lung", size=(2, 16, 16)),
                                  study_volume(series, [[-600.0, 1500.0]], size=(2, 16, 16)))
    with pytest.raises(ConfigError, match=r"size must be three positive whole numbers \[D, H, W\]"):
        study_volume(series, "lung", size=(32, 32))
    two = tmp_path / "two.csv"
    normal = root / "normal" / "Lung_Dx-A0002" / TCIA_STUDY / "2.000000-5mm-40805"
    two.write_text(f"path,label\n{series},tumour\n{normal},normal\n")
    ds = load_studies(data_cfg(source=str(two), split=[0.5, 0.0, 0.5]), seed=0)
    assert sorted(len(ds.splits[s]) for s in ("train", "test")) == [1, 1]


def test_a_split_of_studies_reads_as_volumes_and_skips_a_bad_study_counted(tmp_path):
    """`split_arrays` on a split of studies: (N, D, H, W, C) volumes, its labels and names; under
    `on_bad_file: skip` a broken series is left out and named with its cause, the rest kept in order."""
    from medkeras.data.pipeline import split_arrays

    root = _tcia_studies(tmp_path / "ct", patients=("Lung_Dx-A0001",))
    ds = load_studies(data_cfg(source=str(root), split=[1.0, 0.0, 0.0], window="lung", volume_size=[2, 16, 16]))
    train = ds.splits["train"]
    broken = sorted(Path(train.paths[1]).iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:2000])  # truncated pixel data
    cfg = data_cfg(source=str(root), window="lung", volume_size=[2, 16, 16])
    with pytest.raises(DataError, match=broken.name):
        split_arrays(train, cfg, "fail")
    volumes, labels, names, bad = split_arrays(train, cfg, "skip")
    assert volumes.shape == (3, 2, 16, 16, 1) and len(labels) == len(names) == 3
    assert [n for n, _ in bad] == [train.names()[1]] and names == [n for n in train.names() if n != bad[0][0]]
    assert bad[0][1].startswith(f"{broken.name}: ")  # the slice at fault, named inside its study (no patient folder)
    np.testing.assert_array_equal(labels, np.delete(train.labels, 1))


def test_a_batch_of_studies_resizes_in_the_graph_as_one_study_resamples():
    """`resize_volumes` (the SavedModel's serving_default) on a batch equals `resample_volume` (what `fit` read) on
    each study to the same size, and is the identity at the size it has."""
    from medkeras.data.volumes import resample_volume, resize_volumes

    hu = np.stack([pydicom.dcmread(LUNG / n).pixel_array.astype(np.float32) for n in ("1-13.dcm", "1-14.dcm")])
    batch = np.stack([hu, hu[::-1]])[..., None]  # (2, 2, 512, 512, 1)
    got = np.asarray(resize_volumes(batch, (5, 48, 40)))
    for i in range(2):
        want, _ = resample_volume(batch[i, ..., 0], (5.0, 0.7, 0.7), size=(5, 48, 40))
        np.testing.assert_allclose(got[i, ..., 0], np.asarray(want), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(resize_volumes(batch, (2, 512, 512))), batch)


def test_a_missing_or_empty_series_is_refused_or_under_skip_skipped_and_counted(tmp_path):
    from conftest import study_source

    from medkeras.data.pipeline import split_arrays

    manifest = study_source(tmp_path / "ct", patients=3)
    (tmp_path / "ct" / "empty" / "series").mkdir(parents=True)
    with open(manifest, "a", newline="") as fh:
        csv.writer(fh).writerows([[tmp_path / "ct" / "gone" / "series", "tumour", "train"],
                                  [tmp_path / "ct" / "empty" / "series", "normal", "train"]])
    with pytest.raises(DataError, match="line 14: .*gone/series not found"):
        load_studies(data_cfg(source=str(manifest), window="lung", volume_size=[2, 16, 16]))
    cfg = data_cfg(source=str(manifest), window="lung", volume_size=[2, 16, 16], on_bad_file="skip")
    train = load_studies(cfg).splits["train"]
    assert len(train) == 10  # kept until read: then skipped, each named with its cause
    volumes, labels, names, bad = split_arrays(train, cfg, "skip")
    assert len(volumes) == len(labels) == len(names) == 8
    assert sorted(bad) == [("empty/series", "folder holds no DICOM files"), ("gone/series", "file not found")]
