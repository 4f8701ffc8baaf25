"""`medkeras prepare`: a TFDS store written once from real files, read back exactly, trained from, atomic."""

import csv
import json

import numpy as np
import pytest
from conftest import LUNG, data_cfg, run_cli

from medkeras.config import DataConfig
from medkeras.data.pipeline import split_arrays, stream_tf_dataset
from medkeras.data.prepare import prepare
from medkeras.data.readers import read_image
from medkeras.data.resize import to_model_pixels
from medkeras.data.sources import load_dataset
from medkeras.data.store import is_store
from medkeras.errors import DataError, MedkerasError

SLICES = {"1-01.dcm": "normal", "1-13.dcm": "tumour", "1-14.dcm": "tumour"}


@pytest.fixture
def ct_manifest(tmp_path):
    """The three real Lung-PET-CT-Dx slices, twice each (train and val/test), one patient per copy."""
    path = tmp_path / "ct.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "patient_id"])
        for split in ("train", "val", "test"):
            for name, label in SLICES.items():
                writer.writerow([LUNG / name, label, split, f"Lung_Dx-A0001-{split}"])
    return path


@pytest.mark.parametrize("size", [None, 48])
def test_store_reads_back_what_the_files_give(tmp_path, ct_manifest, size):
    cfg = data_cfg(source=str(ct_manifest), window=["lung", "mediastinum", "bone"], image_size=48)
    summary = prepare(cfg, tmp_path / "store", size=size, verbose=False)
    assert summary["counts"] == {"train": 3, "val": 3, "test": 3} and summary["hu"] == (size is None)
    assert is_store(tmp_path / "store")
    stored = load_dataset(data_cfg(source=str(tmp_path / "store"), window=cfg.window, image_size=48))
    assert stored.class_names == ["normal", "tumour"]
    images, labels, names, _ = split_arrays(stored.splits["val"], stored_cfg := data_cfg(
        source=str(tmp_path / "store"), window=cfg.window, image_size=48))
    windows = [(-600, 1500), (50, 350), (400, 1800)]
    for image, label, name in zip(images, labels, names):
        expected = to_model_pixels(read_image(LUNG / name, windows)[None], 48)[0]
        np.testing.assert_allclose(image, expected, atol=1e-3)  # windows then resize, exactly like the file path
        assert stored.class_names[label] == SLICES[name.rsplit("/", 1)[-1]]
    # training streams batches of the right shape with every record once per epoch
    seen = np.concatenate([y.numpy() for _, y in stream_tf_dataset(stored.splits["train"], stored_cfg, 2, True)])
    assert sorted(seen.tolist()) == sorted(stored.splits["train"].labels.tolist()) == [0, 1, 1]
    # patient IDs only as the one-way hash; the raw ID is nowhere in the store
    raw = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert b"Lung_Dx-A0001-train" not in raw and stored.splits["train"].groups[0] != "Lung_Dx-A0001-train"


