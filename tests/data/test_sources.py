"""Sources on real data: the bundled BreastMNIST npz, PNG folders and CSV manifests made from it, and folders and
manifests of real DICOM grouped by their tags (patients, series, frames)."""

import csv
import os
import shutil

import numpy as np
import pytest
from conftest import LUNG, data_cfg

from medkeras.config import DataConfig
from medkeras.data.pipeline import split_arrays
from medkeras.data.sources import load_dataset, load_npz
from medkeras.errors import DataError


def test_bundled_breastmnist_official_splits(breast):
    assert breast.class_names == ["malignant", "benign-or-normal"]
    assert breast.positive_class == "malignant"
    assert breast.counts() == {
        "train": {"malignant": 147, "benign-or-normal": 399},
        "val": {"malignant": 21, "benign-or-normal": 57},
        "test": {"malignant": 42, "benign-or-normal": 114},
    }
    assert breast.splits["train"].images.shape == (546, 28, 28)


def test_npz_reader_on_a_copy(tmp_path, breast):
    from medkeras.data.sources import DATASETS_DIR

    copy = tmp_path / "mine.npz"
    shutil.copy(DATASETS_DIR / "breastmnist.npz", copy)
    ds = load_npz(copy)
    assert ds.class_names == ["class_0", "class_1"]  # an unknown npz: neutral names, never bare digits
    np.testing.assert_array_equal(ds.splits["test"].images, breast.splits["test"].images)
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="missing arrays"):
        load_npz(bad)


def test_folder_reader_splits_stratified(png_folder):
    ds = load_dataset(DataConfig(source=str(png_folder), split=[0.5, 0.25, 0.25]))
    assert ds.class_names == ["benign-or-normal", "malignant"]  # sorted folder names
    assert sum(len(s) for s in ds.splits.values()) == 24
    for s in ds.splits.values():
        assert set(np.unique(s.labels)) == {0, 1}
    images, labels, names, bad = split_arrays(ds.splits["train"], DataConfig(source=str(png_folder), image_size=32))
    assert images.shape == (len(labels), 32, 32, 1) and not bad
    assert names[0].endswith(".png")


def test_manifest_with_split_and_patients(tmp_path, png_folder):
    files = sorted(png_folder.rglob("*.png"))
    rows = [{"path": str(f.relative_to(png_folder)), "label": f.parent.name, "patient_id": f"P{i // 2}"}
            for i, f in enumerate(files)]
    manifest = png_folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    ds = load_dataset(DataConfig(source=str(manifest), split=[0.5, 0.25, 0.25]))
    groups = {s: set(split.groups) for s, split in ds.splits.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not any("P1" == g for gs in groups.values() for g in gs)  # hashed, never raw
    # an explicit split column is respected
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for i, r in enumerate(rows):
            writer.writerow([r["path"], r["label"], ("train", "val", "test")[i % 3]])
    ds = load_dataset(DataConfig(source=str(manifest)))
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [8, 8, 8]


def test_manifest_errors_name_the_file(tmp_path, png_folder):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"m\.csv.*path"):
        load_dataset(DataConfig(source=str(manifest)))
    files = sorted(png_folder.rglob("*.png"))
    manifest.write_text("path,label\n" + "".join(f"{f},malignant\n" for f in files[:4]) + f"{files[5]},tumour\n")
    with pytest.raises(DataError, match="'tumour'"):
        load_dataset(DataConfig(source=str(manifest), class_names=["malignant", "benign-or-normal"]))


