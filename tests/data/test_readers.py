"""The readers on real files: every picture kind Pillow reads, the graph twin (PNG/JPEG bytes) and the numpy read of
plain DICOM equal to Pillow and pydicom pixel for pixel; machine limits are not bad files. DICOM itself: test_dicom.py."""

from pathlib import Path

import numpy as np
import pytest
from conftest import LUNG
from PIL import Image

from medkeras import read_dicom_hu
from medkeras.data.readers import read_image


@pytest.mark.parametrize("window", ["lung", ["lung", "mediastinum", "bone"]])
def test_listed_plain_dicom_read_by_numpy_equals_pydicom_exactly(dicom_variants, window, monkeypatch):
    """A listed plain DICOM is read by numpy from the layout its listing noted (no second parse), giving pydicom's
    HU and pixels exactly; files it cannot read plainly, or not listed, are left to pydicom, not guessed at."""
    from medkeras.data.readers import dicom_items, dicom_layout, hu_to_pixels
    from medkeras.data.windows import parse_windows

    monkeypatch.setattr(dicom_layout, "_NOTED", type(dicom_layout._NOTED)())
    plain, other = dicom_variants
    windows = parse_windows(window)
    assert all(dicom_layout.plain_hu(p) is None for p in plain)  # not listed: pydicom reads it
    for path in plain + other[:-1]:
        dicom_items(path)
    for path in plain:
        hu = dicom_layout.plain_hu(path)
        assert hu is not None and hu.dtype == np.float32
        np.testing.assert_array_equal(hu, read_dicom_hu(path))
        np.testing.assert_array_equal(read_image(path, windows), hu_to_pixels(read_dicom_hu(path), windows))
    assert not np.array_equal(dicom_layout.plain_hu(plain[3]), dicom_layout.plain_hu(plain[4]))  # MONOCHROME1
    assert all(dicom_layout.plain_hu(p) is None for p in other)  # big-endian, multi-frame, colour, truncated


def test_a_dicom_header_is_parsed_once_from_listing_to_decoding(tmp_path, monkeypatch):
    """Listing a source notes each plain file's pixel layout from the header it reads; decoding takes it without
    parsing the file again, while the file is unchanged. A file rewritten since (TCIA names every series' first
    slice 1-01.dcm: the same path can hold another slice) is parsed afresh."""
    import shutil

    from medkeras.data.readers import dicom_layout, dicom_tags

    names = ("1-01.dcm", "1-13.dcm")
    for name in names:
        shutil.copy(LUNG / name, tmp_path / name)
    expected = {name: dicom_layout.pixel_layout(tmp_path / name) for name in names}
    dicom_layout._NOTED.clear()
    for name in names:
        dicom_tags.dicom_items(tmp_path / name)
    parses = []
    real = dicom_layout.dcmread
    monkeypatch.setattr(dicom_layout, "dcmread", lambda *a, **k: parses.append(a[0]) or real(*a, **k))
    assert {name: dicom_layout.pixel_layout(tmp_path / name) for name in names} == expected and parses == []
    import os

    before = (tmp_path / "1-01.dcm").stat().st_mtime_ns
    (tmp_path / "1-01.dcm").write_bytes((LUNG / "1-14.dcm").read_bytes())  # another slice under the same name
    os.utime(tmp_path / "1-01.dcm", ns=(before + 10**9, before + 10**9))  # a second later (the clock's tick is coarse)
    assert dicom_layout.pixel_layout(tmp_path / "1-01.dcm") == dicom_layout.layout_of(real(LUNG / "1-14.dcm",
                                                                                           defer_size=1024), LUNG / "1-14.dcm")
    assert parses == [tmp_path / "1-01.dcm"]


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


_DECODE = {}


def _graph_decode(data: bytes) -> np.ndarray:
    """The readers' graph twin, traced as the SavedModel traces it (one string in, pixels out)."""
    import tensorflow as tf

    from medkeras.data.readers import decode_encoded

    if "fn" not in _DECODE:
        _DECODE["fn"] = tf.function(decode_encoded, input_signature=[tf.TensorSpec([], tf.string)])
    return _DECODE["fn"](tf.constant(data)).numpy()


def test_encoded_graph_twin_equals_pillow_on_real_files(tmp_path, breast):
    """Real CT and ultrasound images as users have them (JPEG q75/q95, PNG 8/16-bit, grey and RGB, 512 x 512 and
    623 x 512): the graph decoder serve_encoded uses gives Pillow's pixels exactly."""
    from conftest import write_real_encodings

    paths = write_real_encodings(tmp_path, breast.splits["test"].images)
    assert len(paths) == 19
    for path in paths:
        expected = read_image(path)
        got = _graph_decode(path.read_bytes())
        assert got.shape == expected.shape, path.name
        np.testing.assert_array_equal(got, expected, err_msg=path.name)