def test_native_hu_records_are_exact_int16_where_whole_and_float32_where_not(tmp_path, ct_manifest):
    """Real CT (integer stored values, slope 1) is kept as int16 bytes; a fractional HU array stays float32; both
    read back exactly what the reader gave, in one store."""
    from medkeras.data.readers import read_raw
    from medkeras.data.store import _records

    fractional = (np.arange(40 * 40, dtype=np.float32).reshape(40, 40) * 0.25 - 1000.0)
    np.save(tmp_path / "fractional.npy", fractional)
    rows = list(csv.reader(open(ct_manifest)))
    rows.append([tmp_path / "fractional.npy", "normal", "test", "other"])
    with open(ct_manifest, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    cfg = data_cfg(source=str(ct_manifest), window="lung", image_size=32)
    prepare(cfg, tmp_path / "hu", verbose=False)
    stored = load_dataset(data_cfg(source=str(tmp_path / "hu"), window="lung", image_size=32))
    kinds = {}
    for example in _records(stored.splits["test"]).as_numpy_iterator():
        name = example["key"].decode()
        path = tmp_path / "fractional.npy" if name.endswith("fractional.npy") else LUNG / name.rsplit("/", 1)[-1]
        expected = read_raw(path, True)[0]
        whole = example["hu16"].size > 0
        kinds[path.name] = whole
        got = example["hu16"] if whole else example["image"]
        assert got.dtype == (np.int16 if whole else np.float32) and got.shape == expected.shape
        np.testing.assert_array_equal(got.astype(np.float32), expected)
    assert kinds == {"1-01.dcm": True, "1-13.dcm": True, "1-14.dcm": True, "fractional.npy": False}
    # and the graph reads both kinds to the same pixels as the files
    images, _, names, _ = split_arrays(stored.splits["test"], data_cfg(source=str(tmp_path / "hu"), window="lung",
                                                                       image_size=32))
    for image, name in zip(images, names):
        path = tmp_path / "fractional.npy" if name.endswith("fractional.npy") else LUNG / name.rsplit("/", 1)[-1]
        expected = to_model_pixels(read_image(path, [(-600, 1500)])[None], 32)[0]
        np.testing.assert_allclose(image, expected[..., :1], atol=1e-3)


@pytest.mark.parametrize("windows", ["lung", ["lung", "mediastinum", "bone"]])
def test_a_sized_store_is_read_in_batches_as_the_record_path_reads_it(tmp_path, ct_manifest, windows):
    """Pixels of one size are parsed a batch at a time (`store_batches`): the same pixels, labels and names, in the
    store's order, as TFDS' record-by-record path, at the store's size and resized to another; a training epoch
    streams every record once, in the order its seed gives."""
    from medkeras.data.store import store_batches, store_examples

    cfg = data_cfg(source=str(ct_manifest), window=windows, image_size=32)
    prepare(cfg, tmp_path / "sized", size=32, verbose=False)
    prepare(cfg, tmp_path / "hu", verbose=False)
    for size in (32, 24):
        read = data_cfg(source=str(tmp_path / "sized"), window=windows, image_size=size)
        split = load_dataset(read).splits["train"]
        assert split.store_side == 32
        batched = [item for batch in store_batches(split, read, 2, with_keys=True).as_numpy_iterator()
                   for item in zip(*batch)]
        single = list(store_examples(split, read, size, with_keys=True).as_numpy_iterator())
        assert [k for *_, k in batched] == [k for *_, k in single] and len(single) == 3
        for (a, label_a, _), (b, label_b, _) in zip(batched, single):
            assert a.shape == (size, size, 1 if windows == "lung" else 3) and label_a == label_b
            np.testing.assert_allclose(a, b, atol=1e-4)
    assert load_dataset(data_cfg(source=str(tmp_path / "hu"), window=windows)).splits["train"].store_side is None

    # its size known (3 records, batches of 2): Keras fitting steps_per_epoch from an unknown size trained on nothing
    # every second epoch (found by a new-user trial)
    assert int(stream_tf_dataset(split, read, 2, training=True).cardinality()) == 2

    def epoch(seed):
        ds = stream_tf_dataset(split, read, 2, training=True, seed=seed, augment=False)
        return [float(x[..., 0].sum()) for batch, _ in ds.as_numpy_iterator() for x in batch]

    first = epoch(7)
    assert first == epoch(7) and sorted(first) == sorted(float(x[..., 0].sum()) for x, *_ in single)


def test_a_shard_cut_short_or_gone_is_refused_by_name(tmp_path, ct_manifest):
    """TFRecordDataset reads a truncated shard as fewer records, silently: `prepare` records each shard's size and a
    store whose shard changed is refused naming it; a store without those sizes (older) fails in the stream."""
    import tensorflow as tf

    cfg = data_cfg(source=str(ct_manifest), window="lung", image_size=32)
    prepare(cfg, tmp_path / "sized", size=32, verbose=False)
    read = data_cfg(source=str(tmp_path / "sized"), window="lung", image_size=32)
    shard = next((tmp_path / "sized").rglob("*-train.tfrecord-*"))
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=rf"{shard.name}.*truncated or changed since; prepare the store again"):
        load_dataset(read)
    index = json.loads((tmp_path / "sized" / "index.json").read_text())
    (tmp_path / "sized" / "index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "shard_bytes"}))
    with pytest.raises((tf.errors.FailedPreconditionError, tf.errors.DataLossError),
                       match="expected to contain 3 elements|truncated record"):
        list(stream_tf_dataset(load_dataset(read).splits["train"], read, 2, training=True))
    (tmp_path / "sized" / "index.json").write_text(json.dumps(index))
    shard.unlink()
    with pytest.raises(DataError, match=rf"{shard.name}.*missing from the store"):
        load_dataset(read)


def test_hu_store_takes_any_window_and_sized_store_refuses_others(tmp_path, ct_manifest):
    cfg = data_cfg(source=str(ct_manifest), window="lung", image_size=32)
    prepare(cfg, tmp_path / "hu", verbose=False)
    prepare(cfg, tmp_path / "sized", size=32, verbose=False)
    bone = data_cfg(source=str(tmp_path / "hu"), window="bone", image_size=32)
    images, _, names, _ = split_arrays(load_dataset(bone).splits["test"], bone)
    assert images.shape[1:] == (32, 32, 1)  # grayscale stays one channel until after augmentation
    expected = to_model_pixels(read_image(LUNG / names[0], [(400, 1800)])[None], 32)[0]
    np.testing.assert_allclose(images[0], expected[..., :1], atol=1e-3)
    with pytest.raises(DataError, match="prepared at --size 32 with windows"):
        load_dataset(data_cfg(source=str(tmp_path / "sized"), window="bone", image_size=32))
    with pytest.raises(DataError, match="holds Hounsfield units"):
        load_dataset(DataConfig(source=str(tmp_path / "hu"), image_size=32))
    # a recipe naming the same classes in another order is told how to read the store
    with pytest.raises(DataError, match=r"another order.*data.class_names=\[normal,tumour\]"):
        load_dataset(data_cfg(source=str(tmp_path / "hu"), window="lung", image_size=32,
                              class_names=["tumour", "normal"]))


def test_bad_files_fail_without_a_store_or_are_skipped_and_listed(tmp_path, ct_manifest):
    (tmp_path / "broken.dcm").write_bytes((LUNG / "1-13.dcm").read_bytes()[:3000])  # truncated real DICOM
    with open(ct_manifest, "a", newline="") as fh:
        csv.writer(fh).writerow([tmp_path / "broken.dcm", "tumour", "train", "x"])
    cfg = data_cfg(source=str(ct_manifest), window="lung", image_size=32)
    with pytest.raises(DataError, match="broken.dcm"):
        prepare(cfg, tmp_path / "store", size=32, verbose=False)
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob(".store.*"))  # nothing half-written
    cfg.on_bad_file = "skip"
    summary = prepare(cfg, tmp_path / "store", size=32, verbose=False)
    assert summary["skipped"] == 1 and summary["counts"]["train"] == 3
    rows = list(csv.reader(open(tmp_path / "store" / "bad_files.csv")))
    assert rows[1][0] == "train" and rows[1][1].endswith("broken.dcm")
    with pytest.raises(MedkerasError, match="exists and is not empty"):
        prepare(cfg, tmp_path / "store", size=32, verbose=False)


