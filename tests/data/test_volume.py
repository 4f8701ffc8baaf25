"""Volumes (`readers/volume.py`) on the repo's real CT: slices ordered along the normal, spacing from positions,
each slice's own rescale, the canonical LPS frame, NIfTI written by nibabel with a known affine read back to the
same voxels and affine, and a series that cannot be one volume refused in one line naming the file."""

import shutil

import numpy as np
import pydicom
import pytest
from conftest import LUNG

from medkeras.data.readers.volume import read_volume
from medkeras.errors import DataError

SERIES_3 = LUNG / "3.000000-5mm-41315"


def _hu(path):
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_a_series_is_one_volume_in_z_order_with_its_geometry(tmp_path):
    for folder in (LUNG, SERIES_3):
        series = tmp_path / folder.name
        series.mkdir()
        for name in ("1-14.dcm", "1-13.dcm"):  # z -189, -184: contiguous, listed out of order
            shutil.copy(folder / name, series / name)
        volume = read_volume(series)
        assert volume.shape == (2, 512, 512) and volume.hu.dtype == np.float32
        assert [n.rsplit("/", 1)[1] for n in volume.names] == ["1-14.dcm", "1-13.dcm"]  # inferior first (+z up)
        for k, name in enumerate(("1-14.dcm", "1-13.dcm")):
            np.testing.assert_array_equal(volume.hu[k], _hu(folder / name))  # exact HU, each slice's own rescale
        ds = pydicom.dcmread(folder / "1-14.dcm")
        dy, dx = (float(v) for v in ds.PixelSpacing)
        assert volume.spacing == pytest.approx((5.0, dy, dx))  # the step between positions, not SliceThickness
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(volume.affine[:3, 3], origin)
        # columns: d along +z (5 mm), h along +y (dy), w along +x (dx): an axial scan in LPS as stored
        np.testing.assert_allclose(volume.affine[:3, :3], [[0, 0, dx], [0, dy, 0], [5.0, 0, 0]], atol=1e-9)


def test_a_long_series_reads_every_slice_exactly_plain_or_compressed_each_header_parsed_once(tmp_path, monkeypatch):
    """Eight slices of one series (real CT pixels, positions 5 mm apart, listed out of z order, named 1-01.dcm ...
    as TCIA names them), three of them RLE-compressed and one with a rescale of its own: plain files are
    read by numpy straight into their slices, the others by pydicom, in threads; every slice is exactly pydicom's HU
    at its place along +z, and each file's header is parsed once."""
    from pydicom.uid import RLELossless

    from medkeras.data.readers import volume as volume_module

    series = tmp_path / "Patient" / "Study" / "2.000000-5mm-40805"
    series.mkdir(parents=True)
    z = [-189.0 + 5.0 * k for k in (3, 0, 6, 1, 7, 2, 5, 4)]  # file order is not z order
    uid = pydicom.uid.generate_uid()
    for k, zk in enumerate(z):
        def edit(ds, zk=zk, k=k):
            ds.SeriesInstanceUID = uid
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], zk]
            if k == 2:
                ds.RescaleIntercept, ds.RescaleSlope = -1000, 2  # a slice of its own rescale
            if k in (1, 4, 6):
                ds.compress(RLELossless)
        _copy(series, f"1-{k + 1:02d}.dcm", edit, source=(LUNG if k % 2 else SERIES_3) / "1-14.dcm")
    parses = []
    real = volume_module.dcmread
    monkeypatch.setattr(volume_module, "dcmread", lambda *a, **k: parses.append(a[0]) or real(*a, **k))
    decoded = []
    by_pydicom = volume_module.dataset_hu
    monkeypatch.setattr(volume_module, "dataset_hu", lambda ds, path, *a: decoded.append(path) or by_pydicom(ds, path, *a))
    volume = read_volume(series)
    assert sorted(parses) == sorted(series.iterdir())  # one parse a file: the numpy read takes the noted layout
    assert sorted(p.name for p in decoded) == ["1-02.dcm", "1-05.dcm", "1-07.dcm"]  # pydicom: the compressed alone
    in_z = [series / f"1-{k + 1:02d}.dcm" for k in np.argsort(z)]
    assert volume.names == [str(p) for p in in_z]
    for k, path in enumerate(in_z):
        np.testing.assert_array_equal(volume.hu[k], _hu(path).astype(np.float32))
    assert volume.spacing[0] == pytest.approx(5.0)


def test_nifti_written_by_nibabel_reads_back_to_the_same_voxels_and_affine(tmp_path):
    nib = pytest.importorskip("nibabel")
    volume = read_volume([LUNG / "1-13.dcm", LUNG / "1-14.dcm"])
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    # stored as NIfTI usually is: index (i, j, k) = (x, y, z) in RAS, here with x reversed (i toward the right)
    data = volume.hu.transpose(2, 1, 0)[::-1]  # (w, h, d), w reversed
    index_to_dhw = np.zeros((4, 4))
    index_to_dhw[0, 2] = index_to_dhw[1, 1] = 1.0  # (i, j, k) -> (d = k, h = j, w = W - 1 - i)
    index_to_dhw[2, 0], index_to_dhw[2, 3], index_to_dhw[3, 3] = -1.0, data.shape[0] - 1, 1.0
    affine = lps_to_ras @ volume.affine @ index_to_dhw
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
    back = read_volume(path)
    np.testing.assert_array_equal(back.hu, volume.hu)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)  # NIfTI stores the affine in float32
    assert back.spacing == pytest.approx(volume.spacing, abs=1e-5)


