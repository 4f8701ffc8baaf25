"""DICOM -> HU on real files: pydicom's CT_small.dcm and three Lung-PET-CT-Dx slices (tests/data)."""

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