def test_tensorflows_default_jpeg_decoding_is_not_pillows(tmp_path):
    """Why the twin names its DCT: TF's default (INTEGER_FAST) is up to ~20 grey levels off Pillow on a real CT JPEG."""
    import tensorflow as tf
    from conftest import ct_pixels
    from PIL import Image

    path = tmp_path / "ct.jpg"
    Image.fromarray(ct_pixels()[..., 0]).save(path, quality=95)
    default = tf.io.decode_jpeg(path.read_bytes()).numpy().astype(np.float32)
    assert np.abs(default - read_image(path)).max() >= 5
    np.testing.assert_array_equal(_graph_decode(path.read_bytes()), read_image(path))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "P+tRNS", "1", "I;16", "LA;16", "RGB;16", "RGBA;16"])
def test_every_png_kind_reads_the_same_in_python_and_in_the_graph(tmp_path, breast, mode):
    """Each PNG colour type and bit depth, made from a real ultrasound image: same pixels, same channel count."""
    import tensorflow as tf

    grey = breast.splits["test"].images[3]
    rgb = np.dstack([grey, grey[::-1], grey[:, ::-1]])
    path = tmp_path / "x.png"
    if mode.endswith(";16") and mode != "I;16":  # 16-bit with colour or alpha: Pillow cannot write these, TF can
        channels = {"LA;16": 2, "RGB;16": 3, "RGBA;16": 4}[mode]
        deep = np.dstack([rgb, grey])[..., :channels] if channels > 2 else np.dstack([grey, grey[::-1]])
        path.write_bytes(tf.io.encode_png(tf.constant(deep.astype(np.uint16) * 251)).numpy())
    else:
        picture = {
            "L": lambda: Image.fromarray(grey),
            "LA": lambda: Image.fromarray(np.dstack([grey, grey[::-1]]), "LA"),
            "RGB": lambda: Image.fromarray(rgb),
            "RGBA": lambda: Image.fromarray(np.dstack([rgb, grey]), "RGBA"),
            "P": lambda: Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=32),
            "P+tRNS": lambda: Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=32),
            "1": lambda: Image.fromarray(grey > 100),
            "I;16": lambda: Image.fromarray(grey.astype(np.uint16) * 257 + 3),
        }[mode]()
        options = {"transparency": 5} if mode == "P+tRNS" else {}
        picture.save(path, format="PNG", **options)
    expected = read_image(path)
    got = _graph_decode(path.read_bytes())
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_graph_twin_refuses_what_is_not_png_or_jpeg(tmp_path, ct_small_path):
    import tensorflow as tf

    for data in (b"not an image at all", Path(ct_small_path).read_bytes()):
        with pytest.raises(tf.errors.InvalidArgumentError, match="not PNG or JPEG"):
            _graph_decode(data)


def test_a_machine_limit_is_not_a_bad_file(monkeypatch, tmp_path, breast):
    """Out of memory or file handles while reading says so and stops, even under `on_bad_file: skip`: skipping
    every file of a split for the machine's sake once left a fit's validation split empty at evaluation."""
    import errno

    import pydicom
    from PIL import Image

    from medkeras.config import DataConfig
    from medkeras.data.pipeline import decode_files
    from medkeras.data.types import Split
    from medkeras.errors import ResourceError

    png = tmp_path / "x.png"
    Image.fromarray(breast.splits["test"].images[0]).save(png)

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    from medkeras.data.readers import dicom_layout

    monkeypatch.setattr(dicom_layout, "_NOTED", type(dicom_layout._NOTED)())  # nothing listed: pydicom reads them
    monkeypatch.setattr(pydicom, "dcmread", out_of_memory)
    with pytest.raises(ResourceError, match="1-01.dcm: cannot read it now: out of memory"):
        read_dicom_hu(LUNG / "1-01.dcm")
    split = Split(labels=np.zeros(3, np.int64), paths=[LUNG / n for n in ("1-01.dcm", "1-13.dcm", "1-14.dcm")])
    cfg = DataConfig(source="unused", image_size=32, window=[[-600.0, 1500.0]])
    with pytest.raises(ResourceError):
        decode_files(split, cfg, on_bad_file="skip", verbose=False)

    def no_handles(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Image, "open", no_handles)
    with pytest.raises(ResourceError, match="Too many open files"):
        read_image(png)
