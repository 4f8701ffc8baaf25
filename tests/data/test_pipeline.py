"""tf.data pipelines on real data: decoding splits (graph and pydicom paths), skips, batches gathered by index."""



import numpy as np
import pytest
from conftest import LUNG, data_cfg

from medkeras.config import DataConfig
from medkeras.data.pipeline import make_tf_dataset, split_arrays
from medkeras.data.sources import load_dataset
from medkeras.errors import DataError


def test_dicom_in_a_manifest_is_windowed(tmp_path):
    manifest = tmp_path / "ct.csv"
    rows = [(LUNG / "1-01.dcm", "normal", "train"), (LUNG / "1-13.dcm", "tumour", "train"),
            (LUNG / "1-14.dcm", "tumour", "test"), (LUNG / "1-01.dcm", "normal", "val")]
    manifest.write_text("path,label,split\n" + "".join(f"{p},{y},{s}\n" for p, y, s in rows))
    cfg = data_cfg(source=str(manifest), image_size=64, window=["lung", "mediastinum", "bone"])
    ds = load_dataset(cfg)
    images, labels, _, _ = split_arrays(ds.splits["train"], cfg)
    assert images.shape == (2, 64, 64, 3)
    assert images.min() >= 0 and images.max() <= 255
    # air (-1024 HU) in the corner: (−1024 + 1350) / 1500 of the lung window, black in mediastinum and bone
    np.testing.assert_allclose(images[0, 0, 0], [326 / 1500 * 255, 0.0, 0.0], rtol=1e-5)


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


def test_decode_files_mixes_numpy_and_pydicom_paths(dicom_variants):
    """A split of plain, non-plain and broken DICOM, listed as a source is: order, labels and skips are kept,
    pixels are pydicom's resized by TensorFlow's filter (to float32 rounding); `fail` names the file."""
    from medkeras.data.pipeline import decode_files
    from medkeras.data.readers import dicom_items, read_image
    from medkeras.data.resize import resize_images
    from medkeras.data.types import Split

    plain, other = dicom_variants
    paths = [plain[0], other[0], plain[2], other[3], plain[4]]  # lung, big-endian MR, CT_small, truncated, mono1
    for path in paths[:3] + paths[4:]:
        dicom_items(path)  # layouts noted: the plain files are read by numpy
    split = Split(labels=np.arange(5), paths=paths)
    cfg = data_cfg(source="unused", image_size=32, window="lung")
    images, labels, names, bad = decode_files(split, cfg, on_bad_file="skip", verbose=False)
    kept = [p for i, p in enumerate(paths) if i != 3]
    assert list(labels) == [0, 1, 2, 4] and names == [p.name for p in kept]  # no absolute path in any output
    assert [b[0] for b in bad] == ["truncated.dcm"]
    for image, path in zip(images, kept):
        np.testing.assert_allclose(image, resize_images(read_image(path, [[-600.0, 1500.0]]), 32).numpy(), atol=5e-3)
    with pytest.raises(DataError, match="truncated.dcm"):
        decode_files(split, cfg, on_bad_file="fail", verbose=False)


def test_balanced_sampling_draws_class_balanced_batches(breast):
    """`train.sampling: balanced` on BreastMNIST's 147 malignant / 399 benign training images: half of each batch is
    malignant on average, an epoch is still 546 images, and the same seed draws the same batches."""
    split = breast.splits["train"]
    cfg = DataConfig(source="breastmnist", image_size=28)
    ds = make_tf_dataset(split.images, split.labels, cfg, 64, training=True, seed=3, balanced=True)
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert len(labels) == 546 and abs((labels == 0).mean() - 0.5) < 0.06  # was 147 / 546 = 0.27
    again = np.concatenate([y.numpy() for _, y in make_tf_dataset(split.images, split.labels, cfg, 64, training=True,
                                                                   seed=3, balanced=True)])
    np.testing.assert_array_equal(labels, again)
    from medkeras.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="count the imbalance twice"):
        load_config("demo", ["train.sampling=balanced", "train.class_weight=balanced"])
