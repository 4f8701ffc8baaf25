"""Readers on real data: the bundled BreastMNIST npz, PNG folders and CSV manifests made from it, real DICOM."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import LUNG
from medkeras.config import DataConfig
from medkeras.data.pipeline import make_tf_dataset, split_arrays
from medkeras.data.sources import load_dataset, load_npz, read_image
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


def test_dicom_in_a_manifest_is_windowed(tmp_path):
    manifest = tmp_path / "ct.csv"
    rows = [(LUNG / "1-01.dcm", "normal", "train"), (LUNG / "1-13.dcm", "tumour", "train"),
            (LUNG / "1-14.dcm", "tumour", "test"), (LUNG / "1-01.dcm", "normal", "val")]
    manifest.write_text("path,label,split\n" + "".join(f"{p},{y},{s}\n" for p, y, s in rows))
    cfg = DataConfig(source=str(manifest), image_size=64, window=["lung", "mediastinum", "bone"])
    ds = load_dataset(cfg)
    images, labels, _, _ = split_arrays(ds.splits["train"], cfg)
    assert images.shape == (2, 64, 64, 3)
    assert images.min() >= 0 and images.max() <= 255
    # air (-1024 HU) in the corner: (−1024 + 1350) / 1500 of the lung window, black in mediastinum and bone
    np.testing.assert_allclose(images[0, 0, 0], [326 / 1500 * 255, 0.0, 0.0], rtol=1e-5)


def test_image_kinds_are_read_not_refused(tmp_path, breast):
    base = breast.splits["train"].images[0]
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([base, base, base, np.full_like(base, 255)]), "RGBA").save(rgba)
    assert read_image(rgba).shape == (28, 28, 3)
    deep = tmp_path / "deep.png"
    Image.fromarray(base.astype(np.uint16) * 257).save(deep)
    np.testing.assert_allclose(read_image(deep)[..., 0], base.astype(np.float32), atol=1e-3)
    one = tmp_path / "one.png"
    Image.fromarray(np.array([[7]], np.uint8)).save(one)
    assert read_image(one).shape == (1, 1, 1)
    arr = tmp_path / "a.npy"
    np.save(arr, base)
    np.testing.assert_array_equal(read_image(arr)[..., 0], base.astype(np.float32))


@pytest.mark.parametrize("content, cause", [(b"", "empty"), (b"plain text, not a picture", "not a readable image")])
def test_bad_pictures_fail_or_are_skipped(tmp_path, png_folder, content, cause):
    broken = png_folder / "malignant" / "broken.png"
    broken.write_bytes(content)
    cfg = DataConfig(source=str(png_folder), split=[0.34, 0.33, 0.33])
    ds = load_dataset(cfg)
    split = next(s for s in ds.splits.values() if any(str(p).endswith("broken.png") for p in s.paths))
    with pytest.raises(DataError, match=cause) as info:
        split_arrays(split, cfg, on_bad_file="fail")
    assert "broken.png" in str(info.value)
    images, labels, names, bad = split_arrays(split, cfg, on_bad_file="skip")
    assert len(bad) == 1 and bad[0][0].endswith("broken.png") and len(labels) == len(split) - 1


def test_missing_source_and_empty_class(tmp_path, png_folder):
    with pytest.raises(DataError, match="not found"):
        load_dataset(DataConfig(source=str(tmp_path / "nowhere")))
    (png_folder / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(DataConfig(source=str(png_folder)))


def test_pipeline_batches_three_channel_pixels(breast):
    cfg = DataConfig(source="breastmnist", image_size=32)
    split = breast.splits["val"]
    ds = make_tf_dataset(split.images, split.labels, cfg, batch_size=16, training=True)
    x, y = next(iter(ds))
    assert tuple(x.shape) == (16, 32, 32, 3) and x.dtype.name == "float32"
    assert float(x.numpy().min()) >= 0.0 and float(x.numpy().max()) <= 255.0
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grayscale repeated to 3 channels
    plain = next(iter(make_tf_dataset(split.images, split.labels, cfg, batch_size=78)))
    np.testing.assert_array_equal(plain[1].numpy(), split.labels)  # evaluation order is the split's order


def test_in_memory_split_is_gathered_by_index_not_copied(breast):
    """Batches come from the caller's array (held once); training reshuffles all of it each epoch, labels follow."""
    from medkeras.data.pipeline import gather_batches

    split = breast.splits["train"]
    images = split.images[..., None]  # uint8 (546, 28, 28, 1)
    ds = gather_batches(images, split.labels, 100, shuffle=True, seed=3)
    epochs = [[(x.numpy(), y.numpy()) for x, y in ds] for _ in range(2)]
    for batches in epochs:
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        assert x.dtype == np.float32 and len(x) == len(images)
        # every image exactly once, each with its own label
        order = [int(np.flatnonzero((images.reshape(len(images), -1) == row).all(axis=1))[0]) for row in x.reshape(len(x), -1)[:50]]
        np.testing.assert_array_equal(y[:50], split.labels[order])
        assert sorted(map(bytes, x.astype(np.uint8).reshape(len(x), -1))) == sorted(map(bytes, images.reshape(len(images), -1)))
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])  # reshuffled each epoch
    assert not np.array_equal(epochs[0][-1][1], split.labels[-46:])  # shuffled beyond a window at the end
    cfg = DataConfig(source="breastmnist", image_size=28)
    x, y = next(iter(make_tf_dataset(split.images, split.labels, cfg, 546)))
    np.testing.assert_array_equal(x[..., 0], split.images)  # at the size already: untouched, in order
    np.testing.assert_array_equal(y, split.labels)