def test_prepare_cli_then_fit_from_the_store(tmp_path):
    store = tmp_path / "breast"
    result = run_cli("prepare", "breastmnist", "--out", store, "--size", "28")  # pixels of one size: read in batches
    assert result.returncode == 0, result.stderr
    assert "prepared" in result.stdout and "train 546, val 78, test 156" in result.stdout
    index = json.loads((store / "index.json").read_text())
    assert index["class_names"] == ["malignant", "benign-or-normal"] and index["positive_class"] == "malignant"
    run = tmp_path / "run"
    result = run_cli(
        "fit", "--out", run, "--set", f"data.source={store}", "--set", "train.epochs=2", "--set", "train.verbose=0",
        "--set", "model.backbones=[cnn8_small]", "--set", "eval.bootstrap=0",
    )
    assert result.returncode == 0, result.stderr
    # every epoch trains on the whole split (a stream of unknown size gave Keras nothing on every second epoch)
    log = list(csv.DictReader(open(run / "train_log.csv")))
    assert len(log) == 2 and all(float(row["loss"]) > 0 for row in log)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 156 and 0.0 <= metrics["test"]["auroc"] <= 1.0
    # the same store twice is refused in one line, exit 1
    result = run_cli("prepare", "breastmnist", "--out", store)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "exists and is not empty" in result.stderr


