"""DICOM -> HU on real files: pydicom's CT_small.dcm and three Lung-PET-CT-Dx slices (tests/data)."""

from pathlib import Path

import numpy as np
import pytest

from conftest import LUNG
from medkeras import DicomError, read_dicom_hu
from medkeras.data.dicom import hash_patient_id, patient_key


def test_ct_small_exact_hu(ct_small_path):
    hu = read_dicom_hu(ct_small_path)  # slope 1, intercept -1024
    assert hu.dtype == np.float32 and hu.shape == (128, 128)
    assert hu.min() == -896.0 and hu.max() == 1167.0
    assert hu[64, 64] == 904.0 and hu[0, 0] == -849.0


@pytest.mark.parametrize(
    "name, hu_max, center, tumour",
    [("1-01.dcm", 2609.0, 84.0, -99.0), ("1-13.dcm", 2143.0, 54.0, -73.0), ("1-14.dcm", 2197.0, 22.0, 75.0)],
)
def test_lung_ct_exact_hu(name, hu_max, center, tumour):
    hu = read_dicom_hu(LUNG / name)
    assert hu.shape == (512, 512)
    assert hu.min() == -1024.0 and hu.max() == hu_max  # air outside the body is exactly -1024 HU
    assert hu[256, 256] == center and hu[350, 325] == tumour


def test_unreadable_files_raise_a_value_error_naming_the_file(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("this is not DICOM\n" * 20)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    for path, cause in [(text, "DICOM"), (empty, "empty"), (tmp_path / "absent.dcm", "not found")]:
        with pytest.raises(ValueError, match=cause) as info:
            read_dicom_hu(path)
        assert isinstance(info.value, DicomError)
        assert str(path) in str(info.value)


def test_truncated_dicom_is_refused(tmp_path):
    data = (LUNG / "1-01.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError, match="cut.dcm"):
        read_dicom_hu(cut)


def test_patient_ids_are_only_hashed():
    key = patient_key(LUNG / "1-01.dcm")
    assert key == hash_patient_id("Lung_Dx-A0001")
    assert "A0001" not in key and len(key) == 16


def _pydicom_data(name):
    pytest.importorskip("data_store", reason="pydicom-data (the test extra) holds this real file")
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


def test_monochrome1_chest_xray_is_inverted():
    """RG1_J2KI.dcm: a real chest CR, MONOCHROME1 (low = white), JPEG 2000 decoded by Pillow."""
    path = _pydicom_data("RG1_J2KI.dcm")
    hu = read_dicom_hu(path)  # no rescale tags: stored values, inverted so that higher is brighter
    assert hu.shape == (1955, 1841)
    assert hu[0, 0] == 26512 + 803 - 18876  # stored 18876 in a file whose values span 803..26512
    assert hu[977, 920] == 26512 + 803 - 3342
    from medkeras.data.dicom import read_dicom_display

    shown = read_dicom_display(path)  # its VOI window applied, then inverted
    assert shown[977, 920] > shown[0, 0]


def test_unsupported_compression_names_the_transfer_syntax():
    path = _pydicom_data("bad_sequence.dcm")
    with pytest.raises(DicomError, match="transfer syntax"):
        read_dicom_hu(path)


def test_dicom_without_pixel_data(tmp_path, ct_small_path):
    import pydicom

    ds = pydicom.dcmread(ct_small_path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(DicomError, match="no pixel data"):
        read_dicom_hu(tmp_path / "nopixels.dcm")


def test_ct_without_rescale_tags_is_read_with_a_warning(tmp_path, ct_small_path):
    import pydicom

    ds = pydicom.dcmread(ct_small_path)
    raw = ds.pixel_array.astype(np.float32)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(tmp_path / "norescale.dcm")
    with pytest.warns(UserWarning, match="RescaleSlope"):
        hu = read_dicom_hu(tmp_path / "norescale.dcm")
    np.testing.assert_array_equal(hu, raw)


def test_series_in_z_order():
    from medkeras.data.dicom import series_in_z_order

    ordered = series_in_z_order([LUNG / "1-01.dcm", LUNG / "1-14.dcm", LUNG / "1-13.dcm"])
    assert [p.name for p in ordered] == ["1-14.dcm", "1-13.dcm", "1-01.dcm"]  # z -189, -184, -124


def _plain_variants(tmp_path, ct_small_path):
    """Real pixels in every plain layout the graph reads: CT_small as stored (explicit VR, int16), implicit VR,
    MONOCHROME1, and a truncated copy; plus files it must leave to pydicom (big-endian, multi-frame, colour)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ImplicitVRLittleEndian

    ds = pydicom.dcmread(ct_small_path)
    implicit = tmp_path / "implicit.dcm"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)
    mono1 = tmp_path / "mono1.dcm"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(mono1, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(ct_small_path).read_bytes()[:-1000])  # cut inside the pixel data
    plain = [LUNG / "1-01.dcm", LUNG / "1-14.dcm", Path(ct_small_path), implicit, mono1]
    other = [Path(get_testdata_file(n)) for n in ("MR_small_bigendian.dcm", "emri_small.dcm", "SC_rgb.dcm")]
    return plain, other + [truncated]


@pytest.mark.parametrize("window", ["lung", ["lung", "mediastinum", "bone"]])
def test_graph_dicom_decode_equals_pydicom_exactly(tmp_path, ct_small_path, window):
    """The tf.data DICOM reader (header by pydicom, pixels in the graph) gives the pydicom path's pixels exactly;
    files it cannot read plainly are handed back, not guessed at."""
    from medkeras.data.pipeline import decode_dicom_graph, resize_images
    from medkeras.data.sources import read_image
    from medkeras.data.windows import parse_windows

    plain, other = _plain_variants(tmp_path, ct_small_path)
    windows = parse_windows(window)
    items, rest = decode_dicom_graph(plain + other, windows, 64)
    items = dict(items)
    assert sorted(items) == list(range(len(plain))) and rest == list(range(len(plain), len(plain) + len(other)))
    for i, path in enumerate(plain):
        expected = resize_images(read_image(path, windows), 64).numpy()
        np.testing.assert_array_equal(items[i], expected)
    assert not np.array_equal(items[3], items[4])  # MONOCHROME1 really inverted


def test_decode_files_mixes_graph_and_pydicom_paths(tmp_path, ct_small_path):
    """A split of plain, non-plain and broken DICOM: order, labels and skips are kept; `fail` names the file."""
    from medkeras.config import DataConfig
    from medkeras.data.pipeline import decode_files, resize_images
    from medkeras.data.sources import Split, read_image
    from medkeras.data.windows import parse_windows
    from medkeras.errors import DataError

    plain, other = _plain_variants(tmp_path, ct_small_path)
    paths = [plain[0], other[0], plain[2], other[3], plain[4]]  # lung, big-endian MR, CT_small, truncated, mono1
    split = Split(labels=np.arange(5), paths=paths)
    cfg = DataConfig(source="unused", image_size=32, window="lung")
    images, labels, names, bad = decode_files(split, cfg, on_bad_file="skip", verbose=False)
    assert list(labels) == [0, 1, 2, 4] and names == [str(p) for i, p in enumerate(paths) if i != 3]
    assert [Path(b[0]).name for b in bad] == ["truncated.dcm"]
    for image, name in zip(images, names):
        np.testing.assert_array_equal(image, resize_images(read_image(name, parse_windows("lung")), 32).numpy())
    with pytest.raises(DataError, match="truncated.dcm"):
        decode_files(split, cfg, on_bad_file="fail", verbose=False)