def test_a_multi_frame_file_is_a_volume_with_each_frames_geometry(tmp_path):
    hd = pytest.importorskip("highdicom")
    from pydicom.uid import generate_uid

    sources = [pydicom.dcmread(LUNG / n) for n in ("1-13.dcm", "1-14.dcm")]
    lce = hd.legacy.LegacyConvertedEnhancedCTImage(legacy_datasets=sources, series_instance_uid=generate_uid(),
                                                   series_number=99, sop_instance_uid=generate_uid(), instance_number=1)
    path = tmp_path / "lce.dcm"
    lce.save_as(path, enforce_file_format=True)
    volume, loose = read_volume(path), read_volume([LUNG / "1-13.dcm", LUNG / "1-14.dcm"])
    np.testing.assert_array_equal(volume.hu, loose.hu)
    np.testing.assert_allclose(volume.affine, loose.affine, atol=1e-6)


def _copy(tmp_path, name, edit=None, source=LUNG / "1-14.dcm"):
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    if edit:
        edit(ds)
    target = tmp_path / name
    ds.save_as(target, enforce_file_format=True)
    return target


def test_a_series_that_cannot_be_one_volume_is_refused_naming_the_file(tmp_path):
    def tilted(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, -0.0998334]

    def localiser(ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    def smaller(ds):
        ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
        ds.Rows, ds.Columns = 256, 256

    def unplaced(ds):
        del ds.ImagePositionPatient

    cases = {
        "gap": ([LUNG / "1-01.dcm", LUNG / "1-13.dcm", LUNG / "1-14.dcm"], "1-01.dcm", "a gap of 60.00 mm after 1-13.dcm"),
        "same position": ([LUNG / "1-14.dcm", _copy(tmp_path, "again.dcm")], "", "at the same position"),
        "orientation": ([LUNG / "1-13.dcm", _copy(tmp_path, "tilted.dcm", tilted)], "tilted.dcm", "orientation"),
        "localiser": ([LUNG / "1-13.dcm", _copy(tmp_path, "scout.dcm", localiser)], "scout.dcm", "localiser"),
        "matrix": ([LUNG / "1-13.dcm", _copy(tmp_path, "small.dcm", smaller)], "small.dcm", "matrix 256x256"),
        "position": ([LUNG / "1-13.dcm", _copy(tmp_path, "nowhere.dcm", unplaced)], "nowhere.dcm",
                     "no ImagePositionPatient"),
        "series": ([LUNG / "1-13.dcm", SERIES_3 / "1-14.dcm"], "3.000000-5mm-41315/1-14.dcm", "another series"),
    }
    for case, (files, named, cause) in cases.items():
        with pytest.raises(DataError) as caught:
            read_volume(files)
        message = str(caught.value)
        assert "\n" not in message and cause in message and named in message, (case, message)


def _reference(hu, out):
    """Trilinear by scipy on the half-pixel coordinates TF's resize samples: the independent reference."""
    from scipy.ndimage import map_coordinates

    axes = [np.clip((np.arange(o) + 0.5) * n / o - 0.5, 0, n - 1) for n, o in zip(hu.shape, out)]
    grid = np.meshgrid(*axes, indexing="ij")
    return map_coordinates(hu.astype(np.float64), grid, order=1, mode="nearest")


def test_resampling_to_a_spacing_or_a_shape_is_trilinear_in_the_graph():
    import tensorflow as tf

    from medkeras.data.volumes import resample_volume, resampled_shape

    volume = read_volume([LUNG / "1-13.dcm", LUNG / "1-14.dcm"])
    hu = volume.hu[:, 200:296, 250:346]  # a real 96 x 96 patch of lung and tumour, two slices 5 mm apart
    target = (2.5, 1.5, 1.5)
    out = resampled_shape(hu.shape, volume.spacing, target)
    assert out == (4, 54, 54)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([3], tf.float32)])
    def graph(x, spacing):  # shapes unknown until run: as in tf.data
        return resample_volume(x, spacing, target_spacing=target)

    got, spacing = graph(hu, np.asarray(volume.spacing, np.float32))
    np.testing.assert_allclose(got.numpy(), _reference(hu, out), atol=0.02)  # HU; float32 arithmetic
    np.testing.assert_allclose(spacing.numpy(), np.asarray(volume.spacing) * hu.shape / np.asarray(out), rtol=1e-6)
    shaped, _ = resample_volume(hu, volume.spacing, size=(3, 40, 64))
    np.testing.assert_allclose(shaped.numpy(), _reference(hu, (3, 40, 64)), atol=0.02)
    both, kept = resample_volume(hu, volume.spacing, target_spacing=target, size=(6, 50, 60))
    full = _reference(hu, out)  # (4, 54, 54): padded 1 + 1 slices of air, cropped 2 + 2 rows, padded 3 + 3 columns
    assert both.shape == (6, 50, 60)
    np.testing.assert_allclose(both.numpy()[1:5, :, 3:57], full[:, 2:52, :], atol=0.02)
    assert (both.numpy()[0] == -1024).all() and (both.numpy()[:, :, :3] == -1024).all()
    np.testing.assert_allclose(kept.numpy(), spacing.numpy(), rtol=1e-6)
    odd, _ = resample_volume(hu, volume.spacing, target_spacing=target, size=(5, 51, 59))  # odd: the extra one after
    np.testing.assert_allclose(odd.numpy()[:4, :, 2:56], full[:, 1:52, :], atol=0.02)
    assert (odd.numpy()[4] == -1024).all() and (odd.numpy()[:, :, :2] == -1024).all()
    assert (odd.numpy()[:, :, 56:] == -1024).all()
