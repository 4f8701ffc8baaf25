"""Cross-validation folds (`data.folds` / `data.fold`): stratified, whole patients per fold, test untouched, the same
folds from the same seed, and a one-line error where the data cannot give them."""

import numpy as np
import pytest

from conftest import data_cfg, write_patients
from medkeras.data.sources import load_dataset
from medkeras.errors import DataError


def test_folds_of_bundled_breastmnist_cover_train_and_val_once_and_keep_test():
    plain = load_dataset(data_cfg(source="breastmnist"), seed=42)
    pool = len(plain.splits["train"]) + len(plain.splits["val"])
    test = plain.splits["test"]
    seen = []
    for fold in range(1, 6):
        ds = load_dataset(data_cfg(source="breastmnist", folds=5, fold=fold), seed=42)
        train, val = ds.splits["train"], ds.splits["val"]
        assert len(train) + len(val) == pool and abs(len(val) - pool / 5) <= 1
        assert np.array_equal(ds.splits["test"].images, test.images)  # test untouched
        assert abs(val.labels.mean() - train.labels.mean()) < 0.02  # stratified
        seen.append(val.images.reshape(len(val), -1))
    flat = np.concatenate(seen)  # the folds' val sets, together: train+val, each image exactly once
    both = np.concatenate([plain.splits[s].images.reshape(len(plain.splits[s]), -1) for s in ("train", "val")])
    assert np.array_equal(flat[np.lexsort(flat.T[::-1])], both[np.lexsort(both.T[::-1])])
    again = load_dataset(data_cfg(source="breastmnist", folds=5, fold=3), seed=42)
    assert np.array_equal(again.splits["val"].images, load_dataset(
        data_cfg(source="breastmnist", folds=5, fold=3), seed=42).splits["val"].images)  # resumable: same folds


def test_folds_keep_patients_whole_on_real_dicom(tmp_path):
    patients = [f"P{i}" for i in range(10)]
    write_patients(tmp_path / "ct", patients, series_per_patient=2, normal=patients[5:])
    folds = []
    for fold in (1, 2, 3):
        ds = load_dataset(data_cfg(source=str(tmp_path / "ct"), split=[0.8, 0.2, 0.0], folds=3, fold=fold), seed=1)
        train, val = set(ds.splits["train"].groups), set(ds.splits["val"].groups)
        assert not train & val and len(train | val) == 10
        assert set(ds.splits["val"].labels.tolist()) == {0, 1}  # both classes in every fold
        folds.append(val)
    assert len(set().union(*folds)) == sum(map(len, folds)) == 10  # each patient in exactly one fold


def test_too_few_patients_for_the_folds_is_one_line(tmp_path):
    write_patients(tmp_path / "ct", ["A", "B", "C", "D"], normal=["C", "D"])
    with pytest.raises(DataError, match=r"5 folds need at least 5 patients \(or series\) of each class in "
                                        r"train\+val; there are 2 of the rarest class") as err:
        load_dataset(data_cfg(source=str(tmp_path / "ct"), split=[1.0, 0.0, 0.0], folds=5, fold=1))
    assert "\n" not in str(err.value)


def test_fold_keys_are_checked():
    from medkeras.config import Config, ConfigError, DataConfig, validate

    for folds, fold in ((1, 1), (5, 0), (5, 6), (0, 2)):
        with pytest.raises(ConfigError, match="data.folds"):
            validate(Config(data=DataConfig(folds=folds, fold=fold)))


def test_slices_within_the_tolerance_are_one_position_wherever_they_fall():
    """0.02 mm apart in one scan is the same position (buckets of round(z / 0.5) put 10.24 and 10.26 apart), 0.6 mm is
    not, and another frame of reference never is."""
    from medkeras.data.splits import near_duplicates_across_splits
    from medkeras.data.types import Dataset, Split

    def split(names, positions):
        return Split(labels=np.zeros(len(names), np.int64), paths=names, positions=positions)

    ds = Dataset("scan", ["a", "b"], {
        "train": split(["t1.dcm", "t2.dcm"], [("scan1", 10.24), ("scan1", 20.0)]),
        "val": split(["v1.dcm"], [("scan1", 20.6)]),
        "test": split(["s1.dcm", "s2.dcm"], [("scan1", 10.26), ("scan2", 10.25)]),
    })
    found = near_duplicates_across_splits(ds)
    assert found["pairs"] == [("train", "t1.dcm", "test", "s1.dcm")]
    assert found["counts"] == {"train/val": 0, "train/test": 1, "val/test": 0}


def test_a_few_patients_a_class_still_give_validation_and_test_both_classes():
    """Eight patients with one study each, four a class (too few per class for stratified folds of ~1/0.15): each
    of validation and test gets a whole patient of each class, for any seed; a patient never spans splits. A class
    with one patient stays in train."""
    from medkeras.data.splits import split_indices

    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    groups = [f"P{i}" for i in range(8)]
    for seed in range(20):
        split = split_indices(labels, groups, (0.7, 0.15, 0.15), seed)
        assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(8))
        for name in ("val", "test"):
            assert sorted(labels[split[name]].tolist()) == [0, 1], (seed, name)
    again = split_indices(labels, groups, (0.7, 0.15, 0.15), 3)
    assert all(np.array_equal(again[k], split_indices(labels, groups, (0.7, 0.15, 0.15), 3)[k]) for k in again)
    two = split_indices(np.array([1, 1, 0, 0, 0, 0]), [f"P{i}" for i in range(6)], (0.7, 0.15, 0.15), 0)
    assert sorted(np.array([1, 1, 0, 0, 0, 0])[two["train"]].tolist()).count(1) >= 1  # both sides keep a class