def test_compressed_dicom_is_read_in_worker_processes_to_the_same_store(tmp_path, monkeypatch):
    """Compressed DICOM (the real slices in RLE) is read in worker processes (the decoders hold the GIL): the store
    holds what the files give, and a broken file still fails naming it, or is skipped and listed."""
    import pydicom
    from pydicom.uid import RLELossless

    from medkeras.data import prepare as prep

    rows = []
    for name, label in SLICES.items():
        ds = pydicom.dcmread(LUNG / name)
        ds.compress(RLELossless)
        ds.save_as(tmp_path / f"rle-{name}")
        rows += [(tmp_path / f"rle-{name}", label, split) for split in ("train", "val", "test")]
    (tmp_path / "broken.dcm").write_bytes((tmp_path / "rle-1-13.dcm").read_bytes()[:4000])
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    monkeypatch.setattr(prep, "PROCESS_POOL_MIN", 2)
    assert prep._compressed([r[0] for r in rows])
    cfg = data_cfg(source=str(manifest), window="lung", image_size=32)
    prepare(cfg, tmp_path / "store", size=32, verbose=False)
    stored = data_cfg(source=str(tmp_path / "store"), window="lung", image_size=32)
    images, labels, names, _ = split_arrays(load_dataset(stored).splits["train"], stored)
    for image, name in zip(images, names):
        expected = to_model_pixels(read_image(LUNG / name.replace("rle-", ""), cfg.window)[None], 32)[0]
        np.testing.assert_allclose(image, expected[..., :1], atol=1e-3)
    with open(manifest, "a", newline="") as fh:
        csv.writer(fh).writerow([tmp_path / "broken.dcm", "tumour", "train"])
    with pytest.raises(DataError, match="broken.dcm"):
        prepare(cfg, tmp_path / "store2", size=32, verbose=False)
    cfg.on_bad_file = "skip"
    assert prepare(cfg, tmp_path / "store2", size=32, verbose=False)["skipped"] == 1


def test_a_test_only_manifest_prepares_and_a_run_evaluates_on_it(tmp_path, ct_run):
    """An external test set is a source of its own: a manifest with only test rows (the real series as TCIA lays
    them out) prepares to a store, and `eval --data STORE` scores a run on it."""
    from conftest import tcia_layout

    manifest = tmp_path / "external.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for path, label, *_ in tcia_layout(tmp_path / "tcia"):
            writer.writerow([path, label, "test"])
    result = run_cli("prepare", manifest, "--out", tmp_path / "store", "--window", "lung")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train 0, val 0, test 12" in result.stdout
    run, _ = ct_run
    result = run_cli("eval", run, "--data", tmp_path / "store", "--out", tmp_path / "ev")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "ev" / "predictions.csv") as fh:
        names = [r["path"] for r in csv.DictReader(fh)]
    assert len(names) == len(set(names)) == 12  # two series' 1-01.dcm are two items


def _study_cfg(source, **values):
    return data_cfg(source=str(source), window="lung", image_size=32, volume_size=[4, 32, 32], **values)


