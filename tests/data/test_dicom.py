"""DICOM -> HU on real files (pydicom's CT_small, the Lung-PET-CT-Dx slices, pydicom-data): exact HU, MONOCHROME1,
every transfer syntax hospitals use (each lossless one exact against the uncompressed original), clear errors."""

import numpy as np
import pytest
from conftest import LUNG

from medkeras import DicomError, read_dicom_hu
from medkeras.data.readers import patient_key


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
    from medkeras.data.readers import read_dicom_display

    shown = read_dicom_display(path)  # its VOI window applied, then inverted
    assert shown[977, 920] > shown[0, 0]


def test_a_syntax_without_a_decoder_is_one_line_naming_it(tmp_path, ct_small_path):
    """A transfer syntax nothing here decodes (MPEG-2 video) is refused in one line that names it."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    ds = pydicom.dcmread(ct_small_path)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(tmp_path / "video.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match=r"video\.dcm: cannot decode pixel data \(transfer syntax MPEG2") as info:
        read_dicom_hu(tmp_path / "video.dcm")
    assert "\n" not in str(info.value)


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
    from medkeras.data.readers import series_in_z_order

    ordered = series_in_z_order([LUNG / "1-01.dcm", LUNG / "1-14.dcm", LUNG / "1-13.dcm"])
    assert [p.name for p in ordered] == ["1-14.dcm", "1-13.dcm", "1-01.dcm"]  # z -189, -184, -124


def _gdcm_compress(src, dst, syntax: str):
    """Re-encode a real DICOM file with GDCM (the one encoder here for the JPEG Lossless processes)."""
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm (the test extra) encodes JPEG Lossless")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


def _compressed(src, dst, syntax):
    """`src` re-encoded in `syntax` (pydicom's encoders, GDCM for the JPEG Lossless processes) -> its UID."""
    import pydicom
    from pydicom import uid

    if syntax in ("JPEGLossless", "JPEGLosslessSV1"):
        _gdcm_compress(src, dst, {"JPEGLossless": "JPEGLosslessProcess14",
                                  "JPEGLosslessSV1": "JPEGLosslessProcess14_1"}[syntax])
    else:
        ds = pydicom.dcmread(src)
        if syntax == "DeflatedExplicitVRLittleEndian":
            ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
        else:
            ds.compress(getattr(uid, syntax))
        ds.save_as(dst, enforce_file_format=True)
    return pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID


LOSSLESS = ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless", "JPEGLossless", "JPEGLosslessSV1",
            "DeflatedExplicitVRLittleEndian"]


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("name", ["1-13.dcm", "CT_small.dcm"])
def test_every_lossless_syntax_reads_the_exact_hu_of_the_original(tmp_path, ct_small_path, syntax, name):
    """Real CT (a 512 px 12-bit unsigned Lung-PET-CT-Dx slice; CT_small, signed 16-bit) re-encoded in each lossless
    syntax hospitals use: the HU read back equal the uncompressed file's exactly."""
    from pydicom import uid

    src = ct_small_path if name == "CT_small.dcm" else LUNG / name
    dst = tmp_path / f"{syntax}.dcm"
    assert _compressed(src, dst, syntax) == getattr(uid, syntax)
    original = read_dicom_hu(src)
    np.testing.assert_array_equal(read_dicom_hu(dst), original)


def test_near_lossless_and_lossy_syntaxes_read_within_their_error(tmp_path):
    """JPEG-LS near-lossless (NEAR=2) stays within 2 HU; JPEG 2000 lossy (10:1) reads as the same image."""
    import pydicom
    from pydicom import uid

    original = read_dicom_hu(LUNG / "1-13.dcm")
    ds = pydicom.dcmread(LUNG / "1-13.dcm")
    ds.compress(uid.JPEGLSNearLossless, jls_error=2)
    ds.save_as(tmp_path / "nl.dcm")
    assert np.abs(read_dicom_hu(tmp_path / "nl.dcm") - original).max() <= 2.0
    ds = pydicom.dcmread(LUNG / "1-13.dcm")
    ds.compress(uid.JPEG2000, j2k_cr=[10])
    ds.save_as(tmp_path / "lossy.dcm")
    lossy = read_dicom_hu(tmp_path / "lossy.dcm")
    assert lossy.shape == original.shape and not np.array_equal(lossy, original)
    assert np.corrcoef(lossy.ravel(), original.ravel())[0, 1] > 0.995


def _pydicom_file(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is in pydicom-data (the test extra)")
    return path


@pytest.mark.parametrize("compressed, original", [
    ("693_J2KR.dcm", "693_UNCR.dcm"),  # CT, JPEG 2000 lossless, signed 14-bit
    ("693_J2KI.dcm", "693_UNCI.dcm"),  # the same CT, JPEG 2000 lossy, against its reference decoding
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # chest CR, MONOCHROME1, 15-bit
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless, signed
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),  # Explicit VR Big Endian
])
def test_real_compressed_files_read_as_their_uncompressed_originals(compressed, original):
    """Files compressed by other software (pydicom-data keeps each with its uncompressed original): the HU are equal."""
    np.testing.assert_array_equal(read_dicom_hu(_pydicom_file(compressed)), read_dicom_hu(_pydicom_file(original)))


