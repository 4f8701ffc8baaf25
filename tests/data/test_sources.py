"""Sources on real data: the bundled BreastMNIST npz, PNG folders and CSV manifests made from it."""

import csv
import shutil

import numpy as np
import pytest

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