def test_a_store_of_studies_streams_what_the_series_give(tmp_path, ct_manifest):
    from conftest import study_source

    from medkeras.data.studies import load_studies, study_split_arrays

    manifest = study_source(tmp_path / "ct", patients=4)  # real CT blocks laid out as TCIA lays them out
    cfg = _study_cfg(manifest, spacing=[5.0, 14.0, 14.0])  # 512 px at 0.84 mm: 31 px, cropped and padded to 4 x 32
    summary = prepare(cfg, tmp_path / "store", verbose=False, studies=True)
    assert summary["studies"] and summary["counts"] == {"train": 8, "val": 4, "test": 4}
    assert summary["volume_size"] == [4, 32, 32] and summary["spacing"] == [5.0, 14.0, 14.0]
    stored_cfg = _study_cfg(tmp_path / "store", spacing=[5.0, 14.0, 14.0])
    stored, listed = load_studies(stored_cfg), load_studies(cfg)
    assert stored.splits["val"].studies and stored.class_names == listed.class_names == ["normal", "tumour"]
    volumes, labels, names, _ = split_arrays(stored.splits["val"], stored_cfg)
    expected, expected_labels, expected_names, _ = study_split_arrays(listed.splits["val"], cfg)
    assert sorted(names) == sorted(expected_names) and volumes.shape == (4, 4, 32, 32, 1)
    for volume, label, name in zip(volumes, labels, names):  # the same pixels as read from the series, by path
        at = expected_names.index(name)
        np.testing.assert_allclose(volume, expected[at], atol=1e-4)
        assert label == expected_labels[at]
    batches = list(stream_tf_dataset(stored.splits["train"], stored_cfg, 2, training=True))
    assert {tuple(x.shape) for x, _ in batches} == {(2, 4, 32, 32, 3)}  # streamed, augmented, 3 channels
    assert sorted(np.concatenate([y.numpy() for _, y in batches]).tolist()) == sorted(stored.splits["train"].labels)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert b"Lung_Dx-B0001" not in raw  # patients only as keys
    # a store read with other geometry, or by the wrong kind of model, is refused in one line naming it
    with pytest.raises(DataError, match=r"prepared at data.volume_size \[4, 32, 32\], the model reads \[8, 32, 32\]"):
        load_studies(data_cfg(source=str(tmp_path / "store"), window="lung", image_size=32, volume_size=[8, 32, 32],
                              spacing=[5.0, 14.0, 14.0]))
    with pytest.raises(DataError, match=r"data.spacing \[5, 14, 14\], the model reads null"):
        load_studies(_study_cfg(tmp_path / "store"))
    with pytest.raises(DataError, match="store of CT studies"):
        load_dataset(data_cfg(source=str(tmp_path / "store"), window="lung", image_size=32))
    prepare(data_cfg(source=str(ct_manifest), window="lung", image_size=32), tmp_path / "slices", verbose=False)
    with pytest.raises(DataError, match="store of images, not of studies"):
        load_studies(_study_cfg(tmp_path / "slices"))


def test_prepare_cli_then_fit_and_export_a_study_model_from_the_store(tmp_path):
    from conftest import study_source

    manifest = study_source(tmp_path / "ct", patients=4)
    model = ["--set", "model.input=series", "--set", "model.backbones=[cnn8_small]", "--set", "data.image_size=32",
             "--set", "data.volume_size=[4, 32, 32]", "--set", "data.window=lung"]
    result = run_cli("prepare", manifest, "--out", tmp_path / "store", *model, cwd=tmp_path / "ct")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train 8, val 4, test 4; HU volumes" in result.stdout and "16 studies" in result.stdout + result.stderr
    result = run_cli("fit", "--out", tmp_path / "run", "--set", f"data.source={tmp_path / 'store'}", *model,
                     "--set", "train.epochs=1", "--set", "train.batch_size=2", "--set", "train.verbose=0",
                     "--set", "eval.bootstrap=0")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "run" / "predictions.csv")))
    assert len(rows) == 4 and all(r["path"].startswith("patient-") and r["path"].count("/") == 2 for r in rows)
    assert len(list(csv.DictReader(open(tmp_path / "run" / "attention.csv")))) == 4
    result = run_cli("export", tmp_path / "run", "--out", tmp_path / "serving")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "serve_volume: HU and spacing of 2 studies" in result.stdout  # served == Keras on the store's studies