def test_real_jpeg_lossless_and_extended_files_read_their_reference_values():
    """A real CT in JPEG Lossless SV1 (pydicom-data's bad_sequence.dcm, refused before the decoders were declared)
    equals GDCM's decoding; JPEG-LL.dcm (SV1, signed) and JPGExtended.dcm (12-bit lossy) give pydicom's own
    reference values."""
    import pydicom

    ll = read_dicom_hu(_pydicom_file("JPEG-LL.dcm"))
    assert tuple(ll[400, 124:132]) == (60, 58, 61, 68, 59, 65, 64, 67) and tuple(ll[600, 124:132]) == (3, 1, 2, 0, 2, 1, 2, 0)
    extended = read_dicom_hu(_pydicom_file("JPGExtended.dcm"))
    assert extended[420, 140] == 244 and extended[230, 120] == 95
    pytest.importorskip("gdcm", reason="python-gdcm (the test extra) is the independent decoder")
    path = _pydicom_file("bad_sequence.dcm")
    ds = pydicom.dcmread(path)
    ds.pixel_array_options(decoding_plugin="gdcm")
    expected = ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)
    hu = read_dicom_hu(path)
    assert str(ds.Modality) == "CT" and hu.shape == (512, 512)
    np.testing.assert_array_equal(hu, expected)


def test_multi_frame_ct_reads_each_frame_in_hu_with_its_own_rescale_in_z_order(lce_ct):
    """A Legacy Converted Enhanced CT of the real slices: frames listed in z order, each read to the HU of the slice
    it came from, with the per-frame functional groups' rescale (frame 2 is stored shifted by 1024)."""
    from medkeras.data.readers import dicom_items, read_dicom_frames

    items = dicom_items(lce_ct)
    assert [i.name.rsplit("#", 1)[1] for i in items] == ["3", "2", "1"]  # z -189, -184, -124
    assert [i.position for i in items] == [-189.0, -184.0, -124.0]
    assert len({i.patient for i in items}) == 1 and items[0].patient == patient_key(LUNG / "1-01.dcm")
    for number, original in ((1, "1-01.dcm"), (2, "1-13.dcm"), (3, "1-14.dcm")):
        np.testing.assert_array_equal(read_dicom_hu(f"{lce_ct}#{number}"), read_dicom_hu(LUNG / original))
    frames, numbers = read_dicom_frames(lce_ct)
    assert frames.shape == (3, 512, 512) and numbers == [3, 2, 1]
    np.testing.assert_array_equal(frames[0], read_dicom_hu(LUNG / "1-14.dcm"))
    with pytest.raises(DicomError, match=r"multi-frame DICOM \(3 frames\): read a frame as lce_ct.dcm#N"):
        read_dicom_hu(lce_ct)
    with pytest.raises(DicomError, match="frame 4 does not exist"):
        read_dicom_hu(f"{lce_ct}#4")


def test_enhanced_multi_frame_mr_in_jpeg_ls_reads_as_its_uncompressed_frames():
    """pydicom-data's Enhanced MR (10 frames, JPEG-LS lossless) frame by frame equals its uncompressed twin."""
    from medkeras.data.readers import read_dicom_frames

    frames, numbers = read_dicom_frames(_pydicom_file("emri_small_jpeg_ls_lossless.dcm"))
    original, _ = read_dicom_frames(_pydicom_file("emri_small.dcm"))
    assert frames.shape == (10, 64, 64) and sorted(numbers) == list(range(1, 11))
    np.testing.assert_array_equal(frames, original)



def test_a_seeded_fuzz_run_reads_every_mutated_file_or_names_its_fault():
    """300 real DICOM files mutated (truncated, bit-flipped, header values changed or deleted; `bench.fuzz_dicom`
    runs 10,000): each gives pixels or a DicomError, never another exception, a hang or a crash."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "bench.fuzz_dicom", "--cases", "300", "--seed", "11", "--timeout", "60",
                           "--no-save"], cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert result["findings"] == [] and sum(result["outcomes"].values()) == 300
    assert result["outcomes"]["pixels"] > 50 and result["outcomes"]["DicomError"] > 50


def test_a_file_without_a_preamble_reads_and_a_text_file_named_dcm_is_not_dicom(tmp_path):
    """pydicom reads preamble-less files only when forced, and forced it parses anything: a real slice written
    without its preamble and file meta still gives the same HU; a text file named .dcm is called what it is."""
    import pydicom

    ds = pydicom.dcmread(LUNG / "1-13.dcm")
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    raw = bare.read_bytes()
    bare.write_bytes(raw[raw.index(b"DICM") + 4:] if b"DICM" in raw[:200] else raw)
    np.testing.assert_array_equal(read_dicom_hu(bare), read_dicom_hu(LUNG / "1-13.dcm"))
    text = tmp_path / "notes.dcm"
    text.write_text("hello, this is not an image\n")
    with pytest.raises(DicomError, match="notes.dcm: not a DICOM file"):
        read_dicom_hu(text)


def test_headers_are_parsed_with_the_collector_held_off_and_it_comes_back_as_it_was():
    """`headers_parsed` holds Python's cyclic collector off while headers are parsed (threads share one hold, the
    last out restores it) and leaves a collector the user had switched off switched off."""
    import gc
    import threading

    from medkeras.data.readers.dicom import headers_parsed

    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def hold():
        with headers_parsed():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    inside.wait(10)
    with headers_parsed():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread still parses
    release.set()
    worker.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with headers_parsed():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