def test_missing_source_and_empty_class(tmp_path, png_folder):
    with pytest.raises(DataError, match="not found"):
        load_dataset(DataConfig(source=str(tmp_path / "nowhere")))
    (png_folder / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(DataConfig(source=str(png_folder)))


def test_dicom_folder_splits_by_the_patient_id_tag_and_orders_slices(tmp_path):
    """A folder of real DICOM slices from 8 patients (their PatientID tags, two series each): no patient in two
    splits, keys keyed (never the raw ID), each split listed series by series along the slice normal."""
    from conftest import write_patients

    from medkeras.data.keys import patient_key
    from medkeras.data.splits import near_duplicates_across_splits, patients_per_split

    patients = [f"PAT-{i:03d}" for i in range(8)]
    write_patients(tmp_path / "ct", patients, series_per_patient=2)
    ds = load_dataset(DataConfig(source=str(tmp_path / "ct"), split=[0.5, 0.25, 0.25]))
    assert sum(len(s) for s in ds.splits.values()) == 8 * 2 * 3
    groups = {name: set(s.groups) for name, s in ds.splits.items()}
    assert all(groups.values()) and not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert set().union(*groups.values()) == {patient_key(p) for p in patients}
    assert patients_per_split(ds)["shared"] == {"train/val": 0, "train/test": 0, "val/test": 0}
    assert near_duplicates_across_splits(ds)["pairs"] == []  # same positions, other series: never across splits
    train = ds.splits["train"]
    assert train.names()[0].startswith(("normal/", "tumour/"))  # relative to the source, never absolute
    for series in set(train.series):
        z = [where[1] for where, s in zip(train.positions, train.series) if s == series]
        assert z == sorted(z) and len(z) == 3


def test_manifest_without_patient_ids_groups_by_tag_and_warns_where_it_cannot(tmp_path):
    """Two reconstructions of one patient's scan: a manifest without `patient_id` keeps them in one split; where an
    explicit `split` column separates them, the leak check finds the same positions across splits."""
    from conftest import write_patients

    from medkeras.data.splits import near_duplicates_across_splits

    files = write_patients(tmp_path / "ct", ["A", "B", "C"], series_per_patient=2)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for f in files:
            writer.writerow([f.relative_to(tmp_path), f.parent.name, "train" if "-s0-" in f.name else "test"])
    ds = load_dataset(DataConfig(source=str(manifest)))
    near = near_duplicates_across_splits(ds)
    assert near["counts"]["train/test"] == 9  # 3 patients x 3 positions, one reconstruction on each side
    rows = [r for r in csv.reader(open(manifest))][1:]
    with open(manifest, "w", newline="") as fh:  # no split, no patient_id: the tags group the two reconstructions
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(r[:2] for r in rows)
    ds = load_dataset(DataConfig(source=str(manifest), split=[0.34, 0.33, 0.33]))
    assert near_duplicates_across_splits(ds)["pairs"] == [] and all(len(s) == 6 for s in ds.splits.values())


def test_too_few_patients_for_the_split_is_one_line(tmp_path):
    from conftest import write_patients

    write_patients(tmp_path / "ct", ["ONLY"])
    with pytest.raises(DataError, match=r"1 patient\(s\) .* needs at least 3; give a split column, or more patients"):
        load_dataset(DataConfig(source=str(tmp_path / "ct")))


def test_a_multi_frame_file_is_one_sample_per_frame_grouped_by_its_patient(tmp_path, lce_ct):
    """A manifest row naming a multi-frame CT becomes its frames, `FILE#N` in z order, each decoded to the HU of
    the slice it came from."""
    from medkeras.data.pipeline import split_arrays
    from medkeras.data.readers import read_image

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,split\n{lce_ct},tumour,train\n{LUNG / '1-01.dcm'},normal,train\n")
    cfg = data_cfg(source=str(manifest), image_size=64, window="lung")
    split = load_dataset(cfg).splits["train"]
    # the files lie in two folders outside the manifest's: named relative to the folder they share
    shared = os.path.commonpath([lce_ct.parent, LUNG])
    frames = [f"{os.path.relpath(lce_ct, shared)}#{n}" for n in (3, 2, 1)]
    slice_name = os.path.relpath(LUNG / "1-01.dcm", shared)
    assert split.names() in (frames + [slice_name], [slice_name] + frames)
    assert len(set(split.groups)) == 1  # one patient: the frames' file's and the slice's
    images, labels, names, _ = split_arrays(split, cfg)
    by_name = dict(zip(names, images))
    expected = read_image(LUNG / "1-14.dcm", cfg.window)  # frame 3 is the slice at z -189
    from medkeras.data.resize import resize_images

    np.testing.assert_allclose(by_name[frames[0]], resize_images(expected, 64).numpy(), atol=5e-3)  # Pillow = TF


def test_redact_paths_names_items_by_keyed_patient_and_index_only(tmp_path):
    """`data.redact_paths`: what outputs call each item (predictions, reports, stores) holds no file name."""
    from conftest import write_patients

    from medkeras.data.prepare import prepare

    write_patients(tmp_path / "ct", ["SMITH-1", "JONES-2", "BROWN-3"])
    cfg = data_cfg(source=str(tmp_path / "ct"), window="lung", image_size=32, redact_paths=True, split=[0.34, 0.33, 0.33])
    ds = load_dataset(cfg)
    for split in ds.splits.values():
        for name, group in zip(split.names(), split.groups):
            assert name.startswith(group + "-") and ".dcm" not in name
    _, _, names, _ = split_arrays(ds.splits["test"], cfg)
    assert names == ds.splits["test"].names()
    prepare(cfg, tmp_path / "store", size=32, verbose=False)
    index = (tmp_path / "store" / "index.json").read_text()
    assert ".dcm" not in index and "SMITH" not in index