def test_every_augmentation_is_seeded_and_training_only(breast):
    from medkeras.config import AugmentConfig

    split = breast.splits["val"]
    aug = AugmentConfig(noise=5.0, blur=0.5, clahe=0.5, randaugment=2, erasing=0.5, zoom=0.1, translation=0.1)
    cfg = DataConfig(source="breastmnist", image_size=32, augment=aug)

    def first(training, seed=1):
        ds = make_tf_dataset(split.images, split.labels, cfg, 78, training=training, seed=seed)
        return next(iter(ds))[0].numpy()

    a, b = first(True), first(True)
    np.testing.assert_array_equal(a, b)  # same seed, same augmented batch
    assert a.min() >= 0.0 and a.max() <= 255.0
    assert not np.array_equal(a, first(True, seed=2))
    plain = first(False)
    import tensorflow as tf

    expected = tf.image.resize(split.images[..., None].astype("float32"), (32, 32), antialias=True).numpy()
    np.testing.assert_allclose(plain[..., :1], expected, atol=1e-4)  # evaluation sees the images untouched


def test_dataset_normalization_in_the_graph(breast):
    from medkeras.data.pipeline import make_tf_dataset
    from medkeras.models.preprocessing import ImagePreprocessing
    from medkeras.train.fit import dataset_statistics

    images = breast.splits["train"].images
    cfg = DataConfig(source="breastmnist", image_size=28, augment=None)
    mean, std = dataset_statistics(make_tf_dataset(images, breast.splits["train"].labels, cfg, 256))
    pixels = images.astype(np.float64) / 255.0
    assert mean[0] == pytest.approx(pixels.mean(), abs=1e-5) and std[0] == pytest.approx(pixels.std(), abs=1e-5)
    layer = ImagePreprocessing("dataset", mean, std)
    out = np.asarray(layer(np.repeat(images[:64, ..., None].astype("float32"), 3, axis=-1)))
    np.testing.assert_allclose(out[..., 0], (images[:64] / 255.0 - mean[0]) / std[0], atol=1e-4)


def test_random_affine_geometry_is_exact(breast):
    """The fused flip/rotation/zoom/translation: each piece alone moves real pixels exactly where it should."""
    from keras import ops

    from medkeras.data.affine import RandomAffine, compose

    x = breast.splits["train"].images[:2, :27, :27, None].astype("float32")  # odd side: the centre is a pixel

    def apply(angle=0.0, scale=1.0, tx=0.0, ty=0.0, fx=False, fy=False):
        t = compose(ops.full((2,), angle), ops.full((2,), scale), ops.full((2,), tx), ops.full((2,), ty),
                    ops.full((2,), fx), ops.full((2,), fy), 27.0, 27.0)
        return ops.convert_to_numpy(ops.image.affine_transform(x, t, fill_mode="constant"))

    np.testing.assert_allclose(apply(), x, atol=1e-4)
    np.testing.assert_allclose(apply(fx=True), x[:, :, ::-1], atol=1e-4)
    np.testing.assert_allclose(apply(fy=True), x[:, ::-1], atol=1e-4)
    np.testing.assert_allclose(apply(angle=np.pi / 2), np.rot90(x, 1, axes=(1, 2)), atol=1e-3)
    shifted = apply(tx=3.0)  # content moves 3 px right, black enters on the left
    np.testing.assert_allclose(shifted[:, :, 3:], x[:, :, :-3], atol=1e-4)
    assert (shifted[:, :, :3] == 0).all()
    zoomed_out = apply(scale=2.0)  # every other input pixel, around the centre
    np.testing.assert_allclose(zoomed_out[:, 7:20, 7:20], x[:, 1:27:2, 1:27:2], atol=1e-4)
    layer = RandomAffine("horizontal", 0.05, 0.1, 0.05, seed=3)
    assert np.array_equal(ops.convert_to_numpy(layer(x, training=False)), x)
    a, b = (ops.convert_to_numpy(RandomAffine("horizontal", 0.05, 0.1, 0.05, seed=3)(x)) for _ in range(2))
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.allclose(a, x)


def test_resize_dynamic_with_one_side_known(breast):
    """A tensor whose static shape says it differs from the target is resampled (tf.cond cannot hold both)."""
    import tensorflow as tf

    from medkeras.data.pipeline import resize_dynamic, resize_images

    image = breast.splits["train"].images[0, :, :, None].astype("float32")  # 28 x 28

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 1], tf.float32)])
    def partly_known(x):
        return resize_dynamic(x, 16)

    np.testing.assert_array_equal(partly_known(image), resize_images(image, 16))
    same = tf.function(lambda x: resize_dynamic(x, 28), input_signature=[tf.TensorSpec([None, None, 1], tf.float32)])
    np.testing.assert_array_equal(same(image), image)  # unknown sides equal to the target: passed through
    unknown = tf.function(lambda x: resize_dynamic(x, 16), input_signature=[tf.TensorSpec([None, None, 1], tf.float32)])
    np.testing.assert_array_equal(unknown(image), resize_images(image, 16))  # called directly, not from tf.data
    assert unknown(image).shape == (16, 16, 1)
